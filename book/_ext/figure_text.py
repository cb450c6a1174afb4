"""Every figure the book build saves records the size of its smallest text (a Sphinx extension).

A figure's text must stay legible where the book shows it (``tools/check_browser.py`` requires
at least 9 CSS px). How large text renders depends on the font size *and* on how much the page
scales the image down, and the font size cannot be read back from a PNG's pixels reliably. So
it is recorded when the figure is drawn: while the book build runs the notebooks, matplotlib
writes two text chunks into every PNG it saves (the inline backend's figures included):

* ``smallest-text-px``: the font size of the smallest text drawn, in the image's pixels
  (points x dpi / 72), or ``none`` for a figure without text;
* ``smallest-text``: which text that is, and its size in points.

How: this extension sets ``PYTHONSTARTUP`` to ``figure_text_startup.py`` (beside this file) in
the build's environment, which every IPython kernel the build starts runs before the first cell;
it calls :func:`install`. The repository's ``conftest.py`` does the same for the kernels nbval
starts, since the book shows nbval's runs (``tools/book_cache.py``). Chapters, labs and
``transformer_lib`` do nothing for it, and kernels started elsewhere (JupyterLab) are untouched.
Hand-written; lives in ``book/_ext``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

TEXT_PX_KEY = "smallest-text-px"
TEXT_WHAT_KEY = "smallest-text"
STARTUP = Path(__file__).resolve().with_name("figure_text_startup.py")

_drawing: list[list[tuple[float, float, str]]] = []  # one list per figure being measured


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def install() -> None:
    """Make matplotlib's PNG writer record the smallest text of each figure (idempotent)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    if getattr(FigureCanvasAgg.print_png, "records_text_size", False):
        return
    draw_text = Text.draw
    print_png = FigureCanvasAgg.print_png

    @functools.wraps(draw_text)  # keeps what matplotlib marks its draw methods with
    def draw(self, renderer, *args, **kwargs):
        if _drawing and self.get_visible() and self.get_text().strip() and self.get_alpha() != 0:
            size = self.get_fontsize()
            _drawing[-1].append((renderer.points_to_pixels(size), size, self.get_text()))
        return draw_text(self, renderer, *args, **kwargs)

    @functools.wraps(print_png)
    def print_png_recording(self, filename_or_obj, *args, metadata=None, **kwargs):
        metadata = dict(metadata or {})
        try:
            sizes: list[tuple[float, float, str]] = []
            _drawing.append(sizes)
            try:
                FigureCanvasAgg.draw(self)  # the same drawing that print_png then saves
            finally:
                _drawing.pop()
            if sizes:
                pixels, points, text = min(sizes)
                text = " ".join(text.split())
                metadata.setdefault(TEXT_PX_KEY, f"{pixels:.2f}")
                metadata.setdefault(TEXT_WHAT_KEY,
                                    _latin1(f"{text[:40]!r} at {points:g} pt"))
            else:
                metadata.setdefault(TEXT_PX_KEY, "none")
        except Exception:  # a figure is never lost for its record: save it without one
            metadata.pop(TEXT_PX_KEY, None)
        return print_png(self, filename_or_obj, *args, metadata=metadata, **kwargs)

    print_png_recording.records_text_size = True
    Text.draw = draw
    FigureCanvasAgg.print_png = print_png_recording


def setup(app):
    from sphinx.util import logging

    current = os.environ.get("PYTHONSTARTUP")
    if current and Path(current).resolve() != STARTUP:
        logging.getLogger(__name__).warning(
            "PYTHONSTARTUP is set (%s): the book's figures will not record their text size, and "
            "tools/check_browser.py cannot measure them", current)
    else:
        os.environ["PYTHONSTARTUP"] = str(STARTUP)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
