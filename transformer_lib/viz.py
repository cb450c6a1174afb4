"""Plots and widgets for the book. Hand-written (not generated from a chapter).

Every plot helper returns a :class:`matplotlib.figure.Figure` built without pyplot,
so a notebook shows it once (as the cell's value), the rendered book shows it
statically, and widgets can redraw it without piling up open figures. Widgets are
thin :func:`ipywidgets.interact` wrappers around the same helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from matplotlib.figure import Figure

__all__ = ["plot_attention", "plot_masks", "interact_figure", "plot_positional_encoding",
           "plot_position_similarity", "plot_rotating_pairs", "plot_heads", "plot_head_and_query",
           "plot_decoder_attention"]


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
        figsize: the figure size in inches (default: grows with the matrix).

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
        figsize = (min(2.0 + 0.55 * S, 10.0), min(1.2 + 0.5 * T, 9.0))
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="attention weight", shrink=0.9)
    ax.set_xlabel("key position (attended to)")
    ax.set_ylabel("query position (attending)")
    ax.set_xticks(range(S), key_labels if key_labels is not None else range(S))
    ax.set_yticks(range(T), query_labels if query_labels is not None else range(T))
    if key_labels is not None:
        ax.tick_params(axis="x", labelrotation=45)
    if annotate:
        for i in range(T):
            for j in range(S):
                value = float(w[i, j])
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if value > 0.6 else "white")
    if title:
        ax.set_title(title)
    return fig


def plot_masks(masks: dict[str, torch.Tensor], figsize: tuple[float, float] | None = None) -> Figure:
    """Show boolean masks side by side: filled cells may attend (True), blank ones may not.

    Args:
        masks: ``{title: (T, S) bool tensor}``.
        figsize: the figure size in inches.

    Returns:
        The figure, one panel per mask.
    """
    if not masks:
        raise ValueError("masks must name at least one mask")
    fig = Figure(figsize=figsize or (3.2 * len(masks), 3.2), layout="constrained")
    axes = fig.subplots(1, len(masks), squeeze=False)[0]
    for ax, (name, mask) in zip(axes, masks.items()):
        m = torch.as_tensor(mask).detach().cpu()
        if m.dtype != torch.bool or m.dim() != 2:
            raise ValueError(f"mask {name!r} must be a 2-d bool tensor, got {m.dtype} {tuple(m.shape)}")
        ax.imshow(m.float().numpy(), cmap="Blues", vmin=0.0, vmax=1.25)
        T, S = m.shape
        ax.set_xticks(range(S))
        ax.set_yticks(range(T))
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(name)
        for i in range(T):
            for j in range(S):
                ax.text(j, i, "T" if m[i, j] else "·", ha="center", va="center", fontsize=8)
    return fig


def interact_figure(draw: Callable[..., Figure], **controls):
    """Redraw ``draw(**values)`` whenever a control changes.

    A thin wrapper around :func:`ipywidgets.interact`: each keyword is a control
    (a widget, or an abbreviation such as ``(0.1, 4.0, 0.1)`` or a list of options)
    and ``draw`` returns the figure to show. Needs a live kernel to redraw; the
    rendered book shows the static figure the chapter draws first.
    """
    from ipywidgets import interact  # optional dependency: imported only for widgets

    return interact(draw, **controls)


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
    fig = Figure(figsize=figsize or (9.0, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    image = top.imshow(window.T.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                       interpolation="nearest", extent=(p0 - 0.5, p1 - 0.5, d1 - 0.5, d0 - 0.5))
    # the colour bar sits just outside the heatmap, so both panels keep the same width
    fig.colorbar(image, cax=top.inset_axes((1.01, 0.0, 0.015, 1.0)), label="value")
    top.set_ylabel("dimension")
    top.set_title(title or f"positions {p0}..{p1 - 1}, dimensions {d0}..{d1 - 1}")
    x = torch.arange(p0, p1).numpy()
    for d in curve_dims:
        bottom.plot(x, table[p0:p1, d].numpy(), label=f"dim {d}", lw=1.5)
    bottom.set_xlabel("position")
    bottom.set_ylabel("value")
    bottom.set_xlim(p0 - 0.5, p1 - 0.5)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
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
    fig = Figure(figsize=figsize or (11.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.4])
    limit = max(float(s.abs().max()), 1e-12)
    image = left.imshow(s.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(image, ax=left, shrink=0.9)
    left.set_xlabel("position n")
    left.set_ylabel("position m")
    left.set_title(f"{value_label} of positions m and n", fontsize=10)
    offsets = torch.arange(T)
    for m, style in zip(references, ["-", "--", ":", "-."] * len(references)):
        right.plot((offsets - m).numpy(), s[m].numpy(), style, lw=1.5, label=f"m = {m}")
    right.axvline(0, color="gray", lw=0.5)
    right.set_xlabel("offset n - m")
    right.set_ylabel(value_label)
    right.set_title("row m against the offset", fontsize=10)
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_rotating_pairs(
    pairs: dict[str, torch.Tensor],
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Two-dimensional vectors, one per position, drawn as arrows from the origin.

    Shows how a pair of features rotates as the position grows (sinusoidal encodings,
    rotary embeddings).

    Args:
        pairs: ``{panel title: (T, 2) tensor}``; row ``m`` is the pair at position ``m``.
        title: the figure title.
        figsize: the figure size in inches.

    Returns:
        The figure, one panel per entry, arrows coloured and numbered by position.
    """
    if not pairs:
        raise ValueError("pairs must name at least one (T, 2) tensor")
    from matplotlib import colormaps

    fig = Figure(figsize=figsize or (3.6 * len(pairs), 3.8), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, (name, points) in zip(axes, pairs.items()):
        p = _as_table(points, f"pairs[{name!r}]")
        if p.size(1) != 2:
            raise ValueError(f"pairs[{name!r}] must have shape (T, 2), got {tuple(p.shape)}")
        radius = max(float(p.norm(dim=-1).max()), 1e-12)
        colors = colormaps["viridis"](torch.linspace(0, 1, len(p)).numpy())
        circle = torch.linspace(0, 2 * torch.pi, 200)
        ax.plot((radius * circle.cos()).numpy(), (radius * circle.sin()).numpy(), color="0.85", lw=1)
        for m, ((x, y), color) in enumerate(zip(p.tolist(), colors)):
            ax.annotate("", xy=(x, y), xytext=(0, 0),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 1.5})
            if len(p) <= 16:
                ax.text(1.12 * x, 1.12 * y, str(m), ha="center", va="center", fontsize=8, color=color)
        ax.set_xlim(-1.3 * radius, 1.3 * radius)
        ax.set_ylim(-1.3 * radius, 1.3 * radius)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title)
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


