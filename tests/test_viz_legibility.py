"""Every figure that viz draws stays legible in the book: its text renders at least 9 CSS px.

The book shows a figure in a content column 688 CSS px wide (on a 1280 px desktop page); a PNG
wider than that is scaled down, its text with it. The inline backend saves a figure at its dpi,
cropped to what it draws (``bbox_inches="tight"``), and ``book/_ext/figure_text.py`` records the
smallest text's size in image pixels in the PNG (``smallest-text-px``); ``tools/check_browser.py``
fails a page whose figure text renders below 9 px. This test makes the same measurement on every
plot and diagram helper, with small inputs, so that no figure (a new one included) regresses.
"""

import importlib.util
import io
from pathlib import Path

import matplotlib
import pytest
import torch
from PIL import Image

from transformer_lib import apply_rotary, causal_mask, sinusoidal_positional_encoding, viz

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent
COLUMN_PX = 688  # the book's content column on a 1280 px desktop page, in CSS px
LIMIT_PX = 9.0  # tools/check_browser.py: the smallest figure text a reader may be shown
WORDS = "the cat sat on the mat because the mat was warm".split()
HEADS = ["previous token", "same word", "first token", "self"]
TARGETS = ["<s>", "9", "5", "1", "4", "1", "3"]
SOURCES = ["3", "1", "4", "1", "5", "9", "<pad>", "<pad>"]


def _softmax(*shape):
    return torch.softmax(torch.randn(*shape), dim=-1)


def _masks(count):
    causal = causal_mask(5)
    padding = (torch.arange(5) < 3).expand(5, 5)
    masks = [causal, padding, causal & padding, ~causal, causal.T, torch.eye(5, dtype=torch.bool)]
    return {f"mask {i}: {'a long title ' * (i % 2)}".strip(): m
            for i, m in enumerate(masks[:count])}


def _pairs(count):
    pe = sinusoidal_positional_encoding(10, 64)
    rotated = apply_rotary(torch.randn(1, 64).expand(12, 64))
    pairs = [pe[:, 0:2], pe[:, 8:10], rotated[:, 0:2]]
    return {f"pair {i} (dims {2 * i}, {2 * i + 1}): 0.32 radians per step": p
            for i, p in enumerate(pairs[:count])}


