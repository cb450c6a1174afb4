"""Argument checks that several modules share. Hand-written (not generated from a chapter).

Its source is this file. The chapters' modules import these checks from here, so that one mistake
gets one message wherever it is made: ``attention.py`` (chapter 1), ``multihead.py`` (chapter 2),
``encoder.py`` (chapter 4), ``decoder.py`` (chapter 5) and ``model.py`` (chapter 6). Each check
raises a ``ValueError`` (a ``TypeError`` for a wrong type) that names the argument and says what it
should be.

The names are public; the module's leading underscore says that it is the package's plumbing,
not its interface: ``transformer_lib`` does not re-export it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["check_layer_norm_eps", "check_mask", "check_positive_ints", "check_probability",
           "check_sequences", "renamed_keyword"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keyword(**renames: str) -> Callable[[F], F]:
    """A function's keyword that has a new name: the old one still works, with a warning.

    ``@renamed_keyword(max_len="max_new_tokens")`` passes ``max_len=`` on as ``max_new_tokens=``
    and warns (``FutureWarning``, which Python shows by default) that the old name will go. Giving
    both names is a ``TypeError``, as Python's own for a repeated argument. The signature that
    ``help`` and ``inspect`` show is the function's own, with the new name only.
    """
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old}= and {new}=; "
                                        f"{old} is the old name of {new}: pass {new} only")
                    warnings.warn(f"{fn.__name__}(): {old}= is renamed {new}=; the old name "
                                  "will be removed", FutureWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def check_positive_ints(**values: int) -> None:
    """Each keyword's value is a positive ``int`` (not a ``bool``)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_sequences(d_model: int, **tensors: tuple[object, str]) -> None:
    """Each keyword names a ``(tensor, shape)`` pair: the tensor is a ``torch.Tensor`` of that
    shape, written like ``"(B, T, D)"``, whose last size is ``D = d_model``."""
    for name, (t, shape) in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, "
                            f"got {type(t).__name__}")
        if t.dim() != 3 or t.size(-1) != d_model:
            raise ValueError(f"{name} must have shape {shape} with D = d_model = {d_model}, "
                             f"got shape {tuple(t.shape)}")


def check_probability(name: str, value: float) -> None:
    """``value`` is a probability, in ``[0, 1]``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def check_layer_norm_eps(value: float) -> None:
    """A LayerNorm's ``eps`` is a positive finite number."""
    # eps keeps the division by the standard deviation finite: 0 or less gives inf or NaN
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value < float("inf")):
        raise ValueError(f"layer_norm_eps must be a positive finite number, got {value!r}")


def check_mask(name: str, mask: Tensor | None, shape: torch.Size, letters: str) -> None:
    """A mask is ``None`` or a bool tensor that broadcasts to ``shape``, spelled ``letters``
    in the message (e.g. ``"(B, H, T, S)"``)."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = may attend), "
                         f"got dtype {mask.dtype}; convert a 0/1 mask with mask.bool()")
    try:
        fits = torch.broadcast_shapes(mask.shape, shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to {letters} = "
                         f"{tuple(shape)}")
