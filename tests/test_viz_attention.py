"""The plot helpers chapter 1 and lab 1 use: one attention matrix, and masks side by side."""

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from transformer_lib import causal_mask, viz

matplotlib.use("Agg")


def test_plot_attention_labels_annotates_and_fits_the_column():
    words = "the cat sat on the mat because the mat was warm".split()
    fig = viz.plot_attention(torch.softmax(torch.randn(11, 11), -1), words, words, title="t",
                             annotate=False)
    assert isinstance(fig, Figure) and fig.get_figwidth() <= viz.MAX_WIDTH
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == words
    assert ax.get_title() == "t" and not ax.texts
    small = viz.plot_attention(torch.eye(3))
    assert [t.get_text() for t in small.axes[0].texts][:3] == ["1.00", "0.00", "0.00"]
    assert viz.plot_attention(torch.eye(3), figsize=(9, 4)).get_figwidth() == 9  # asked for


@pytest.mark.parametrize(("args", "pattern"), [
    ((torch.rand(2, 3, 4),), r"weights must be a \(T, S\) matrix"),
    ((torch.rand(2, 3), ["a"]), "query_labels has 1 labels for 2 rows"),
    ((torch.rand(2, 3), None, ["a"]), "key_labels has 1 labels for 3 columns"),
])
def test_plot_attention_rejects_bad_arguments(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        viz.plot_attention(*args)


def test_plot_masks_one_panel_per_mask_wrapped_into_rows():
    masks = {f"mask {i}": causal_mask(5) for i in range(5)}
    fig = viz.plot_masks(masks)
    fig.draw_without_rendering()
    shown = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in shown] == list(masks)
    assert len({round(ax.get_position().y0, 3) for ax in shown}) == 2  # 3 + 2, not 5 in a row
    assert fig.get_figwidth() <= viz.MAX_WIDTH
    assert [t.get_text() for t in shown[0].texts][:2] == ["T", "·"]
    one_row = viz.plot_masks(dict(list(masks.items())[:3]))
    one_row.draw_without_rendering()
    assert len({round(ax.get_position().y0, 3) for ax in one_row.axes}) == 1
    assert len([ax for ax in viz.plot_masks(masks, ncols=1).axes if ax.axison]) == 5


def test_plot_masks_rejects_what_is_not_a_mask():
    with pytest.raises(ValueError, match="at least one mask"):
        viz.plot_masks({})
    with pytest.raises(ValueError, match="mask 'm' must be a 2-d bool tensor"):
        viz.plot_masks({"m": torch.ones(3, 3)})


def test_interact_figure_shows_the_figure_draw_returns_and_redraws_on_a_change(monkeypatch):
    """The panel displays ``draw``'s figure (ipywidgets' interactive shows a return value only
    with auto_display) at once and again after a control changes; labels fit the longest name."""
    ipywidgets = pytest.importorskip("ipywidgets")
    from ipywidgets.widgets import interaction

    shown = []
    monkeypatch.setattr(interaction, "display", shown.append)
    import IPython.display
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: None)  # the panel itself
    figures = []

    def draw(temperature=1.0, kind="a"):
        fig = Figure()
        fig.text(0.5, 0.5, f"{kind} {temperature}")
        figures.append(fig)
        return fig

    returned = viz.interact_figure(draw, temperature=(0.1, 2.0, 0.1), kind=["a", "b"])
    panel = returned.widget
    assert isinstance(panel, ipywidgets.interactive)
    assert shown == figures[:1] and len(figures) == 1  # the first figure, shown once
    panel.kwargs_widgets[0].value = 1.5
    assert len(figures) == 2 and shown == figures  # redrawn and shown again
    widths = {w.style.description_width for w in panel.kwargs_widgets}
    assert widths == {viz._widget_label_width(len("temperature"))}
