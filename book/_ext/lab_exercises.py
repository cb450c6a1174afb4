"""Lab pages in the book (a Sphinx extension): exercises numbered from 1, answers without markers.

* Sphinx numbers the exercises of unnumbered pages with one counter for the whole book, so the
  second lab's first exercise would read "Exercise 4", while its learner notebook
  (tools/make_labs.py) and its checks call it "Exercise 1". On each page under ``labs/``,
  exercises are numbered 1, 2, 3, ... in page order.
* A lab's solution notebook marks each answer with ``### BEGIN SOLUTION`` / ``### END SOLUTION``
  lines, which tools/make_labs.py needs and a reader does not: the code shown on a lab page leaves
  those lines out (the notebook itself, which nbval and the book execute, keeps them).
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

LAB_PREFIX = "labs/"
MARKER = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)


def without_markers(code: str) -> str:
    """``code`` without its solution-marker lines."""
    return MARKER.sub("", code)


def hide_solution_markers(app: Sphinx, doctree: nodes.document) -> None:
    if not app.env.docname.startswith(LAB_PREFIX):
        return
    for block in doctree.findall(nodes.literal_block):
        code = block.astext()
        if MARKER.search(code):
            block.children = [nodes.Text(without_markers(code))]
            block.rawsource = without_markers(block.rawsource)


def renumber_lab_exercises(app: Sphinx, env: BuildEnvironment) -> list[str]:
    changed = []
    for docname, by_type in env.toc_fignumbers.items():
        numbers = by_type.get("exercise")
        if not docname.startswith(LAB_PREFIX) or not numbers:
            continue
        for index, label in enumerate(sorted(numbers, key=numbers.__getitem__), 1):
            numbers[label] = (index,)
        changed.append(docname)
    return changed


def setup(app: Sphinx) -> dict[str, bool]:
    # after Sphinx's own numbering (TocTreeCollector listens with the default priority, 500)
    app.connect("env-get-updated", renumber_lab_exercises, priority=600)
    app.connect("doctree-read", hide_solution_markers)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
