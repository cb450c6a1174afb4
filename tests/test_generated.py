"""tools/generated.py: what the exporter and make_labs share (compare, atomic write, command
line)."""

import os
import stat

import pytest

from conftest import load_tool

generated = load_tool("generated")


def differs(rel, current, text):
    return f"{rel} differs:\n" + generated.unified_diff(
        current.splitlines(keepends=True), text.splitlines(keepends=True), "on disk", "expected")


def orphaned(rel):
    return f"{rel} is stale"


def compare(root, expected, stale=()):
    return generated.compare(root, expected, stale, fix="make it", differs=differs,
                             orphaned=orphaned)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "same.txt").write_text("same\n")
    (tmp_path / "out" / "changed.txt").write_text("old\nkept\n")
    (tmp_path / "out" / "stale.txt").write_text("gone\n")
    return tmp_path


def expected(root):
    return {root / "out" / "same.txt": "same\n", root / "out" / "changed.txt": "new\nkept\n",
            root / "out" / "sub" / "missing.txt": "fresh\n"}


def test_compare_reports_missing_changed_and_stale_files(root):
    problems = compare(root, expected(root), [root / "out" / "stale.txt"])
    assert problems == [
        "out/changed.txt differs:\n--- on disk\n+++ expected\n@@ -1,2 +1,2 @@\n-old\n+new\n kept\n",
        "out/sub/missing.txt is missing: run `make it`",
        "out/stale.txt is stale",
    ]


def test_write_changes_only_what_differs_then_everything_is_in_sync(root):
    same = root / "out" / "same.txt"
    os.utime(same, (0, 0))
    changed = generated.write(root, expected(root), [root / "out" / "stale.txt"])
    assert changed == ["wrote out/changed.txt", "wrote out/sub/missing.txt",
                       "removed stale out/stale.txt"]
    assert same.stat().st_mtime == 0  # an unchanged file is not touched
    assert (root / "out" / "changed.txt").read_text() == "new\nkept\n"
    assert (root / "out" / "sub" / "missing.txt").read_text() == "fresh\n"
    assert not (root / "out" / "stale.txt").exists()
    assert compare(root, expected(root)) == []
    assert generated.write(root, expected(root), []) == []
    assert sorted(p.name for p in (root / "out").iterdir()) == ["changed.txt", "same.txt", "sub"]


def test_write_atomically_keeps_the_permissions_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "script.py"
    path.write_text("old\n")
    path.chmod(0o755)
    generated.write_atomically(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["script.py"]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "module.py"
    path.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        generated.write_atomically(path, "new\n" + "\ud800")  # fails half way through
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["module.py"]


class Broken(ValueError):
    pass


def run(argv, problems=(), changes=(), error=None):
    def check():
        if error:
            raise Broken(error)
        return list(problems)

    return generated.main(argv, name="tool", description="A tool.", check_help="check only",
                          fix="make tool", check=check, write=lambda: list(changes),
                          in_sync=lambda: "tool --check: all good", error=Broken)


def test_main_exit_codes_and_messages(capsys):
    assert run(["--check"]) == 0
    assert capsys.readouterr().out == "tool --check: all good\n"
    assert run(["--check"], problems=["a is missing", "b differs"]) == 1
    assert capsys.readouterr().out == ("a is missing\n\nb differs\n\n"
                                       "tool --check: 2 problem(s); run `make tool` and commit.\n")
    assert run([], changes=["wrote a"]) == 0
    assert capsys.readouterr().out == "wrote a\n"
    assert run([]) == 0
    assert capsys.readouterr().out == "tool: nothing to do, already in sync\n"
    assert run(["--check"], error="two default_exp lines") == 2
    assert capsys.readouterr().err == "tool: two default_exp lines\n"
    with pytest.raises(SystemExit):
        run(["--frobnicate"])
