"""Plots, diagrams and widgets for the book. Hand-written (not generated from a chapter).

Every plot helper returns a :class:`matplotlib.figure.Figure` built without pyplot,
so a notebook shows it once (as the cell's value), the rendered book shows it
statically, and widgets can redraw it without piling up open figures. Widgets are
thin :func:`ipywidgets.interact` wrappers around the same helpers.

**Legible at the page's width.** The book shows a figure in a content column 688 CSS px wide
(on a 1280 px desktop page); a PNG wider than that is scaled down, and its text with it. The
inline backend saves figures at their dpi (100) and crops them to what they draw (adding 0.1 in
on each side), so a figure at most :data:`MAX_WIDTH` inches wide is shown at its natural size,
where :data:`SMALL` (8 pt = 11 px) is the smallest text any helper draws; ``tools/check_browser.py``
asks for 9 px. Figures with several panels wrap them into rows, or stack them, rather than grow
wider; on a phone a figure keeps that size and scrolls sideways in its own box.

**Diagrams** (the ``draw_*`` functions) are schematic figures of the architecture drawn in code:
boxes and arrows in one set of colours (:data:`DIAGRAM_COLORS`: attention blue, feed-forward
orange, norm green, residual path purple), with tensor shapes such as ``(B, T, D)`` on the arrows
(the shape letters of the notation page).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["MAX_WIDTH", "SMALL", "DIAGRAM_COLORS",
           "plot_attention", "plot_masks", "interact_figure", "plot_positional_encoding",
           "plot_position_similarity", "plot_rotating_pairs", "plot_heads", "plot_head_and_query",
           "plot_decoder_attention",
           "draw_encoder_layer", "draw_decoder_layer", "draw_pre_post_ln", "draw_encoder_decoder",
           "draw_kv_cache", "plot_tokens"]

#: The widest figure, in inches, that the book shows unscaled: the 688 px content column at
#: 100 dpi, less the 0.1 in that the inline backend's tight crop adds on each side.
MAX_WIDTH = 6.6
#: The smallest font size, in points, of any text a helper draws: 11 px at 100 dpi.
SMALL = 8


def _text_width(text: str, fontsize: float) -> float:
    """How wide, in inches, ``text`` is drawn at ``fontsize`` in the default font."""
    from matplotlib.textpath import TextPath

    try:
        return TextPath((0, 0), text, size=fontsize).get_extents().width / 72
    except ValueError:  # a fragment of mathtext that does not parse alone: estimate
        return len(text) * 0.6 * fontsize / 72


def _wrap(text: str, inches: float, fontsize: float = 12) -> str:
    """``text`` broken between words into lines at most ``inches`` wide at ``fontsize``, so
    that a long title never makes its figure wider (a single long word stays whole)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        words = paragraph.split(" ")
        lines.append(words[0])
        for word in words[1:]:
            if _text_width(f"{lines[-1]} {word}", fontsize) <= inches:
                lines[-1] += f" {word}"
            else:
                lines.append(word)
    return "\n".join(lines)


def _label_width(labels: Iterable[object], fontsize: float = SMALL) -> float:
    """Roughly how wide, in inches, a column of tick labels is."""
    longest = max((len(str(label)) for label in labels), default=1)
    return 0.15 + longest * 0.6 * fontsize / 72


def _rotate_xticks(ax: Axes, degrees: float) -> None:
    """Rotated key labels that end under their column (not centred across two columns)."""
    ax.tick_params(axis="x", labelrotation=degrees)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")


