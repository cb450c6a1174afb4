"""pytest for the whole repository: nbval's runs of the notebooks are kept for the book.

nbval runs every chapter and solution lab cell by cell, one kernel per notebook. When every code
cell of a notebook has run and passed, the notebook is written with the outputs of that run to
``_build/executed/<its path>`` (a temporary file, then a rename), stamped with the fingerprint of
what it ran against (``tools/book_cache.py``). ``make book`` hands these to the book's execution
cache, so the book shows nbval's run instead of running every notebook a second time; a notebook
whose code or fingerprint has changed since is run by the book itself.

Hand-written. The tests' own fixtures live in ``tests/conftest.py``.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
EXECUTED = ROOT / "_build" / "executed"


def pytest_configure(config: pytest.Config) -> None:
    """Kernels that nbval starts record each figure's smallest text, as the book's own kernels
    do (book/_ext/figure_text.py): the book shows these figures, and tools/check_browser.py
    measures that text."""
    os.environ["PYTHONSTARTUP"] = str(ROOT / "book" / "_ext" / "figure_text_startup.py")


def _is_nbval_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item.parent, "nb")


_RUNS: dict[str, dict[int, list | None]] = {}  # per notebook: each code cell's outputs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call" and _is_nbval_cell(item):
        runs = _RUNS.setdefault(item.parent.nodeid, {})
        outputs = getattr(item, "test_outputs", None)
        runs[id(item.cell)] = copy.deepcopy(outputs) if report.passed and outputs is not None \
            else None
        code_cells = sum(cell.cell_type == "code" for cell in item.parent.nb.cells)
        if len(runs) == code_cells and all(out is not None for out in runs.values()):
            _write(item.parent, runs)
    return report


def _write(notebook: pytest.Collector, runs: dict[int, list]) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import book_cache
    finally:
        sys.path.remove(str(ROOT / "tools"))
    nb = copy.deepcopy(notebook.nb)
    count = 0
    for cell, original in zip(nb.cells, notebook.nb.cells, strict=True):
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count
        cell.outputs = runs[id(original)]
        for output in cell.outputs:
            if output.get("output_type") == "execute_result":
                output["execution_count"] = count
    path = Path(notebook.path).resolve()
    target = EXECUTED / path.relative_to(ROOT)
    book_cache.write_executed(nb, target)

