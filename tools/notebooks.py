"""Notebook hygiene: notebooks are committed clean, in the form JupyterLab keeps.

A clean notebook has no outputs, no execution counts, and the ``python3``
kernelspec (so nbval, the book and JupyterLab all start the same kernel).

It is also committed exactly as JupyterLab would save it, so that opening it shows no
unsaved-changes dot (issue 24). When JupyterLab opens a notebook and its kernel starts, it writes
the kernel's ``kernelspec`` (with ipykernel's display name, ``Python 3 (ipykernel)``) and the
kernel's whole ``language_info`` (Python version included) into the notebook's metadata; any
difference marks the notebook modified. So the committed metadata carries both, as the project's
reference Python (``PYTHON_VERSION``) reports them, and the text is what nbformat writes (the
writer jupyter_server saves with): one-space indent, sorted keys, sources split into lines, a
final newline. A kernel of another Python version still differs in ``language_info.version``:
nothing in a file can avoid that dot.

Usage::

    python tools/notebooks.py --check   # exit 1 and list offenders
    python tools/notebooks.py           # clean every notebook in place
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("chapters", "labs")
# what JupyterLab writes back once the kernel has started (ipykernel's kernelspec, kernel_info)
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
PYTHON_VERSION = "3.11.7"  # the reference Python of .venv and CI
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": PYTHON_VERSION,
}


def notebooks(root: Path = ROOT) -> list[Path]:
    found: list[Path] = []
    for folder in FOLDERS:
        found += sorted((root / folder).glob("**/*.ipynb"))
    return [p for p in found if ".ipynb_checkpoints" not in p.parts]


def problems(nb: dict) -> list[str]:
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("outputs"):
            found.append(f"cell {i} has outputs")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i} has an execution count")
    meta = nb.get("metadata", {})
    name = meta.get("kernelspec", {}).get("name")
    if name != "python3":
        found.append(f"kernelspec is {name!r}, expected 'python3'")
    elif meta.get("kernelspec") != KERNELSPEC:
        found.append(f"kernelspec differs from the {KERNELSPEC!r} JupyterLab writes back")
    info = meta.get("language_info") or {}
    if info != LANGUAGE_INFO:
        keys = sorted(k for k in set(info) | set(LANGUAGE_INFO)
                      if info.get(k) != LANGUAGE_INFO.get(k))
        found.append(f"language_info differs from what JupyterLab writes back in {', '.join(keys)}")
    # these two tools/notebooks.py cannot fix: open and save the notebook in JupyterLab
    if (nb.get("nbformat"), nb.get("nbformat_minor")) != (4, 5):
        found.append(f"nbformat is {nb.get('nbformat')}.{nb.get('nbformat_minor')}, expected 4.5")
    for i, cell in enumerate(nb.get("cells", [])):
        if "id" not in cell:
            found.append(f"cell {i} has no id")
    return found


def clean(nb: dict) -> dict:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    meta = nb.setdefault("metadata", {})
    meta["kernelspec"] = dict(KERNELSPEC)
    meta["language_info"] = json.loads(json.dumps(LANGUAGE_INFO))
    meta.pop("widgets", None)
    return nb


def _lines(text: str | list[str]) -> list[str]:
    """A multiline string as nbformat stores it: a list of lines, each but the last with its \\n."""
    if isinstance(text, list):
        text = "".join(text)
    return text.splitlines(keepends=True)


def split_lines(nb: dict) -> dict:
    """nbformat's ``split_lines`` for what a committed notebook holds: sources as lists of lines.

    (Outputs are never committed.) A source already stored as a list is split again at its line
    ends: JupyterLab saves a cell's text as one string, which nbformat splits that way.
    """
    for cell in nb.get("cells", []):
        if "source" in cell:
            cell["source"] = _lines(cell["source"])
    return nb


def dump(nb: dict) -> str:
    """The text nbformat (so jupyter_server, so JupyterLab) writes for ``nb``."""
    return json.dumps(split_lines(nb), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report, change nothing")
    args = parser.parse_args(argv)
    bad = 0
    for path in notebooks():
        rel = path.relative_to(ROOT).as_posix()
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            print(f"{rel}: not valid JSON ({err})")
            bad += 1
            continue
        found = problems(nb)
        if not found and path.read_text(encoding="utf-8") != dump(json.loads(json.dumps(nb))):
            found.append("the text is not what JupyterLab (nbformat) writes: indentation, key "
                         "order, line splitting or the final newline differ")
        if args.check:
            for p in found:
                print(f"{rel}: {p}")
            bad += bool(found)
        else:
            text = dump(clean(nb))
            if path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                print(f"cleaned {rel}")
    if args.check:
        if bad:
            print(f"notebooks --check: {bad} notebook(s) not clean; "
                  "run `python tools/notebooks.py`")
            return 1
        print(f"notebooks --check: {len(notebooks())} notebook(s) clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