def _outline_row(ax, row: int, width: int, color: str = "red") -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((-0.5, row - 0.5), width, 1, fill=False, edgecolor=color, lw=2.0))


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

    Args:
        weights: ``(H, T, S)`` weights of one sequence, e.g. ``weights[b]`` of the
            ``(B, H, T, S)`` weights that ``MultiHeadAttention`` returns with
            ``need_weights=True``.
        query_labels: ``T`` labels for the rows (queries).
        key_labels: ``S`` labels for the columns (keys).
        head_names: ``H`` panel titles (default: ``head 0``, ``head 1``, ...).
        query: outline this query's row in every panel.
        ncols: panels per row (default: 2 for up to four heads, else 4).
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
    ncols = ncols or min(H, 2 if H <= 4 else 4)
    nrows = -(-H // ncols)
    panel = (min(1.4 + 0.32 * S, 6.0), min(1.2 + 0.3 * T, 6.0))
    fig = Figure(figsize=(panel[0] * ncols + 1.0, panel[1] * nrows + (0.4 if title else 0.0)),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.set_axis_off()
            continue
        image = ax.imshow(w[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(head_names[h] if head_names is not None else f"head {h}", fontsize=10)
        ax.set_xticks(range(S), key_labels if key_labels is not None else range(S), fontsize=8)
        ax.set_yticks(range(T), query_labels if query_labels is not None else range(T), fontsize=8)
        if key_labels is not None:
            ax.tick_params(axis="x", labelrotation=60)
        if query is not None:
            _outline_row(ax, query, S)
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    fig.supxlabel("key position (attended to)", fontsize=10)
    fig.supylabel("query position (attending)", fontsize=10)
    if title:
        fig.suptitle(title)
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

    Args:
        weights: ``(H, T, S)`` weights of one sequence.
        head: the head shown on the left, as a ``(T, S)`` heatmap with ``query``'s row outlined.
        query: the query shown on the right: its weights over the keys in every head, an
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
    query_name = query_labels[query] if query_labels is not None else str(query)
    width = min(1.4 + 0.32 * S, 6.0)
    fig = Figure(figsize=(2 * width + 2.4, min(1.4 + 0.3 * T, 6.0)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.0, 1.0])
    image = left.imshow(w[head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    left.set_title(f"{names[head]}: all queries", fontsize=10)
    left.set_xticks(range(S), keys, fontsize=8)
    left.set_yticks(range(T), query_labels if query_labels is not None else range(T), fontsize=8)
    left.set_xlabel("key")
    left.set_ylabel("query")
    _outline_row(left, query, S)
    right.imshow(w[:, query].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    right.set_title(f"query {query} ({query_name!r}): every head", fontsize=10)
    right.set_xticks(range(S), keys, fontsize=8)
    right.set_yticks(range(H), names, fontsize=8)
    right.set_xlabel("key")
    _outline_row(right, head, S)
    if key_labels is not None:
        left.tick_params(axis="x", labelrotation=60)
        right.tick_params(axis="x", labelrotation=60)
    fig.colorbar(image, ax=[left, right], label="attention weight", shrink=0.9)
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
    cell = 0.45
    fig = Figure(figsize=(min(cell * (T + S) + 3.2, 14.0), min(cell * T + 1.8, 9.0)),
                 layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[T, S])
    targets = list(target_labels) if target_labels is not None else list(range(T))
    sources = list(source_labels) if source_labels is not None else list(range(S))
    panels = ((left, sw, targets, "masked self-attention", "target position (key)"),
              (right, cw, sources, "cross-attention", "source position (key)"))
    image = None
    for ax, w, keys, name, xlabel in panels:
        image = ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_xticks(range(w.size(1)), keys)
        ax.set_yticks(range(T), targets)
        if any(len(str(key)) > 2 for key in keys):  # long labels such as "<pad>" would overlap
            ax.tick_params(axis="x", labelrotation=45)
        if annotate:
            for i in range(w.size(0)):
                for j in range(w.size(1)):
                    value = float(w[i, j])
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if value > 0.6 else "white")
    left.set_ylabel("target position (query)")
    fig.colorbar(image, ax=[left, right], label="attention weight", shrink=0.9)
    if title:
        fig.suptitle(title)
    return fig
