"""How a check's verdict looks in a notebook: the message first, then the learner's own line only.

``transformer_lib.checks`` installs an IPython handler (``engine.show_in_notebook``) when it is
imported in a kernel; these tests run a real kernel, as JupyterLab does.
"""

import re

import nbformat
from nbclient import NotebookClient

ANSI = re.compile(r"\x1b\[[0-9;]*m")

WRONG = """\
import torch
from transformer_lib import checks

def attention(query, key, value, mask=None, dropout_p=0.0):
    weights = torch.softmax(query @ key.transpose(-2, -1), dim=-1)
    return weights @ value, weights
"""
STUB = """\
def stub(query, key, value, mask=None, dropout_p=0.0):
    raise NotImplementedError("Exercise 1 (attention): write your code here")
"""


def run(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=120).execute()
    return [[out for out in cell.outputs if out.output_type == "error"] for cell in nb.cells]


def text(error):
    return ANSI.sub("", "\n".join(error.traceback))


def test_a_verdict_shows_the_message_first_and_only_the_learners_line():
    errors = run(WRONG, "checks.check_attention(attention)", STUB,
                 "x = 1\nchecks.check_attention(stub)",
                 "stub(1, 2, 3)", "assert 1 == 2, 'a plain assert'")
    wrong, not_done, direct, plain = errors[1][0], errors[3][0], errors[4][0], errors[5][0]

    shown = text(wrong)
    assert shown.startswith("AssertionError: check_attention: the scores are not scaled"), shown
    assert "(check_attention failed, called at line 1: checks.check_attention(attention))" in shown
    assert ("engine.py" not in shown and "lab01_attention.py" not in shown
            and "Traceback" not in shown)
    assert len(shown.splitlines()) <= 12, shown
    assert wrong.ename == "AssertionError" and wrong.evalue.startswith("check_attention: ")

    shown = text(not_done)
    assert shown.startswith("NotImplementedError: check_attention: Exercise 1 (attention) is not "
                            "done yet."), shown
    assert "called at line 2: checks.check_attention(stub)" in shown
    assert len(shown.splitlines()) <= 3, shown

    # anything else keeps IPython's usual traceback, with its frames
    assert "Traceback (most recent call last)" in text(direct) and "stub(1, 2, 3)" in text(direct)
    assert "Traceback (most recent call last)" in text(plain) and "a plain assert" in text(plain)
