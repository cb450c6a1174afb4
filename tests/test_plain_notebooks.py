"""book/_ext/plain_notebooks.py: the chapters' plain Markdown, turned into MyST for the book."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import citations  # noqa: E402
import plain_notebooks  # noqa: E402
from pybtex.plugin import register_plugin  # noqa: E402

register_plugin("pybtex.style.formatting", citations.STYLE, citations.AuthorYearStyle, force=True)
APP = SimpleNamespace(srcdir=str(ROOT), config=SimpleNamespace(
    bibtex_bibfiles=["book/references.bib"], bibtex_default_style=citations.STYLE))
KEYS, LABELS = plain_notebooks.bibliography(APP)
VASWANI = "([Vaswani et al., 2017](https://arxiv.org/abs/1706.03762))"


@pytest.fixture
def warnings(monkeypatch):
    found = []
    monkeypatch.setattr(plain_notebooks, "logger", SimpleNamespace(
        warning=lambda message, location=None: found.append(message)))
    return found


def md(source: str, *tags: str, **metadata) -> dict:
    meta = {**metadata, **({"tags": list(tags)} if tags else {})}
    return {"cell_type": "markdown", "id": f"m{abs(hash(source)) % 10**6}", "metadata": meta,
            "source": source}


def code(source: str) -> dict:
    return {"cell_type": "code", "id": f"c{abs(hash(source)) % 10**6}", "metadata": {},
            "execution_count": None, "outputs": [], "source": source}


def convert(cells: list[dict], chapter: int | None = 4) -> list[str]:
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out = plain_notebooks.to_myst(nb, chapter, KEYS, LABELS, "test")
    return [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            for c in out["cells"]]


def test_a_parenthesised_group_of_bib_links_is_a_citation(warnings):
    text = (f"The paper {VASWANI} and three more ([Ba et al., 2016](https://arxiv.org/abs/1607.06450);"
            " [Papineni et al., 2002](https://doi.org/10.3115/1073083.1073135);"
            " [Gage, 1994](../book/references.md#gage1994new)).")
    assert convert([md(text)]) == ["The paper {cite}`vaswani2017attention` and three more "
                                   "{cite}`ba2016layer,papineni2002bleu,gage1994new`."]
    assert warnings == []


@pytest.mark.parametrize("text", [
    "a link ([PyTorch](https://pytorch.org)) to something else",
    "a bib link without parentheses [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)",
    "a group with one other link ([Vaswani et al., 2017](https://arxiv.org/abs/1706.03762); "
    "[PyTorch](https://pytorch.org))",
])
def test_other_links_stay_links(text, warnings):
    assert convert([md(text)]) == [text]
    assert warnings == []


def test_a_citation_whose_text_is_not_the_label_is_a_warning(warnings):
    convert([md("([Vaswani, 2017](https://arxiv.org/abs/1706.03762))")])
    assert warnings == ["the citation of vaswani2017attention reads 'Vaswani, 2017', its label "
                        "is 'Vaswani et al., 2017'"]


def test_exercises_and_solutions_become_exercise_and_gated_solution_blocks(warnings):
    cells = [md("## Exercises\n\nTry them."),
             md("### Exercise 4.1: Shapes\n\nWhat shape?", "exercise"),
             md("#### Solution to exercise 4.1", "solution",
                **{"jp-MarkdownHeadingCollapsed": True}),
             code("print(1)"), code("print(2)"),
             md("### Exercise 4.2: Masks\n\nWhich mask?", "exercise"),
             md("#### Solution to exercise 4.2", "solution"),
             code("print(3)")]
    assert convert(cells) == [
        "## Exercises\n\nTry them.",
        "```{exercise} Shapes\n:label: ch04-ex1\n\nWhat shape?\n```",
        "```{solution-start} ch04-ex1\n:class: dropdown\n```", "print(1)", "print(2)",
        "```{solution-end}\n```",
        "```{exercise} Masks\n:label: ch04-ex2\n\nWhich mask?\n```",
        "```{solution-start} ch04-ex2\n:class: dropdown\n```", "print(3)",
        "```{solution-end}\n```"]
    assert warnings == []


@pytest.mark.parametrize("cells, message", [
    ([md("### Exercise 3.1: Wrong chapter\n\nText", "exercise")],
     "an exercise cell must start with '### Exercise 4.1: Title', not '### Exercise 3.1: Wrong "
     "chapter'"),
    ([md("### Exercise 4.2: Wrong number\n\nText", "exercise")],
     "an exercise cell must start with '### Exercise 4.1: Title', not '### Exercise 4.2: Wrong "
     "number'"),
    ([md("#### Solution to exercise 4.1", "solution"), code("x")],
     "a solution cell must follow its exercise and read '#### Solution to exercise 4.0', not "
     "'#### Solution to exercise 4.1'"),
    ([md("### Exercise 4.1: One\n\nText", "exercise"), md("#### Solution to exercise 4.2",
                                                          "solution")],
     "a solution cell must follow its exercise and read '#### Solution to exercise 4.1', not "
     "'#### Solution to exercise 4.2'"),
])
def test_a_misnumbered_exercise_or_solution_is_a_warning(cells, message, warnings):
    convert(cells)
    assert warnings == [message]


def test_a_learner_lab_link_goes_to_the_labs_page_in_the_book(warnings):
    text = "Practise in [Lab 1](../labs/01_attention_lab.ipynb), then [ch 2](02_mha.ipynb)."
    assert convert([md(text)]) == [
        "Practise in [Lab 1](../labs/solutions/01_attention_lab.ipynb), then [ch 2](02_mha.ipynb)."]


CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_converts_cleanly(path, warnings):
    nb = json.loads(path.read_text())
    sources = convert(nb["cells"], int(path.name[:2]))
    assert warnings == []
    text = "\n".join(sources)
    exercises = text.count("```{exercise}")
    assert exercises >= 2
    assert text.count("```{solution-start}") == text.count("```{solution-end}") == exercises
    # every code cell is kept as it is, in order: the book runs (or finds cached) the same code
    turned = plain_notebooks.to_myst(nb, int(path.name[:2]), KEYS, LABELS, "t")["cells"]
    assert [c for c in turned if c["cell_type"] == "code"] == [
        c for c in nb["cells"] if c["cell_type"] == "code"]
    # and nothing of MyST is left for JupyterLab to show raw
    raw = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for syntax in ("{cite}", "{ref}", "{exercise}", "{solution-start}", "{note}", ":label:"):
        assert syntax not in raw, syntax
