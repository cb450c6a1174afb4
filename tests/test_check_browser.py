"""tools/check_browser.py: each problem a reader would meet on a page is found, in a real browser.

Small pages written into tmp_path, opened in headless Chromium (skipped where none is installed).
"""

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from conftest import load_tool

pytest.importorskip("websocket")
check_browser = load_tool("check_browser")
ROOT = Path(__file__).resolve().parent.parent
# CI (REQUIRE_BROWSER=1, set by .ci/run) always runs these; elsewhere they need a Chromium
pytestmark = pytest.mark.skipif(
    check_browser.find_browser() is None and os.environ.get("REQUIRE_BROWSER") != "1",
    reason="no Chromium installed (apt-get install chromium)")

HEAD = ('<!DOCTYPE html><html><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"></head><body>')
TAIL = "</body></html>"


def write_png(path: Path, width: int, height: int, text: dict[str, str] | None = None,
              dpi: float = 100.0) -> Path:
    """A white PNG, with text chunks and a resolution, written without any imaging library."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    rows = b"".join(b"\0" + b"\xff" * 3 * width for _ in range(height))
    per_metre = round(dpi / 0.0254)
    data = (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1))
            + b"".join(chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1"))
                       for k, v in (text or {}).items())
            + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def page(root: Path, name: str, body: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEAD + body + TAIL, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def browser():
    with check_browser.Browser() as running:
        yield running


def problems(browser, html_dir: Path, name: str) -> list[str]:
    report = check_browser.check_page(browser, html_dir / name, html_dir, {})
    return report.problems


def clean_book(root: Path) -> None:
    write_png(root / "_images" / "fig.png", 600, 300,
              {"smallest-text-px": "20.00", "smallest-text": "'0.5' at 12 pt"})
    page(root, "other.html", '<section id="part"><h1>Other</h1><p>text</p></section>')
    page(root, "index.html",
         '<section id="intro"><h1>Title</h1>'
         '<p>A <a href="other.html#part">link</a>, <a href="#intro">an anchor</a>, '
         '<a href="https://arxiv.org/abs/1706.03762">a paper</a> and <a href="other.html">a '
         'page</a>.</p><p>Code is not TeX: <code>$\\frac{a}{b}$</code>, '
         'and neither is a price of $5 or $10.</p><pre>\\begin{align} x \\end{align}</pre>'
         '<div class="cell_output"><div class="output stream"><pre>loss 0.25</pre></div>'
         '<img src="_images/fig.png" style="width: 600px; max-width: 100%"></div>'
         '<div style="overflow-x: auto"><table><tr><td style="min-width: 900px">wide</td></tr>'
         '</table></div></section>')


def test_a_clean_page_passes(browser, tmp_path):
    clean_book(tmp_path)
    assert problems(browser, tmp_path, "index.html") == []
    assert problems(browser, tmp_path, "other.html") == []


def test_a_traceback_and_stderr_are_error_output(browser, tmp_path):
    page(tmp_path, "p.html",
         '<section id="run"><div class="cell_output">'
         '<div class="output traceback"><pre>Traceback (most recent call last):\n'
         '  File "x.py", line 1\nValueError: d_model must be divisible by num_heads</pre></div>'
         '<div class="output stderr"><pre>/home/x/torch/nn.py:143: UserWarning: nested tensors\n'
         '</pre></div></div></section>')
    # long lines of code scroll in their box, as the book's theme makes them
    (tmp_path / "p.html").write_text((tmp_path / "p.html").read_text().replace(
        "</head>", "<style>pre { overflow-x: auto }</style></head>"))
    found = problems(browser, tmp_path, "p.html")
    assert found == [
        "error output in #run: a traceback: ValueError: d_model must be divisible by num_heads",
        "error output in #run: stderr output: /home/x/torch/nn.py:143: UserWarning: nested tensors",
    ]


def test_raw_tex_outside_code_is_found(browser, tmp_path):
    page(tmp_path, "p.html",
         '<section id="math"><p>The weight $\\alpha_{ij}$ sums to one.</p>'
         '<p>$$\\sum_j \\alpha_{ij} = 1$$</p><p>and \\(x\\) here</p></section>')
    found = problems(browser, tmp_path, "p.html")
    assert len(found) == 3, found
    assert all(line.startswith("raw TeX in #math: ") for line in found)
    assert "\\alpha_{ij}" in found[0]


def test_broken_links_and_anchors_are_found(browser, tmp_path):
    page(tmp_path, "other.html", '<h1 id="there">Other</h1>')
    page(tmp_path, "p.html",
         '<a href="other.html#there">fine</a> <a href="other.html#gone">gone</a> '
         '<a href="#nowhere">here</a> <a href="missing.html">missing</a> '
         '<a href="#../chapters/01_attention.ipynb">unresolved</a>')
    found = problems(browser, tmp_path, "p.html")
    assert found == [
        "broken anchor 'gone' -> other.html#gone: other.html has no #gone",
        "broken anchor 'here' -> #nowhere: p.html has no #nowhere",
        "broken link 'missing' -> missing.html: no such file",
        "broken anchor 'unresolved' -> #../chapters/01_attention.ipynb: p.html has no "
        "#../chapters/01_attention.ipynb",
    ]


def test_requests_to_other_servers_are_blocked_and_reported(browser, tmp_path):
    page(tmp_path, "p.html",
         '<p>text</p><script src="https://cdn.example.org/lib.js"></script>'
         '<img src="http://images.example.org/a.png" alt="">')
    found = problems(browser, tmp_path, "p.html")
    assert "requests https://cdn.example.org/lib.js from another server" in found
    assert "requests http://images.example.org/a.png from another server" in found
    assert not [line for line in found if "ERR_BLOCKED_BY_CLIENT" in line]


def test_console_errors_and_exceptions_are_found(browser, tmp_path):
    page(tmp_path, "p.html",
         '<p>text</p><script>console.error("boom", 42)</script>'
         '<script>const x = 1;</script><script>const x = 2;</script>'
         '<script src="_static/missing.js"></script>')
    found = problems(browser, tmp_path, "p.html")
    assert "console error: console.error: boom 42" in found
    assert any("SyntaxError: Identifier 'x' has already been declared" in line for line in found)
    assert any("ERR_FILE_NOT_FOUND" in line and "missing.js" in line for line in found), found


def test_a_page_wider_than_a_phone_is_found_with_what_sticks_out(browser, tmp_path):
    page(tmp_path, "p.html",
         '<p>A long name: <code>torch.nn.functional.scaled_dot_product_attention_with_a_very_long'
         '_name_that_cannot_wrap</code></p>')
    found = problems(browser, tmp_path, "p.html")
    assert len(found) == 1
    assert found[0].startswith("scrolls sideways on a 390 px phone (the page is ")
    assert "code (" in found[0] and "scaled_dot_product_attention" in found[0]


def test_text_that_runs_out_of_its_box_is_named(browser, tmp_path):
    page(tmp_path, "p.html", '<div class="output"><pre>' + "x = 1; " * 80 + "</pre></div>"
         '<div style="overflow-x: auto"><pre>' + "y = 2; " * 80 + "</pre></div>")
    found = problems(browser, tmp_path, "p.html")
    assert len(found) == 1
    assert "sticking out: pre (its text runs to " in found[0] and "y = 2" not in found[0]


def test_a_page_without_a_viewport_is_found(browser, tmp_path):
    (tmp_path / "p.html").write_text("<html><body><p>text</p></body></html>")
    found = problems(browser, tmp_path, "p.html")
    assert len(found) == 1 and "zoomed out" in found[0]


def test_figure_text_that_renders_too_small_is_found(browser, tmp_path):
    write_png(tmp_path / "small.png", 1200, 400,
              {"smallest-text-px": "11.11", "smallest-text": "'0.25' at 8 pt"})
    write_png(tmp_path / "unrecorded.png", 1000, 400)
    write_png(tmp_path / "plain.png", 1000, 400, {"smallest-text-px": "none"})
    page(tmp_path, "p.html",
         '<section id="fig"><div style="width: 600px; max-width: 100%">'
         '<img src="small.png" style="max-width: 100%"><img src="unrecorded.png" style="width: '
         '500px; max-width: 100%"><img src="plain.png" style="max-width: 100%"></div></section>')
    found = problems(browser, tmp_path, "p.html")
    assert len(found) == 2, found
    # 11.11 px text in an image shown at 600 / 1200 on the desktop page, 374 / 1200 on the phone
    assert found[0] == (
        "figure 1 in #fig (small.png): its smallest text ('0.25' at 8 pt) renders 5.6 px at "
        "1280 px (image shown at 0.50 of its size) and 3.5 px at 390 px (image shown at 0.31 of "
        "its size), under 9 px: enlarge that text, or make the figure narrower")
    assert found[1].startswith("figure 2 in #fig (unrecorded.png): records no text size")
    # shown at 500 / 1000 on the desktop page and 374 / 1000 on the phone: the phone decides
    assert found[1].endswith("its text must be at least 24.1 px in the image, "
                             "17.3 pt at its 100 dpi")


def test_a_redirect_page_is_followed_not_rendered(browser, tmp_path):
    page(tmp_path, "book.html", "<p>text</p>")
    (tmp_path / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=book.html" />')
    (tmp_path / "old.html").write_text('<meta http-equiv="Refresh" content="0; url=gone.html" />')
    report = check_browser.check_page(browser, tmp_path / "index.html", tmp_path, {})
    assert report.problems == [] and report.notes == ["a redirect to book.html: not rendered"]
    assert (problems(browser, tmp_path, "old.html")
            == ["redirects to gone.html, which does not exist"])


def test_main_reports_pages_and_fails(tmp_path, capsys):
    clean_book(tmp_path)
    page(tmp_path, "bad.html", "<p>x</p><script>console.error('boom')</script>")
    assert check_browser.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL bad.html\n       console error: console.error: boom\n" in out
    assert "ok   index.html" in out and "ok   other.html" in out
    assert check_browser.main([str(tmp_path), "--page", "index.html"]) == 0
    assert check_browser.main([str(tmp_path / "empty")]) == 1


def test_figures_saved_by_matplotlib_record_their_smallest_text(tmp_path):
    """book/_ext/figure_text.py, as the book build's kernels run it (in a process of its own)."""
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / "book" / "_ext")!r})
import figure_text
figure_text.install()
figure_text.install()
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6, 3))
ax.set_title("title", fontsize=12)
ax.text(0.5, 0.5, "tiny", fontsize=6)
ax.text(0.2, 0.2, "hidden", fontsize=2, visible=False)
fig.savefig({str(tmp_path / "a.png")!r}, bbox_inches="tight")
fig.savefig({str(tmp_path / "b.png")!r}, dpi=200)
empty = plt.figure()
empty.add_axes((0, 0, 1, 1)).axis("off")
empty.savefig({str(tmp_path / "c.png")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    a = check_browser.png_text(tmp_path / "a.png")
    assert a["smallest-text-px"] == "8.33" and a["smallest-text"] == "'tiny' at 6 pt"
    assert check_browser.png_text(tmp_path / "b.png")["smallest-text-px"] == "16.67"
    assert check_browser.png_text(tmp_path / "c.png")["smallest-text-px"] == "none"