def _as_matrix(weights: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    w = torch.as_tensor(weights).detach().to("cpu", torch.float32)
    if w.dim() != 2:
        raise ValueError(f"weights must be a (T, S) matrix, got shape {tuple(w.shape)}")
    return w


def plot_attention(
    weights: torch.Tensor,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    title: str | None = None,
    annotate: bool | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Heatmap of one attention matrix.

    Args:
        weights: ``(T, S)`` attention weights; row ``i`` is query ``i``'s distribution
            over the ``S`` keys.
        query_labels: ``T`` labels for the rows (queries).
        key_labels: ``S`` labels for the columns (keys).
        title: the axes title.
        annotate: write each weight in its cell (default: when the matrix is small).
        figsize: the figure size in inches (default: grows with the matrix, at most
            :data:`MAX_WIDTH` wide).

    Returns:
        The figure, with a colour bar from 0 to 1.
    """
    w = _as_matrix(weights)
    T, S = w.shape
    if query_labels is not None and len(query_labels) != T:
        raise ValueError(f"query_labels has {len(query_labels)} labels for {T} rows")
    if key_labels is not None and len(key_labels) != S:
        raise ValueError(f"key_labels has {len(key_labels)} labels for {S} columns")
    if annotate is None:
        annotate = T * S <= 100
    if figsize is None:
        figsize = (min(2.4 + 0.42 * S, MAX_WIDTH), min(1.6 + 0.42 * T, 9.0))
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="attention weight", shrink=0.9)
    ax.set_xlabel("key position (attended to)")
    ax.set_ylabel("query position (attending)")
    ax.set_xticks(range(S), key_labels if key_labels is not None else range(S))
    ax.set_yticks(range(T), query_labels if query_labels is not None else range(T))
    if key_labels is not None:
        _rotate_xticks(ax, 45)
    if annotate:
        for i in range(T):
            for j in range(S):
                value = float(w[i, j])
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=SMALL,
                        color="black" if value > 0.6 else "white")
    if title:
        ax.set_title(_wrap(title, figsize[0] - 1.3))
    return fig


def plot_masks(masks: dict[str, torch.Tensor], figsize: tuple[float, float] | None = None,
               ncols: int | None = None) -> Figure:
    """Show boolean masks side by side: filled cells may attend (True), blank ones may not.

    Args:
        masks: ``{title: (T, S) bool tensor}``.
        figsize: the figure size in inches.
        ncols: panels per row (default: as many as fit in :data:`MAX_WIDTH`; the others wrap
            into more rows).

    Returns:
        The figure, one panel per mask.
    """
    if not masks:
        raise ValueError("masks must name at least one mask")
    checked = {}
    for name, mask in masks.items():
        m = torch.as_tensor(mask).detach().cpu()
        if m.dtype != torch.bool or m.dim() != 2:
            raise ValueError(f"mask {name!r} must be a 2-d bool tensor, "
                             f"got {m.dtype} {tuple(m.shape)}")
        checked[name] = m
    T = max(m.size(0) for m in checked.values())
    S = max(m.size(1) for m in checked.values())
    panel = (0.8 + 0.27 * S, 0.9 + 0.27 * T)
    ncols = ncols or max(1, min(len(checked), int(MAX_WIDTH // panel[0])))
    nrows = -(-len(checked) // ncols)
    fig = Figure(figsize=figsize or (min(panel[0] * ncols, MAX_WIDTH), panel[1] * nrows),
                 layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, (name, m) in zip(axes, checked.items()):
        ax.imshow(m.float().numpy(), cmap="Blues", vmin=0.0, vmax=1.25)
        T, S = m.shape
        ax.set_xticks(range(S))
        ax.set_yticks(range(T))
        ax.tick_params(labelsize=SMALL + 1)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(_wrap(name, panel[0] - 0.3, 10), fontsize=10)
        for i in range(T):
            for j in range(S):
                ax.text(j, i, "T" if m[i, j] else "·", ha="center", va="center",
                        fontsize=SMALL + 1)
    for ax in axes[len(checked):]:
        ax.set_axis_off()  # the panels of the last row that no mask uses
    return fig


def interact_figure(draw: Callable[..., Figure], **controls):
    """Redraw ``draw(**values)`` whenever a control changes.

    A thin wrapper around :func:`ipywidgets.interact`: each keyword is a control
    (a widget, or an abbreviation such as ``(0.1, 4.0, 0.1)`` or a list of options)
    and ``draw`` returns the figure to show. Needs a live kernel to redraw; the
    rendered book shows the static figure the chapter draws first.

    The controls' labels all get one width, wide enough for the longest description:
    ipywidgets' default (80 px) cuts a name such as ``temperature`` to ``temperat...``.
    """
    from IPython.display import display
    from ipywidgets import interactive  # optional dependency: imported only for widgets

    # what ipywidgets.interact passes: without auto_display the panel never shows the figure
    # that ``draw`` returns (our figures are built without pyplot, so nothing else shows them)
    panel = interactive(draw, {"manual": False, "auto_display": True}, **controls)
    labelled = [w for w in panel.kwargs_widgets
                if getattr(w, "description", "") and hasattr(getattr(w, "style", None),
                                                             "description_width")]
    if labelled:
        width = _widget_label_width(max(len(w.description) for w in labelled))
        for widget in labelled:
            widget.style.description_width = width
    try:
        draw.widget = panel  # as interact does
    except AttributeError:
        pass
    display(panel)
    return draw


def _widget_label_width(chars: int) -> str:
    """A CSS width for a widget label of ``chars`` characters, never under ipywidgets' 80 px."""
    # 0.7 em a character is wider than lowercase names and underscores need in JupyterLab's
    # sans-serif at its 13 px widget font; the extra 1 em is the label's right padding
    return f"max(80px, {0.7 * chars + 1:.1f}em)"


def _as_table(table: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(table).detach().to("cpu", torch.float32)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-d tensor, got shape {tuple(t.shape)}")
    return t


def _window(window: tuple[int, int] | None, size: int, name: str) -> tuple[int, int]:
    start, stop = (0, size) if window is None else window
    if not 0 <= start < stop <= size:
        raise ValueError(f"{name} must be a (start, stop) window with 0 <= start < stop <= {size}, "
                         f"got {window!r}")
    return start, stop


def plot_positional_encoding(
    pe: torch.Tensor,
    positions: tuple[int, int] | None = None,
    dims: tuple[int, int] | None = None,
    curve_dims: Sequence[int] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Positional encodings as a heatmap (dimension by position) above a few of their curves.

    Args:
        pe: ``(T, D)`` encodings, one row per position.
        positions: the ``(start, stop)`` window of positions to show (default: all).
        dims: the ``(start, stop)`` window of dimensions to show (default: all).
        curve_dims: the dimensions drawn as curves below the heatmap (default: up to four,
            spread over the window).
        title: the figure title.
        figsize: the figure size in inches.

    Returns:
        The figure: the heatmap on top, the curves below, sharing the position axis.
    """
    table = _as_table(pe, "pe")
    p0, p1 = _window(positions, table.size(0), "positions")
    d0, d1 = _window(dims, table.size(1), "dims")
    if curve_dims is None:
        curve_dims = sorted({d0 + round(i * (d1 - 1 - d0) / 3) for i in range(4)})
    bad = [d for d in curve_dims if not 0 <= d < table.size(1)]
    if bad:
        raise ValueError(f"curve_dims must be dimensions in [0, {table.size(1)}), got {bad}")
    window = table[p0:p1, d0:d1]
    limit = max(float(window.abs().max()), 1e-12)
    figsize = figsize or (MAX_WIDTH, 5.0)
    fig = Figure(figsize=figsize, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    image = top.imshow(window.T.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                       interpolation="nearest", extent=(p0 - 0.5, p1 - 0.5, d1 - 0.5, d0 - 0.5))
    # the colour bar sits just outside the heatmap, so both panels keep the same width
    fig.colorbar(image, cax=top.inset_axes((1.01, 0.0, 0.02, 1.0)), label="value")
    top.set_ylabel("dimension")
    top.set_title(_wrap(title or f"positions {p0}..{p1 - 1}, dimensions {d0}..{d1 - 1}",
                        figsize[0] - 1.5))
    x = torch.arange(p0, p1).numpy()
    for d in curve_dims:
        bottom.plot(x, table[p0:p1, d].numpy(), label=f"dim {d}", lw=1.5)
    bottom.set_xlabel("position")
    bottom.set_ylabel("value")
    bottom.set_xlim(p0 - 0.5, p1 - 0.5)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=SMALL)
    return fig


def plot_position_similarity(
    scores: torch.Tensor,
    references: Sequence[int] | None = None,
    title: str | None = None,
    value_label: str = "dot product",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A score between every two positions, as a matrix and against their distance.

    Left, ``scores[m, n]`` as a heatmap; right, the rows of a few reference positions ``m``
    plotted against the offset ``n - m``. When the score depends only on the offset, the
    heatmap is constant along its diagonals and the curves lie on top of each other.

    Args:
        scores: ``(T, T)``, e.g. ``pe @ pe.T`` or query-key scores between positions.
        references: the positions ``m`` whose rows are drawn (default: three spread out).
        title: the figure title.
        value_label: what a score is, for the colour bar and the y axis.
        figsize: the figure size in inches.

    Returns:
        The figure, with two panels.
    """
    s = _as_table(scores, "scores")
    T = s.size(0)
    if s.size(1) != T:
        raise ValueError(f"scores must be a square (T, T) matrix, got shape {tuple(s.shape)}")
    if references is None:
        references = sorted({0, T // 3, (2 * T) // 3})
    bad = [m for m in references if not 0 <= m < T]
    if bad:
        raise ValueError(f"references must be positions in [0, {T}), got {bad}")
    figsize = figsize or (MAX_WIDTH, 3.4)
    fig = Figure(figsize=figsize, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.25])
    limit = max(float(s.abs().max()), 1e-12)
    image = left.imshow(s.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(image, ax=left, shrink=0.9)
    left.set_xlabel("position n")
    left.set_ylabel("position m")
    panel = figsize[0] / 2.25 - 0.2  # the heatmap's share of the width, less its colour bar
    left.set_title(_wrap(f"{value_label} of positions m and n", panel, 10), fontsize=10)
    offsets = torch.arange(T)
    for m, style in zip(references, ["-", "--", ":", "-."] * len(references)):
        right.plot((offsets - m).numpy(), s[m].numpy(), style, lw=1.5, label=f"m = {m}")
    right.axvline(0, color="gray", lw=0.5)
    right.set_xlabel("offset n - m")
    right.set_ylabel(value_label)
    right.set_title(_wrap("row m against the offset", 1.25 * panel, 10), fontsize=10)
    right.legend(fontsize=SMALL)
    if title:
        fig.suptitle(_wrap(title, figsize[0] - 0.3))
    return fig


def plot_rotating_pairs(
    pairs: dict[str, torch.Tensor],
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ncols: int | None = None,
) -> Figure:
    """Two-dimensional vectors, one per position, drawn as arrows from the origin.

    Shows how a pair of features rotates as the position grows (sinusoidal encodings,
    rotary embeddings).

    Args:
        pairs: ``{panel title: (T, 2) tensor}``; row ``m`` is the pair at position ``m``.
        title: the figure title.
        figsize: the figure size in inches.
        ncols: panels per row (default: two; more panels wrap into rows).

    Returns:
        The figure, one panel per entry, arrows coloured and numbered by position.
    """
    if not pairs:
        raise ValueError("pairs must name at least one (T, 2) tensor")
    from matplotlib import colormaps

    tables = {}
    for name, points in pairs.items():
        p = _as_table(points, f"pairs[{name!r}]")
        if p.size(1) != 2:
            raise ValueError(f"pairs[{name!r}] must have shape (T, 2), got {tuple(p.shape)}")
        tables[name] = p
    ncols = ncols or min(len(tables), 2)
    nrows = -(-len(tables) // ncols)
    panel = min(3.3, MAX_WIDTH / ncols)
    fig = Figure(figsize=figsize or (panel * ncols, (panel + 0.2) * nrows + (0.4 if title else 0)),
                 layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, (name, p) in zip(axes, tables.items()):
        radius = max(float(p.norm(dim=-1).max()), 1e-12)
        colors = colormaps["viridis"](torch.linspace(0, 1, len(p)).numpy())
        circle = torch.linspace(0, 2 * torch.pi, 200)
        ax.plot((radius * circle.cos()).numpy(), (radius * circle.sin()).numpy(), color="0.85",
                lw=1)
        for m, ((x, y), color) in enumerate(zip(p.tolist(), colors)):
            ax.annotate("", xy=(x, y), xytext=(0, 0),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 1.5})
            if len(p) <= 16:
                ax.text(1.12 * x, 1.12 * y, str(m), ha="center", va="center", fontsize=SMALL + 1,
                        color=color)
        ax.set_xlim(-1.3 * radius, 1.3 * radius)
        ax.set_ylim(-1.3 * radius, 1.3 * radius)
        ax.set_aspect("equal")
        ax.set_title(_wrap(name, panel - 0.3, 10), fontsize=10)
    for ax in axes[len(tables):]:
        ax.set_axis_off()  # the panels of the last row that no pair uses
    if title:
        fig.suptitle(_wrap(title, fig.get_figwidth() - 0.3))
    return fig


def _as_heads(weights: torch.Tensor | Sequence[Sequence[Sequence[float]]]) -> torch.Tensor:
    w = torch.as_tensor(weights).detach().to("cpu", torch.float32)
    if w.dim() != 3:
        raise ValueError(f"weights must have shape (H, T, S), one (T, S) matrix per head, "
                         f"got shape {tuple(w.shape)}")
    return w


def _check_labels(labels: Sequence[str] | None, count: int, what: str) -> None:
    if labels is not None and len(labels) != count:
        raise ValueError(f"{what} has {len(labels)} labels for {count} entries")


def _outline_row(ax: Axes, row: int, width: int, color: str = "red") -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((-0.5, row - 0.5), width, 1, fill=False, edgecolor=color, lw=2.0))


def _key_label_height(key_labels: Sequence[str] | None) -> float:
    """Inches below a heatmap for its key labels (rotated when they are words)."""
    if key_labels is None:
        return 0.25
    return 0.15 + 0.9 * (_label_width(key_labels) - 0.15)


def plot_heads(
    weights: torch.Tensor,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    head_names: Sequence[str] | None = None,
    query: int | None = None,
    ncols: int | None = None,
    title: str | None = None,
) -> Figure:
    """Heatmaps of the attention weights of every head, one panel per head.

    The panels wrap into rows so that the figure stays :data:`MAX_WIDTH` wide; the query
    labels are written once per row, on the left.

    Args:
        weights: ``(H, T, S)`` weights of one sequence, e.g. ``weights[b]`` of the
            ``(B, H, T, S)`` weights that ``MultiHeadAttention`` returns with
            ``need_weights=True``.
        query_labels: ``T`` labels for the rows (queries).
        key_labels: ``S`` labels for the columns (keys).
        head_names: ``H`` panel titles (default: ``head 0``, ``head 1``, ...).
        query: outline this query's row in every panel.
        ncols: panels per row (default: up to 2 for up to four heads, else up to 4, as many
            as leave each key column at least 0.15 in).
        title: the figure title.

    Returns:
        The figure; every panel uses the same colour scale, from 0 to 1.
    """
    w = _as_heads(weights)
    H, T, S = w.shape
    _check_labels(query_labels, T, "query_labels")
    _check_labels(key_labels, S, "key_labels")
    _check_labels(head_names, H, "head_names")
    if query is not None and not 0 <= query < T:
        raise ValueError(f"query must be a row index in [0, {T}), got {query}")
    rows_w = _label_width(query_labels if query_labels is not None else range(T))
    room = MAX_WIDTH - 1.1 - rows_w  # less the colour bar, the axis label and the row labels
    if ncols is None:
        ncols = min(H, 2 if H <= 4 else 4)
        while ncols > 1 and room / ncols - 0.15 < 0.15 * S:
            ncols -= 1
    nrows = -(-H // ncols)
    cell = min(0.36, max(room / ncols - 0.15, 0.1) / S)
    row = min(cell, 0.3 if nrows <= 2 else 0.2)  # many rows of panels: flatter cells
    panel_h = 0.3 + row * T + _key_label_height(key_labels)
    fig = Figure(figsize=(min(rows_w + ncols * (cell * S + 0.15) + 1.1, MAX_WIDTH),
                          panel_h * nrows + 0.3 + (0.4 if title else 0.0)),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.set_axis_off()
            continue
        image = ax.imshow(w[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        name = head_names[h] if head_names is not None else f"head {h}"
        ax.set_title(_wrap(name, cell * S + 0.3, 10), fontsize=10)
        ax.set_xticks(range(S), key_labels if key_labels is not None else range(S), fontsize=SMALL)
        ax.set_yticks(range(T), query_labels if query_labels is not None else range(T),
                      fontsize=SMALL)
        ax.tick_params(axis="y", labelleft=h % ncols == 0)  # the same rows in every panel
        if key_labels is not None:
            _rotate_xticks(ax, 60)
        if query is not None:
            _outline_row(ax, query, S)
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    fig.supxlabel("key position (attended to)", fontsize=10)
    fig.supylabel("query position (attending)", fontsize=10)
    if title:
        fig.suptitle(_wrap(title, fig.get_figwidth() - 0.3))
    return fig


def plot_head_and_query(
    weights: torch.Tensor,
    head: int,
    query: int,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    head_names: Sequence[str] | None = None,
) -> Figure:
    """Browse multi-head attention: one head's weights, and one query in every head.

    The two panels share the key axis: the head on top, the query below.

    Args:
        weights: ``(H, T, S)`` weights of one sequence.
        head: the head shown on top, as a ``(T, S)`` heatmap with ``query``'s row outlined.
        query: the query shown below: its weights over the keys in every head, an
            ``(H, S)`` heatmap with ``head``'s row outlined.
        query_labels: ``T`` labels for the queries.
        key_labels: ``S`` labels for the keys.
        head_names: ``H`` names for the heads.

    Returns:
        The figure, two panels on one colour scale from 0 to 1.
    """
    w = _as_heads(weights)
    H, T, S = w.shape
    _check_labels(query_labels, T, "query_labels")
    _check_labels(key_labels, S, "key_labels")
    _check_labels(head_names, H, "head_names")
    if not 0 <= head < H:
        raise ValueError(f"head must be in [0, {H}), got {head}")
    if not 0 <= query < T:
        raise ValueError(f"query must be in [0, {T}), got {query}")
    names = list(head_names) if head_names is not None else [f"head {h}" for h in range(H)]
    keys = key_labels if key_labels is not None else range(S)
    rows = query_labels if query_labels is not None else range(T)
    query_name = query_labels[query] if query_labels is not None else str(query)
    rows_w = _label_width([*map(str, rows), *names])
    cell = min(0.4, (MAX_WIDTH - 1.4 - rows_w) / S)
    fig = Figure(figsize=(min(rows_w + cell * S + 1.4, MAX_WIDTH),
                          min(cell, 0.3) * (T + H) + 1.0 + _key_label_height(key_labels)),
                 layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[T, H])
    image = top.imshow(w[head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    top.set_title(_wrap(f"{names[head]}: all queries", cell * S + rows_w, 10), fontsize=10)
    top.set_yticks(range(T), rows, fontsize=SMALL)
    top.set_ylabel("query")
    top.tick_params(axis="x", labelbottom=False)  # the keys are labelled once, below
    _outline_row(top, query, S)
    bottom.imshow(w[:, query].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    bottom.set_title(_wrap(f"query {query} ({query_name!r}): every head", cell * S + rows_w, 10),
                     fontsize=10)
    bottom.set_xticks(range(S), keys, fontsize=SMALL)
    bottom.set_yticks(range(H), names, fontsize=SMALL)
    bottom.set_xlabel("key")
    bottom.set_ylabel("head")
    _outline_row(bottom, head, S)
    if key_labels is not None:
        _rotate_xticks(bottom, 60)
    fig.colorbar(image, ax=[top, bottom], label="attention weight", shrink=0.9)
    return fig


def plot_decoder_attention(
    self_weights: torch.Tensor,
    cross_weights: torch.Tensor,
    target_labels: Sequence[str] | None = None,
    source_labels: Sequence[str] | None = None,
    title: str | None = None,
    annotate: bool = False,
) -> Figure:
    """A decoder's two attentions side by side: masked self-attention and cross-attention.

    When ``T + S`` columns do not fit side by side in :data:`MAX_WIDTH` (at least 0.2 in each,
    0.3 in with ``annotate``), the cross-attention goes below the self-attention instead.

    Args:
        self_weights: ``(T, T)`` self-attention weights of one sequence (one head, or the mean
            over heads): the target positions attending to the target.
        cross_weights: ``(T, S)`` cross-attention weights of the same queries over the source
            (the encoder's output).
        target_labels: ``T`` labels of the target positions (the rows of both panels and the
            columns of the left one).
        source_labels: ``S`` labels of the source positions (the columns of the right panel).
        title: the figure title.
        annotate: write each weight in its cell.

    Returns:
        The figure, two panels on one colour scale from 0 to 1, with cells of the same size.
    """
    sw, cw = _as_matrix(self_weights), _as_matrix(cross_weights)
    T, S = cw.shape
    if sw.shape != (T, T):
        raise ValueError(f"self_weights must have shape (T, T) = ({T}, {T}) to match "
                         f"cross_weights (T, S) = {tuple(cw.shape)}, got {tuple(sw.shape)}")
    _check_labels(target_labels, T, "target_labels")
    _check_labels(source_labels, S, "source_labels")
    targets = list(target_labels) if target_labels is not None else list(range(T))
    sources = list(source_labels) if source_labels is not None else list(range(S))
    rows_w = _label_width(targets)
    room = MAX_WIDTH - rows_w - 1.6  # less the colour bar, the axis label and the gap
    side_by_side = room / (T + S) >= (0.3 if annotate else 0.2)
    # long labels such as "<pad>" would overlap unless rotated
    rotated = [any(len(str(key)) > 2 for key in keys) for keys in (targets, sources)]
    below = max(_key_label_height(keys if turn else None) + 0.3 for keys, turn in
                zip((targets, sources), rotated))
    if side_by_side:
        cell = min(0.45, room / (T + S))
        fig = Figure(figsize=(min(rows_w + cell * (T + S) + 1.6, MAX_WIDTH),
                              cell * T + below + 0.7 + (0.4 if title else 0.0)),
                     layout="constrained")
        left, right = fig.subplots(1, 2, width_ratios=[T, S])
    else:
        cell = min(0.45, (room + 0.3) / max(T, S))
        fig = Figure(figsize=(min(rows_w + cell * max(T, S) + 1.3, MAX_WIDTH),
                              2 * (cell * T + below + 0.4) + (0.4 if title else 0.0)),
                     layout="constrained")
        if S == T:
            left, right = fig.subplots(2, 1)
        else:  # the narrower panel takes the first columns of the wider: cells line up
            grid = fig.add_gridspec(2, 2, width_ratios=[min(T, S), abs(S - T)])
            left = fig.add_subplot(grid[0, 0] if T < S else grid[0, :])
            right = fig.add_subplot(grid[1, :] if T < S else grid[1, 0])
    panels = ((left, sw, targets, "masked self-attention", "target position (key)", rotated[0]),
              (right, cw, sources, "cross-attention", "source position (key)", rotated[1]))
    image = None
    for ax, w, keys, name, xlabel, turn in panels:
        image = ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_xticks(range(w.size(1)), keys)
        ax.set_yticks(range(T), targets)
        if not side_by_side:
            ax.set_ylabel("target position (query)")
        if turn:
            _rotate_xticks(ax, 45)
        if annotate:
            for i in range(w.size(0)):
                for j in range(w.size(1)):
                    value = float(w[i, j])
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=SMALL,
                            color="black" if value > 0.6 else "white")
    left.set_ylabel("target position (query)")
    fig.colorbar(image, ax=[left, right], label="attention weight", shrink=0.9)
    if title:
        fig.suptitle(_wrap(title, fig.get_figwidth() - 0.3))
    return fig


# ---------------------------------------------------------------------------------------------
# Diagrams: the architecture as boxes and arrows. Each is drawn on one axes that fills its
# figure, in inches (x from the left, y from the bottom), so sizes and text line up exactly.

#: Fill and edge colour of each kind of part in the diagrams; the residual path is drawn in
#: the residual edge colour, and its sums are circles with a ``+``.
DIAGRAM_COLORS: dict[str, tuple[str, str]] = {
    "attention": ("#d6e6f7", "#2f6db5"),
    "feed-forward": ("#fde3c5", "#c46a14"),
    "norm": ("#dbf0d5", "#3f8f35"),
    "residual": ("#ffffff", "#7b4ea3"),
    "embedding": ("#f6dbe4", "#b03a64"),
    "linear": ("#e9e9e9", "#606060"),
    "cache": ("#fff0b3", "#a88700"),
    "data": ("#ffffff", "#404040"),
}
_INK = "#404040"  # the main data path and ordinary text
_ADD_R = 0.11  # a residual sum's circle
# heights (inches) of a layer's parts: the line between two sub-layers (it carries their
# shape), an arrow inside a sub-layer, a sub-layer's box, a LayerNorm's box; compact for the
# whole model
_SIZES = {False: (0.34, 0.24, 0.52, 0.3), True: (0.3, 0.18, 0.48, 0.27)}
# a sub-layer to draw: (label, kind of part, detail line or None, label of its input or None)
_Spec = tuple[str, str, str | None, str | None]


def _canvas(width: float) -> tuple[Figure, Axes]:
    """A figure ``width`` inches wide with one axes that fills it, for a diagram."""
    fig = Figure(figsize=(width, 1.0))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    return fig, ax


def _finish(fig: Figure, ax: Axes, width: float, height: float) -> Figure:
    """Fix the canvas to ``width`` x ``height`` inches: one data unit is one inch."""
    fig.set_size_inches(width, height)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    return fig


def _box(ax: Axes, x: float, y: float, w: float, h: float, kind: str, text: str,
         detail: str | None = None, fontsize: float = 10, lw: float = 1.3) -> None:
    """A rounded box of ``kind`` centred at ``(x, y)``: ``text``, and a smaller ``detail`` line."""
    from matplotlib.patches import FancyBboxPatch

    face, edge = DIAGRAM_COLORS[kind]
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, facecolor=face, edgecolor=edge,
                                lw=lw, boxstyle="round,pad=0,rounding_size=0.06", zorder=2))
    if detail:
        ax.text(x, y + 0.09, text, ha="center", va="center", fontsize=fontsize, zorder=3)
        ax.text(x, y - 0.12, detail, ha="center", va="center", fontsize=SMALL + 0.5, color=_INK,
                zorder=3)
    else:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=3)


def _arrow(ax: Axes, points: Sequence[tuple[float, float]], color: str = _INK, lw: float = 1.2,
           head: bool = True) -> None:
    """A line through ``points``, with an arrow head at the last one."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path

    ax.add_patch(FancyArrowPatch(path=Path(list(points)), arrowstyle="-|>" if head else "-",
                                 mutation_scale=10, color=color, lw=lw, zorder=1))


def _note(ax: Axes, x: float, y: float, text: str, ha: str = "left", size: float = SMALL + 1,
          mono: bool = False, **kwargs) -> None:
    ax.text(x, y, text, ha=ha, va="center", fontsize=size, color=_INK,
            family="monospace" if mono else None, zorder=3, **kwargs)


def _add(ax: Axes, x: float, y: float) -> None:
    from matplotlib.patches import Circle

    ax.add_patch(Circle((x, y), _ADD_R, facecolor="white", edgecolor=DIAGRAM_COLORS["residual"][1],
                        lw=1.5, zorder=2))
    ax.text(x, y, "+", ha="center", va="center", fontsize=11, zorder=3,
            color=DIAGRAM_COLORS["residual"][1])


def _sublayer(ax: Axes, cx: float, y: float, width: float,
              spec: _Spec, norm_first: bool, side: int, compact: bool = False
              ) -> tuple[float, float]:
    """One sub-layer in its residual connection and LayerNorm, drawn upward from ``y``, where
    its input arrives (the residual path branches off there, on ``side``: -1 left, +1 right).

    Post-LN: ``LayerNorm(x + Sublayer(x))``; pre-LN: ``x + Sublayer(LayerNorm(x))``.
    ``spec`` is ``(label, kind, detail, inputs)``: ``inputs`` labels the arrow into the box.

    Returns:
        The top of what was drawn, and the centre height of the sub-layer's box.
    """
    label, kind, detail, inputs = spec
    _, step, sub_h, norm_h = _SIZES[compact]
    norm_w = min(width, 1.3)
    start = y

    def norm(bottom: float) -> float:
        _box(ax, cx, bottom + norm_h / 2, norm_w, norm_h, "norm", "LayerNorm", fontsize=9.5)
        return bottom + norm_h

    def up(bottom: float, length: float = step) -> float:
        _arrow(ax, [(cx, bottom), (cx, bottom + length)])
        return bottom + length

    if norm_first:
        y = up(norm(up(y)), step + (0.06 if inputs else 0.0))
    else:
        y = up(y, step + (0.06 if inputs else 0.0))
    if inputs:  # beside the arrow, on the side away from the residual path
        _note(ax, cx - side * 0.07, y - 0.13, inputs, ha="left" if side < 0 else "right",
              size=SMALL + 0.5)
    centre = y + sub_h / 2
    _box(ax, cx, centre, width, sub_h, kind, label, detail)
    add_y = up(y + sub_h) + _ADD_R
    _add(ax, cx, add_y)
    color = DIAGRAM_COLORS["residual"][1]
    around = cx + side * (width / 2 + 0.2)
    _arrow(ax, [(cx, start), (around, start), (around, add_y), (cx + side * _ADD_R, add_y)],
           color=color, lw=1.5)
    ax.plot([cx], [start], "o", ms=4, color=color, zorder=3)
    y = add_y + _ADD_R
    if not norm_first:
        y = norm(up(y))
    return y, centre


def _layer(ax: Axes, cx: float, y: float, width: float, specs: Sequence[_Spec],
           norm_first: bool, side: int, shape: str,
           compact: bool = False) -> tuple[float, list[float]]:
    """Sub-layers stacked upward from ``y``, the line into each labelled with ``shape``.

    Returns:
        The top of the last sub-layer, and the centre height of each sub-layer's box.
    """
    gap = _SIZES[compact][0]
    centres = []
    for spec in specs:
        _arrow(ax, [(cx, y), (cx, y + gap)], head=False)
        _note(ax, cx - side * 0.08, y + gap / 2, shape, ha="left" if side < 0 else "right",
              mono=True)
        y, centre = _sublayer(ax, cx, y + gap, width, spec, norm_first, side, compact)
        centres.append(centre)
    return y, centres


def _repeat(ax: Axes, cx: float, width: float, bottom: float, top: float, side: int,
            label: str = "N ×") -> None:
    """The light frame around one layer of a stack, and how often the stack repeats it."""
    from matplotlib.patches import FancyBboxPatch

    near, far = width / 2 + 0.4, width / 2 + 0.12  # the residual side needs room for the path
    left = cx - (near if side < 0 else far)
    right = cx + (far if side < 0 else near)
    ax.add_patch(FancyBboxPatch((left, bottom), right - left, top - bottom, facecolor="#f6f6f6",
                                edgecolor="#9a9a9a", lw=1.0, ls="--", zorder=0,
                                boxstyle="round,pad=0,rounding_size=0.1"))
    x = left - 0.08 if side < 0 else right + 0.08
    ax.text(x, (bottom + top) / 2, label, ha="right" if side < 0 else "left", va="center",
            fontsize=11, color=_INK)


def _title(ax: Axes, x: float, y: float, title: str, formula: str | None = None) -> float:
    """A diagram's title (and a formula under it) centred at ``x``, top at ``y``; returns the
    height it took."""
    ax.text(x, y - 0.12, title, ha="center", va="center", fontsize=11, fontweight="bold",
            color="#222222")
    if formula:
        ax.text(x, y - 0.38, formula, ha="center", va="center", fontsize=9.5, color=_INK)
        return 0.55
    return 0.3


def _norm_label(norm_first: bool) -> str:
    return "pre-LN" if norm_first else "post-LN, as in the paper"


def _formula(norm_first: bool) -> str:
    return ("x ← x + Sublayer(LayerNorm(x))" if norm_first
            else "x ← LayerNorm(x + Sublayer(x))")


def _encoder_specs(causal: bool, activation: str, detail: bool = True) -> list[_Spec]:
    seq = "T" if causal else "S"
    mask = f"causal mask ({seq}, {seq})" if causal else "padding mask (B, 1, 1, S)"
    name = "Masked self-attention" if causal else "Multi-head self-attention"
    return [(name, "attention", mask if detail else None, "Q = K = V" if detail else None),
            ("Feed-forward", "feed-forward",
             f"Linear D→F, {activation}, Linear F→D" if detail else None, None)]


def _decoder_specs(detail: bool = True) -> list[_Spec]:
    return [("Masked self-attention", "attention", "causal mask (T, T)" if detail else None,
             "Q = K = V" if detail else None),
            ("Cross-attention", "attention", "padding mask (B, 1, 1, S)" if detail else None,
             "Q" if detail else None),
            ("Feed-forward", "feed-forward", "Linear D→F, ReLU, Linear F→D" if detail else None,
             None)]


def _final_norm(ax: Axes, cx: float, y: float, width: float) -> float:
    """The one LayerNorm that ends a pre-LN stack, above ``y``; returns its top."""
    _arrow(ax, [(cx, y), (cx, y + 0.3)])
    _box(ax, cx, y + 0.3 + 0.25, min(width, 2.0), 0.5, "norm", "final LayerNorm",
         "once, after the last layer", fontsize=9.5)
    return y + 0.8


def draw_encoder_layer(norm_first: bool = False, *, causal: bool = False,
                       activation: str = "ReLU") -> Figure:
    """Diagram of one encoder layer: self-attention, then the feed-forward network, each in a
    residual connection (purple) and a LayerNorm (green).

    The input and every sub-layer's output are ``(B, S, D)``; the self-attention takes its
    queries, keys and values from the same input, and the padding mask ``(B, 1, 1, S)`` hides
    padded source positions. The dashed frame is what a stack of ``N`` layers repeats.

    Args:
        norm_first: pre-LN (the norm inside each residual branch, before the sub-layer, and one
            final LayerNorm after the stack) if ``True``; post-LN, as in the paper (the norm
            after each residual sum), if ``False``.
        causal: draw the layer as a decoder-only block (a GPT block): causal self-attention
            over ``(B, T, D)`` instead of the source's padding mask.
        activation: the feed-forward activation's name, for its label.

    Returns:
        The figure, about 4 in wide.
    """
    seq = "T" if causal else "S"
    width, cx, side = 2.5, 2.15, -1
    fig, ax = _canvas(4.3)
    _note(ax, cx, 0.18, "input x", ha="center", size=10)
    bottom = 0.32
    top, _ = _layer(ax, cx, bottom, width, _encoder_specs(causal, activation), norm_first, side,
                    f"(B, {seq}, D)")
    _repeat(ax, cx, width, bottom + 0.06, top + 0.1, side)
    if norm_first:
        top = _final_norm(ax, cx, top, width)
    _arrow(ax, [(cx, top), (cx, top + 0.36)])
    _note(ax, cx + 0.08, top + 0.18, f"(B, {seq}, D)", mono=True)
    _note(ax, cx, top + 0.5, "output", ha="center", size=10)
    height = top + 0.7
    name = "Decoder-only block" if causal else "Encoder layer"
    height += _title(ax, 4.3 / 2, height + 0.55, f"{name}, {_norm_label(norm_first)}",
                     _formula(norm_first))
    return _finish(fig, ax, 4.3, height)


def draw_decoder_layer(norm_first: bool = False) -> Figure:
    """Diagram of one decoder layer: masked self-attention, cross-attention over the encoder's
    output (the memory) and the feed-forward network, each in a residual connection (purple)
    and a LayerNorm (green).

    The target stream is ``(B, T, D)`` throughout; the self-attention's causal mask ``(T, T)``
    hides later target positions; the cross-attention takes its queries from the target
    stream and its keys and values from the memory ``(B, S, D)``, whose padding mask
    ``(B, 1, 1, S)`` hides padded source positions. The dashed frame is what a stack repeats.

    Args:
        norm_first: pre-LN (norm before each sub-layer, one final LayerNorm after the stack)
            if ``True``; post-LN, as in the paper, if ``False``.

    Returns:
        The figure, about 5 in wide.
    """
    width, cx, side, total = 2.5, 3.05, 1, 5.2
    fig, ax = _canvas(total)
    _note(ax, cx, 0.18, "target stream x", ha="center", size=10)
    bottom = 0.32
    top, centres = _layer(ax, cx, bottom, width, _decoder_specs(), norm_first, side, "(B, T, D)")
    _repeat(ax, cx, width, bottom + 0.06, top + 0.1, side)
    cross = centres[1]
    _arrow(ax, [(1.25, cross), (cx - width / 2, cross)])
    _note(ax, 0.64, cross + 0.06, "memory\n(encoder output)", ha="center", size=9.5,
          linespacing=1.15)
    _note(ax, 0.64, cross - 0.3, "(B, S, D)", ha="center", mono=True)
    _note(ax, 1.32, cross + 0.13, "K, V", size=SMALL + 0.5)
    if norm_first:
        top = _final_norm(ax, cx, top, width)
    _arrow(ax, [(cx, top), (cx, top + 0.36)])
    _note(ax, cx - 0.08, top + 0.18, "(B, T, D)", ha="right", mono=True)
    _note(ax, cx, top + 0.5, "output", ha="center", size=10)
    height = top + 0.7
    height += _title(ax, total / 2, height + 0.55, f"Decoder layer, {_norm_label(norm_first)}",
                     _formula(norm_first))
    return _finish(fig, ax, total, height)


def draw_pre_post_ln() -> Figure:
    """Diagram of the two places for the LayerNorm, side by side: post-LN (the paper) and
    pre-LN (GPT-2 and most models since), for an encoder layer.

    Post-LN normalizes after each residual sum, so the path from a layer's input to its output
    passes through a norm; pre-LN normalizes inside each residual branch, so the residual path
    (purple) passes only through sums, and a stack of pre-LN layers needs one final LayerNorm.
    Same parameters, same sub-layers; only the order differs.

    Returns:
        The figure, :data:`MAX_WIDTH` wide.
    """
    width, columns = 2.05, ((1.75, False), (4.95, True))
    notes = ("every path from input to output\npasses through a LayerNorm",
             "the residual path (purple) passes\nonly through sums")
    fig, ax = _canvas(MAX_WIDTH)
    tops = []
    for (cx, norm_first), note in zip(columns, notes):
        _note(ax, cx, 0.22, note, ha="center", size=9, linespacing=1.15)
        _note(ax, cx, 0.66, "input x", ha="center", size=10)
        specs = _encoder_specs(False, "ReLU", detail=False)
        top, _ = _layer(ax, cx, 0.8, width, specs, norm_first, -1, "(B, S, D)")
        _repeat(ax, cx, width, 0.86, top + 0.1, -1)
        if norm_first:
            top = _final_norm(ax, cx, top, width)
        tops.append(top)
    height = max(tops) + 0.7
    for (cx, _), top in zip(columns, tops):
        _arrow(ax, [(cx, top), (cx, height - 0.34)])
        _note(ax, cx, height - 0.2, "output", ha="center", size=10)
    title_h = max(_title(ax, cx, height + 0.6, title, formula) for cx, title, formula in (
        (1.75, "post-LN (the paper)", "x ← LayerNorm(x + Sublayer(x))"),
        (4.95, "pre-LN (GPT-2 and after)", "x ← x + Sublayer(LayerNorm(x))")))
    return _finish(fig, ax, MAX_WIDTH, height + title_h + 0.05)


def draw_encoder_decoder(norm_first: bool = False) -> Figure:
    """Diagram of the whole encoder-decoder transformer, with the shape of every tensor.

    Left, the encoder: source token ids ``(B, S)``, their embeddings scaled by ``sqrt(D)`` plus
    positional encodings ``(B, S, D)``, then ``N`` encoder layers (self-attention under the
    source's padding mask, feed-forward), which give the memory ``(B, S, D)``. Right, the
    decoder: target token ids ``(B, T)`` (shifted right: BOS first), embedded the same way,
    then ``N`` decoder layers (causal self-attention, cross-attention whose keys and values
    are the memory, feed-forward), and a linear layer to the logits ``(B, T, V)``.

    Args:
        norm_first: draw pre-LN layers (and the final LayerNorm of each stack) instead of the
            paper's post-LN.

    Returns:
        The figure, :data:`MAX_WIDTH` wide.
    """
    width, enc, dec = 1.95, 1.9, 4.72
    fig, ax = _canvas(MAX_WIDTH)
    tops, centres = {}, {}
    for cx, side, seq, name, specs in (
            (enc, -1, "S", "source", _encoder_specs(False, "ReLU")),
            (dec, 1, "T", "target", _decoder_specs())):
        _note(ax, cx, 0.16, f"{name} token ids", ha="center", size=10)
        _arrow(ax, [(cx, 0.3), (cx, 0.62)])
        _note(ax, cx - side * 0.08, 0.46, f"(B, {seq})", ha="left" if side < 0 else "right",
              mono=True)
        _box(ax, cx, 0.87, width, 0.5, "embedding", "Embedding × √D", "+ positional encoding")
        top, centres[cx] = _layer(ax, cx, 1.12, width, specs, norm_first, side, f"(B, {seq}, D)",
                                  compact=True)
        _repeat(ax, cx, width, 1.18, top + 0.08, side)
        tops[cx] = _final_norm(ax, cx, top, width) if norm_first else top
    # the memory: from the top of the encoder to the cross-attention of every decoder layer
    cross, turn, edge = centres[dec][1], tops[enc] + 0.4, dec - width / 2
    _arrow(ax, [(enc, tops[enc]), (enc, turn), (3.3, turn), (3.3, cross), (edge, cross)])
    _note(ax, enc + 0.08, turn - 0.2, "(B, S, D)", mono=True)
    _note(ax, 2.6, turn + 0.28, "memory: keys and values\nof every decoder layer", ha="center",
          size=9, linespacing=1.15)
    _note(ax, 3.36, cross + 0.13, "K, V", size=SMALL + 0.5)
    y = tops[dec]
    _arrow(ax, [(dec, y), (dec, y + 0.32)])
    _note(ax, dec - 0.08, y + 0.16, "(B, T, D)", ha="right", mono=True)
    _box(ax, dec, y + 0.57, width, 0.5, "linear", "Linear D → V", "tied to the embedding")
    _arrow(ax, [(dec, y + 0.82), (dec, y + 1.16)])
    _note(ax, dec - 0.08, y + 0.99, "(B, T, V)", ha="right", mono=True)
    _note(ax, dec, y + 1.3, "logits: scores of the next token", ha="center", size=10)
    height = max(y + 1.5, turn + 0.6)
    height += _title(ax, MAX_WIDTH / 2, height + 0.55,
                     f"The encoder-decoder transformer, {_norm_label(norm_first)}",
                     "B batch, S source length, T target length, D model width, V vocabulary")
    return _finish(fig, ax, MAX_WIDTH, height)


def _cells(ax: Axes, x: float, y: float, labels: Sequence[str], kinds: Sequence[str],
           cell: float = 0.5, h: float = 0.34) -> float:
    """A row of cells from ``x`` (their left edge), centred at height ``y``; returns its right
    edge. Cells of this step (not ``"cache"``) get a heavier edge."""
    from matplotlib.patches import Rectangle

    for i, (label, kind) in enumerate(zip(labels, kinds)):
        face, edge = DIAGRAM_COLORS[kind]
        new = kind != "cache"
        ax.add_patch(Rectangle((x + i * cell, y - h / 2), cell, h, facecolor=face, edgecolor=edge,
                               lw=2.0 if new else 1.0, zorder=2))
        ax.text(x + (i + 0.5) * cell, y, label, ha="center", va="center", fontsize=10, zorder=3)
    return x + len(labels) * cell


def draw_kv_cache(cached: int = 4, cross_attention: bool = False) -> Figure:
    """Diagram of one decoding step with a KV cache, in one attention layer.

    The new token (position ``t + 1``, with ``t = cached``) is the only input, ``(B, 1, D)``.
    Its key and value are projected and appended to the cache, which held the keys and
    values of the ``t`` earlier tokens, ``(B, H, t, Dh)`` each, computed at earlier steps;
    its query ``(B, H, 1, Dh)`` attends over all ``t + 1`` keys and values, weights
    ``(B, H, 1, t + 1)``. Without the cache, every step would recompute the keys and values
    of the whole prefix.

    Args:
        cached: ``t``, how many tokens the cache holds before this step (from 1; long caches are
            drawn with an ellipsis).
        cross_attention: also draw the encoder-decoder case's cross-attention cache: the keys
            and values of the memory ``(B, H, S, Dh)``, projected once, at the first step, and
            read at every step after.

    Returns:
        The figure, :data:`MAX_WIDTH` wide.
    """
    if isinstance(cached, bool) or not isinstance(cached, int) or cached < 1:
        raise ValueError(f"cached must be a positive int (the tokens already cached), "
                         f"got {cached!r}")
    t = cached
    shown = list(range(1, t + 1)) if t <= 5 else [1, 2, None, t]
    fig, ax = _canvas(MAX_WIDTH)
    base = 1.45 if cross_attention else 0.3
    k_y, a_y, v_y = base + 2.3, base + 1.35, base + 0.4
    row_x, cell = 2.2, 0.5
    kinds = ["cache"] * len(shown) + ["data"]
    names = [None if j is None else str(j) for j in shown] + [str(t + 1)]
    new_x = row_x + (len(kinds) - 0.5) * cell
    for y, letter in ((k_y, "k"), (v_y, "v")):
        labels = ["…" if j is None else f"${letter}_{{{j}}}$" for j in names]
        right = _cells(ax, row_x, y, labels, kinds, cell)
        _note(ax, right + 0.1, y, f"(B, H, {t + 1}, Dh)", mono=True)
    _note(ax, row_x, k_y + 0.3, "K cache", size=10)
    _note(ax, row_x, v_y - 0.3, "V cache", size=10)
    middle = row_x + len(kinds) * cell / 2
    # the new token, its three projections, and where each goes
    _box(ax, 0.5, a_y, 0.8, 0.62, "data", "new token", f"position {t + 1}")
    _note(ax, 0.5, a_y - 0.48, "(B, 1, D)", ha="center", mono=True)
    for y, name in ((k_y, "$W^K$"), (a_y, "$W^Q$"), (v_y, "$W^V$")):
        _arrow(ax, [(0.9, a_y), (1.1, a_y), (1.1, y), (1.27, y)])
        _box(ax, 1.5, y, 0.46, 0.36, "linear", name)
    over, under = k_y + 0.55, v_y - 0.55
    _arrow(ax, [(1.73, k_y), (1.9, k_y), (1.9, over), (new_x, over), (new_x, k_y + 0.17)])
    _note(ax, new_x - 0.05, over + 0.13, f"$k_{{{t + 1}}}$ appended", ha="right", size=9)
    _arrow(ax, [(1.73, v_y), (1.9, v_y), (1.9, under), (new_x, under), (new_x, v_y - 0.17)])
    _note(ax, new_x - 0.05, under - 0.13, f"$v_{{{t + 1}}}$ appended", ha="right", size=9)
    # the new query attends over every cached key and value, and its own
    _box(ax, middle, a_y, 2.2, 0.56, "attention", "attention of the new query",
         f"weights (B, H, 1, {t + 1}), then $W^O$")
    _arrow(ax, [(1.73, a_y), (middle - 1.1, a_y)])
    _note(ax, 1.84, a_y + 0.13, f"$q_{{{t + 1}}}$", size=10)
    _arrow(ax, [(middle, k_y - 0.17), (middle, a_y + 0.28)])
    _arrow(ax, [(middle, v_y + 0.17), (middle, a_y - 0.28)])
    _note(ax, middle + 0.07, (k_y + a_y) / 2 + 0.05, "all keys", size=9)
    _note(ax, middle + 0.07, (v_y + a_y) / 2 - 0.05, "all values", size=9)
    _arrow(ax, [(middle + 1.1, a_y), (middle + 1.55, a_y)])
    _note(ax, middle + 1.6, a_y + 0.12, "output", size=10)
    _note(ax, middle + 1.6, a_y - 0.12, "(B, 1, D)", mono=True)
    # the legend: what comes from the cache, and what this step computes
    for i, (kind, text) in enumerate((("cache", f"computed at earlier steps: {t} tokens"),
                                      ("data", "computed at this step"))):
        y = k_y + 1.0 - 0.28 * i
        _cells(ax, 0.1, y, [""], [kind], cell=0.3, h=0.2)
        _note(ax, 0.5, y, text, size=9)
    top = k_y + 1.2
    if cross_attention:
        y = 0.45
        labels = ["$m_1$", "$m_2$", "…", "$m_S$"]
        _cells(ax, row_x, y, labels, ["cache"] * 4, cell)
        _note(ax, row_x + 4 * cell + 0.1, y, "(B, H, S, Dh)", mono=True)
        _note(ax, 0.1, y + 0.05, "cross-attention:\nmemory's K and V", size=9, linespacing=1.1)
        _note(ax, row_x, y - 0.33, "projected once, at the first step; read at every step",
              size=9)
        ax.plot([0.1, MAX_WIDTH - 0.1], [0.95, 0.95], color="#bbbbbb", lw=0.8, ls="--")
    height = top + _title(ax, MAX_WIDTH / 2, top + 0.6,
                          f"Decoding token {t + 1} with a KV cache (one attention layer)",
                          "one position passes through the layer; the cache grows by one") + 0.05
    return _finish(fig, ax, MAX_WIDTH, height)


# --- tokens (chapter 9) ---------------------------------------------------------------------------

_SHOWN = {" ": "\u00b7", "\n": "\u21b5", "\t": "\u2192"}  # a space, a newline, a tab: visible


def plot_tokens(lines: Sequence[Sequence[str]], labels: Sequence[str] | None = None,
                title: str | None = None, fontsize: float = 9) -> Figure:
    """Show how texts split into tokens: one row of boxes per text, one box per token.

    Neighbouring tokens alternate colours; a space is drawn as ``·``, a newline as ``↵`` and a
    tab as ``→``, so that where a token starts and ends is visible. Rows longer than
    :data:`MAX_WIDTH` wrap.

    Args:
        lines: for each text, its tokens as strings (e.g. ``[tok.decode([i]) for i in ids]``).
        labels: a short label per text, drawn above its row (e.g. the token count).
        title: the figure's title.
        fontsize: the tokens' font size in points (at least :data:`SMALL`).

    Returns:
        The figure.
    """
    if not lines:
        raise ValueError("lines must hold at least one text's tokens")
    _check_labels(labels, len(lines), "lines")
    if fontsize < SMALL:
        raise ValueError(f"fontsize must be >= SMALL = {SMALL}, got {fontsize!r}")
    char_w, pad, row_h = 0.6 * fontsize / 72, 0.05, 0.3  # monospace: a character's width
    rows: list[tuple[str | None, list[tuple[float, float, str, int]]]] = []
    for n, tokens in enumerate(lines):
        x, row = 0.0, []
        rows.append((labels[n] if labels else None, row))
        for i, token in enumerate(tokens):
            shown = "".join(_SHOWN.get(c, c) for c in str(token)) or "\u2205"
            w = len(shown) * char_w + 2 * pad
            if x + w > MAX_WIDTH - 0.1 and row:  # wrap: a new row of the same text
                x, row = 0.0, []
                rows.append((None, row))
            row.append((x, w, shown, i))
            x += w + 0.02
    height = sum(row_h + (0.22 if label else 0.0) for label, _ in rows) + (0.4 if title else 0.1)
    fig = Figure(figsize=(MAX_WIDTH, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, MAX_WIDTH)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    y = height - (0.4 if title else 0.1)
    if title:
        ax.text(MAX_WIDTH / 2, height - 0.2, title, ha="center", va="center", fontsize=11)
    colors = ("#cfe3f7", "#fde2c4")
    for label, row in rows:
        if label:
            y -= 0.22
            ax.text(0.0, y + 0.08, label, fontsize=SMALL, color="#444444", va="center")
        y -= row_h
        for x, w, shown, i in row:
            ax.add_patch(_rectangle((x, y + 0.03), w, row_h - 0.06, colors[i % 2]))
            ax.text(x + pad, y + row_h / 2, shown, fontsize=fontsize, family="monospace",
                    va="center", ha="left")
    return fig


def _rectangle(xy: tuple[float, float], w: float, h: float, color: str):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch(xy, w, h, boxstyle="round,pad=0,rounding_size=0.03", fc=color,
                          ec="#888888", lw=0.5)
