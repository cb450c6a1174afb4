"""The architecture diagrams: they draw what they say, in the book's colours, at the column width.

(Their text size is checked with every other figure in test_viz_legibility.py.)
"""

import matplotlib
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from transformer_lib import viz

matplotlib.use("Agg")


def _texts(fig: Figure) -> list[str]:
    return [text.get_text() for ax in fig.axes for text in ax.texts]


def _height(fig: Figure, label: str) -> list[float]:
    """The heights of every text ``label`` in the diagram (y grows upward)."""
    return [text.get_position()[1] for text in fig.axes[0].texts if text.get_text() == label]


def _box_faces(fig: Figure) -> set[tuple[float, ...]]:
    return {tuple(p.get_facecolor()) for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)}


def _residual_paths(fig: Figure) -> int:
    purple = to_rgba(viz.DIAGRAM_COLORS["residual"][1])
    return sum(1 for p in fig.axes[0].patches
               if isinstance(p, FancyArrowPatch) and tuple(p.get_edgecolor()) == purple)


def _face(kind: str) -> tuple[float, ...]:
    return to_rgba(viz.DIAGRAM_COLORS[kind][0])


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_has_both_sub_layers_in_the_right_order(norm_first):
    fig = viz.draw_encoder_layer(norm_first=norm_first)
    texts = _texts(fig)
    assert isinstance(fig, Figure) and fig.get_figwidth() <= viz.MAX_WIDTH
    for label in ("Multi-head self-attention", "Feed-forward", "padding mask (B, 1, 1, S)",
                  "Q = K = V", "(B, S, D)", "N ×", "input x", "output"):
        assert label in texts, label
    assert texts.count("LayerNorm") == 2 and texts.count("+") == 2
    assert _residual_paths(fig) == 2
    assert {_face("attention"), _face("feed-forward"), _face("norm")} <= _box_faces(fig)
    norms, attention = _height(fig, "LayerNorm"), _height(fig, "Multi-head self-attention")[0]
    if norm_first:  # the first norm comes before the attention, and the stack ends with one
        assert min(norms) < attention and "final LayerNorm" in texts
        assert "pre-LN" in " ".join(texts)
    else:  # the first norm comes after the attention's residual sum
        assert min(norms) > attention and "final LayerNorm" not in texts
        assert "post-LN, as in the paper" in " ".join(texts)


def test_encoder_layer_as_a_causal_block():
    texts = _texts(viz.draw_encoder_layer(norm_first=True, causal=True, activation="GELU"))
    assert "Masked self-attention" in texts and "causal mask (T, T)" in texts
    assert "(B, T, D)" in texts and "(B, S, D)" not in texts
    assert "Linear D→F, GELU, Linear F→D" in texts
    assert any(text.startswith("Decoder-only block") for text in texts)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_has_three_sub_layers_and_the_memory(norm_first):
    fig = viz.draw_decoder_layer(norm_first=norm_first)
    texts = _texts(fig)
    assert fig.get_figwidth() <= viz.MAX_WIDTH
    for label in ("Masked self-attention", "Cross-attention", "Feed-forward", "causal mask (T, T)",
                  "padding mask (B, 1, 1, S)", "K, V", "(B, S, D)", "(B, T, D)", "N ×"):
        assert label in texts, label
    assert texts.count("LayerNorm") == 3 and texts.count("+") == 3
    assert _residual_paths(fig) == 3
    heights = [_height(fig, label)[0] for label in
               ("Masked self-attention", "Cross-attention", "Feed-forward")]
    assert heights == sorted(heights)  # bottom to top, in the order the layer runs them
    assert ("final LayerNorm" in texts) == norm_first


def test_pre_post_ln_shows_both_orders_side_by_side():
    fig = viz.draw_pre_post_ln()
    texts = _texts(fig)
    assert fig.get_figwidth() <= viz.MAX_WIDTH
    for label in ("post-LN (the paper)", "pre-LN (GPT-2 and after)",
                  "x ← LayerNorm(x + Sublayer(x))", "x ← x + Sublayer(LayerNorm(x))",
                  "final LayerNorm"):
        assert label in texts, label
    assert texts.count("LayerNorm") == 4 and texts.count("Feed-forward") == 2
    assert _residual_paths(fig) == 4


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_decoder_shows_the_data_flow_with_shapes(norm_first):
    fig = viz.draw_encoder_decoder(norm_first=norm_first)
    texts = _texts(fig)
    assert fig.get_figwidth() <= viz.MAX_WIDTH
    for label in ("source token ids", "target token ids", "(B, S)", "(B, T)", "(B, S, D)",
                  "(B, T, D)", "(B, T, V)", "Embedding × √D", "Multi-head self-attention",
                  "Masked self-attention", "Cross-attention", "Linear D → V", "K, V"):
        assert label in texts, label
    assert any(text.startswith("memory") for text in texts)
    assert texts.count("Feed-forward") == 2 and texts.count("+") == 5
    assert texts.count("final LayerNorm") == (2 if norm_first else 0)
    assert _face("embedding") in _box_faces(fig) and _face("linear") in _box_faces(fig)


def test_kv_cache_shows_the_cached_and_the_new_keys_and_values():
    fig = viz.draw_kv_cache(cached=4)
    texts = _texts(fig)
    assert fig.get_figwidth() <= viz.MAX_WIDTH
    cells = [t for t in texts if t.startswith(("$k_{", "$v_{")) and t.endswith("}$")]
    assert cells == [f"${letter}_{{{j}}}$" for letter in "kv" for j in range(1, 6)]
    for label in ("(B, 1, D)", "(B, H, 5, Dh)", "weights (B, H, 1, 5), then $W^O$",
                  "$k_{5}$ appended", "$v_{5}$ appended", "$q_{5}$", "K cache", "V cache"):
        assert label in texts, label
    assert "(B, H, S, Dh)" not in texts
    cache_cells = [p for p in fig.axes[0].patches
                   if tuple(p.get_facecolor()) == _face("cache")]
    assert len(cache_cells) >= 8  # 4 keys and 4 values (and the legend's swatch)


def test_kv_cache_long_and_cross_attention():
    texts = _texts(viz.draw_kv_cache(99, cross_attention=True))
    assert "…" in texts and "$k_{99}$" in texts and "$k_{100}$" in texts
    assert "$k_{50}$" not in texts  # a long cache is drawn with an ellipsis
    assert "(B, H, S, Dh)" in texts and "(B, H, 100, Dh)" in texts
    with pytest.raises(ValueError, match="cached must be a positive int"):
        viz.draw_kv_cache(0)
