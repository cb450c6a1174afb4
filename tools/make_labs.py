"""Generate the learner versions of the labs from their solution notebooks.

A lab's source is ``labs/solutions/NN_name.ipynb``, the notebook the book shows, answers
included. In its code cells every answer sits between two marker lines::

    ### BEGIN SOLUTION
    ...
    ### END SOLUTION

The learner version ``labs/NN_name.ipynb`` replaces each block, markers included, with one line
at the BEGIN marker's indentation::

    raise NotImplementedError("Exercise N (Title): write your code here")

where N and the title come from the ``{exercise}`` block the answer belongs to. Everything
outside the markers stays: the function signature or class header, the docstring, the check
cell that follows. The book's markup in markdown cells becomes plain Jupyter markdown:

* an ``{exercise}`` block becomes a heading "Exercise N: Title" followed by its text;
* ``{solution-start}`` ... ``{solution-end}`` and all markdown between them (the worked
  solution's prose) are dropped; code cells between them must hold their answer between markers;
* a hint (``{hint}``, or an admonition with ``:class: dropdown``) becomes a collapsed
  ``<details>`` block; other admonitions become block quotes;
* relative links are rewritten for the learner version's folder;
* cells tagged ``book-only`` are dropped; cells tagged ``learner-only`` (and ``remove-cell``,
  so that the book hides them) are kept, without those two tags.

Learner versions are written clean (no outputs, no execution counts, the python3 kernel).

Usage::

    python tools/make_labs.py            # write labs/*.ipynb, delete stale learner versions
    python tools/make_labs.py --check    # exit 1 with a diff if any is out of sync
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import generated

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = 'raise NotImplementedError("Exercise {number} ({title}): write your code here")'
# A stub longer than this is written on two lines (pyproject.toml's [tool.ruff] line-length).
LINE_LENGTH = 100
GENERATED_KEY = "lab_learner_version_of"  # notebook metadata naming the solution notebook
# what JupyterLab writes back once the kernel starts, as in tools/notebooks.py (issue 24)
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
ADMONITIONS = {"hint": "Hint", "tip": "Tip", "note": "Note", "important": "Important",
               "warning": "Warning", "admonition": ""}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}\s*(?P<arg>.*)$")
OPTION = re.compile(r"^:(?P<key>[\w-]+):\s*(?P<value>.*)$")
ROLE = re.compile(r"\{[A-Za-z][\w:-]*\}`")
TARGET = re.compile(r"^\([\w:.-]+\)=\s*$")
LINK = re.compile(r"(\]\()([^)\s]+)(\))")


class LabError(ValueError):
    """A solution notebook's markers or markup are inconsistent."""


@dataclass
class Directive:
    name: str
    argument: str
    options: dict[str, str]
    body: list[str]


