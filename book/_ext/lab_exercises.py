"""Lab pages in the book (a Sphinx extension): exercises numbered from 1, answers without markers.

* Sphinx numbers the exercises of unnumbered pages with one counter for the whole book, so the
  second lab's first exercise would read "Exercise 4", while its learner notebook
  (tools/make_labs.py) and its checks call it "Exercise 1". On each page under ``labs/``,
  exercises are numbered 1, 2, 3, ... in page order.
* A lab's solution notebook marks each answer with ``### BEGIN SOLUTION`` / ``### END SOLUTION``
  lines, which tools/make_labs.py needs and a reader does not: the code shown on a lab page leaves
  those lines out (the notebook itself, which nbval and the book execute, keeps them).
* A lab page is the solution notebook ``labs/solutions/NN_name.ipynb``, and the page's own
  download button offers that notebook. A note at the top of each such page points a learner to
  the exercise instead: the learner version ``labs/NN_name.ipynb``, to download (the build
  copies it) or to open in JupyterLab.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

LAB_PREFIX = "labs/"
SOLUTIONS_PREFIX = "labs/solutions/"
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


def learner_version_note(docname: str) -> nodes.admonition:
    """The note that sends a learner from a lab's solutions page to its learner version."""
    name = docname.removeprefix(SOLUTIONS_PREFIX) + ".ipynb"
    download = addnodes.download_reference(
        "", "", reftarget=f"/labs/{name}", refdoc=docname, refdomain="", reftype="download",
        refexplicit=True)
    download += nodes.literal(name, name)
    para = nodes.paragraph()
    para += [
        nodes.Text("Download the learner version, "), download,
        nodes.Text(": the same lab with a stub in place of each answer, and the checks. Or open "),
        nodes.literal(f"labs/{name}", f"labs/{name}"), nodes.Text(" in JupyterLab ("),
        nodes.literal("make lab", "make lab"),
        nodes.Text("). This page, and its download button, show the lab with its solutions."),
    ]
    note = nodes.admonition(classes=["note", "learner-version"])
    note += nodes.title("Do this lab yourself", "Do this lab yourself")
    note += para
    return note


def add_learner_version_note(app: Sphinx, doctree: nodes.document) -> None:
    docname = app.env.docname
    if not docname.startswith(SOLUTIONS_PREFIX):
        return
    learner = Path(app.srcdir) / "labs" / (docname.removeprefix(SOLUTIONS_PREFIX) + ".ipynb")
    if not learner.exists():
        logging.getLogger(__name__).warning(
            "%s has no learner version %s (make labs writes it)", docname,
            learner.relative_to(app.srcdir), location=docname)
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        doctree.insert(0, learner_version_note(docname))
    else:  # right under the page title
        section.insert(1 if section.children and isinstance(section[0], nodes.title) else 0,
                       learner_version_note(docname))


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
    # before Sphinx's download collector (priority 500), which copies the learner version
    app.connect("doctree-read", add_learner_version_note, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
