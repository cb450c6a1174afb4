"""Chapters written in plain Markdown, which JupyterLab renders, shown in the book with MyST's
citations, exercises and folded solutions (a Sphinx extension).

A learner opens a chapter in JupyterLab, whose Markdown knows nothing of MyST: a ``{cite}`` role
or an ``{exercise}`` fence would show there as raw text, and a solution cell as plain code right
under its exercise. So the chapters use only what both readers render, and this extension turns
these plain forms into MyST when the book reads a notebook (``source-read``: the notebook that
the book runs and renders is the turned one; the file is not changed):

* **Citations.** A parenthesised group of links, each to a ``book/references.bib`` entry's
  ``url`` or ``https://doi.org/`` + its ``doi`` (or to ``../book/references.md#KEY`` for an
  entry with neither) and each with the entry's author-year label as its text, separated by
  "; "::

      ([Vaswani et al., 2017](https://arxiv.org/abs/1706.03762))  ->  {cite}`vaswani2017attention`

  In JupyterLab the label links to the paper; in the book it is the usual citation, linked to
  the references page. A link text that is not the entry's label is a warning (the build fails).
* **Exercises.** A Markdown cell tagged ``exercise`` whose first line is
  ``### Exercise C.K: Title`` becomes an ``{exercise}`` block titled "Title", labelled
  ``chCC-exK``. C must be the chapter's number (its file name's first two digits) and K the
  exercise's place in the chapter, so that JupyterLab and the book give the same number.
* **Solutions.** The solution of exercise C.K is a Markdown cell tagged ``solution`` that reads
  ``#### Solution to exercise C.K``, then code cells. The heading is collapsed in the committed
  notebook (``metadata.jp-MarkdownHeadingCollapsed``), so JupyterLab shows "1 cell hidden" under
  it, and keeps the code and its outputs hidden when all cells run, until the learner opens it.
  In the book the heading becomes ``{solution-start}`` (a dropdown) and a ``{solution-end}``
  follows the code cells.
* **Links to a learner lab.** ``../labs/NN_name.ipynb`` (the notebook a learner opens in
  JupyterLab) becomes ``../labs/solutions/NN_name.ipynb``, the lab's page in the book (which
  offers the learner version at its top).

Hand-written; lives in ``book/_ext``. tools/check_lab.py checks what JupyterLab shows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pybtex.database import parse_file
from pybtex.plugin import find_plugin
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

LINK = r"\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)"
CITATION = re.compile(rf"\((?P<links>{LINK.replace('?P<text>', '?:').replace('?P<target>', '?:')}"
                      rf"(?:; {LINK.replace('?P<text>', '?:').replace('?P<target>', '?:')})*)\)")
EXERCISE = re.compile(r"### Exercise (?P<chapter>\d+)\.(?P<number>\d+): (?P<title>.+?)\s*$")
SOLUTION = re.compile(r"#### Solution to exercise (?P<chapter>\d+)\.(?P<number>\d+)\s*$")
REFERENCES = "../book/references.md#"
LEARNER_LAB = re.compile(r"\]\(\.\./labs/(\d\d_\w+\.ipynb)\)")


def bibliography(app: Sphinx) -> tuple[dict[str, str], dict[str, str]]:
    """(key of each link target, label of each key) from the book's bib files."""
    entries = {}
    for name in app.config.bibtex_bibfiles:
        entries.update(parse_file(Path(app.srcdir) / name).entries)
    style = find_plugin("pybtex.style.formatting", app.config.bibtex_default_style)()
    ordered = style.sort(entries.values())
    labels = dict(zip((e.key for e in ordered), style.format_labels(ordered), strict=True))
    keys = {REFERENCES + key: key for key in entries}
    for key, entry in entries.items():
        if url := entry.fields.get("url"):
            keys.setdefault(url, key)
        if doi := entry.fields.get("doi"):
            keys.setdefault(f"https://doi.org/{doi}", key)
    return keys, labels


def _citations(text: str, keys: dict[str, str], labels: dict[str, str], where: str) -> str:
    def replace(group: re.Match) -> str:
        links = list(re.finditer(LINK, group.group("links")))
        if not all(link.group("target") in keys for link in links):
            return group.group()  # a parenthesised link to something else
        cited = []
        for link in links:
            key = keys[link.group("target")]
            if link.group("text") != labels[key]:
                logger.warning(f"the citation of {key} reads {link.group('text')!r}, its label "
                               f"is {labels[key]!r}", location=where)
            cited.append(key)
        return "{cite}`" + ",".join(cited) + "`"
    return CITATION.sub(replace, text)


def _lines(source: str | list[str]) -> str:
    return source if isinstance(source, str) else "".join(source)


def to_myst(nb: dict, chapter: int | None, keys: dict[str, str], labels: dict[str, str],
            where: str) -> dict:
    """The notebook ``nb`` with its plain citations, exercises and solutions in MyST."""
    cells, count, label, open_solution = [], 0, None, False
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] != "markdown":
            cells.append(cell)
            continue
        if open_solution:  # a solution's code cells end at the next markdown cell
            cells.append(_markdown(f"{cells[-1].get('id', 'cell')}-end", "```{solution-end}\n```"))
            open_solution = False
        source = _citations(_lines(cell["source"]), keys, labels, where)
        source = LEARNER_LAB.sub(r"](../labs/solutions/\1)", source)
        head, _, body = source.partition("\n")
        if "exercise" in tags:
            count += 1
            found = EXERCISE.match(head)
            if found and (int(found["chapter"]), int(found["number"])) == (chapter, count):
                label = f"ch{chapter:02d}-ex{count}"
                source = (f"```{{exercise}} {found['title']}\n:label: {label}\n\n"
                          f"{body.strip()}\n```")
            else:
                logger.warning(f"an exercise cell must start with '### Exercise {chapter}.{count}"
                               f": Title', not {head!r}", location=where)
        elif "solution" in tags:
            found = SOLUTION.match(source)
            if label and found and (int(found["chapter"]), int(found["number"])) == (chapter,
                                                                                       count):
                source = f"```{{solution-start}} {label}\n:class: dropdown\n```"
                open_solution, label = True, None
            else:
                logger.warning(f"a solution cell must follow its exercise and read '#### Solution "
                               f"to exercise {chapter}.{count}', not {source!r}", location=where)
        cells.append({**cell, "source": source})
    if open_solution:
        cells.append(_markdown("solution-end", "```{solution-end}\n```"))
    return {**nb, "cells": cells}


def _markdown(cell_id: str, source: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": source}


def on_source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    if not hasattr(app, "_plain_notebooks_bib"):
        app._plain_notebooks_bib = bibliography(app)
    keys, labels = app._plain_notebooks_bib
    found = re.match(r"(\d+)_", Path(docname).name)
    chapter = int(found.group(1)) if found and docname.startswith("chapters/") else None
    nb = json.loads(source[0])
    source[0] = json.dumps(to_myst(nb, chapter, keys, labels, docname), ensure_ascii=False)


def setup(app: Sphinx) -> dict:
    app.connect("source-read", on_source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
