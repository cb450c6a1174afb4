"""nbval's runs kept for the book: conftest.py writes them, tools/book_cache.py hands them over."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest
from jupyter_cache import get_cache

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent
book_cache = load_tool("book_cache")


def notebook(*sources: str, markdown: str = "# A notebook") -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"display_name": "Python 3 (ipykernel)", "language": "python",
                              "name": "python3"}
    nb.cells = [nbformat.v4.new_markdown_cell(markdown)]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    return nb


def executed(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` as if run: consecutive execution counts and one output per cell."""
    nb = nbformat.from_dict(nb)
    for count, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        cell.execution_count = count
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{count}\n")]
    return nb


def test_a_kept_run_serves_the_same_code_under_other_markdown(tmp_path):
    run = executed(notebook("print(1)", "print(2)"))
    book_cache.write_executed(run, tmp_path / "executed" / "chapters" / "a.ipynb")
    added, skipped = book_cache.fill_cache(tmp_path / "executed", tmp_path / "cache")
    assert (added, skipped) == (["chapters/a.ipynb"], [])
    cache = get_cache(str(tmp_path / "cache"))
    # the book reads the notebook with its markdown turned into MyST: the code alone matches
    _, merged = cache.merge_match_into_notebook(notebook("print(1)", "print(2)",
                                                         markdown="```{note}\nhi\n```"))
    assert [c.outputs[0].text for c in merged.cells if c.cell_type == "code"] == ["1\n", "2\n"]
    with pytest.raises(KeyError):
        cache.match_cache_notebook(notebook("print(1)", "print(3)"))


def test_a_run_against_other_code_is_skipped_and_an_old_cache_emptied(tmp_path):
    run = executed(notebook("print(1)"))
    book_cache.write_executed(run, tmp_path / "executed" / "a.ipynb")
    assert book_cache.fill_cache(tmp_path / "executed", tmp_path / "cache") == (["a.ipynb"], [])
    # the package changed since: the kept run is not used, and the cache filled before is emptied
    assert book_cache.fill_cache(tmp_path / "executed", tmp_path / "cache", current="other") == (
        [], ["a.ipynb"])
    with pytest.raises(KeyError):
        get_cache(str(tmp_path / "cache")).match_cache_notebook(notebook("print(1)"))
    assert (tmp_path / "cache" / book_cache.STAMP).read_text() == "other\n"


def test_the_fingerprint_follows_the_package(tmp_path):
    for name in ("transformer_lib/a.py", "transformer_lib/sub/b.py", "requirements.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    before = book_cache.fingerprint(tmp_path)
    assert book_cache.fingerprint(tmp_path) == before
    (tmp_path / "transformer_lib/sub/b.py").write_text("x = 2\n")
    assert book_cache.fingerprint(tmp_path) != before


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "a.ipynb"
    target.write_text("old")

    def broken(nb):
        raise OSError("disk full")
    monkeypatch.setattr(book_cache.nbformat, "writes", broken)
    with pytest.raises(OSError, match="disk full"):
        book_cache.write_executed(executed(notebook("print(1)")), target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.ipynb"]


def test_an_unreadable_kept_file_is_skipped(tmp_path, capsys):
    (tmp_path / "executed").mkdir()
    (tmp_path / "executed" / "bad.ipynb").write_text("{ not json")
    assert book_cache.fill_cache(tmp_path / "executed", tmp_path / "cache") == ([], ["bad.ipynb"])
    assert "bad.ipynb: unreadable" in capsys.readouterr().err


def test_nbval_keeps_a_notebook_that_passed_and_not_one_that_failed():
    """The repository's conftest.py, in a real nbval run of two small notebooks."""
    folder = ROOT / "_build" / f"test-book-cache-{uuid.uuid4().hex[:8]}"
    kept = ROOT / "_build" / "executed" / folder.relative_to(ROOT)
    folder.mkdir(parents=True)
    try:
        good = notebook("x = 6 * 7", "print(x)", "x")
        bad = notebook("print('before')", "1 / 0", "print('after')")
        nbformat.write(good, folder / "good.ipynb")
        nbformat.write(bad, folder / "bad.ipynb")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
             str(folder / "good.ipynb"), str(folder / "bad.ipynb")],
            cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)
        assert "1 failed" in result.stdout, result.stdout + result.stderr
        run = nbformat.read(kept / "good.ipynb", as_version=4)
        cells = [c for c in run.cells if c.cell_type == "code"]
        assert [c.execution_count for c in cells] == [1, 2, 3]
        assert cells[0].outputs == []
        assert cells[1].outputs[0].text == "42\n"
        assert cells[2].outputs[0].data["text/plain"] == "42"
        assert cells[2].outputs[0].execution_count == 3
        assert run.metadata.book_cache.fingerprint == book_cache.fingerprint()
        assert not (kept / "bad.ipynb").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(kept, ignore_errors=True)
