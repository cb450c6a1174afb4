"""Number the exercises of every lab page from 1 (a Sphinx extension for the book).

Sphinx numbers the exercises of unnumbered pages with one counter for the whole book, so the
second lab's first exercise would read "Exercise 4", while its learner notebook
(tools/make_labs.py) and its checks call it "Exercise 1". This extension makes the book agree:
on each page under ``labs/``, exercises are numbered 1, 2, 3, ... in page order.
"""

from __future__ import annotations

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

LAB_PREFIX = "labs/"


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
    return {"parallel_read_safe": True, "parallel_write_safe": True}
