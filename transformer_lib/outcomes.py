"""Asserted outcomes of the notebooks. Hand-written (not generated from a chapter).

A trained model's accuracy, a loss reached, a speed-up measured with a clock: such a figure
depends on the seed and on which CPU kernels run (AVX2, AVX-512, AMX; MKL and oneDNN), so a
notebook asserts it against a threshold with a margin, never for equality. :func:`expect` is
that assertion, written so that it can be measured: it prints the figure beside its
threshold, and when ``TRANSFORMER_LIB_OUTCOMES`` names a file it appends one JSON line per
call there, which ``tools/portability.py`` collects from every notebook run under several
kernel selections and seeds to show how much room each threshold leaves.
"""

from __future__ import annotations

import json
import math
import os

__all__ = ["OUTCOMES_ENV", "expect"]

#: The environment variable naming the file (JSON lines) that :func:`expect` appends to.
OUTCOMES_ENV = "TRANSFORMER_LIB_OUTCOMES"


def _bound(value: float | None, argument: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{argument} must be a number, got {value!r}")
    return float(value)


def expect(name: str, value: float, *, at_least: float | None = None,
           at_most: float | None = None) -> None:
    """Assert that a measured figure lies within its bounds, and report it.

    Prints ``name: value (asserted >= at_least)``; records it for ``tools/portability.py``
    when ``TRANSFORMER_LIB_OUTCOMES`` is set (the record is written before the assertion, so
    a figure that misses its threshold is recorded too).

    Args:
        name: what was measured, unique within a notebook ("test exact match").
        value: the figure: a Python number or a one-element tensor.
        at_least: the smallest value that passes (inclusive), or None.
        at_most: the largest value that passes (inclusive), or None.

    Returns nothing, so that a check at the end of a notebook cell adds no ``Out[...]`` line
    beside the one it prints.

    Raises:
        ValueError: when ``name`` is empty, ``value`` is not a finite number, or neither
            bound is given.
        AssertionError: when ``value`` lies outside the bounds; the message names the figure,
            its value and the bound it missed.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if hasattr(value, "numel") and value.numel() != 1:
        raise ValueError(f"value must be one number, got a Tensor with {value.numel()} elements")
    if hasattr(value, "item"):  # a one-element tensor or a numpy scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"value must be a number, got {type(value).__name__}")
    value = float(value)
    low, high = _bound(at_least, "at_least"), _bound(at_most, "at_most")
    if low is None and high is None:
        raise ValueError("give at_least, at_most or both: an outcome needs a threshold")
    if low is not None and high is not None and low > high:
        raise ValueError(f"at_least ({low:g}) must not exceed at_most ({high:g})")
    passed = math.isfinite(value) and (low is None or value >= low) and (
        high is None or value <= high)
    path = os.environ.get(OUTCOMES_ENV)
    if path:
        record = {"name": name, "value": value, "at_least": low, "at_most": high,
                  "passed": passed}
        with open(path, "a", encoding="utf-8") as f:  # one short line: a whole record or none
            f.write(json.dumps(record) + "\n")
    bounds = " and ".join(s for s in (low is not None and f">= {low:g}",
                                      high is not None and f"<= {high:g}") if s)
    if not passed:
        raise AssertionError(f"{name} = {value:.4g}, expected {bounds}")
    print(f"{name}: {value:.4g} (asserted {bounds})")
