"""The plot helper chapter 5 uses: self- and cross-attention side by side."""

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from transformer_lib import DecoderLayer, causal_mask, viz

matplotlib.use("Agg")


def test_plot_decoder_attention_draws_both_panels_from_a_layer():
    layer = DecoderLayer(8, 2, 16, dropout=0.0).eval()
    self_w, cross_w = layer.attention_weights(torch.randn(1, 4, 8), torch.randn(1, 3, 8), causal_mask(4))
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
