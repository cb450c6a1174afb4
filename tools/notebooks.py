"""Notebook hygiene: notebooks are committed clean.

A clean notebook has no outputs, no execution counts, and the ``python3``
kernelspec (so nbval, the book and JupyterLab all start the same kernel).

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
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


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
    name = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if name != "python3":
        found.append(f"kernelspec is {name!r}, expected 'python3'")
    return found


def clean(nb: dict) -> dict:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    meta = nb.setdefault("metadata", {})
    meta["kernelspec"] = dict(KERNELSPEC)
    meta.pop("widgets", None)
    return nb


def dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


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
