"""The book shows the outputs of nbval's run of each notebook instead of running it again.

``make test`` runs every chapter and solution lab twice over: nbval runs them as tests, and the
book used to run them all again to show their outputs. Now the repository's ``conftest.py`` keeps
each notebook that nbval ran to the end without a failure, with its outputs, in
``_build/executed/``, and this script (run by ``make book`` before the build) adds those to the
book's execution cache (``_build/.jupyter_cache``, Jupyter Book's ``execute_notebooks: cache``).
The book then runs only the notebooks it finds no match for.

A kept run is used only while it still describes the code:

* the cache matches a notebook by its code cells (sources and metadata) and kernel, so a
  notebook edited since is run again by the book;
* each kept notebook carries a **fingerprint** of what it ran against (every file of
  ``transformer_lib`` and the pinned requirements): a run made against other code is skipped, and
  the whole cache is emptied when the fingerprint changes, since a chapter's outputs depend on
  the package that other chapters generate.

Usage::

    python tools/book_cache.py           # add the kept runs to the book's cache
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import nbformat
from generated import write_atomically

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = ROOT / "_build" / "executed"
CACHE = ROOT / "_build" / ".jupyter_cache"
STAMP = "fingerprint.txt"
META = "book_cache"


def fingerprint(root: Path = ROOT) -> str:
    """A hash of what a notebook's outputs depend on besides its own code."""
    digest = hashlib.sha256()
    files = sorted((root / "transformer_lib").rglob("*.py")) + [root / "requirements.txt"]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def write_executed(nb: nbformat.NotebookNode, target: Path) -> None:
    """Write the executed notebook ``nb`` to ``target``, whole or not at all, stamped with the
    current fingerprint."""
    nb.metadata[META] = {"fingerprint": fingerprint()}
    write_atomically(target, nbformat.writes(nb))


def fill_cache(executed: Path = EXECUTED, cache_dir: Path = CACHE,
               current: str | None = None) -> tuple[list[str], list[str]]:
    """Add every kept run made against the current fingerprint to the cache at ``cache_dir``
    (emptied first if it was filled against another). Returns (added, skipped) paths."""
    from jupyter_cache import get_cache

    current = current or fingerprint()
    stamp = cache_dir / STAMP
    if cache_dir.exists() and (not stamp.exists() or stamp.read_text().strip() != current):
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = get_cache(str(cache_dir))
    stamp.write_text(current + "\n")
    added, skipped = [], []
    for path in sorted(executed.rglob("*.ipynb")) if executed.exists() else []:
        rel = path.relative_to(executed).as_posix()
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:  # a damaged file is a run not kept, not a failed build
            print(f"book_cache: {rel}: unreadable ({error}), skipped", file=sys.stderr)
            skipped.append(rel)
            continue
        if nb.metadata.get(META, {}).get("fingerprint") != current:
            skipped.append(rel)
            continue
        cache.cache_notebook_file(str(path), uri=str(ROOT / rel), check_validity=True,
                                  overwrite=True)
        added.append(rel)
    return added, skipped


def main() -> int:
    added, skipped = fill_cache()
    print(f"book_cache: {len(added)} notebook(s) run by nbval go to the book as they ran; "
          f"{len(skipped)} kept from other code skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
