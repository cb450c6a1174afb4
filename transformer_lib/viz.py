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

__all__ = ["plot_attention", "plot_masks", "interact_figure"]


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
