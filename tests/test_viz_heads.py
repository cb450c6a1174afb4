"""The plot helpers chapter 2 uses: they return Figures and reject bad arguments by name."""

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from transformer_lib import viz

matplotlib.use("Agg")


def _weights(H=3, T=4, S=5):
    return torch.softmax(torch.randn(H, T, S), dim=-1)


def _outlined_rows(ax):
    return [p.get_y() + 0.5 for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]


def test_plot_heads_one_panel_per_head_with_names_and_outline():
    fig = viz.plot_heads(_weights(), list("abcd"), list("vwxyz"), ["prev", "same", "start"],
                         query=2, title="heads")
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_title() in ("prev", "same", "start")]
    assert len(panels) == 3
    assert all(_outlined_rows(ax) == [2.0] for ax in panels)
    assert [t.get_text() for t in panels[0].get_xticklabels()] == list("vwxyz")
    assert fig.get_suptitle() == "heads"


def test_plot_heads_grid_hides_unused_panels():
    fig = viz.plot_heads(_weights(H=5))  # 4 columns: 2 rows, 3 unused panels
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.axison and ax.get_title()]
    assert [ax.get_title() for ax in visible] == [f"head {h}" for h in range(5)]


def test_plot_head_and_query_outlines_the_choice():
    fig = viz.plot_head_and_query(_weights(), head=1, query=3, head_names=["a", "b", "c"])
    fig.draw_without_rendering()  # constrained layout places the panels when drawn
    top, bottom = fig.axes[:2]
    assert top.get_title().startswith("b:") and _outlined_rows(top) == [3.0]
    assert "query 3" in bottom.get_title() and _outlined_rows(bottom) == [1.0]
    assert [t.get_text() for t in bottom.get_yticklabels()] == ["a", "b", "c"]
    # stacked on one key axis, so the figure stays narrow however many keys there are
    assert top.get_shared_x_axes().joined(top, bottom)
    assert top.get_position().y0 > bottom.get_position().y1


def test_plot_heads_wraps_into_rows_within_the_column():
    words = "the cat sat on the mat because the mat was warm".split()
    fig = viz.plot_heads(_weights(H=4, T=11, S=11), words, words)
    fig.draw_without_rendering()
    panels = [ax for ax in fig.axes if ax.get_title().startswith("head")]
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 2  # 2 x 2, not 1 x 4
    assert fig.get_figwidth() <= viz.MAX_WIDTH
    # the rows are labelled once per row of panels
    assert [ax.yaxis.get_tick_params()["labelleft"] for ax in panels] == [True, False, True, False]


@pytest.mark.parametrize(("call", "pattern"), [
    (lambda: viz.plot_heads(torch.rand(4, 5)), r"weights must have shape \(H, T, S\)"),
    (lambda: viz.plot_heads(_weights(), query_labels=list("abc")),
     "query_labels has 3 labels for 4"),
    (lambda: viz.plot_heads(_weights(), key_labels=list("ab")), "key_labels has 2 labels for 5"),
    (lambda: viz.plot_heads(_weights(), head_names=["x"]), "head_names has 1 labels for 3"),
    (lambda: viz.plot_heads(_weights(), query=4), r"query must be a row index in \[0, 4\)"),
    (lambda: viz.plot_head_and_query(_weights(), head=3, query=0), r"head must be in \[0, 3\)"),
    (lambda: viz.plot_head_and_query(_weights(), head=0, query=-1), r"query must be in \[0, 4\)"),
])
def test_bad_arguments_raise_value_error_naming_them(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
