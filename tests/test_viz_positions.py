"""The plot helpers chapter 3 uses: they return Figures and reject bad arguments by name."""

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from transformer_lib import apply_rotary, sinusoidal_positional_encoding, viz

matplotlib.use("Agg")


def test_plot_positional_encoding_returns_a_figure_with_a_window():
    pe = sinusoidal_positional_encoding(50, 16)
    fig = viz.plot_positional_encoding(pe, positions=(10, 30), dims=(4, 12), title="window")
    assert isinstance(fig, Figure)
    heatmap, curves = fig.axes[:2]
    assert heatmap.get_title() == "window"
    assert ([line.get_label() for line in curves.get_lines()]
            == ["dim 4", "dim 6", "dim 9", "dim 11"])
    assert curves.get_xlim() == (9.5, 29.5)
    fig = viz.plot_positional_encoding(pe, curve_dims=[0, 1])
    assert len(fig.axes[1].get_lines()) == 2


@pytest.mark.parametrize("kwargs,name", [
    ({"positions": (5, 60)}, "positions"),
    ({"dims": (8, 8)}, "dims"),
    ({"curve_dims": [16]}, "curve_dims"),
])
def test_plot_positional_encoding_rejects_bad_windows(kwargs, name):
    with pytest.raises(ValueError, match=name):
        viz.plot_positional_encoding(sinusoidal_positional_encoding(50, 16), **kwargs)
    with pytest.raises(ValueError, match="pe"):
        viz.plot_positional_encoding(torch.zeros(3, 4, 5))


def test_plot_position_similarity_draws_one_curve_per_reference():
    pe = sinusoidal_positional_encoding(40, 16)
    fig = viz.plot_position_similarity(pe @ pe.T, references=[0, 10, 20, 30], value_label="score")
    assert isinstance(fig, Figure)
    right = fig.axes[1]
    assert len(right.get_lines()) == 5  # four references and the line at offset 0
    assert right.get_ylabel() == "score"
    with pytest.raises(ValueError, match="square"):
        viz.plot_position_similarity(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="references"):
        viz.plot_position_similarity(torch.zeros(4, 4), references=[4])


def test_plot_rotating_pairs_one_panel_per_entry():
    q = apply_rotary(torch.randn(1, 8).expand(6, 8))
    fig = viz.plot_rotating_pairs({"pair 0": q[:, :2], "pair 3": q[:, 6:]}, title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    with pytest.raises(ValueError, match="pair 0"):
        viz.plot_rotating_pairs({"pair 0": torch.zeros(6, 3)})
    with pytest.raises(ValueError, match="pairs"):
        viz.plot_rotating_pairs({})


def test_plot_rotating_pairs_wraps_into_rows():
    pe = sinusoidal_positional_encoding(6, 8)
    fig = viz.plot_rotating_pairs({f"pair {i}": pe[:, 2 * i: 2 * i + 2] for i in range(3)})
    fig.draw_without_rendering()
    shown = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in shown] == ["pair 0", "pair 1", "pair 2"]
    assert len({round(ax.get_position().y0, 3) for ax in shown}) == 2  # two rows of two
    assert fig.get_figwidth() <= viz.MAX_WIDTH
