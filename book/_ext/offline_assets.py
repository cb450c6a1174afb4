"""Sphinx extension: serve the book's JavaScript from the build, not from a CDN.

MathJax comes from the pinned PyPI package ``django-static-mathjax`` (which ships
MathJax 3 as static files); this extension copies the parts the book uses into
``_build/html/_static/vendor/mathjax`` when the HTML build finishes. ``_config.yml``
points ``mathjax_path`` there, so equations render offline and never depend on a
third-party server. Hand-written; lives in ``book/_ext``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx

MATHJAX_DEST = Path("_static") / "vendor" / "mathjax"
# the SVG renderer needs no web fonts; input/ holds TeX extensions loaded on demand
MATHJAX_PARTS = ("tex-svg.js", "input", "ui", "a11y")


def mathjax_source() -> Path:
    import mathjax  # the django-static-mathjax package

    root = Path(mathjax.__file__).parent / "static" / "mathjax"
    if not (root / "es5" / "tex-svg.js").exists():
        raise RuntimeError(f"MathJax files not found under {root}: reinstall django-static-mathjax")
    return root


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source = mathjax_source()
    dest = Path(app.outdir) / MATHJAX_DEST
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "LICENSE", dest / "LICENSE")
    for part in MATHJAX_PARTS:
        src = source / "es5" / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / part)


def setup(app: Sphinx) -> dict:
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
