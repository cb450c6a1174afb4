"""The learner versions of the labs run, and fail only where they should.

A learner version is the solution notebook with every answer replaced by a stub that raises
``NotImplementedError`` (tools/make_labs.py). Run top to bottom as it is, every check cell must
fail with the friendly "Exercise N (...) is not done yet" message, every exercise's check must
fail, and any other cell may fail only because it calls a stub. (The solution notebooks
themselves run under nbval: ``labs/solutions`` is in pytest's testpaths.)
"""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "labs" / "solutions").glob("*.ipynb"))
LEARNER_VERSIONS = [ROOT / "labs" / path.name for path in SOLUTIONS]  # not a learner's copies
STUB = re.compile(r"raise NotImplementedError\(\"Exercise (\d+) \(")
STUB_MESSAGE = re.compile(r"^Exercise (\d+) \(.*\): write your code here$")
NOT_DONE = re.compile(r"^check_\w+: Exercise (\d+) \(.*\) is not done yet\. ")


def test_every_solution_has_a_learner_version():
    assert len(SOLUTIONS) >= 3
    for path in LEARNER_VERSIONS:
        assert path.exists(), f"{path.name}: run `make labs`"


@pytest.mark.parametrize("path", LEARNER_VERSIONS, ids=lambda p: p.stem)
def test_learner_version_fails_only_at_the_checks(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=300,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    exercises = {int(n) for cell in nb.cells if cell.cell_type == "code"
                 for n in STUB.findall(cell.source)}
    assert exercises == set(range(1, len(exercises) + 1)) and len(exercises) >= 3, exercises
    checked = set()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [out for out in cell.outputs if out.output_type == "error"]
        where = f"{path.name}, cell {index}:\n{cell.source}"
        if "checks.check_" in cell.source:
            assert errors, f"a check passed although its exercise is a stub: {where}"
            error = errors[0]
            assert error.ename == "NotImplementedError", f"{where}\n{error.ename}: {error.evalue}"
            match = NOT_DONE.match(error.evalue)
            assert match, f"not the friendly message: {where}\n{error.evalue}"
            checked.add(int(match[1]))
        elif errors:  # a cell that uses the learner's code, which is not written yet
            error = errors[0]
            assert error.ename == "NotImplementedError", f"{where}\n{error.ename}: {error.evalue}"
            assert STUB_MESSAGE.match(error.evalue), f"{where}\n{error.evalue}"
    assert checked == exercises, f"exercises without a failing check: {exercises - checked}"
