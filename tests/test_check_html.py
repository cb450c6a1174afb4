"""tools/check_html.py: the built book loads nothing from other servers and shows no blank
widget."""

import sys
from pathlib import Path

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent
check_html = load_tool("check_html")


def test_flags_cdn_scripts_and_widgets_but_not_links(tmp_path):
    (tmp_path / "ok.html").write_text(
        '<a href="https://arxiv.org/abs/1706.03762">paper</a>'
        '<script src="_static/vendor/mathjax/tex-svg.js"></script>'
    )
    (tmp_path / "bad.html").write_text(
        '<script defer="defer" '
        'src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script><script '
        'type="application/vnd.jupyter.widget-view+json">{}</script>'
    )
    (tmp_path / "state.html").write_text('<script '
                                         'type="application/vnd.jupyter.widget-state+json">{}</script>')
    found = check_html.problems(tmp_path)
    assert len(found) == 3
    assert "state.html: embeds a widget" in found[2]
    assert (found[0]
            == "bad.html: loads https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js from "
            "another server")
    assert "bad.html: embeds a widget" in found[1]


def test_an_empty_build_is_a_problem(tmp_path):
    assert (check_html.problems(tmp_path)
            == [f"no HTML pages under {tmp_path}: build the book first"])


def test_flags_solution_markers_on_lab_pages_only(tmp_path):
    (tmp_path / "labs").mkdir()
    (tmp_path / "labs" / "lab.html").write_text(
        '<pre><span class="c1">### BEGIN SOLUTION</span>\nreturn x\n<span class="c1">### END '
        'SOLUTION</span></pre>')
    (tmp_path / "labs" / "clean.html").write_text("<pre>return x</pre>")
    (tmp_path / "about_labs.html").write_text("<p>answers sit between ### BEGIN "
                                              "SOLUTION and ...</p>")
    assert check_html.problems(tmp_path) == [
        "labs/lab.html: shows 2 solution-marker line(s) (### BEGIN/END SOLUTION); "
        "book/_ext/lab_exercises.py hides them on pages under labs/"]


def test_the_book_extension_removes_marker_lines_only():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import lab_exercises
    finally:
        sys.path.pop(0)
    code = ("def f(x):\n    ### BEGIN SOLUTION\n    return x  # ### not a marker\n    ### "
            "END SOLUTION\n")
    assert lab_exercises.without_markers(code) == "def f(x):\n    return x  # ### not a marker\n"
