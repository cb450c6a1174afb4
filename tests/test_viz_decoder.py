"""The plot helper chapter 5 uses: self- and cross-attention side by side."""

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from transformer_lib import DecoderLayer, causal_mask, viz

matplotlib.use("Agg")


def test_plot_decoder_attention_draws_both_panels_from_a_layer():
    layer = DecoderLayer(8, 2, 16, dropout=0.0).eval()
    self_w, cross_w = layer.attention_weights(torch.randn(1, 4, 8), torch.randn(1, 3, 8),
                                              causal_mask(4))
    fig = viz.plot_decoder_attention(self_w[0, 0], cross_w[0].mean(0), list("abcd"), list("xyz"),
                                     title="toy", annotate=True)
    assert isinstance(fig, Figure)
    left, right = fig.axes[:2]
    assert (left.get_title(), right.get_title()) == ("masked self-attention", "cross-attention")
    assert [t.get_text() for t in right.get_xticklabels()] == ["x", "y", "z"]
    assert [t.get_text() for t in left.get_yticklabels()] == ["a", "b", "c", "d"]
    assert len(right.texts) == 12  # one annotation per cell
    assert fig._suptitle.get_text() == "toy"


@pytest.mark.parametrize(("args", "pattern"), [
    ((torch.rand(3, 3), torch.rand(4, 2)), r"self_weights must have shape \(T, T\) = \(4, 4\)"),
    ((torch.rand(2, 2), torch.rand(2, 3), ["a"]), "target_labels has 1 labels for 2 entries"),
    ((torch.rand(2, 2), torch.rand(2, 3), None, ["x"]), "source_labels has 1 labels for 3 entries"),
    ((torch.rand(2, 2, 2), torch.rand(2, 3)), r"weights must be a \(T, S\) matrix"),
])
def test_plot_decoder_attention_rejects_bad_arguments(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        viz.plot_decoder_attention(*args)


def test_plot_decoder_attention_stacks_panels_that_do_not_fit_side_by_side():
    T, S = 12, 20
    fig = viz.plot_decoder_attention(torch.rand(T, T).tril(), torch.rand(T, S), annotate=True)
    fig.draw_without_rendering()  # constrained layout places the panels when drawn
    top, bottom = fig.axes[:2]
    assert (top.get_title(), bottom.get_title()) == ("masked self-attention", "cross-attention")
    assert top.get_position().y0 > bottom.get_position().y1
    assert fig.get_figwidth() <= viz.MAX_WIDTH
    # cells of the same width: the T columns above span T / S of the S columns below
    ratio = top.get_position().width / bottom.get_position().width
    assert ratio == pytest.approx(T / S, rel=0.05)
    side = viz.plot_decoder_attention(torch.rand(4, 4).tril(), torch.rand(4, 3))
    side.draw_without_rendering()
    left, right = side.axes[:2]
    assert left.get_position().x1 < right.get_position().x0  # small ones stay side by side
