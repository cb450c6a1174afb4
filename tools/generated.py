"""What tools/export.py and tools/make_labs.py share: committed files generated from notebooks.

Each of those tools computes the files it generates, ``{path: text}``, and finds the files it
wrote earlier whose source is gone (stale). This module does the rest, the same way for both:

* ``compare``: what is out of sync on disk, as problems a person can act on (with a diff);
* ``write``: write each file that changed, whole and atomically, and delete the stale ones;
* ``main``: the command line, ``python tools/TOOL.py [--check]``: exit 0 when in sync (or
  written), 1 when ``--check`` finds problems, 2 when the sources themselves are inconsistent.

A tool is a script, not a package module: it imports this file as ``generated`` (a script's
folder comes first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def relative(path: Path, root: Path) -> str:
    """``path`` as the repository names it: relative to ``root``, with forward slashes."""
    return path.relative_to(root).as_posix()


def unified_diff(current: list[str], new: list[str], fromfile: str, tofile: str) -> str:
    """A unified diff of two texts given as lines that keep their line endings."""
    return "".join(difflib.unified_diff(current, new, fromfile=fromfile, tofile=tofile))


def compare(root: Path, expected: dict[Path, str], stale: Iterable[Path], *, fix: str,
            differs: Callable[[str, str, str], str], orphaned: Callable[[str], str]) -> list[str]:
    """Problems (empty when everything is in sync) for a tool that generates ``expected``.

    ``fix`` is the command that repairs them (``make export``). A missing file is reported here;
    ``differs(rel, on_disk, expected_text)`` words a file whose text is not what it should be
    (its diff included), ``orphaned(rel)`` a stale file.
    """
    problems = []
    for path, text in expected.items():
        rel = relative(path, root)
        if not path.exists():
            problems.append(f"{rel} is missing: run `{fix}`")
            continue
        current = path.read_text(encoding="utf-8")
        if current != text:
            problems.append(differs(rel, current, text))
    problems += [orphaned(relative(path, root)) for path in stale]
    return problems


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: a reader sees the old file or the new, never half.

    The text goes to a temporary file next to ``path`` (same file system, so that the rename is
    atomic), which then replaces it, keeping the old file's permissions.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write(root: Path, expected: dict[Path, str], stale: Iterable[Path]) -> list[str]:
    """Write each file of ``expected`` whose text changed and delete the stale ones.

    Returns what was done, one line per file (``wrote labs/x.ipynb``, ``removed stale ...``).
    """
    changed = []
    for path, text in expected.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_atomically(path, text)
            changed.append(f"wrote {relative(path, root)}")
    for path in stale:
        path.unlink()
        changed.append(f"removed stale {relative(path, root)}")
    return changed


def main(argv: list[str] | None, *, name: str, description: str, check_help: str, fix: str,
         check: Callable[[], list[str]], write: Callable[[], list[str]],
         in_sync: Callable[[], str], error: type[Exception]) -> int:
    """The command line of a tool called ``name`` (the prefix of its messages).

    ``check`` returns the problems, ``write`` what it changed, ``in_sync`` the line that
    ``--check`` prints when there is no problem; ``error`` is the exception the tool raises when
    its sources are inconsistent, which becomes exit status 2 with the message on stderr.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help=check_help)
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check()
            if problems:
                print("\n\n".join(problems))
                print(f"\n{name} --check: {len(problems)} problem(s); run `{fix}` and commit.")
                return 1
            print(in_sync())
            return 0
        for line in write() or [f"{name}: nothing to do, already in sync"]:
            print(line)
        return 0
    except error as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
