"""tools/make_labs.py: learner versions of the labs, generated from the solution notebooks."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent
make_labs = load_tool("make_labs")


def md(text, **meta):
    return {"cell_type": "markdown", "id": f"m{abs(hash(text)) % 10**6}", "metadata": meta,
            "source": text}


def code(text, **meta):
    return {"cell_type": "code", "execution_count": 7, "id": f"c{abs(hash(text)) % 10**6}",
            "metadata": meta, "outputs": [{"output_type": "stream", "name": "stdout", "text": "x"}],
            "source": text}


EXERCISE = """Intro, see [chapter 1](../../chapters/01_attention.ipynb).

```{exercise} Add "one"
:label: demo-add

Write `add_one(x)`.
```

```{admonition} Hint: the plus sign
:class: dropdown hint
Use `+`.
```

```{note}
Plain note.
```

```{solution-start} demo-add
:class: dropdown
```
"""

SOLUTION = """def add_one(x):
    \"\"\"x + 1.\"\"\"
    ### BEGIN SOLUTION
    secret_sauce = 1
    return x + secret_sauce
    ### END SOLUTION
"""

CLASS_SOLUTION = """class Counter:
    def __init__(self):
        ### BEGIN SOLUTION
        self.count = 0
        ### END SOLUTION

    def step(self):
        if True:
            ### BEGIN SOLUTION
            self.count += 41
            ### END SOLUTION
        return self.count
