"""tools/check_lab.py's parts that need no browser: closing a notebook, judging a lab's stop."""

from __future__ import annotations

from conftest import load_tool

check_lab = load_tool("check_lab")
check_browser = load_tool("check_browser")


class FakeDevTools:
    """Answers Runtime.evaluate as told, and records every call."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def call(self, method, params, session=None, timeout=None):
        self.calls.append(params)
        if params.get("awaitPromise"):
            if isinstance(self.answer, Exception):
                raise self.answer
            return {"result": {"value": self.answer}}
        return {"result": {}}


def test_a_close_that_fails_in_the_page_closes_without_waiting_and_goes_on(capsys):
    dt = FakeDevTools(check_browser.DevToolsError("Runtime.evaluate: Promise was collected"))
    check_lab.close(dt, "s", "chapters/05_decoder.ipynb")
    assert "closing it failed (Runtime.evaluate: Promise was collected)" in capsys.readouterr().out
    assert dt.calls[-1] == {"expression": "window._checked && window._checked.dispose()"}


def test_a_kernel_that_does_not_confirm_its_shutdown_is_reported_not_failed(capsys):
    dt = FakeDevTools(False)
    check_lab.close(dt, "s", "chapters/05_decoder.ipynb")
    assert "did not confirm its shutdown" in capsys.readouterr().out
    assert len(dt.calls) == 1


def ran(errors, first_check=5):
    return {"firstCheck": first_check, "errors": errors}


def error(cell=5, shown="NotImplementedError: check_x: Exercise 1 (X) is not done yet.",
          lines=2):
    return {"cell": cell, "text": shown, "shown": shown, "lines": lines}


def test_a_learner_lab_must_stop_at_its_first_check_with_the_verdict_first():
    assert check_lab.learner_lab_stop("labs/a.ipynb", ran([error()])) == []
    assert check_lab.learner_lab_stop("labs/a.ipynb", ran([])) == [
        "runs to the end: it should stop at its first check, whose exercise is not done"]
    assert check_lab.learner_lab_stop("labs/a.ipynb", ran([], first_check=-1)) == [
        "has no check cell (a cell calling checks.check_...)"]
    [late] = check_lab.learner_lab_stop("labs/a.ipynb", ran([error(cell=9)]))
    assert late.startswith("stops at cell 9, not at its first check (cell 5)")
    [buried] = check_lab.learner_lab_stop("labs/a.ipynb", ran([error(
        shown="Traceback (most recent call last):")]))
    assert "the learner first sees 'Traceback (most recent call last):'" in buried
    [long] = check_lab.learner_lab_stop("labs/a.ipynb", ran([error(lines=30)]))
    assert long.startswith("cell 5: 30 traceback lines (at most 3")