# (helper, variant) -> a call that draws it; every plot_* and draw_* helper of viz appears here
CASES = {
    ("plot_attention", "words"): lambda: viz.plot_attention(
        _softmax(11, 11), WORDS, WORDS, title="self-attention, sharpness 1.5, mask: padding "
        "(last 3 hidden)", annotate=False),
    ("plot_attention", "annotated"): lambda: viz.plot_attention(_softmax(10, 10), title="10 x 10"),
    ("plot_attention", "long"): lambda: viz.plot_attention(_softmax(24, 40)),
    ("plot_masks", "three"): lambda: viz.plot_masks(_masks(3)),
    ("plot_masks", "six, wrapped"): lambda: viz.plot_masks(_masks(6)),
    ("plot_positional_encoding", "chapter 3"): lambda: viz.plot_positional_encoding(
        sinusoidal_positional_encoding(200, 128), curve_dims=[10, 20, 21, 40, 80],
        title="sinusoidal positional encoding, d_model = 128"),
    ("plot_positional_encoding", "window"): lambda: viz.plot_positional_encoding(
        sinusoidal_positional_encoding(1000, 128), positions=(0, 1000), dims=(0, 128)),
    ("plot_position_similarity", "chapter 3"): lambda: viz.plot_position_similarity(
        _softmax(100, 100), references=[0, 30, 60], value_label="dot product",
        title="dot products of learned position vectors, at initialization"),
    ("plot_rotating_pairs", "two"): lambda: viz.plot_rotating_pairs(
        _pairs(2), title="(sin, cos) of one pair at positions 0 to 9"),
    ("plot_rotating_pairs", "three, wrapped"): lambda: viz.plot_rotating_pairs(_pairs(3)),
    ("plot_heads", "four heads, words"): lambda: viz.plot_heads(
        _softmax(4, 11, 11), WORDS, WORDS, HEADS, query=9,
        title="four heads attending to different things in the same sentence"),
    ("plot_heads", "cross-attention"): lambda: viz.plot_heads(
        _softmax(4, 7, 8), TARGETS, SOURCES, title="cross-attention of the last layer, per head"),
    ("plot_heads", "eight heads"): lambda: viz.plot_heads(_softmax(8, 6, 6)),
    ("plot_heads", "one head"): lambda: viz.plot_heads(_softmax(1, 3, 4)),
    ("plot_heads", "ncols=4"): lambda: viz.plot_heads(_softmax(4, 11, 11), WORDS, WORDS, ncols=4),
    ("plot_head_and_query", "words"): lambda: viz.plot_head_and_query(
        _softmax(4, 11, 11), 1, 9, WORDS, WORDS, HEADS),
    ("plot_head_and_query", "numbers"): lambda: viz.plot_head_and_query(_softmax(8, 30, 30), 0, 0),
    ("plot_decoder_attention", "chapter 5"): lambda: viz.plot_decoder_attention(
        _softmax(7, 7).tril(), _softmax(7, 8), TARGETS, SOURCES,
        title="last decoder layer, mean over heads", annotate=True),
    ("plot_decoder_attention", "stacked"): lambda: viz.plot_decoder_attention(
        _softmax(12, 12).tril(), _softmax(12, 20), annotate=True),
    ("draw_encoder_layer", "post-LN"): lambda: viz.draw_encoder_layer(),
    ("draw_encoder_layer", "pre-LN"): lambda: viz.draw_encoder_layer(norm_first=True),
    ("draw_encoder_layer", "GPT block"): lambda: viz.draw_encoder_layer(
        norm_first=True, causal=True, activation="GELU"),
    ("draw_decoder_layer", "post-LN"): lambda: viz.draw_decoder_layer(),
    ("draw_decoder_layer", "pre-LN"): lambda: viz.draw_decoder_layer(norm_first=True),
    ("draw_pre_post_ln", ""): lambda: viz.draw_pre_post_ln(),
    ("draw_encoder_decoder", "post-LN"): lambda: viz.draw_encoder_decoder(),
    ("draw_encoder_decoder", "pre-LN"): lambda: viz.draw_encoder_decoder(norm_first=True),
    ("draw_kv_cache", "4 cached"): lambda: viz.draw_kv_cache(),
    ("draw_kv_cache", "1 cached"): lambda: viz.draw_kv_cache(1),
    ("draw_kv_cache", "cross-attention"): lambda: viz.draw_kv_cache(99, cross_attention=True),
    ("plot_tokens", "lines"): lambda: viz.plot_tokens(
        [["    ", " def", " __", "init", "__(", "self", "):", "\n"] * 4, ["x", " =", " 1"]],
        labels=["32 tokens", "3 tokens"], title="Held-out lines in 1,024 tokens"),
}


@pytest.fixture(scope="module")
def figure_text():
    """book/_ext/figure_text.py installed, as the book build's kernels run it; undone after."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    spec = importlib.util.spec_from_file_location("figure_text", ROOT / "book/_ext/figure_text.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = Text.draw, FigureCanvasAgg.print_png
    module.install()
    yield module
    Text.draw, FigureCanvasAgg.print_png = saved


def rendered(fig, figure_text) -> tuple[float, int, str]:
    """The smallest text's height in CSS px as the book's desktop page shows ``fig``, the
    PNG's natural width, and what that text is."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")  # as the inline backend
    buffer.seek(0)
    with Image.open(buffer) as image:
        width, record = image.width, dict(image.text)
    assert record.get(figure_text.TEXT_PX_KEY) not in (None, "none"), "the figure drew no text"
    scale = min(1.0, COLUMN_PX / width)
    return float(record[figure_text.TEXT_PX_KEY]) * scale, width, record[figure_text.TEXT_WHAT_KEY]


@pytest.mark.parametrize("case", list(CASES), ids=[" ".join(case).strip() for case in CASES])
def test_figure_text_is_at_least_9_px_at_the_column_width(case, figure_text):
    fig = CASES[case]()
    assert fig.dpi == 100, "the chapters' figures are saved at 100 dpi; the measurement assumes it"
    px, width, what = rendered(fig, figure_text)
    assert px >= LIMIT_PX, (
        f"{case[0]} ({case[1]}): its smallest text, {what}, renders at {px:.1f} px on a desktop "
        f"page ({width} px wide, shown at {min(1.0, COLUMN_PX / width):.2f}x in the 688 px "
        f"column); make the figure narrower (at most viz.MAX_WIDTH = {viz.MAX_WIDTH} in) or "
        f"its text larger")


def test_every_plot_and_diagram_helper_is_measured():
    helpers = {name for name in viz.__all__ if name.startswith(("plot_", "draw_"))}
    assert helpers == {helper for helper, _ in CASES}, "add CASES entries for a new figure helper"