"""


def demo_notebook(*cells):
    if not cells:
        cells = (
            md("# Demo lab"),
            md("For the book only.", tags=["book-only"]),
            md("For learners only.", tags=["learner-only", "remove-cell"]),
            code("import math"),
            md(EXERCISE),
            code(SOLUTION),
            md("```{solution-end}\n```\n\n```{exercise} Count\n:label: "
               "demo-count\n\nCount.\n```\n\n```{solution-start} demo-count\n:class: "
               "dropdown\n```\n\nThe idea is hidden prose."),
            md("More hidden prose of the worked solution."),
            code(CLASS_SOLUTION),
            md("```{solution-end}\n```"),
            code("check(add_one)"),
        )
    return {"cells": list(cells), "metadata": {"kernelspec": {"name": "other"}},
            "nbformat": 4, "nbformat_minor": 5}


def convert(nb):
    return make_labs.learner_version(nb, "labs/solutions/99_demo.ipynb", "labs/99_demo.ipynb")


def sources(nb):
    return ["".join(c["source"]) for c in nb["cells"]]


def test_answers_become_stubs_at_their_indentation():
    cells = convert(demo_notebook())["cells"]
    text = "\n".join(sources({"cells": cells}))
    assert ('def add_one(x):\n    """x + 1."""\n'
            '    raise NotImplementedError("Exercise 1 (Add \\"one\\"): '
            'write your code here")') in text
    assert '    def __init__(self):\n        raise NotImplementedError("Exercise 2 (Count)' in text
    assert '        if True:\n            raise NotImplementedError("Exercise 2 (Count)' in text
    assert "        return self.count" in text  # code outside the markers stays
    assert "secret_sauce" not in text and "41" not in text and "self.count = 0" not in text
    assert "### BEGIN" not in text and "### END" not in text
    compile(sources({"cells": cells})[-2], "stub", "exec")  # stubs are valid Python


def test_markdown_is_plain_jupyter_markdown():
    out = convert(demo_notebook())
    text = "\n".join(sources(out))
    assert "### Exercise 1: Add \"one\"\n\nWrite `add_one(x)`." in text
    assert "### Exercise 2: Count" in text
    assert "<details><summary>Hint: the plus sign</summary>\n\nUse `+`.\n\n</details>" in text
    assert "> **Note**\n>\n> Plain note." in text
    assert "[chapter 1](../chapters/01_attention.ipynb)" in text  # relinked for labs/
    assert "{exercise}" not in text and "solution" not in text and ":label:" not in text
    assert "hidden prose" not in text
    assert "For the book only." not in text
    learner_only = next(c for c in out["cells"] if "For learners only." in "".join(c["source"]))
    assert "tags" not in learner_only["metadata"]


def test_learner_version_is_clean():
    out = convert(demo_notebook())
    for cell in out["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    assert out["metadata"]["kernelspec"]["name"] == "python3"
    assert out["metadata"][make_labs.GENERATED_KEY] == "labs/solutions/99_demo.ipynb"


@pytest.mark.parametrize("cells, message", [
    ((md(EXERCISE), code("    ### BEGIN SOLUTION\n    x = 1\n"), md("```{solution-end}\n```")),
     "without ### END SOLUTION"),
    ((md(EXERCISE), code("x = 1\n### END SOLUTION\n"), md("```{solution-end}\n```")),
     "without ### BEGIN SOLUTION"),
    ((md(EXERCISE), code("if a:\n    ### BEGIN SOLUTION\n    x = 1\n### END SOLUTION\n"),
      md("```{solution-end}\n```")), "not indented like its"),
    ((md(EXERCISE), code("x = 1  ### BEGIN SOLUTION\n"), md("```{solution-end}\n```")),
     "must stand alone"),
    ((md(EXERCISE), code("x = 1\n"), md("```{solution-end}\n```")), "has no ### BEGIN SOLUTION"),
    ((md(EXERCISE), md("```{solution-end}\n```"), code(SOLUTION)), "outside {solution-start}"),
    ((md(EXERCISE), code(SOLUTION)), "has no {solution-end}"),
    ((md("```{figure} x.png\n```"), md(EXERCISE), code(SOLUTION), md("```{solution-end}\n```")),
     "cannot show a {figure} block"),
    ((md("See {doc}`the notation <../notation>`."), md(EXERCISE), code(SOLUTION),
      md("```{solution-end}\n```")), "MyST role"),
    ((md("```{exercise} No label\n\ntext\n```"),), "needs a title and a :label:"),
    ((md("```{exercise} A\n:label: a\n```\n\n```{solution-start} b\n```"),), "does not follow"),
])
def test_inconsistent_markers_are_errors(cells, message):
    with pytest.raises(make_labs.LabError, match="labs/solutions/99_demo.ipynb") as info:
        convert(demo_notebook(*cells))
    assert message in str(info.value)


# --- the repository's labs --------------------------------------------------------------------


def answer_lines(nb):
    """Every line between the markers, and every line of markdown inside a solution."""
    lines, inside, in_solution = set(), False, False
    for cell in nb["cells"]:
        for line in "".join(cell["source"]).splitlines():
            if cell["cell_type"] == "code":
                if line.strip() == make_labs.BEGIN:
                    inside = True
                elif line.strip() == make_labs.END:
                    inside = False
                elif inside and line.strip():
                    lines.add(line.strip())
            else:
                if "{solution-start}" in line:
                    in_solution = True
                elif "{solution-end}" in line:
                    in_solution = False
                elif in_solution and line.strip() and not line.startswith(("```", ":")):
                    lines.add(line.strip())
    return lines


def test_repository_labs_exist_for_each_solution():
    found = make_labs.solutions()
    assert [p.name for p in found] == ["01_attention_lab.ipynb",
                                       "02_multi_head_attention_lab.ipynb",
                                       "03_encoder_decoder_lab.ipynb", "04_decoding_lab.ipynb",
                                       "05_gpu_training_lab.ipynb", "06_tokenization_lab.ipynb",
                                       "07_modern_blocks_lab.ipynb"]
    for path in found:
        assert (ROOT / "labs" / path.name).exists()


@pytest.mark.parametrize("path", make_labs.solutions(), ids=lambda p: p.stem)
def test_no_solution_text_reaches_a_learner_version(path):
    solution = json.loads(path.read_text(encoding="utf-8"))
    learner = json.loads((ROOT / "labs" / path.name).read_text(encoding="utf-8"))
    learner_lines = {line.strip() for cell in learner["cells"]
                     for line in "".join(cell["source"]).splitlines()}
    outside = set()
    for cell in solution["cells"]:  # lines that also occur outside the answers are not secret
        inside = False
        for line in "".join(cell["source"]).splitlines():
            if line.strip() == make_labs.BEGIN:
                inside = True
            elif line.strip() == make_labs.END:
                inside = False
            elif not inside and cell["cell_type"] == "code":
                outside.add(line.strip())
    secret = answer_lines(solution) - outside
    assert len(secret) > 5
    leaked = sorted(secret & learner_lines)
    assert leaked == [], f"solution lines in labs/{path.name}: {leaked}"
    stubs = [line for line in learner_lines
             if line.startswith("raise NotImplementedError(\"Exercise")]
    assert stubs, "the learner version has no stubs"


def test_repository_labs_are_in_sync():
    assert make_labs.check() == []


@pytest.fixture
def lab_copy(tmp_path):
    """A copy of the repository's labs in a scratch root."""
    (tmp_path / "labs").mkdir()
    shutil.copytree(ROOT / "labs" / "solutions", tmp_path / "labs" / "solutions")
    for path in (ROOT / "labs").glob("*.ipynb"):
        shutil.copy(path, tmp_path / "labs" / path.name)
    assert make_labs.check(tmp_path) == []
    return tmp_path