@dataclass
class _State:
    """What the conversion knows while it walks through a notebook."""

    notebook: str
    exercises: list[tuple[str, str]] = field(default_factory=list)  # (label, title)
    in_solution: bool = False
    answers: int = 0


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _lines_to_source(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def parse_markdown(text: str) -> list[str | Directive]:
    """Split markdown into plain lines and top-level MyST directive blocks."""
    lines = text.split("\n")
    out: list[str | Directive] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        fence = match["fence"]
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        options: dict[str, str] = {}
        while j < len(lines) and (option := OPTION.match(lines[j])):
            options[option["key"]] = option["value"].strip()
            j += 1
        body_start = j
        while j < len(lines) and not closing.match(lines[j]):
            j += 1
        if j == len(lines):
            raise LabError(f"the {{{match['name']}}} block opened by {lines[i]!r} is never closed")
        body = lines[body_start:j]
        while body and not body[0].strip():
            body.pop(0)
        out.append(Directive(match["name"], match["arg"].strip(), options, body))
        i = j + 1
    return out


def _relink(text: str, source_dir: str, target_dir: str) -> str:
    """Rewrite relative link targets written for ``source_dir`` so they work from ``target_dir``."""

    def fix(match: re.Match) -> str:
        target = match[2]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match[0]
        path, hash_, anchor = target.partition("#")
        new = posixpath.relpath(posixpath.normpath(posixpath.join(source_dir, path)), target_dir)
        return f"{match[1]}{new}{hash_}{anchor}{match[3]}"

    return LINK.sub(fix, text)


def _markdown(text: str, state: _State) -> str:
    """The learner's version of one markdown cell (empty if nothing is left)."""
    kept: list[str] = []
    for part in parse_markdown(text):
        if isinstance(part, str):
            if not state.in_solution and not TARGET.match(part):
                kept.append(part)
            continue
        name = part.name
        if name == "solution-start":
            if state.in_solution:
                raise LabError("a {solution-start} inside another solution")
            if not state.exercises or part.argument != state.exercises[-1][0]:
                expected = state.exercises[-1][0] if state.exercises else "no exercise yet"
                raise LabError(f"{{solution-start}} {part.argument!r} does not follow its exercise "
                               f"(the last exercise's label is {expected!r})")
            state.in_solution = True
        elif name == "solution-end":
            if not state.in_solution:
                raise LabError("a {solution-end} without a {solution-start}")
            state.in_solution = False
        elif state.in_solution:
            continue
        elif name == "exercise":
            label = part.options.get("label")
            if not label or not part.argument:
                raise LabError(f"every {{exercise}} needs a title and a :label:, "
                               f"got {part.argument!r}")
            state.exercises.append((label, part.argument))
            kept += [f"### Exercise {len(state.exercises)}: {part.argument}", "", *part.body]
        elif name in ADMONITIONS:
            title = part.argument or ADMONITIONS[name]
            if "dropdown" in part.options.get("class", "").split():
                kept += [f"<details><summary>{title}</summary>", "", *part.body, "", "</details>"]
            else:
                kept += [f"> **{title}**", ">", *[f"> {line}".rstrip() for line in part.body]]
        else:
            raise LabError(f"the learner version cannot show a {{{name}}} block outside a solution")
    result = "\n".join(kept).strip("\n")
    result = re.sub(r"\n{3,}", "\n\n", result)
    role = ROLE.search(result)
    if role:
        raise LabError(f"markdown uses the MyST role {role[0]}...`, which Jupyter does not render: "
                       f"write it as plain markdown")
    return result


def _code(text: str, state: _State) -> str:
    """The learner's version of one code cell: every answer replaced by a stub."""
    lines = text.split("\n")
    out: list[str] = []
    begin: int | None = None
    indent = ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if begin is not None:
                raise LabError(f"line {number}: {BEGIN} inside another answer "
                               f"(the one from line {begin})")
            if not state.in_solution:
                raise LabError(f"line {number}: an answer outside {{solution-start}} ... "
                               f"{{solution-end}}, so the book would show it unfolded")
            begin, indent = number, line[: len(line) - len(line.lstrip())]
        elif stripped == END:
            if begin is None:
                raise LabError(f"line {number}: {END} without {BEGIN}")
            if line[: len(line) - len(line.lstrip())] != indent:
                raise LabError(f"line {number}: {END} is not indented like its {BEGIN} "
                               f"(line {begin})")
            number_, title = len(state.exercises), state.exercises[-1][1]
            message = STUB.format(number=number_,
                                  title=title.replace("\\", "\\\\").replace('"', '\\"'))
            if len(indent + message) > LINE_LENGTH:
                # two adjacent literals, the second under the first
                head, tail = message.rsplit("): ", 1)
                align = " " * len("raise NotImplementedError(")
                message = f'{head}): "\n{indent}{align}"{tail}'
            out.append(indent + message)
            state.answers += 1
            begin = None
        elif BEGIN in line or END in line:
            raise LabError(f"line {number}: a solution marker must stand alone on its line: "
                           f"{line!r}")
        elif begin is None:
            out.append(line)
    if begin is not None:
        raise LabError(f"line {begin}: {BEGIN} without {END}")
    if state.in_solution and BEGIN not in text:
        raise LabError(f"a code cell inside a solution has no {BEGIN}: put the answer between "
                       f"markers, or move the cell out of the solution")
    return "\n".join(out)


def learner_version(nb: dict, notebook: str, target: str) -> dict:
    """The learner version of a solution notebook (``notebook`` and ``target``: repo paths)."""
    state = _State(notebook)
    cells = []
    for index, cell in enumerate(nb.get("cells", [])):
        tags = list(cell.get("metadata", {}).get("tags", []))
        try:
            if "book-only" in tags:
                continue
            new = copy.deepcopy(cell)
            text = _source(cell)
            if cell["cell_type"] == "markdown":
                text = _relink(_markdown(text, state), posixpath.dirname(notebook),
                               posixpath.dirname(target))
                if not text.strip():
                    continue
            elif cell["cell_type"] == "code":
                text = _code(text, state)
                new["outputs"], new["execution_count"] = [], None
            new["source"] = _lines_to_source(text)
            new.get("metadata", {}).pop("execution", None)
            if "learner-only" in tags:
                tags = [t for t in tags if t not in ("learner-only", "remove-cell")]
                if tags:
                    new["metadata"]["tags"] = tags
                else:
                    new["metadata"].pop("tags", None)
            cells.append(new)
        except LabError as err:
            raise LabError(f"{notebook}, cell {index}: {err}") from None
    if state.in_solution:
        raise LabError(f"{notebook}: the last {{solution-start}} has no {{solution-end}}")
    if not state.exercises:
        raise LabError(f"{notebook}: no {{exercise}} blocks")
    if not state.answers:
        raise LabError(f"{notebook}: no {BEGIN} ... {END} answers")
    meta = copy.deepcopy(nb.get("metadata", {}))
    meta["kernelspec"] = dict(KERNELSPEC)
    meta.pop("widgets", None)
    meta[GENERATED_KEY] = notebook
    return {"cells": cells, "metadata": meta, "nbformat": nb.get("nbformat", 4),
            "nbformat_minor": nb.get("nbformat_minor", 5)}


def dump(nb: dict) -> str:
    """The on-disk text of a notebook, as tools/notebooks.py writes it."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def solutions(root: Path = ROOT) -> list[Path]:
    return sorted((root / "labs" / "solutions").glob("*.ipynb"))


def build(root: Path = ROOT) -> dict[Path, str]:
    """Every learner version, as ``{path: text}``."""
    out = {}
    for path in solutions(root):
        target = root / "labs" / path.name
        nb = json.loads(path.read_text(encoding="utf-8"))
        out[target] = dump(learner_version(nb, path.relative_to(root).as_posix(),
                                           target.relative_to(root).as_posix()))
    return out


def stale(root: Path, expected: dict[Path, str]) -> list[Path]:
    """Learner versions on disk whose solution notebook is gone.

    Only a file that this tool wrote qualifies: its metadata names the solution notebook of the
    same name. A learner's copy (``01_attention_lab-Copy1.ipynb``, ``my_lab.ipynb``) is never stale.
    """
    found = []
    for path in sorted((root / "labs").glob("*.ipynb")):
        if path in expected:
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
        except json.JSONDecodeError:
            continue
        if meta.get(GENERATED_KEY) == f"labs/solutions/{path.name}":
            found.append(path)
    return found


def _readable(text: str) -> list[str]:
    """A notebook as lines of text, one block per cell, for a diff a person can read."""
    try:
        nb = json.loads(text)
    except json.JSONDecodeError:
        return text.splitlines(keepends=True)
    lines = []
    for i, cell in enumerate(nb.get("cells", [])):
        lines.append(f"# --- cell {i} ({cell.get('cell_type')}, id {cell.get('id')}) ---\n")
        lines += [line + "\n" for line in _source(cell).split("\n")]
    return lines


def check(root: Path = ROOT) -> list[str]:
    """Problems (with diffs); empty when every learner version is in sync."""
    expected = build(root)

    def differs(rel: str, current: str, text: str) -> str:
        name = posixpath.basename(rel)
        diff = generated.unified_diff(
            _readable(current), _readable(text), fromfile=f"{rel} (on disk)",
            tofile=f"{rel} (generated from labs/solutions/{name})")
        if not diff:  # the cells agree; metadata or formatting differs
            diff = generated.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{rel} (on disk)", tofile=f"{rel} (generated)")
        return (f"{rel} differs from what its solution notebook generates "
                f"(edit labs/solutions/{name}, not the learner version):\n{diff}")

    def orphaned(rel: str) -> str:
        return (f"{rel} is a learner version but labs/solutions/{posixpath.basename(rel)} does "
                f"not exist: run `make labs` to remove it")

    return generated.compare(root, expected, stale(root, expected), fix="make labs",
                             differs=differs, orphaned=orphaned)


def write(root: Path = ROOT) -> list[str]:
    """Write every learner version and delete stale ones; return what changed."""
    expected = build(root)
    return generated.write(root, expected, stale(root, expected))


def main(argv: list[str] | None = None) -> int:
    return generated.main(
        argv, name="make_labs", description=__doc__.splitlines()[0], fix="make labs",
        check_help="fail if a learner version is out of sync", check=check, write=write,
        in_sync=lambda: (f"make_labs --check: {len(solutions())} learner version(s) in sync "
                         f"with labs/solutions"),
        error=LabError)


if __name__ == "__main__":
    sys.exit(main())
