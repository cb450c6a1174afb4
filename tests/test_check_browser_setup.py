"""tools/check_browser.py without a browser: `make test` passes with a notice, CI fails."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(html_dir, *args, **env):
    """The tool on ``html_dir`` (a built book of one page: what it finds does not depend on
    whether this checkout's book is built)."""
    (html_dir / "index.html").write_text("<!DOCTYPE html><html><body>a page</body></html>")
    bare = {k: v for k, v in os.environ.items() if k not in ("CHROMIUM", "REQUIRE_BROWSER")}
    bare["PATH"] = str(Path(sys.executable).parent)  # a PATH without any browser on it
    return subprocess.run([sys.executable, str(ROOT / "tools" / "check_browser.py"),
                           str(html_dir), *args],
                          capture_output=True, text=True, env={**bare, **env}, timeout=60)


def test_without_chromium_make_test_passes_with_a_notice_and_ci_fails(tmp_path):
    optional = run(tmp_path, "--if-available")
    assert optional.returncode == 0 and "no Chromium on this machine" in optional.stdout
    required = run(tmp_path, "--if-available", REQUIRE_BROWSER="1")
    assert required.returncode == 2 and "no Chromium found" in required.stdout
    plain = run(tmp_path)
    assert plain.returncode == 2 and "no Chromium found" in plain.stdout


def test_a_chromium_setting_that_is_not_a_program_is_named(tmp_path):
    result = run(tmp_path, "--if-available", CHROMIUM="/nonexistent/chrome")
    assert result.returncode == 2
    assert "/nonexistent/chrome is not a program this machine can run" in result.stdout