def test_check_catches_a_hand_edit(lab_copy):
    target = lab_copy / "labs" / "01_attention_lab.ipynb"
    target.write_text(target.read_text().replace(
        'raise NotImplementedError(\\"Exercise 1',
        'return None  # raise NotImplementedError(\\"Exercise 1'))
    problems = make_labs.check(lab_copy)
    assert len(problems) == 1
    assert "labs/01_attention_lab.ipynb differs" in problems[0]
    assert "edit labs/solutions/01_attention_lab.ipynb" in problems[0]
    assert "-    return None  # raise NotImplementedError" in problems[0]  # a readable diff
    make_labs.write(lab_copy)
    assert make_labs.check(lab_copy) == []


def test_check_catches_a_stale_learner_version(lab_copy):
    solution = lab_copy / "labs" / "solutions" / "02_multi_head_attention_lab.ipynb"
    nb = json.loads(solution.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = "".join(cell["source"]).replace("Lab 2:", "Lab two:")
    solution.write_text(make_labs.dump(nb))
    problems = make_labs.check(lab_copy)
    assert len(problems) == 1 and "02_multi_head_attention_lab.ipynb differs" in problems[0]
    assert "+# Lab two: Multi-head attention" in problems[0]


def test_check_catches_missing_and_orphaned_learner_versions(lab_copy):
    (lab_copy / "labs" / "03_encoder_decoder_lab.ipynb").unlink()
    shutil.move(lab_copy / "labs" / "solutions" / "01_attention_lab.ipynb",
                lab_copy / "01_attention_lab.ipynb")
    (lab_copy / "labs" / "my_notes.ipynb").write_text(make_labs.dump({"cells": [], "metadata": {}}))
    learners_copy = lab_copy / "labs" / "02_multi_head_attention_lab-Copy1.ipynb"
    shutil.copy(lab_copy / "labs" / "02_multi_head_attention_lab.ipynb", learners_copy)
    problems = make_labs.check(lab_copy)
    assert any("03_encoder_decoder_lab.ipynb is missing" in p for p in problems)
    assert any("01_attention_lab.ipynb is a learner version but" in p for p in problems)
    assert len(problems) == 2  # a learner's own notebooks are none of the tool's business
    assert sorted(make_labs.write(lab_copy)) == ["removed stale labs/01_attention_lab.ipynb",
                                                 "wrote labs/03_encoder_decoder_lab.ipynb"]
    assert (lab_copy / "labs" / "my_notes.ipynb").exists() and learners_copy.exists()
    assert make_labs.check(lab_copy) == []


def test_main_exit_codes(capsys):
    assert make_labs.main(["--check"]) == 0
    assert "in sync" in capsys.readouterr().out


def test_a_stub_too_long_for_one_line_is_two_literals_with_the_same_message():
    title = "A title that makes the stub too long"  # one line would be 104 characters
    exercise = EXERCISE.replace('Add "one"', title)
    out = convert(demo_notebook(md("# Demo lab"), md(exercise), code(SOLUTION),
                                md("```{solution-end}\n```")))
    stub = next(s for s in sources(out) if "NotImplementedError" in s)
    lines = stub.splitlines()
    assert max(len(line) for line in lines) <= make_labs.LINE_LENGTH
    assert lines[2] == f'    raise NotImplementedError("Exercise 1 ({title}): "'
    assert lines[3] == ' ' * len('    raise NotImplementedError(') + '"write your code here")'
    namespace = {}
    exec(compile(stub, "stub", "exec"), namespace)
    with pytest.raises(NotImplementedError) as info:
        namespace["add_one"](1)
    assert str(info.value) == f"Exercise 1 ({title}): write your code here"
