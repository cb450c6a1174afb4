"""Lab checks: compare a learner's function or class with the package's reference.

Hand-written (not generated from a chapter); the labs (``labs/``) call these, and
``tests/test_checks.py`` holds the catalogue of wrong implementations they must diagnose.

Every check runs the learner's code on random inputs (from its own seeded generator, so the
notebook's random state is left alone) over the cases learners get wrong: keys and values of
different sizes, padding and causal masks, queries that may attend to nothing, both norm
placements, batches whose items need different answers. For a class, the check builds the
library's module with the same arguments, sets **every** parameter to random values (LayerNorm
gains and biases included), loads them into the learner's module by the contract's names, and
compares the two in eval mode.

* On success a check prints one line: ``check_attention: all 7 cases pass``.
* On failure it raises ``AssertionError`` naming the likely mistake. It finds it by computing
  known-wrong variants of the reference (no scale, softmax over the queries, mask inverted,
  heads split without a transpose, norm in the wrong place, ...) and asking which one the
  learner's output matches on every case so far; failing that, it looks at properties of the
  output (NaN, weights on masked keys, rows that do not sum to one). The message also shows the
  case and a small diff. Decoders are run on hand-made table models, whose answers are known and
  whose sources need different answers, and on small random Transformers; their diff shows the
  learner's sequences next to the expected ones. The training checks (lab 05) train tiny GPTs,
  with autograd on (plain SGD shows a gradient's scale, which AdamW would hide), and compare the
  parameters after each update; a count of FLOPs or a learning rate is compared as a number.
* An exception inside the learner's code is reported as such (``AssertionError: your code raised
  ...``, with the learner's lines); a ``NotImplementedError`` from a lab's stub becomes a
  friendly ``NotImplementedError`` saying which exercise is not done yet.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import numbers
import re
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lib.attention import causal_mask, padding_mask, scaled_dot_product_attention
from transformer_lib.decoder import DecoderLayer
from transformer_lib.decoding import beam_search, greedy_decode, length_penalty, sequence_log_prob
from transformer_lib.encoder import ACTIVATIONS, EncoderLayer, FeedForward, sublayer_connection
from transformer_lib.gpt import GPT, GPTConfig, lm_loss
from transformer_lib.model import Transformer, TransformerConfig
from transformer_lib.multihead import MultiHeadAttention
from transformer_lib.training import warmup_cosine_schedule

__all__ = [
    "check_attention",
    "check_causal_mask",
    "check_padding_mask",
    "check_split_heads",
    "check_merge_heads",
    "check_multi_head_attention",
    "check_feed_forward",
    "check_sublayer_connection",
    "check_encoder_layer",
    "check_decoder_layer",
    "check_greedy_decode",
    "check_sequence_log_prob",
    "check_top_candidates",
    "check_beam_search",
    "check_flops_per_token",
    "check_train_step",
    "check_lr_schedule",
    "check_resume",
]

RTOL, ATOL = 1e-4, 1e-5  # float32 agreement: different but correct orders of operations pass
_STUB = re.compile(r"^(Exercise \d+ \(.*\)): write your code here$", re.DOTALL)
_THIS_FILE = Path(__file__).resolve()
_TORCH_DIR = Path(torch.__file__).resolve().parent
_PACKAGE_DIR = _THIS_FILE.parent


# --- running a check ---------------------------------------------------------------------------


def _isolated(check: Callable[..., None], *, autograd: bool = False) -> Callable[..., None]:
    """Run a check without touching the caller's state: its random numbers come from a forked
    generator, no autograd graph is built (unless ``autograd``: the checks that train a model
    call ``backward``), and PyTorch uses one thread (the tensors are tiny, and several threads on
    a busy machine can make them a hundred times slower)."""

    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(autograd):
                return check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


# --- calling the learner's code -------------------------------------------------------------


def _learner_frames(err: BaseException, limit: int = 3) -> list[str]:
    """The learner's own lines from a traceback: not the package's, not PyTorch's."""
    frames = traceback.extract_tb(err.__traceback__)
    keep = []
    for frame in frames:
        path = Path(frame.filename).resolve()
        if _PACKAGE_DIR in path.parents or _TORCH_DIR in path.parents:
            continue
        keep.append(frame)
    if not keep and frames:
        keep = [frames[-1]]
    lines = []
    for frame in keep[-limit:]:
        code = f": {frame.line.strip()}" if frame.line else ""
        lines.append(f"    line {frame.lineno}, in {frame.name}{code}")
    return lines


_ERROR_HINTS = [
    ("view size is not compatible", "after a transpose the tensor's memory is no longer in order, "
     "so .view cannot regroup it: use .reshape(...), or .contiguous().view(...)"),
    ("must match the size of tensor", "two tensors' shapes do not line up; print the shapes "
     "of what you combine, and compare them with the shape legend (B, H, T, S, D, Dh)"),
    ("cannot be converted to Scalar", "the batch has several sources, so this tensor has one "
     "value per source: test them all at once, for example done |= next_token == eos_id, then "
     "done.all()"),
    ("Boolean value of Tensor with more than one value", "the batch has several sources, so "
     "this comparison gives one bool per source: combine them with .all() or .any(), or keep "
     "them in a (B,) bool tensor"),
    ("a checkpoint holds only tensors", "save_checkpoint's keyword arguments are plain values: "
     "pass the model and the optimizer as its second and third arguments, and a generator's "
     "state as generator=generator.get_state() (a tensor; restore it with generator.set_state)"),
]


def _call(check: str, where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the learner's code; turn its exceptions into messages about the learner's code."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        stub = _STUB.match(str(err))
        if stub:
            message = (f"{check}: {stub.group(1)} is not done yet. Replace the line "
                       f"`raise NotImplementedError(...)` with your code, run that cell, then run "
                       f"this check again.")
        else:
            message = (f"{check}: your code raised NotImplementedError({str(err)!r}): some part "
                       f"of it is not written yet.")
        raise NotImplementedError(message) from None
    except Exception as err:
        lines = [f"{check}: your code raised {type(err).__name__}: {err}", *_learner_frames(err),
                 f"  while {where}"]
        for pattern, hint in _ERROR_HINTS:
            if pattern in str(err):
                lines.append(f"  hint: {hint}")
        raise AssertionError("\n".join(lines)) from None


# --- cases, comparisons and diffs -----------------------------------------------------------


@dataclass
class _Case:
    """One test case: a name, the inputs, and (for classes) constructor arguments."""

    name: str
    inputs: dict[str, Any]
    init: dict[str, Any] = field(default_factory=dict)
    repeat: bool = False  # call twice and require the same output (dropout must be off in eval)
    state: dict[str, Any] = field(default_factory=dict)  # the reference module, for variants
    where: str = ""  # "case 2 of 7 (...)", set when the case runs
    positional: int = 0  # how many leading inputs are passed by position (the rest by keyword)
    init_positional: int = 0  # the same for the constructor arguments

    def args(self) -> tuple[list[Any], dict[str, Any]]:
        items = list(self.inputs.items())
        return [v for _, v in items[:self.positional]], dict(items[self.positional:])

    def init_args(self) -> tuple[list[Any], dict[str, Any]]:
        items = list(self.init.items())
        return [v for _, v in items[:self.init_positional]], dict(items[self.init_positional:])

    def describe(self) -> str:
        parts = []
        for key, value in self.inputs.items():
            if isinstance(value, Tensor):
                parts.append(f"{key} {tuple(value.shape)}")
            elif isinstance(value, (int, float, bool, str)) or value is None:
                parts.append(f"{key}={value!r}")
        text = f"{self.name}: " + ", ".join(parts)
        if self.init:
            text += "; built with " + ", ".join(f"{k}={v!r}" for k, v in self.init.items())
        return text


def _as_tuple(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _close(a: Any, b: Any) -> bool:
    """Same shape and dtype kind, equal to float32 rounding; NaN matches NaN."""
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape:
        return False
    if a.dtype == torch.bool or b.dtype == torch.bool:
        return a.dtype == b.dtype and bool((a == b).all())
    return torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL, equal_nan=True)


def _same(got: Any, want: Any) -> bool:
    got, want = _as_tuple(got), _as_tuple(want)
    return len(got) == len(want) and all(_close(a, b) for a, b in zip(got, want))


def _num(value: float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _row(t: Tensor, limit: int = 6) -> str:
    values = t.flatten().tolist()
    text = ", ".join(_num(v) for v in values[:limit])
    return f"[{text}{', ...' if len(values) > limit else ''}]"


def _diff_tensor(name: str, got: Any, want: Tensor) -> str | None:
    """A few lines locating the largest difference; ``None`` if the tensors agree."""
    if not isinstance(got, Tensor):
        return f"  {name}: yours is a {type(got).__name__}, expected a tensor of shape {tuple(want.shape)}"
    if got.shape != want.shape:
        return f"  {name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if _close(got, want):
        return None
    if want.dtype == torch.bool or got.dtype == torch.bool:
        wrong = got.bool() != want
        count = int(wrong.sum())
        lines = [f"  {name}: {count} of {want.numel()} entries differ (1 = True, 0 = False)"]
        if want.dim() == 2 and want.size(0) <= 8:
            for i in range(want.size(0)):
                lines.append(f"    row {i}: yours {_row(got[i].bool(), 8)}   expected {_row(want[i], 8)}")
        else:
            index = tuple(int(i) for i in wrong.nonzero()[0])
            lines.append(f"    yours    {_row(got.bool()[index[:-1]], 8)} at {list(index[:-1])}")
            lines.append(f"    expected {_row(want[index[:-1]], 8)}")
        return "\n".join(lines)
    g, w = got.detach().double(), want.detach().double()
    err = (g - w).abs()
    err = torch.where(torch.isnan(g) & torch.isnan(w), torch.zeros_like(err), err)
    err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)
    flat = int(err.flatten().argmax())
    index = []
    for size in reversed(want.shape):
        index.append(flat % size)
        flat //= size
    index = index[::-1]
    worst = err[tuple(index)].item()
    bad = int((err > ATOL + RTOL * w.abs().nan_to_num()).sum())
    what = "NaN" if math.isinf(worst) else f"largest difference {worst:.3g}"
    head = f"  {name}: {what} at {index} ({bad} of {want.numel()} numbers differ)"
    if want.dim() == 0:
        return f"{head}\n    yours {_num(g.item())}, expected {_num(w.item())}"
    if not (want.is_floating_point() or got.is_floating_point()):
        g, w = g.long(), w.long()  # token ids and indices: show them as integers
    at = "[" + ", ".join([str(i) for i in index[:-1]] + [":"]) + "]"
    return "\n".join([head, f"    yours    {at} = {_row(g[tuple(index[:-1])])}",
                      f"    expected {at} = {_row(w[tuple(index[:-1])])}"])


def _diff(got: Any, want: Any, parts: Sequence[str]) -> str:
    got, want = _as_tuple(got), _as_tuple(want)
    lines = []
    for i, (name, a, b) in enumerate(zip(parts, got, want)):
        if any(want[j] is b and _close(got[j], a) for j in range(i)):
            continue  # the same tensor again (MultiHeadAttention's two outputs): shown already
        if diff := _diff_tensor(name, a, b):
            lines.append(diff)
    return "\n".join(lines)


Variant = tuple[Any, Callable[[_Case], Any]]  # (diagnosis: str or f(case) -> str, output of a bug)


def _matches(variant: Callable[[_Case], Any], seen: list[tuple[_Case, Any]], parts: slice) -> bool:
    for case, got in seen:
        try:
            out = variant(case)
        except Exception:
            return False
        if not _same(_as_tuple(got)[parts], _as_tuple(out)[parts]):
            return False
    return True


def _close_shape(got: Sequence[Any], want: Any) -> bool:
    """The first part of ``got`` is a tensor of the expected shape."""
    first, expected = got[0] if got else None, _as_tuple(want)[0]
    return isinstance(first, Tensor) and first.shape == expected.shape


def _diagnose(variants: Sequence[Variant], seen: list[tuple[_Case, Any]], want: Any,
              parts_only: bool = False) -> str | None:
    """The first known mistake whose output the learner's matches on every case so far.

    A mistake counts only if it changes the result of the failing case (the part compared):
    a mask that is ignored explains nothing in a case without a mask.
    """
    case, got = seen[-1]
    for parts in (slice(0, 1),) if parts_only else (slice(None), slice(0, 1)):
        if _same(_as_tuple(got)[parts], _as_tuple(want)[parts]):
            continue  # this part is right: the mistake is elsewhere
        for diagnosis, variant in variants:
            if _matches(variant, seen, parts):
                return diagnosis(case) if callable(diagnosis) else diagnosis
    return None


def _run(
    check: str,
    cases: Sequence[_Case],
    learner: Callable[[_Case], Any],
    reference: Callable[[_Case], Any],
    *,
    parts: Sequence[str] = ("output",),
    variants: Sequence[Variant] = (),
    structure: Callable[[Any, Any, _Case], str | None] | None = None,
    hints: Callable[[Any, Any, _Case], str | None] | None = None,
    total: int | None = None,
) -> int:
    """Run every case; raise an AssertionError with a diagnosis at the first failure."""
    seen: list[tuple[_Case, Any]] = []
    for number, case in enumerate(cases, 1):
        where = case.where = f"case {number} of {total or len(cases)} ({case.describe()})"
        got = learner(case)
        want = reference(case)
        problem = structure(got, want, case) if structure else None
        if problem is not None and isinstance(got, (tuple, list)) and _close_shape(got, want):
            # the output is fine in form: a known mistake may explain both it and the problem
            diagnosis = _diagnose(variants, [*seen, (case, got)], want, parts_only=True)
            problem = f"{diagnosis} ({problem})" if diagnosis else problem
        if problem is None and case.repeat:
            again = learner(case)
            if not _same(got, again):
                problem = ("your output changes from one call to the next in eval mode: dropout "
                           "must act only in training mode (use an nn.Dropout submodule, or pass "
                           "training=self.training / dropout_p only when self.training)")
        if problem is None and _same(got, want):
            seen.append((case, got))
            continue
        details = ""
        if problem is None:
            seen.append((case, got))
            problem = _diagnose(variants, seen, want) or (hints(got, want, case) if hints else None)
            problem = problem or ("your output differs from the reference, and it matches none of "
                                  "the common mistakes this check knows; compare your code with "
                                  "the equations above, step by step")
            details = "\n" + _diff(got, want, parts)
        raise AssertionError(f"{check}: {problem}\n  in {where}{details}")
    return len(cases)


def _passed(check: str, count: int) -> None:
    print(f"{check}: all {count} cases pass")


def _structure(parts: Sequence[str], got: Any, want: Any) -> str | None:
    """Type, count, shape and dtype problems, which no numeric diagnosis can explain."""
    got_t, want_t = _as_tuple(got), _as_tuple(want)
    if len(want_t) > 1 and not isinstance(got, (tuple, list)):
        return (f"return a tuple ({', '.join(parts)}); yours returned a single "
                f"{type(got).__name__}")
    if len(got_t) != len(want_t):
        return f"return {len(want_t)} values ({', '.join(parts)}); yours returned {len(got_t)}"
    for name, a in zip(parts, got_t):
        if not isinstance(a, Tensor):
            return f"the {name} must be a torch.Tensor; yours is a {type(a).__name__}"
    if len(want_t) == 2 and got_t[0].shape == want_t[1].shape and got_t[1].shape == want_t[0].shape \
            and want_t[0].shape != want_t[1].shape:
        return f"return ({parts[0]}, {parts[1]}) in this order; yours are the other way round"
    for name, a, b in zip(parts, got_t, want_t):
        if a.shape != b.shape:
            return f"the shape of the {name} is {tuple(a.shape)}, expected {tuple(b.shape)}"
        if a.dtype != b.dtype:
            return (f"the dtype of the {name} is {a.dtype}, expected {b.dtype} (keep the inputs' "
                    f"dtype; a mask is a bool tensor)")
    return None


# --- random tensors and modules -------------------------------------------------------------


def _randn(g: torch.Generator, *shape: int, std: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=g) * std


@torch.no_grad()
def _randomize(module: nn.Module, g: torch.Generator) -> nn.Module:
    """Every parameter random: weights ~ N(0, 1.5 / fan_in), biases ~ N(0, 0.5),
    LayerNorm gains ~ 1 + N(0, 0.3) (so a check sees a norm that is left at 1 and 0)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            p.copy_(_randn(g, *p.shape, std=1.5 / math.sqrt(p.shape[-1])))
        elif name.split(".")[-1] == "weight":  # a LayerNorm gain
            p.copy_(1.0 + _randn(g, *p.shape, std=0.3))
        else:
            p.copy_(_randn(g, *p.shape, std=0.5))
    return module


def _build(check: str, cls: Any, case: _Case, reference: nn.Module, names_hint: str) -> nn.Module:
    """Instantiate the learner's class and load the reference's (random) parameters into it."""
    where = case.where
    args, kwargs = case.init_args()
    module = _call(check, f"building {getattr(cls, '__name__', cls)}({_kwargs(case.init)}) for "
                   f"{where}", cls, *args, **kwargs)
    if not isinstance(module, nn.Module):
        raise AssertionError(f"{check}: your class must be an nn.Module (class ...(nn.Module)); "
                             f"calling it gave a {type(module).__name__}")
    want = reference.state_dict()
    have = module.state_dict()
    params = dict(module.named_parameters())
    missing = [f"{n} {tuple(t.shape)}" for n, t in want.items() if n not in have]
    extra = [f"{n} {tuple(t.shape)}" for n, t in params.items() if n not in want]
    wrong = [f"{n}: yours {tuple(have[n].shape)}, expected {tuple(t.shape)}"
             for n, t in want.items() if n in have and have[n].shape != t.shape]
    if missing or extra or wrong:
        lines = [f"{check}: your module's parameters do not match the contract's names and shapes, "
                 f"so the check cannot give it the reference's weights ({where})"]
        if missing:
            lines.append("  missing: " + ", ".join(missing))
        if extra:
            lines.append("  not in the contract: " + ", ".join(extra))
        if wrong:
            lines.append("  wrong shape: " + "; ".join(wrong))
        lines.append(f"  {names_hint}")
        raise AssertionError("\n".join(lines))
    module.load_state_dict(want, strict=False)
    return module.eval()


def _kwargs(init: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in init.items())


# --- attention (lab 01) ---------------------------------------------------------------------


def _attention_math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *,
                    scale: float | None = None, softmax_dim: int = -1, fill: str = "min",
                    zero_empty: bool = True, invert: bool = False, scores_transposed: bool = False,
                    softmax: bool = True, mask_after: bool = False,
                    values: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Attention with switches that reproduce common mistakes (all off: the right answer)."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    if scores_transposed:
        scores = (k @ q.transpose(-2, -1)) * scale
    else:
        scores = (q @ k.transpose(-2, -1)) * scale
    if mask is not None and invert:
        mask = ~mask
    if mask is not None and not mask_after:
        value = {"min": torch.finfo(scores.dtype).min, "-inf": -math.inf, "-1e9": -1e9}[fill]
        scores = scores.masked_fill(~mask, value)
    weights = torch.softmax(scores, dim=softmax_dim) if softmax else scores
    if mask is not None and mask_after:
        weights = weights * mask
    elif mask is not None and zero_empty:
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return weights @ (v if values is None else values), weights


def _attention_variants() -> list[Variant]:
    def qkv(case: _Case) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        i = case.inputs
        return i["query"], i["key"], i["value"], i.get("mask")

    def var(**options: Any) -> Callable[[_Case], Any]:
        return lambda case: _attention_math(*qkv(case), **options)

    def scaled(by: Callable[[Tensor, Tensor, Tensor], float]) -> Callable[[_Case], Any]:
        return lambda case: _attention_math(*qkv(case), scale=by(*qkv(case)[:3]))

    return [
        ("the scores are not scaled: divide query @ key^T by sqrt(d_k), where d_k = query.size(-1)",
         var(scale=1.0)),
        ("the scores are divided by d_k; divide them by sqrt(d_k) instead (math.sqrt(d_k))",
         scaled(lambda q, k, v: 1.0 / q.size(-1))),
        ("the scores are multiplied by sqrt(d_k); divide by it instead",
         scaled(lambda q, k, v: math.sqrt(q.size(-1)))),
        ("the scores are scaled with the values' width d_v = value.size(-1); the scale uses the "
         "width that queries and keys share, d_k = query.size(-1)",
         scaled(lambda q, k, v: 1.0 / math.sqrt(v.size(-1)))),
        ("the scores are scaled with the number of queries (query.size(-2)); d_k is the last "
         "axis, query.size(-1)", scaled(lambda q, k, v: 1.0 / math.sqrt(q.size(-2)))),
        ("the scores are scaled with the number of keys (key.size(-2)); d_k is the last axis, "
         "query.size(-1)", scaled(lambda q, k, v: 1.0 / math.sqrt(k.size(-2)))),
        ("the softmax runs over the queries (dim=-2; for 3-D inputs also dim=1): each query's "
         "weights must sum to 1 over the keys, softmax(scores, dim=-1)", var(softmax_dim=-2)),
        ("the softmax runs over dim=1, which for (B, H, T, S) scores is the heads: normalize over "
         "the keys, the last axis, softmax(scores, dim=-1), whatever the number of leading axes",
         var(softmax_dim=1)),
        ("the softmax runs over the batch (dim=0; softmax without dim= picks it for 3-D inputs): "
         "normalize over the keys, softmax(scores, dim=-1)", var(softmax_dim=0)),
        ("the weights are not normalized: apply a softmax over the keys (dim=-1) to the scores",
         var(softmax=False)),
        ("the scores are key @ query^T, transposed: the score of query i and key j is "
         "(query @ key.transpose(-2, -1))[..., i, j]", var(scores_transposed=True)),
        ("the mask is ignored: before the softmax, fill the scores where mask is False with a "
         "large negative number (scores.masked_fill(~mask, ...))",
         lambda case: _attention_math(*qkv(case)[:3], None)),
        ("the mask is inverted: True means 'may attend', so hide the scores where the mask is "
         "False, scores.masked_fill(~mask, ...), not where it is True", var(invert=True)),
        ("the mask is inverted: True means 'may attend', so hide the scores where the mask is "
         "False, scores.masked_fill(~mask, ...), not where it is True",
         var(invert=True, fill="-inf", zero_empty=False)),
        ("the mask is inverted: True means 'may attend', so hide the scores where the mask is "
         "False, scores.masked_fill(~mask, ...), not where it is True",
         var(invert=True, fill="-1e9", zero_empty=False)),
        ("a query that may attend to nothing gives NaN: with -inf in every score of its row, the "
         "softmax computes 0/0. Fill with a large finite negative number "
         "(torch.finfo(scores.dtype).min) and set the weights of such rows to zero "
         "(mask.any(dim=-1, keepdim=True) tells which rows have a visible key)",
         var(fill="-inf", zero_empty=False)),
        ("a query that may attend to nothing gets a uniform average of all values instead of "
         "zeros: after the softmax, zero the weights of rows with no visible key "
         "(weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0))",
         var(fill="-1e9", zero_empty=False)),
        ("the mask is applied after the softmax, so the remaining weights no longer sum to 1: "
         "mask the scores before the softmax", var(mask_after=True)),
        ("the output averages the keys; it should average the values: output = weights @ value",
         lambda case: _attention_math(*qkv(case), values=qkv(case)[1])),
    ]


def _attention_hints(got: Any, want: Any, case: _Case) -> str | None:
    out, weights = got
    want_out, want_weights = want
    mask = case.inputs.get("mask")
    if torch.isnan(out).any() or torch.isnan(weights).any():
        return ("your result has NaN where the reference has numbers; a row of scores that are all "
                "-inf gives NaN in the softmax")
    if mask is not None:
        hidden = ~mask.expand_as(weights)
        if (weights[hidden].abs() > 1e-6).any():
            return ("your weights are not zero on masked keys (where the mask is False): fill those "
                    "scores with a large negative number before the softmax")
    visible = want_weights.sum(-1) > 0.5
    if not torch.allclose(weights.sum(-1)[visible], torch.ones_like(weights.sum(-1)[visible]),
                          atol=1e-4):
        return ("your weights do not sum to 1 over the keys for each query: the softmax must "
                "normalize over the last axis")
    if _close(weights, want_weights):
        return "your weights are right but the output is not: output = weights @ value"
    return None


def _attention_cases(g: torch.Generator) -> list[_Case]:
    def qkv(*batch: int, T: int, S: int, Dk: int, Dv: int) -> dict[str, Tensor]:
        return {"query": _randn(g, *batch, T, Dk, std=1.5), "key": _randn(g, *batch, S, Dk, std=1.5),
                "value": _randn(g, *batch, S, Dv)}

    lengths = torch.tensor([6, 4, 2])
    padding = (torch.arange(6) < lengths[:, None]).view(3, 1, 1, 6)  # (B, 1, 1, S)
    random = torch.rand(2, 3, 4, 5, generator=g) < 0.5  # (B, H, T, S)
    random[..., 0] = True
    random[0, 1, 2] = False  # these queries may attend to nothing
    random[1, 0, 0] = False
    cases = [
        _Case("(B, T, Dk) inputs, no mask", qkv(2, T=4, S=4, Dk=8, Dv=8)),
        _Case("keys and values of different sizes (T != S, Dk != Dv)", qkv(2, T=3, S=5, Dk=6, Dv=4)),
        _Case("a head axis, (B, H, T, Dk) inputs", qkv(2, 3, T=4, S=6, Dk=8, Dv=3)),
        _Case("causal mask (T, T)", {**qkv(2, T=5, S=5, Dk=8, Dv=4), "mask": causal_mask(5)}),
        _Case("padding mask (B, 1, 1, S), items of lengths 6, 4 and 2",
              {**qkv(3, 2, T=4, S=6, Dk=4, Dv=5), "mask": padding}),
        _Case("random mask (B, H, T, S) with queries that may attend to nothing",
              {**qkv(2, 3, T=4, S=5, Dk=6, Dv=4), "mask": random}),
    ]
    for case in cases:
        case.positional = 3  # fn(query, key, value, mask=...)
    return cases


def _check_attention_dropout(check: str, fn: Callable[..., Any], g: torch.Generator) -> None:
    q, k, v = _randn(g, 2, 6, 8, std=1.5), _randn(g, 2, 6, 8, std=1.5), _randn(g, 2, 6, 4)
    p = 0.5
    where = "case 7 of 7 (dropout_p=0.5: query (2, 6, 8), key (2, 6, 8), value (2, 6, 4))"
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
    got = _call(check, f"running {where}", fn, q, k, v, dropout_p=p)
    want_out, plain = scaled_dot_product_attention(q, k, v)
    problem = _structure(("output", "weights"), got, (want_out, plain))
    if problem is None:
        out, weights = got
        dropped = weights.abs() < 1e-6
        kept = torch.isclose(weights, plain / (1 - p), rtol=RTOL, atol=ATOL)
        unscaled = torch.isclose(weights, plain, rtol=RTOL, atol=ATOL)
        if bool(unscaled.all()):
            problem = ("dropout_p is ignored: apply dropout to the weights after the softmax, "
                       "torch.nn.functional.dropout(weights, p=dropout_p)")
        elif bool((dropped | unscaled).all()) and bool(dropped.any()):
            problem = ("the kept weights are not rescaled: dropout divides what it keeps by "
                       "(1 - dropout_p), so the expected weight stays the same; "
                       "torch.nn.functional.dropout does it for you")
        elif not bool((dropped | kept).all()) or not bool(dropped.any()):
            problem = ("with dropout_p=0.5 every weight should be either 0 (dropped) or twice its "
                       "value without dropout (kept, divided by 1 - dropout_p): apply dropout to "
                       "the weights after the softmax")
        elif not _close(out, weights @ v):
            problem = ("the output must be computed from the weights after dropout "
                       "(output = weights @ value), and those are the weights to return")
    if problem:
        raise AssertionError(f"{check}: {problem}\n  in {where}")


@_isolated
def check_attention(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(query, key, value, mask=None, dropout_p=0.0) -> (output, weights)``.

    Compares with :func:`transformer_lib.scaled_dot_product_attention` on 3-D and 4-D inputs,
    keys and values of different sizes, causal, padding and random masks (with queries that may
    attend to nothing: zero weights and zero output, never NaN), and checks dropout on the
    weights. Prints one line if everything agrees; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    check = "check_attention"
    g = torch.Generator().manual_seed(seed)
    cases = _attention_cases(g)

    def learner(case: _Case) -> Any:
        args, kwargs = case.args()
        return _call(check, f"running {case.where}", fn, *args, **kwargs)

    count = _run(check, cases, learner, lambda case: scaled_dot_product_attention(**case.inputs),
                 parts=("output", "weights"), variants=_attention_variants(),
                 structure=lambda got, want, case: _weights_shape(got, want) or
                 _structure(("output", "weights"), got, want),
                 hints=_attention_hints, total=len(cases) + 1)
    _check_attention_dropout(check, fn, g)
    _passed(check, count + 1)


def _weights_shape(got: Any, want: Any) -> str | None:
    if isinstance(got, (tuple, list)) and len(got) == 2 and isinstance(got[1], Tensor):
        weights, expected = got[1], want[1]
        if weights.shape == expected.transpose(-2, -1).shape != expected.shape:
            return (f"the weights have shape {tuple(weights.shape)}, i.e. (..., S, T); they should be "
                    f"(..., T, S) = {tuple(expected.shape)}: one row per query, scores = "
                    f"query @ key.transpose(-2, -1)")
    return None


# --- masks (lab 01) --------------------------------------------------------------------------


@_isolated
def check_causal_mask(fn: Callable[..., Any]) -> None:
    """Check ``fn(size, device=None) -> (size, size)`` bool, True on and below the diagonal."""
    check = "check_causal_mask"
    cases = [_Case(f"{n} positions", {"size": n}) for n in (5, 1, 2, 7)]

    def learner(case: _Case) -> Any:
        return _call(check, f"calling causal_mask({case.inputs['size']}) in {case.where}", fn,
                     case.inputs["size"])

    def structure(got: Any, want: Any, case: _Case) -> str | None:
        if not isinstance(got, Tensor):
            return f"return a torch.Tensor; yours returned a {type(got).__name__}"
        n = case.inputs["size"]
        if got.shape != want.shape:
            extra = (" (leave the batch and head axes to broadcasting)" if got.numel() == n * n
                     else "")
            return f"the mask has shape {tuple(got.shape)}, expected (size, size) = ({n}, {n}){extra}"
        if got.dtype != torch.bool:
            if got.is_floating_point() and bool(torch.isinf(got).any()):
                return ("this is an additive float mask (0 and -inf); the contract's masks are bool "
                        "with True = may attend: torch.ones(size, size, dtype=torch.bool).tril()")
            if bool(((got == 0) | (got == 1)).all()) and bool((got.bool() == want).all()):
                return (f"the pattern is right but the dtype is {got.dtype}; masks are bool tensors "
                        f"(dtype=torch.bool, or .bool())")
            return f"the mask has dtype {got.dtype}; masks are bool tensors, True = may attend"
        return None

    def var(make: Callable[[int], Tensor]) -> Callable[[_Case], Tensor]:
        return lambda case: make(case.inputs["size"])

    def ones(n: int) -> Tensor:
        return torch.ones(n, n, dtype=torch.bool)

    variants: list[Variant] = [
        ("the mask is inverted: it is True above the diagonal (the future). Here True means 'may "
         "attend' (nn.MultiheadAttention uses the opposite convention): keep the diagonal and "
         "below, torch.tril", var(lambda n: ones(n).triu(1))),
        ("the mask is the upper triangle, so position i would see the future: position i may "
         "attend to positions 0..i, the lower triangle (torch.tril)", var(lambda n: ones(n).triu())),
        ("the diagonal is missing: a position may attend to itself (tril with diagonal=0)",
         var(lambda n: ones(n).tril(-1))),
        ("nothing is hidden: the mask is all True; hide the positions above the diagonal",
         var(ones)),
    ]
    count = _run(check, cases, learner, lambda case: causal_mask(**case.inputs),
                 parts=("mask",), variants=variants, structure=structure)
    out = _call(check, "calling causal_mask(3, device='meta')", fn, 3, device="meta")
    if not isinstance(out, Tensor) or out.device.type != "meta":
        device = out.device if isinstance(out, Tensor) else None
        raise AssertionError(f"{check}: causal_mask(3, device='meta') returned a tensor on "
                             f"{device}: create it on the requested device, "
                             f"torch.ones(size, size, dtype=torch.bool, device=device)")
    _passed(check, count + 1)


@_isolated
def check_padding_mask(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(tokens, pad_id) -> (B, 1, 1, S)`` bool, True where ``tokens != pad_id``."""
    check = "check_padding_mask"
    g = torch.Generator().manual_seed(seed)
    right = torch.randint(1, 9, (3, 6), generator=g)
    right[1, 4:] = 0
    right[2, 2:] = 0
    pad3 = torch.randint(4, 9, (3, 5), generator=g)
    pad3[:, 0] = 0  # token 0 is an ordinary token here
    pad3[0, 3:] = 3
    pad3[2, 1:] = 3
    left = torch.randint(1, 9, (2, 5), generator=g)
    left[0, :2] = 0  # padding at the start (left-padded)
    cases = [
        _Case("padding at the end, pad_id=0", {"tokens": right, "pad_id": 0}),
        _Case("pad_id=3 (0 is an ordinary token)", {"tokens": pad3, "pad_id": 3}),
        _Case("padding at the start, pad_id=0", {"tokens": left, "pad_id": 0}),
        _Case("no padding at all", {"tokens": torch.randint(1, 9, (2, 4), generator=g), "pad_id": 0}),
    ]

    def learner(case: _Case) -> Any:
        return _call(check, f"calling padding_mask in {case.where}", fn,
                     case.inputs["tokens"], case.inputs["pad_id"])

    def structure(got: Any, want: Tensor, case: _Case) -> str | None:
        if not isinstance(got, Tensor):
            return f"return a torch.Tensor; yours returned a {type(got).__name__}"
        B, S = case.inputs["tokens"].shape
        if got.shape != want.shape:
            if got.shape == (B, S):
                return (f"the mask has shape (B, S) = {(B, S)}; return (B, 1, 1, S) so it broadcasts "
                        f"over heads and queries to (B, H, T, S): mask[:, None, None, :]")
            if got.numel() == B * S:
                return (f"the mask has shape {tuple(got.shape)}; it must be (B, 1, 1, S) = "
                        f"{(B, 1, 1, S)}: the key axis S is last, so the mask hides keys "
                        f"(columns of the scores), not queries")
            return f"the mask has shape {tuple(got.shape)}, expected (B, 1, 1, S) = {(B, 1, 1, S)}"
        if got.dtype != torch.bool:
            return f"the mask has dtype {got.dtype}; masks are bool tensors, True = may attend"
        return None

    def view(m: Tensor) -> Tensor:
        return m[:, None, None, :]

    variants: list[Variant] = [
        ("the mask is inverted: True must mark the real tokens (tokens != pad_id), the ones a query "
         "may attend to", lambda c: view(c.inputs["tokens"] == c.inputs["pad_id"])),
        ("pad_id is ignored: the mask compares with 0; compare with the pad_id argument",
         lambda c: view(c.inputs["tokens"] != 0)),
        ("the mask assumes the padding is at the end (it is built from lengths); mark each "
         "position by comparing its token with pad_id",
         lambda c: view(torch.arange(c.inputs["tokens"].size(1))
                        < (c.inputs["tokens"] != c.inputs["pad_id"]).sum(1, keepdim=True))),
    ]
    count = _run(check, cases, learner, lambda case: padding_mask(**case.inputs),
                 parts=("mask",), variants=variants, structure=structure)
    _passed(check, count)


# --- multi-head attention (lab 02) -----------------------------------------------------------


def _heads_cases() -> list[tuple[int, int, int, int]]:
    return [(2, 5, 3, 4), (1, 4, 2, 3), (3, 2, 6, 1), (2, 7, 4, 5)]  # (B, T, H, Dh)


@_isolated
def check_split_heads(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x, num_heads)``: ``(B, T, D) -> (B, H, T, Dh)``, head ``h`` getting the
    features ``h * Dh`` to ``(h + 1) * Dh - 1`` of every position."""
    check = "check_split_heads"
    g = torch.Generator().manual_seed(seed)
    cases = [_Case(f"B={B}, T={T}, H={H}, Dh={Dh}", {"x": _randn(g, B, T, H * Dh), "num_heads": H},
                   positional=2) for B, T, H, Dh in _heads_cases()]

    def shape(case: _Case) -> tuple[int, int, int, int]:
        x, H = case.inputs["x"], case.inputs["num_heads"]
        return x.size(0), x.size(1), H, x.size(2) // H

    def learner(case: _Case) -> Any:
        args, kwargs = case.args()
        return _call(check, f"running {case.where}", fn, *args, **kwargs)

    def reference(case: _Case) -> Tensor:
        B, T, H, Dh = shape(case)
        return case.inputs["x"].view(B, T, H, Dh).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)

    def structure(got: Any, want: Tensor, case: _Case) -> str | None:
        B, T, H, Dh = shape(case)
        if isinstance(got, Tensor) and got.shape == (B, T, H, Dh) != want.shape:
            return (f"the result has shape (B, T, H, Dh) = {(B, T, H, Dh)}: the heads axis must come "
                    f"before the positions, (B, H, T, Dh); add .transpose(1, 2)")
        return _structure(("heads",), got, want)

    variants: list[Variant] = [
        ("the heads are split without a transpose: view(B, H, T, Dh) has the right shape but cuts "
         "the sequence into pieces instead of cutting each position's features; use "
         "view(B, T, H, Dh).transpose(1, 2)",
         lambda c: c.inputs["x"].reshape(shape(c)[0], shape(c)[2], shape(c)[1], shape(c)[3])),
        ("each head must get a contiguous block of Dh features (head h: features h * Dh to "
         "(h + 1) * Dh - 1); view(B, T, Dh, H) interleaves them: use view(B, T, H, Dh)",
         lambda c: c.inputs["x"].reshape(shape(c)[0], shape(c)[1], shape(c)[3], shape(c)[2])
         .permute(0, 3, 1, 2)),
    ]
    count = _run(check, cases, learner, reference, parts=("heads",), variants=variants,
                 structure=structure)
    _passed(check, count)


@_isolated
def check_merge_heads(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x)``: ``(B, H, T, Dh) -> (B, T, H * Dh)``, the inverse of splitting heads."""
    check = "check_merge_heads"
    g = torch.Generator().manual_seed(seed)
    cases = [_Case(f"B={B}, H={H}, T={T}, Dh={Dh}", {"x": _randn(g, B, H, T, Dh)}, positional=1)
             for B, T, H, Dh in _heads_cases()]

    def learner(case: _Case) -> Any:
        return _call(check, f"running {case.where}", fn, case.inputs["x"])

    def reference(case: _Case) -> Tensor:
        B, H, T, Dh = case.inputs["x"].shape
        return case.inputs["x"].transpose(1, 2).reshape(B, T, H * Dh)  # (B, H, T, Dh) -> (B, T, D)

    def structure(got: Any, want: Tensor, case: _Case) -> str | None:
        B, H, T, Dh = case.inputs["x"].shape
        if isinstance(got, Tensor) and got.shape == (B, T, H, Dh) != want.shape:
            return (f"the result has shape (B, T, H, Dh) = {(B, T, H, Dh)}: reshape it to "
                    f"(B, T, H * Dh) = {(B, T, H * Dh)}, one vector of width D per position")
        return _structure(("merged heads",), got, want)

    def merged(x: Tensor, order: tuple[int, ...]) -> Tensor:
        B, H, T, Dh = x.shape
        return x.permute(*order).reshape(B, T, H * Dh)

    variants: list[Variant] = [
        ("the heads are merged without transposing back: (B, H, T, Dh) must become (B, T, H, Dh) "
         "before the reshape to (B, T, D): x.transpose(1, 2).reshape(B, T, D)",
         lambda c: merged(c.inputs["x"], (0, 1, 2, 3))),
        ("the features are interleaved: head h's Dh features must stay together, as the block "
         "h * Dh to (h + 1) * Dh - 1; transpose(1, 2) gives (B, T, H, Dh), then reshape",
         lambda c: merged(c.inputs["x"], (0, 2, 3, 1))),
    ]
    count = _run(check, cases, learner, reference, parts=("merged heads",), variants=variants,
                 structure=structure)
    _passed(check, count)


def _linear(layer: nn.Linear, x: Tensor, transpose: bool = True) -> Tensor:
    weight = layer.weight.T if transpose else layer.weight
    return x @ weight + (layer.bias if layer.bias is not None else 0.0)


def _mha_math(m: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
              need_weights: bool = False, *, split_transpose: bool = True,
              merge_transpose: bool = True, out_proj: bool = True, scale: str = "head",
              heads: bool = True, softmax_dim: int = -1, swap_kv: bool = False,
              kv_from_query: bool = False, mask_mode: str = "ok",
              weight_transpose: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-head attention with switches for common mistakes; returns (out, weights, out)."""
    B, T, D = query.shape
    H = m.num_heads if heads else 1
    Dh = D // H
    if kv_from_query:
        key = value = query
    if swap_kv:
        key, value = value, key
    S = key.size(1)
    q = _linear(m.q_proj, query, weight_transpose)
    k = _linear(m.k_proj, key, weight_transpose)
    v = _linear(m.v_proj, value, weight_transpose)

    def split(t: Tensor, length: int) -> Tensor:
        if split_transpose:
            return t.view(B, length, H, Dh).transpose(1, 2)  # (B, L, D) -> (B, H, L, Dh)
        return t.view(B, H, length, Dh)

    q, k, v = split(q, T), split(k, S), split(v, S)
    factor = {"head": 1 / math.sqrt(D // m.num_heads), "model": 1 / math.sqrt(D), "none": 1.0}[scale]
    if mask_mode == "ignore":
        mask = None
    heads_out, weights = _attention_math(q, k, v, mask, scale=factor, softmax_dim=softmax_dim,
                                         invert=mask_mode == "invert")
    if merge_transpose:
        merged = heads_out.transpose(1, 2).reshape(B, T, D)
    else:
        merged = heads_out.reshape(B, T, D)
    out = _linear(m.out_proj, merged, weight_transpose) if out_proj else merged
    return out, weights, out


def _mha_variants() -> list[Variant]:
    def var(**options: Any) -> Callable[[_Case], Any]:
        return lambda case: _mha_math(case.state["reference"], **case.inputs, **options)

    split = ("the heads are split without a transpose: view(B, H, T, Dh) cuts the sequence into "
             "pieces instead of cutting each position's features; use "
             "view(B, T, H, Dh).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)")
    return [
        (split, var(split_transpose=False)),
        (split, var(split_transpose=False, merge_transpose=False)),
        ("the heads are merged without transposing back: (B, H, T, Dh) must become (B, T, H, Dh) "
         "before the reshape to (B, T, D): heads.transpose(1, 2).reshape(B, T, D)",
         var(merge_transpose=False)),
        ("the output projection is missing: apply out_proj to the merged heads",
         var(out_proj=False)),
        ("the scores are scaled by sqrt(d_model); each head compares vectors of width "
         "Dh = d_model // num_heads, so scale by sqrt(Dh)", var(scale="model")),
        ("the scores are not scaled: divide them by sqrt(Dh), Dh = d_model // num_heads",
         var(scale="none")),
        ("the heads are never split: attention runs once over all d_model features; reshape the "
         "projections to (B, H, T, Dh) so each head attends on its own",
         var(heads=False, scale="model")),
        ("the heads are never split: attention runs once over all d_model features; reshape the "
         "projections to (B, H, T, Dh) so each head attends on its own", var(heads=False)),
        ("the softmax runs over the queries: normalize over the keys, softmax(scores, dim=-1)",
         var(softmax_dim=-2)),
        ("keys and values are swapped: keys come from k_proj(key), values from v_proj(value)",
         var(swap_kv=True)),
        ("keys and values are computed from the query: use the key and value arguments "
         "(they differ from the query in cross-attention)", var(kv_from_query=True)),
        ("the mask is ignored: pass it to the attention of every head (it broadcasts to "
         "(B, H, T, S))", var(mask_mode="ignore")),
        ("the mask is inverted: True means 'may attend' (nn.MultiheadAttention's boolean masks "
         "mean the opposite)", var(mask_mode="invert")),
        ("a projection uses x @ weight instead of x @ weight.T: call the layer, self.q_proj(x), "
         "which computes x @ W^T + b", var(weight_transpose=False)),
    ]


def _mha_cases(g: torch.Generator) -> list[_Case]:
    def case(name: str, *, D: int = 16, H: int = 4, B: int = 2, T: int = 5, S: int | None = None,
             bias: bool = True, dropout: float = 0.0, cross: bool = False, distinct: bool = False,
             mask: Tensor | None = None, repeat: bool = False) -> _Case:
        S = T if S is None else S
        query = _randn(g, B, T, D)
        key = _randn(g, B, S, D) if cross or distinct or S != T else query
        value = _randn(g, B, S, D) if distinct else key
        return _Case(name, {"query": query, "key": key, "value": value, "mask": mask},
                     init={"d_model": D, "num_heads": H, "dropout": dropout, "bias": bias},
                     repeat=repeat, positional=3, init_positional=2)

    lengths = torch.tensor([6, 3, 1])
    padding = (torch.arange(6) < lengths[:, None]).view(3, 1, 1, 6)
    per_head = torch.rand(2, 4, 5, 5, generator=g) < 0.5
    per_head[..., 0] = True
    per_head[1, 2, 3] = False  # a query that may attend to nothing, in one head
    return [
        case("self-attention, no mask"),
        case("cross-attention, S != T", T=3, S=6, cross=True),
        case("key and value are different tensors", T=4, S=5, distinct=True),
        case("causal mask (T, T)", T=6, mask=causal_mask(6)),
        case("padding mask (B, 1, 1, S), items of lengths 6, 3 and 1", B=3, T=4, S=6, cross=True,
             mask=padding),
        case("per-head mask (B, H, T, S) with a query that may attend to nothing", mask=per_head),
        case("bias=False, d_model=12, num_heads=3, causal mask", D=12, H=3, bias=False,
             mask=causal_mask(5)),
        case("dropout=0.3, in eval mode", dropout=0.3, repeat=True),
    ]


_MHA_NAMES = ("the contract's names: q_proj, k_proj, v_proj and out_proj, each an "
              "nn.Linear(d_model, d_model, bias=bias). You may compute differently inside forward, "
              "but keep these four.")


@_isolated
def check_multi_head_attention(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, num_heads, dropout=0.0, bias=True)`` whose
    ``forward(query, key, value, mask=None, need_weights=False)`` returns the output
    ``(B, T, D)``, or ``(output, weights (B, H, T, S))`` with ``need_weights=True``.

    The learner's module gets the parameters of a randomized
    :class:`transformer_lib.MultiHeadAttention` (by the names ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj``) and must give the same outputs and weights in eval mode: self- and
    cross-attention, keys different from values, causal, padding and per-head masks, no bias.
    """
    check = "check_multi_head_attention"
    g = torch.Generator().manual_seed(seed)
    parts = ("output", "weights", "output with need_weights=True")
    cases = _mha_cases(g)
    module_for = _learner_modules(check, cls, MultiHeadAttention, _MHA_NAMES, g)

    def learner(case: _Case) -> Any:
        where = case.where
        module = module_for(case)
        args, kwargs = case.args()
        out = _call(check, f"running forward on {where}", module, *args, **kwargs)
        pair = _call(check, f"running forward(..., need_weights=True) on {where}", module,
                     *args, **kwargs, need_weights=True)
        if isinstance(out, (tuple, list)):
            raise AssertionError(f"{check}: without need_weights=True, forward must return only "
                                 f"the output tensor; yours returned a {type(out).__name__}\n"
                                 f"  in {where}")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise AssertionError(f"{check}: with need_weights=True, forward must return "
                                 f"(output, weights); yours returned a {type(pair).__name__}"
                                 f"\n  in {where}")
        return out, pair[1], pair[0]

    def reference(case: _Case) -> Any:
        out, weights = case.state["reference"](**case.inputs, need_weights=True)
        return out, weights, out

    def structure(got: Any, want: Any, case: _Case) -> str | None:
        weights, expected = got[1], want[1]
        if isinstance(weights, Tensor) and weights.shape != expected.shape:
            B, H, T, S = expected.shape
            if weights.shape == (B, T, S):
                return (f"the weights have shape (B, T, S) = {(B, T, S)}; return one (T, S) "
                        f"matrix per head, (B, H, T, S) = {(B, H, T, S)}, not their average")
            if weights.shape == (B * H, T, S):
                return (f"the weights have shape (B * H, T, S) = {(B * H, T, S)}; return "
                        f"(B, H, T, S) = {(B, H, T, S)}")
        return _structure(parts, got, want)

    count = _run(check, cases, learner, reference, parts=parts, variants=_mha_variants(),
                 structure=structure)
    _passed(check, count)


# --- feed-forward, sub-layer connection, encoder and decoder layers (lab 03) -------------------


def _ffn_math(ffn: nn.Module, x: Tensor, activation: str | None = None, *, where: str = "middle") -> Tensor:
    act = ACTIVATIONS[activation or ffn.activation]
    if where == "none":
        return ffn.linear2(ffn.linear1(x))
    if where == "end":
        return act(ffn.linear2(ffn.linear1(x)))
    if where == "both":
        return act(ffn.linear2(act(ffn.linear1(x))))
    return ffn.linear2(act(ffn.linear1(x)))


_FFN_NAMES = ("the contract's names: linear1 = nn.Linear(d_model, d_ff) and "
              "linear2 = nn.Linear(d_ff, d_model) (and a dropout module, which has no parameters)")


@_isolated
def check_feed_forward(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, d_ff, dropout=0.0, activation="relu")`` with submodules
    ``linear1``, ``linear2``: ``forward(x (..., D)) -> (..., D)``, as
    :class:`transformer_lib.FeedForward`."""
    check = "check_feed_forward"
    g = torch.Generator().manual_seed(seed)
    cases = [
        _Case("relu, (B, T, D) input", {"x": _randn(g, 2, 5, 8)},
              init={"d_model": 8, "d_ff": 32, "dropout": 0.0, "activation": "relu"}),
        _Case("gelu, (T, D) input", {"x": _randn(g, 6, 8)},
              init={"d_model": 8, "d_ff": 16, "dropout": 0.0, "activation": "gelu"}),
        _Case("dropout=0.5, in eval mode", {"x": _randn(g, 2, 4, 12)},
              init={"d_model": 12, "d_ff": 24, "dropout": 0.5, "activation": "relu"}, repeat=True),
    ]
    for case in cases:
        case.positional, case.init_positional = 1, 2  # FeedForward(d_model, d_ff, ...)(x)

    def var(**options: Any) -> Callable[[_Case], Any]:
        return lambda case: _ffn_math(case.state["reference"], case.inputs["x"], **options)

    variants: list[Variant] = [
        ("the activation is missing: FFN(x) = linear2(activation(linear1(x)))", var(where="none")),
        ("the activation is applied after linear2; it belongs between the two: "
         "linear2(activation(linear1(x)))", var(where="end")),
        ("the activation is applied after both linear layers; only the hidden layer has one: "
         "linear2(activation(linear1(x)))", var(where="both")),
        ("the activation argument is ignored: 'gelu' must use F.gelu", var(activation="relu")),
    ]
    count = _run(check, cases, *_module_runners(check, cls, FeedForward, _FFN_NAMES, g),
                 variants=variants, structure=lambda got, want, case: _structure(
                     ("output",), got, want))
    _passed(check, count)


def _learner_modules(check: str, cls: Any, reference_cls: Any, names: str,
                     g: torch.Generator) -> Callable[[_Case], nn.Module]:
    """``module_for(case)``: the learner's module for a case, built once per case and given the
    weights of a randomized reference (kept in ``case.state["reference"]``)."""
    modules: dict[int, nn.Module] = {}

    def module_for(case: _Case) -> nn.Module:
        if id(case) not in modules:
            reference = _randomize(reference_cls(**case.init), g).eval()
            case.state["reference"] = reference
            modules[id(case)] = _build(check, cls, case, reference, names)
        return modules[id(case)]

    return module_for


def _module_runners(check: str, cls: Any, reference_cls: Any, names: str,
                    g: torch.Generator) -> tuple[Callable[[_Case], Any], Callable[[_Case], Any]]:
    """``learner(case)`` and ``reference(case)`` for a layer class with one forward call."""
    module_for = _learner_modules(check, cls, reference_cls, names, g)

    def learner(case: _Case) -> Any:
        module = module_for(case)
        args, kwargs = case.args()
        return _call(check, f"running forward on {case.where}", module, *args, **kwargs)

    def reference(case: _Case) -> Any:
        return case.state["reference"](**case.inputs)

    return learner, reference


class _Halve(nn.Module):
    """A stand-in for dropout that halves its input, so a check can see where it is applied."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x

    def extra_repr(self) -> str:
        return "a dropout stand-in that multiplies by 0.5"


@_isolated
def check_sublayer_connection(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x, sublayer, norm, dropout, norm_first)``: post-LN
    ``norm(x + dropout(sublayer(x)))`` or pre-LN ``x + dropout(sublayer(norm(x)))``.

    The check passes a stand-in for ``dropout`` that halves its input (so it can see where
    dropout is applied) and a LayerNorm with random gain and bias.
    """
    check = "check_sublayer_connection"
    g = torch.Generator().manual_seed(seed)
    D = 8
    linear = _randomize(nn.Linear(D, D), g)

    def sublayer(x: Tensor) -> Tensor:
        return torch.tanh(linear(x)) * 2.0

    norm = _randomize(nn.LayerNorm(D), g)
    halve = _Halve()
    cases = [
        _Case("post-LN (norm_first=False)", {"x": _randn(g, 2, 5, D), "norm_first": False}),
        _Case("pre-LN (norm_first=True)", {"x": _randn(g, 2, 5, D), "norm_first": True}),
        _Case("post-LN, another batch", {"x": _randn(g, 3, 4, D) + 1.0, "norm_first": False}),
        _Case("pre-LN, another batch", {"x": _randn(g, 3, 4, D) + 1.0, "norm_first": True}),
    ]

    def call(case: _Case, f: Callable[..., Any]) -> Any:
        return f(case.inputs["x"], sublayer, norm, halve, case.inputs["norm_first"])

    def learner(case: _Case) -> Any:
        return _call(check, f"running {case.describe()}", fn, case.inputs["x"], sublayer, norm,
                     halve, case.inputs["norm_first"])

    def var(make: Callable[[Tensor, bool], Tensor]) -> Callable[[_Case], Tensor]:
        return lambda case: make(case.inputs["x"], case.inputs["norm_first"])

    def f(x: Tensor) -> Tensor:
        return sublayer(x)

    def post(x: Tensor) -> Tensor:
        return norm(x + halve(f(x)))

    def pre(x: Tensor) -> Tensor:
        return x + halve(f(norm(x)))

    def placement(case: _Case) -> str:
        if case.inputs["norm_first"]:
            return ("norm_first=True must give pre-LN, x + dropout(sublayer(norm(x))); yours "
                    "computes post-LN, norm(x + dropout(sublayer(x)))")
        return ("norm_first=False (post-LN, as in the paper) must give "
                "norm(x + dropout(sublayer(x))); yours computes pre-LN, "
                "x + dropout(sublayer(norm(x)))")

    variants: list[Variant] = [
        (placement, var(lambda x, nf: post(x) if nf else pre(x))),
        (placement, var(lambda x, nf: post(x))),
        (placement, var(lambda x, nf: pre(x))),
        ("the residual connection is missing: add the input x to the sub-layer's output",
         var(lambda x, nf: halve(f(norm(x))) if nf else norm(halve(f(x))))),
        ("pre-LN adds the input x itself, not norm(x): x + dropout(sublayer(norm(x)))",
         var(lambda x, nf: norm(x) + halve(f(norm(x))) if nf else post(x))),
        ("post-LN normalizes the sum x + dropout(sublayer(x)), not the sub-layer's output alone",
         var(lambda x, nf: pre(x) if nf else x + norm(halve(f(x))))),
        ("pre-LN has no norm after the residual sum: x + dropout(sublayer(norm(x)))",
         var(lambda x, nf: norm(x + halve(f(norm(x)))) if nf else post(x))),
        ("dropout is not applied: apply it to the sub-layer's output, before adding x (the check "
         "passes a stand-in that halves its input, to see where it is applied)",
         var(lambda x, nf: x + f(norm(x)) if nf else norm(x + f(x)))),
        ("dropout is applied after the residual sum; apply it to the sub-layer's output, before "
         "adding x", var(lambda x, nf: halve(x + f(norm(x))) if nf else norm(halve(x + f(x))))),
    ]
    count = _run(check, cases, learner, lambda case: call(case, sublayer_connection),
                 variants=variants,
                 structure=lambda got, want, case: _structure(("output",), got, want))
    _passed(check, count)


def _norm(layer: nn.LayerNorm, x: Tensor, eps: float | None = None) -> Tensor:
    return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias,
                        layer.eps if eps is None else eps)


@dataclass
class _LayerBug:
    """Switches for the mistakes the layer checks know (all off: the right answer)."""

    placement: str = "ok"  # "pre", "post", "swapped"
    no_residual: tuple[int, ...] = ()  # sub-layers (0, 1, 2) without the residual connection
    masks: str = "ok"  # "ignore_self", "ignore_memory", "swap", "self_in_cross", "invert"
    norms: tuple[int, ...] | None = None  # which norm each sub-layer uses (by index)
    activation: str | None = None
    eps: float | None = None
    final_norm: bool = False  # pre-LN with a norm after every residual sum
    parallel: bool = False
    cross: str = "ok"  # "self": keys and values from x; "norm_memory": norm2 on memory in pre-LN
    order: str = "ok"  # "cross_first"


def _layer_math(layer: nn.Module, x: Tensor, memory: Tensor | None, self_mask: Tensor | None,
                memory_mask: Tensor | None, bug: _LayerBug) -> Tensor:
    """An encoder layer (memory is None) or a decoder layer, computed from its submodules."""
    decoder = memory is not None
    all_norms = [layer.norm1, layer.norm2] + ([layer.norm3] if decoder else [])
    norms = [all_norms[i] for i in bug.norms] if bug.norms else all_norms
    norm_first = layer.norm_first
    if bug.placement == "pre":
        norm_first = True
    elif bug.placement == "post":
        norm_first = False
    elif bug.placement == "swapped":
        norm_first = not norm_first
    if bug.masks == "ignore_self":
        self_mask = None
    elif bug.masks == "ignore_memory":
        memory_mask = None
    elif bug.masks == "swap":
        self_mask, memory_mask = memory_mask, self_mask
    elif bug.masks == "self_in_cross":
        memory_mask = self_mask
    elif bug.masks == "invert":
        self_mask = None if self_mask is None else ~self_mask

    def attend(y: Tensor) -> Tensor:
        return layer.self_attn(y, y, y, mask=self_mask)

    def cross(y: Tensor) -> Tensor:
        if bug.cross == "self":
            return layer.cross_attn(y, y, y, mask=memory_mask)
        m = memory
        if bug.cross == "norm_memory" and norm_first:
            m = _norm(norms[1], memory, bug.eps)
        return layer.cross_attn(y, m, m, mask=memory_mask)

    def ffn(y: Tensor) -> Tensor:
        return _ffn_math(layer.ffn, y, bug.activation)

    sublayers = [attend, cross, ffn] if decoder else [attend, ffn]
    if bug.order == "cross_first":
        sublayers[0], sublayers[1] = sublayers[1], sublayers[0]
    if bug.parallel:
        return x + sum(f(_norm(n, x, bug.eps) if norm_first else x) for f, n in zip(sublayers, norms))
    for i, (f, n) in enumerate(zip(sublayers, norms)):
        keep = 0.0 if i in bug.no_residual else 1.0
        if norm_first:
            x = keep * x + f(_norm(n, x, bug.eps))
            if bug.final_norm:
                x = _norm(n, x, bug.eps)
        else:
            x = _norm(n, keep * x + f(x), bug.eps)
    return x


def _placement_message(case: _Case) -> str:
    if case.init["norm_first"]:
        return ("norm_first=True must give pre-LN sub-layers, x + sublayer(norm(x)); yours "
                "computes post-LN, norm(x + sublayer(x)) (is norm_first ignored?)")
    return ("norm_first=False (post-LN, as in the paper) must give norm(x + sublayer(x)); yours "
            "computes pre-LN, x + sublayer(norm(x))")


def _layer_variants(decoder: bool) -> list[Variant]:
    def var(**options: Any) -> Callable[[_Case], Any]:
        bug = _LayerBug(**options)

        def run(case: _Case) -> Tensor:
            i = case.inputs
            if decoder:
                return _layer_math(case.state["reference"], i["x"], i["memory"], i.get("self_mask"),
                                   i.get("memory_mask"), bug)
            return _layer_math(case.state["reference"], i["x"], None, i.get("mask"), None, bug)

        return run

    ffn_index = 2 if decoder else 1
    variants: list[Variant] = [
        (_placement_message, var(placement="swapped")),
        (_placement_message, var(placement="pre")),
        (_placement_message, var(placement="post")),
        ("the residual connection around self-attention is missing: add the sub-layer's input",
         var(no_residual=(0,))),
        ("the residual connection around the feed-forward network is missing: add the "
         "sub-layer's input", var(no_residual=(ffn_index,))),
        ("the residual connections are missing: each sub-layer's input is added to its output",
         var(no_residual=tuple(range(ffn_index + 1)))),
        ("pre-LN has no norm after each residual sum: x = x + sublayer(norm(x)) (a pre-LN stack "
         "puts one final norm after its last layer instead)", var(final_norm=True)),
        ("the sub-layers run side by side on the same input; they run one after the other, each "
         "on the previous one's output", var(parallel=True)),
        ("the activation argument is ignored: activation='gelu' must use F.gelu in the "
         "feed-forward network", var(activation="relu")),
        ("layer_norm_eps is ignored: pass eps=layer_norm_eps to the LayerNorms",
         var(eps=1e-5)),
    ]
    if decoder:
        variants += [
            ("the self-attention mask is ignored: pass self_mask (e.g. the causal mask) to the "
             "self-attention, so a position cannot see later ones", var(masks="ignore_self")),
            ("the memory mask is ignored: pass memory_mask to the cross-attention, so padded "
             "source positions get no attention", var(masks="ignore_memory")),
            ("the masks are swapped: self_mask belongs to the self-attention, memory_mask to the "
             "cross-attention", var(masks="swap")),
            ("the self-attention mask is applied to the cross-attention too: cross-attention "
             "takes memory_mask (the source has no future to hide)", var(masks="self_in_cross")),
            ("self_mask is inverted: True means 'may attend'", var(masks="invert")),
            ("the cross-attention does not look at memory: its keys and values come from the "
             "encoder output, cross_attn(y, memory, memory)", var(cross="self")),
            ("in pre-LN, norm2 normalizes the queries only; memory goes into the cross-attention "
             "as it is (the encoder has normalized it already)", var(cross="norm_memory")),
            ("the residual connection around cross-attention is missing: add the sub-layer's "
             "input", var(no_residual=(1,))),
            ("the sub-layers are in the wrong order: self-attention, then cross-attention, then "
             "the feed-forward network", var(order="cross_first")),
            ("the norms are used in the wrong order: norm1 goes with self-attention, norm2 with "
             "cross-attention, norm3 with the feed-forward network", var(norms=(0, 2, 1))),
            ("the norms are used in the wrong order: norm1 goes with self-attention, norm2 with "
             "cross-attention, norm3 with the feed-forward network", var(norms=(1, 0, 2))),
            ("the same norm is used for every sub-layer: each has its own (norm1, norm2, norm3)",
             var(norms=(0, 0, 0))),
        ]
    else:
        variants += [
            ("the mask is ignored: pass it to the self-attention", var(masks="ignore_self")),
            ("the mask is inverted: True means 'may attend'", var(masks="invert")),
            ("the norms are swapped: norm1 goes with self-attention, norm2 with the feed-forward "
             "network", var(norms=(1, 0))),
            ("the same norm is used for both sub-layers: each has its own (norm1, norm2)",
             var(norms=(0, 0))),
        ]
    return variants


def _layer_init(D: int, H: int, F_: int, norm_first: bool, activation: str = "relu",
                eps: float = 1e-5, dropout: float = 0.0) -> dict[str, Any]:
    return {"d_model": D, "num_heads": H, "d_ff": F_, "dropout": dropout, "activation": activation,
            "norm_first": norm_first, "layer_norm_eps": eps}


_ENCODER_NAMES = ("the contract's names: self_attn (a MultiHeadAttention: q_proj, k_proj, v_proj, "
                  "out_proj), ffn (linear1, linear2), norm1 (after or before self-attention), "
                  "norm2 (the feed-forward network's)")


@_isolated
def check_encoder_layer(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, num_heads, d_ff, dropout=0.1, activation="relu",
    norm_first=False, layer_norm_eps=1e-5)`` with ``forward(x, mask=None)``, as
    :class:`transformer_lib.EncoderLayer`: both norm placements, padding masks, GELU, the
    LayerNorm eps, and dropout switched off in eval mode."""
    check = "check_encoder_layer"
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 2])
    padding = (torch.arange(5) < lengths[:, None]).view(3, 1, 1, 5)

    def case(name: str, init: dict[str, Any], B: int = 2, mask: Tensor | None = None,
             repeat: bool = False) -> _Case:
        return _Case(name, {"x": _randn(g, B, 5, 16), "mask": mask}, init=init, repeat=repeat,
                     positional=1, init_positional=3)

    cases = [
        case("post-LN (norm_first=False), no mask", _layer_init(16, 4, 32, False)),
        case("pre-LN (norm_first=True), no mask", _layer_init(16, 4, 32, True)),
        case("post-LN, padding mask (B, 1, 1, S)", _layer_init(16, 4, 32, False), B=3, mask=padding),
        case("pre-LN, padding mask (B, 1, 1, S)", _layer_init(16, 4, 32, True), B=3, mask=padding),
        case("post-LN, activation='gelu'", _layer_init(16, 2, 24, False, "gelu")),
        case("pre-LN, layer_norm_eps=0.1", _layer_init(16, 4, 32, True, eps=0.1)),
        case("dropout=0.3, in eval mode", _layer_init(16, 4, 32, False, dropout=0.3), repeat=True),
    ]
    count = _run(check, cases, *_module_runners(check, cls, EncoderLayer, _ENCODER_NAMES, g),
                 variants=_layer_variants(decoder=False),
                 structure=lambda got, want, case: _structure(("output",), got, want))
    _passed(check, count)


_DECODER_NAMES = ("the contract's names: self_attn and cross_attn (each a MultiHeadAttention: "
                  "q_proj, k_proj, v_proj, out_proj), ffn (linear1, linear2), norm1 "
                  "(self-attention's), norm2 (cross-attention's), norm3 (the feed-forward "
                  "network's)")


@_isolated
def check_decoder_layer(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, num_heads, d_ff, dropout=0.1, activation="relu",
    norm_first=False, layer_norm_eps=1e-5)`` with
    ``forward(x, memory, self_mask=None, memory_mask=None)``, as
    :class:`transformer_lib.DecoderLayer`: both norm placements, causal and padding masks (each
    in its own attention), targets and sources of different lengths, GELU, the LayerNorm eps,
    and dropout switched off in eval mode."""
    check = "check_decoder_layer"
    g = torch.Generator().manual_seed(seed)
    B, T, S, D = 3, 4, 6, 16
    memory_padding = (torch.arange(S) < torch.tensor([6, 4, 2])[:, None]).view(B, 1, 1, S)
    tgt_padding = (torch.arange(5) < torch.tensor([5, 3, 4])[:, None]).view(B, 1, 1, 5)
    src_padding = (torch.arange(5) < torch.tensor([2, 5, 3])[:, None]).view(B, 1, 1, 5)

    def case(name: str, init: dict[str, Any], T: int = T, S: int = S,
             self_mask: Tensor | None = None, memory_mask: Tensor | None = None,
             repeat: bool = False) -> _Case:
        return _Case(name, {"x": _randn(g, B, T, D), "memory": _randn(g, B, S, D),
                            "self_mask": self_mask, "memory_mask": memory_mask},
                     init=init, repeat=repeat, positional=2, init_positional=3)

    cases = [
        case("post-LN (norm_first=False), no masks, T != S", _layer_init(D, 4, 32, False)),
        case("pre-LN (norm_first=True), no masks", _layer_init(D, 4, 32, True)),
        case("post-LN, T == S: causal & target padding self_mask (B, 1, T, T), memory padding mask",
             _layer_init(D, 4, 32, False), T=5, S=5, self_mask=causal_mask(5) & tgt_padding,
             memory_mask=src_padding),
        case("post-LN, causal self_mask (T, T)", _layer_init(D, 4, 32, False),
             self_mask=causal_mask(T)),
        case("pre-LN, causal self_mask and memory padding mask (B, 1, 1, S)",
             _layer_init(D, 4, 32, True), self_mask=causal_mask(T), memory_mask=memory_padding),
        case("pre-LN, activation='gelu', layer_norm_eps=0.1, causal self_mask",
             _layer_init(D, 2, 24, True, "gelu", eps=0.1), self_mask=causal_mask(T)),
        case("dropout=0.3, in eval mode", _layer_init(D, 4, 32, False, dropout=0.3),
             self_mask=causal_mask(T), repeat=True),
    ]
    count = _run(check, cases, *_module_runners(check, cls, DecoderLayer, _DECODER_NAMES, g),
                 variants=_layer_variants(decoder=True),
                 structure=lambda got, want, case: _structure(("output",), got, want))
    _passed(check, count)


# --- decoding: greedy decoding, sequence scores and beam search (lab 04) ------------------------


_TABLE_FLOOR = -20.0  # the logit of a token a table model never produces (probability ~1e-9)


def _jitter(*numbers: int) -> float:
    """A fixed pseudo-random number in [0, 1) for a tuple of ints (the same on every machine)."""
    h = 17
    for n in numbers:
        h = (h * 1000003 + n + 11) % 2_147_483_647
    return (h * 2654435761 % 2**32) / 2**32


class _TableModel(nn.Module):
    """A hand-made encoder-decoder whose next-token probabilities come from a table.

    ``tables[s]`` holds the probabilities for the sources whose first token is ``s``: it maps a
    prefix, written as names (``"BOS A"``), to ``{name: probability}``; the key ``"*"`` is the
    default for prefixes it does not list, otherwise such a prefix ends with EOS (probability
    ~0.998; the rest goes to ``pad``). After an EOS the model predicts no token in particular (a
    model trained on sequences that stop at EOS has no reason to). Each probability is nudged by
    a fixed factor in [1, 1.002), so that no two candidates tie anywhere (ties would make the
    right answer depend on how a sort breaks them); tokens a prefix does not list get logits near
    ``_TABLE_FLOOR``, each a slightly different one.

    ``encode`` returns a memory of shape ``(B, 1, 1)`` holding each row's source id, so a row
    that reads another source's memory predicts that source's tokens.
    """

    def __init__(self, names: Sequence[str], tables: dict[str, dict[str, dict[str, float]]]) -> None:
        super().__init__()
        self.names = list(names)
        self.ids = {name: i for i, name in enumerate(self.names)}
        self.bos_id, self.eos_id = self.ids["BOS"], self.ids["EOS"]
        self.tables = {self.ids[s]: table for s, table in tables.items()}
        self.floor = _TABLE_FLOOR - 0.0731 * torch.arange(len(self.names), dtype=torch.float32)
        self.cache: dict[tuple[int, tuple[int, ...]], Tensor] = {}

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        return src[:, :1, None].float()  # (B, S) -> (B, 1, 1): which source each row reads

    def distribution(self, source: int, prefix: tuple[int, ...]) -> dict[int, float] | None:
        """``{token: probability}`` after ``prefix`` (None after EOS: no token in particular)."""
        if self.eos_id in prefix[1:]:
            return None
        table = self.tables.get(source, {})
        text = " ".join(self.names[i] if 0 <= i < len(self.names) else "?" for i in prefix)
        if text in table or "*" in table:
            probs = {self.ids[name]: p for name, p in table.get(text, table.get("*")).items()}
        else:
            rest = 0.001 * (1.0 + _jitter(source, *prefix, -1))
            probs = {self.eos_id: 1.0 - rest, self.ids.get("pad", 0): rest}
        probs = {v: p * (1.0 + 0.002 * _jitter(source, *prefix, v)) for v, p in probs.items()}
        total = sum(probs.values())
        return {v: p / total for v, p in probs.items()}

    def next_logits(self, source: int, prefix: tuple[int, ...]) -> Tensor:
        key = (source, prefix)
        if key not in self.cache:
            probs = self.distribution(source, prefix)
            if probs is None:
                logits = -0.1 * torch.tensor([_jitter(source, *prefix, v) for v in range(len(self.names))])
            else:
                logits = self.floor.clone()
                for v, p in probs.items():
                    logits[v] = math.log(p)
            self.cache[key] = logits
        return self.cache[key]

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor | None = None,
               tgt_mask: Tensor | None = None) -> Tensor:
        N, T = tgt.shape
        if memory.size(0) != N:
            raise ValueError(f"model.decode got {N} prefix{'' if N == 1 else 'es'} (rows of tgt) "
                             f"but memory for {memory.size(0)} rows: each row of tgt needs its own "
                             f"row of memory (one per source; in beam search, one per hypothesis)")
        rows = []
        for n in range(N):
            source, prefix = int(memory[n, 0, 0]), tuple(tgt[n].tolist())
            rows.append(torch.stack([self.next_logits(source, prefix[: t + 1]) for t in range(T)]))
        return torch.stack(rows) if rows else torch.zeros(0, T, len(self.names))  # (N, T, V)

    def possible(self, source: int, tokens: Sequence[int]) -> bool:
        """Can the model produce ``tokens`` (up to the first EOS) for this source?"""
        for t in range(1, len(tokens)):
            probs = self.distribution(source, tuple(tokens[:t]))
            if probs is None:
                break
            if tokens[t] not in probs:
                return False
        return True

    def spell(self, tokens: Sequence[int]) -> str:
        return " ".join(self.names[i] if 0 <= i < len(self.names) else str(i) for i in tokens)


def _table_model(names: str, **tables: dict[str, dict[str, float]]) -> _TableModel:
    return _TableModel(names.split(), tables)


def _random_transformer(seed: int, *, norm_first: bool, vocab: int = 9,
                        sharpen: float = 2.0, eos_bias: float = 1.5) -> nn.Module:
    """A small random :class:`Transformer` (its own initialization, from ``seed``) in eval
    mode. Its output projection is scaled up and given a random bias, so that its next-token
    distributions are peaked and EOS (id 2) is likely: sequences end after a few tokens or run
    to max_len, and the best ones differ from source to source. It never predicts PAD or BOS
    (ids 0 and 1), as a trained model would not."""
    config = TransformerConfig(src_vocab_size=11, tgt_vocab_size=vocab, d_model=16, num_heads=2,
                               num_encoder_layers=2, num_decoder_layers=2, d_ff=32, dropout=0.0,
                               norm_first=norm_first, max_len=32, pad_id=0, tie_output=False)
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        model.out_proj.weight.mul_(sharpen)
        model.out_proj.bias.copy_(0.3 * torch.randn(vocab))
        model.out_proj.bias[2] += eos_bias
        model.out_proj.bias[:2] = -8.0
    return model


def _seqs(out: Any) -> list[Tensor]:
    return [seq.long() for seq in out]


def _same_seqs(got: Any, want: Sequence[Tensor]) -> bool:
    if not isinstance(got, (list, tuple)) or len(got) != len(want):
        return False
    return all(isinstance(a, Tensor) and a.shape == b.shape and bool((a.long() == b).all())
               for a, b in zip(got, want))


def _decoded_form(got: Any, want: Sequence[Tensor]) -> str | None:
    """The form of a decoder's output: a list of 1-d integer tensors, one per source."""
    B = len(want)
    if isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], (list, tuple)):
        return ("return only the list of sequences (yours returned a pair, sequences and "
                "something else)")
    if isinstance(got, Tensor):
        return (f"return a list with one 1-d tensor of token ids per source (the sequences can "
                f"have different lengths); yours returned one tensor of shape {tuple(got.shape)}")
    if not isinstance(got, (list, tuple)):
        return (f"return a list with one 1-d tensor of token ids per source; yours returned a "
                f"{type(got).__name__}")
    if len(got) != B:
        hint = (" (is the whole batch decoded as one sequence? Each source has its own)"
                if len(got) < B else "")
        return (f"return one sequence per source: the batch has {B} sources, yours returned "
                f"{len(got)} sequence{'' if len(got) == 1 else 's'}{hint}")
    for i, seq in enumerate(got):
        if not isinstance(seq, Tensor):
            fix = " (torch.tensor(ids))" if isinstance(seq, (list, tuple)) else ""
            return (f"each sequence must be a 1-d torch.Tensor of token ids; sequence {i} is a "
                    f"{type(seq).__name__}{fix}")
        if seq.dim() != 1:
            fix = " (drop the extra axis: .squeeze(0) or .view(-1))" if seq.numel() in seq.shape else ""
            return f"each sequence must be 1-d, (length,); sequence {i} has shape {tuple(seq.shape)}{fix}"
        if seq.is_floating_point() or seq.dtype == torch.bool:
            return (f"token ids are integers (torch.long); sequence {i} has dtype {seq.dtype} "
                    f"(are these scores or probabilities?)")
    return None


def _spelled(model: nn.Module, tokens: Sequence[int]) -> str:
    text = "[" + ", ".join(str(t) for t in tokens) + "]"
    return f"{text} ({model.spell(tokens)})" if isinstance(model, _TableModel) else text


def _seq_log_prob(model: nn.Module, src: Tensor, tokens: Tensor, src_mask: Tensor | None,
                  b: int) -> float | None:
    """log p(tokens | source b) under the model (None if it cannot be scored)."""
    if tokens.numel() < 2:
        return None
    try:
        mask = None if src_mask is None else src_mask.expand(src.size(0), 1, 1, src.size(1))[b:b + 1]
        return float(sequence_log_prob(model, src[b:b + 1], tokens[None].long(), mask))
    except Exception:
        return None


def _sequence_diff(got: Sequence[Tensor], want: Sequence[Tensor], case: _Case,
                   log_probs: bool = False, limit: int = 3) -> str:
    i = case.inputs
    lines = []
    for b, (a, w) in enumerate(zip(got, want)):
        if a.shape == w.shape and bool((a.long() == w).all()):
            continue
        if len(lines) == 2 * limit:
            lines.append("  ...")
            break
        yours, expected = _spelled(i["model"], a.tolist()), _spelled(i["model"], w.tolist())
        if log_probs:
            lp_a = _seq_log_prob(i["model"], i["src"], a, i.get("src_mask"), b)
            lp_w = _seq_log_prob(i["model"], i["src"], w, i.get("src_mask"), b)
            if lp_a is not None and lp_w is not None:
                yours += f"  log p = {lp_a:.3f}"
                expected += f"  log p = {lp_w:.3f}"
        lines += [f"  source {b}: yours    {yours}", f"            expected {expected}"]
    return "\n".join(lines)


def _first_wrong(got: Sequence[Tensor], want: Sequence[Tensor]) -> int:
    for b, (a, w) in enumerate(zip(got, want)):
        if a.shape != w.shape or not bool((a.long() == w).all()):
            return b
    return -1


def _sequence_symptoms(got: Sequence[Tensor], want: Sequence[Tensor], case: _Case,
                       beam: bool) -> str | None:
    """What is visibly wrong with the sequences, whatever the code that made them."""
    i = case.inputs
    bos, eos, max_len, model = i["bos_id"], i["eos_id"], i["max_len"], i["model"]
    seqs = [a.long().tolist() for a in got]
    wants = [w.tolist() for w in want]
    if any(s[:1] != [bos] for s in seqs):
        if all(s == w[1:] for s, w in zip(seqs, wants)):
            return ("your sequences leave out BOS: each one starts with bos_id, followed by the "
                    "generated tokens")
        return f"every sequence starts with bos_id={bos}; one of yours does not"
    if any(eos in s[1:-1] for s in seqs):
        if beam:
            return ("a hypothesis goes on after EOS: a hypothesis that emits EOS is finished; set "
                    "it aside (with its score) and never extend it")
        return ("your sequences go on after EOS: a sequence ends at its first EOS. Stop when "
                "every row has produced EOS, and cut each row after its first EOS (rows finish "
                "at different steps)")
    if any(len(s) > max_len + 1 for s in seqs):
        return (f"a sequence has more than max_len + 1 = {max_len + 1} ids: max_len counts the "
                f"tokens generated after BOS")
    ended = [(s, w) for s, w in zip(seqs, wants) if w[-1] == eos and len(w) > 1 and s != w]
    if ended and all(s == w[:-1] for s, w in ended):
        return ("your sequences leave out their final EOS: a finished sequence ends with "
                "eos_id, included")
    b = _first_wrong(got, want)
    s, w = seqs[b], wants[b]
    if isinstance(model, _TableModel):
        source = int(i["src"][b, 0])
        if not model.possible(source, s):
            if beam:
                return (f"the sequence for source {b} is one the model cannot produce for it "
                        f"(it has probability ~0): it mixes up rows. Either the top-k ran over "
                        f"the whole batch instead of over each source's k * V candidates "
                        f"(scores.view(B, k * V)), or the rows were not reordered after the "
                        f"selection: the new beam's row j continues the prefix it was chosen "
                        f"from (tokens[rows]), and each row reads its own source's memory")
            return (f"the sequence for source {b} is one the model cannot produce for it: each "
                    f"row of the batch must read its own source's memory, and each step "
                    f"appends the token predicted for that row")
    if beam and s[-1:] != [eos] and w[-1:] == [eos]:
        if len(s) == max_len + 1:
            return ("the sequence you return never finished although a finished one (ending with "
                    "EOS) is better: return the best finished hypothesis; live ones count as "
                    "finished only when max_len is reached")
        return "a finished hypothesis ends with eos_id, included; yours does not"
    if beam and i.get("beam_size") == 1:
        return ("with beam_size=1, beam search must give greedy decoding's answer (one live "
                "hypothesis, extended by its best token)")
    return None


def _run_decoding(check: str, cases: Sequence[_Case], learner: Callable[[_Case], Any],
                  reference: Callable[[_Case], Any], variants: Sequence[Variant],
                  symptoms: Callable[[Sequence[Tensor], Sequence[Tensor], _Case], str | None],
                  log_probs: bool = False) -> int:
    """Run every case; at the first wrong answer, raise an AssertionError with a diagnosis.

    A known mistake is named if its output matches the learner's on every case: the ones before
    the failure, the failing one, and the later ones (run now, to tell apart mistakes that give
    the same wrong answer here); failing that, on the cases up to the failure.
    """
    seen: list[tuple[_Case, Any]] = []
    for number, case in enumerate(cases, 1):
        case.where = f"case {number} of {len(cases)} ({case.describe()})"
        got = learner(case)
        want = reference(case)
        problem = _decoded_form(got, want)
        if problem is None and _same_seqs(got, want):
            seen.append((case, got))
            continue
        details = ""
        if problem is None:
            seen.append((case, got))
            later = []
            for other_number, other in enumerate(cases[number:], number + 1):
                other.where = f"case {other_number} of {len(cases)} ({other.describe()})"
                try:
                    out = learner(other)
                except (AssertionError, NotImplementedError):
                    continue
                if _decoded_form(out, reference(other)) is None:
                    later.append((other, out))
            case.where = f"case {number} of {len(cases)} ({case.describe()})"
            problem = (_first_match(variants, seen + later) or _first_match(variants, seen)
                       or symptoms(got, want, case) or
                       "your sequences differ from the reference's, and they match none of the "
                       "common mistakes this check knows; compare your code with the steps above")
            details = "\n" + _sequence_diff(got, want, case, log_probs)
        raise AssertionError(f"{check}: {problem}\n  in {case.where}{details}")
    return len(cases)


def _first_match(variants: Sequence[Variant], outputs: list[tuple[_Case, Any]]) -> str | None:
    """The first mistake whose output is the learner's on every case given."""
    for diagnosis, variant in variants:
        if all(_same_seqs(_quiet(variant, case), _seqs(got)) for case, got in outputs):
            return diagnosis(outputs[0][0]) if callable(diagnosis) else diagnosis
    return None


def _quiet(variant: Callable[[_Case], Any], case: _Case) -> Any:
    try:
        return variant(case)
    except Exception:
        return None


def _decoding_args(case: _Case) -> tuple[list[Any], dict[str, Any]]:
    i = case.inputs
    args = [i["model"], i["src"].clone(), i["max_len"], i["bos_id"], i["eos_id"]]
    kwargs = {name: i[name] for name in ("beam_size", "src_mask", "length_alpha")
              if i.get(name) is not None}
    return args, kwargs


# --- greedy decoding ---


def _greedy_math(model: nn.Module, src: Tensor, max_len: int, bos_id: int, eos_id: int,
                 src_mask: Tensor | None = None, *, position: int = -1, finish: str = "trim",
                 ignore_mask: bool = False) -> list[Tensor]:
    """Greedy decoding with switches for common mistakes (defaults: the right answer).

    ``finish``: "trim" (right), "untrimmed" (finished rows go on, not cut), "eos_fill" (finished
    rows repeat EOS, not cut), "never" (no stopping at EOS at all), "first" (every row stops when
    the first one finishes).
    """
    if ignore_mask:
        src_mask = None
    memory = model.encode(src, src_mask)
    B = src.size(0)
    tokens = torch.full((B, 1), bos_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_len):
        logits = model.decode(tokens, memory, src_mask, causal_mask(tokens.size(1)))
        next_token = logits[:, position].argmax(dim=-1)
        if finish in ("trim", "eos_fill"):
            next_token = next_token.masked_fill(done, eos_id)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == eos_id
        if finish == "first" and done.any():
            break
        if finish != "never" and done.all():
            break
    if finish in ("trim", "first"):
        return [_cut_after_eos(row, eos_id) for row in tokens]
    return list(tokens)


def _cut_after_eos(row: Tensor, eos_id: int) -> Tensor:
    ends = (row[1:] == eos_id).nonzero()
    return row if len(ends) == 0 else row[: int(ends[0]) + 2]


def _greedy_variants() -> list[Variant]:
    def var(**options: Any) -> Callable[[_Case], Any]:
        def run(case: _Case) -> list[Tensor]:
            i = case.inputs
            return _greedy_math(i["model"], i["src"], i["max_len"], i["bos_id"], i["eos_id"],
                                i.get("src_mask"), **options)
        return run

    def right(case: _Case) -> list[Tensor]:
        return var()(case)

    return [
        ("your sequences go on after EOS: a sequence ends at its first EOS. In a batch, keep "
         "going until every row has produced EOS, then cut each row after its first EOS",
         var(finish="untrimmed")),
        ("your sequences do not stop at EOS: stop generating once a row has produced EOS (in a "
         "batch: once every row has), and cut each row after its first EOS", var(finish="never")),
        ("rows that finished early are padded with EOS: cut each row after its first EOS",
         var(finish="eos_fill")),
        ("the whole batch stops when its first row reaches EOS, so the other rows are cut short: "
         "each source is decoded until its own EOS (stop when every row has produced EOS, "
         "done.all(), not done.any())", var(finish="first")),
        ("the next token is read from the first position's logits: the prediction for the token "
         "after the prefix is at the last position, logits[:, -1]", var(position=0)),
        ("src_mask is ignored: pass it to model.encode and model.decode, so the padded source "
         "positions are hidden", var(ignore_mask=True)),
        ("your sequences leave out BOS: each one starts with bos_id, followed by the generated "
         "tokens", lambda c: [s[1:] for s in right(c)]),
        ("your sequences leave out their final EOS: a finished sequence ends with eos_id",
         lambda c: [s[:-1] if s[-1] == c.inputs["eos_id"] and len(s) > 1 else s for s in right(c)]),
        ("max_len counts the tokens generated after BOS: generate at most max_len of them, "
         "for at most max_len + 1 ids; yours makes one more",
         lambda c: var()(_Case(c.name, {**c.inputs, "max_len": c.inputs["max_len"] + 1}))),
        ("max_len counts the tokens generated after BOS: generate at most max_len of them, "
         "for at most max_len + 1 ids; yours makes one fewer",
         lambda c: var()(_Case(c.name, {**c.inputs, "max_len": c.inputs["max_len"] - 1}))),
    ]


# seeds of the random models, chosen so that their answers differ from source to source, some end
# with EOS and some run to max_len, and beam search, the source mask and the length penalty each
# change some answer
_POST_LN_SEED, _PRE_LN_SEED = 33, 48


def _decoding_sources(g: torch.Generator, lengths: Sequence[int], S: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """Random source ids 3..10 with padding (id 0) after each length; and the padding mask."""
    S = S or max(lengths)
    src = torch.randint(3, 11, (len(lengths), S), generator=g)
    keep = torch.arange(S) < torch.tensor(lengths)[:, None]
    src = src.masked_fill(~keep, 0)
    return src, keep[:, None, None, :]


def _greedy_cases(g: torch.Generator) -> list[_Case]:
    chapter, three = _chapter_table(), _three_sources_table()
    other_ids = _table_model("EOS pad BOS A B C", A={
        "BOS": {"A": 0.5, "B": 0.4, "EOS": 0.1},
        "BOS A": {"B": 0.36, "C": 0.34, "EOS": 0.3},
        "BOS A B": {"C": 0.7, "EOS": 0.3},
    })
    src_t, mask_t = _decoding_sources(g, [6, 4, 2])
    src_u, mask_u = _decoding_sources(g, [3, 5])

    def case(name: str, model: nn.Module, src: Tensor, max_len: int, src_mask: Tensor | None = None,
             bos: int = 1, eos: int = 2) -> _Case:
        return _Case(name, {"model": model, "src": src, "max_len": max_len, "bos_id": bos,
                            "eos_id": eos, "src_mask": src_mask})

    def sources(model: _TableModel, *names: str) -> Tensor:
        return torch.tensor([[model.ids[n], 0] for n in names])

    return [
        case("a table model, one source", chapter, sources(chapter, "A"), 5),
        case("a table model, 3 sources that finish at different steps (the last one never)",
             three, sources(three, "A", "D", "G"), 4),
        case("a table model with bos_id=2, eos_id=0", other_ids, sources(other_ids, "A"), 5,
             bos=2, eos=0),
        case("a random post-LN Transformer, 3 padded sources", _random_transformer(
            _POST_LN_SEED, norm_first=False), src_t, 6, mask_t),
        case("a random pre-LN Transformer, 2 padded sources, max_len=1", _random_transformer(
            _PRE_LN_SEED, norm_first=True), src_u, 1, mask_u),
    ]


@_isolated
def check_greedy_decode(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(model, src, max_len, bos_id, eos_id, src_mask=None)``, greedy decoding, which
    returns one 1-d tensor of ids per source: ``bos_id``, the generated tokens, and ``eos_id``
    (or ``max_len`` tokens if EOS never came), as :func:`transformer_lib.greedy_decode`.

    The models: hand-made table models (batches whose sources finish at different steps or never;
    other BOS and EOS ids) and small random :class:`transformer_lib.Transformer` s with padded
    sources.
    """
    check = "check_greedy_decode"
    g = torch.Generator().manual_seed(seed)
    cases = _greedy_cases(g)

    def learner(case: _Case) -> Any:
        args, kwargs = _decoding_args(case)
        return _call(check, f"running {case.where}", fn, *args, **kwargs)

    def reference(case: _Case) -> list[Tensor]:
        args, kwargs = _decoding_args(case)
        return greedy_decode(*args, **kwargs, use_cache=False)

    count = _run_decoding(check, cases, learner, reference, _greedy_variants(),
                          lambda got, want, case: _sequence_symptoms(got, want, case, beam=False))
    _passed(check, count)


# --- the log-probability of a sequence ---


def _sequence_log_prob_math(model: nn.Module, src: Tensor, tgt: Tensor,
                            src_mask: Tensor | None = None, *, shift: str = "ok",
                            normalize: str = "log_softmax", reduce: str = "sum",
                            ignore_mask: bool = False, softmax_dim: int = -1) -> Tensor:
    """log p(tgt | src) with switches for common mistakes (defaults: the right answer)."""
    if ignore_mask:
        src_mask = None
    memory = model.encode(src, src_mask)
    T = tgt.size(1)
    inputs, targets = {"ok": (tgt[:, :-1], tgt[:, 1:]), "none": (tgt, tgt),
                       "same": (tgt[:, :-1], tgt[:, :-1]), "skip_first": (tgt[:, :-1], tgt[:, 1:]),
                       "no_last": (tgt[:, :-2], tgt[:, 1:-1])}[shift]
    logits = model.decode(inputs, memory, src_mask, causal_mask(inputs.size(1))).float()
    scores = {"log_softmax": lambda x: F.log_softmax(x, dim=softmax_dim),
              "none": lambda x: x,
              "softmax": lambda x: F.softmax(x, dim=-1)}[normalize](logits)
    picked = scores.gather(-1, targets[..., None]).squeeze(-1)  # (B, T')
    if shift == "skip_first":
        picked = picked[:, 1:]
    del T
    if reduce == "mean":
        return picked.mean(dim=-1)
    if reduce == "prob":
        return picked.sum(dim=-1).exp()
    return picked.sum(dim=-1)


def _sequence_log_prob_variants() -> list[Variant]:
    def var(**options: Any) -> Callable[[_Case], Any]:
        return lambda case: _sequence_log_prob_math(**case.inputs, **options)

    shift = ("the targets are not shifted: the logits at position t score the token that "
             "follows it, so decode tgt[:, :-1] and score the tokens tgt[:, 1:]")
    return [
        (shift, var(shift="none")),
        (shift, var(shift="same")),
        ("the first token after BOS is not scored: every token after BOS counts, the first "
         "one included", var(shift="skip_first")),
        ("the last token (EOS) is not scored: every token after BOS counts, EOS included",
         var(shift="no_last")),
        ("the logits are summed as they are: turn them into log-probabilities first, "
         "F.log_softmax(logits, dim=-1)", var(normalize="none")),
        ("probabilities are summed: sum the log-probabilities (log_softmax), since "
         "log p(y) = sum_t log p(y_t | y_<t, x)", var(normalize="softmax")),
        ("the log_softmax runs over the positions: normalize over the vocabulary, dim=-1",
         var(softmax_dim=1)),
        ("this is the mean over the tokens: the log-probability of a sequence is their sum",
         var(reduce="mean")),
        ("this is the probability p(y | x): return its logarithm, the sum of the tokens' "
         "log-probabilities", var(reduce="prob")),
        ("src_mask is ignored: pass it to model.encode and model.decode", var(ignore_mask=True)),
    ]


@_isolated
def check_sequence_log_prob(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(model, src, tgt, src_mask=None) -> (B,)``, the log-probability
    :math:`\\log p(y \\mid x) = \\sum_t \\log p(y_t \\mid y_{<t}, x)` of each complete hypothesis
    ``tgt[b]`` (BOS first; every token after BOS is scored), as
    :func:`transformer_lib.sequence_log_prob`: a table model whose probabilities are known, and
    small random Transformers with padded sources."""
    check = "check_sequence_log_prob"
    g = torch.Generator().manual_seed(seed)
    chapter = _chapter_table()
    a = chapter.ids
    table_tgt = torch.tensor([[a["BOS"], a["A"], a["B"], a["EOS"]],
                              [a["BOS"], a["A"], a["C"], a["EOS"]],
                              [a["BOS"], a["B"], a["C"], a["EOS"]]])
    src_t, mask_t = _decoding_sources(g, [5, 2, 4])
    src_u, _ = _decoding_sources(g, [3, 3])

    def tgt(B: int, T: int, vocab: int = 9) -> Tensor:
        t = torch.randint(3, vocab, (B, T), generator=g)
        t[:, 0], t[:, -1] = 1, 2  # BOS ... EOS
        return t

    cases = [
        _Case("a table model, p(BOS A B EOS) = 0.5 * 0.36 * 1 (nearly)",
              {"model": chapter, "src": torch.full((3, 1), a["A"]), "tgt": table_tgt}),
        _Case("a random post-LN Transformer, padded sources",
              {"model": _random_transformer(_POST_LN_SEED, norm_first=False), "src": src_t, "tgt": tgt(3, 6),
               "src_mask": mask_t}),
        _Case("a random pre-LN Transformer, no mask",
              {"model": _random_transformer(_PRE_LN_SEED, norm_first=True), "src": src_u, "tgt": tgt(2, 4)}),
    ]
    for case in cases:
        case.positional = 3

    def learner(case: _Case) -> Any:
        args, kwargs = case.args()
        return _call(check, f"running {case.where}", fn, *args, **kwargs)

    def structure(got: Any, want: Tensor, case: _Case) -> str | None:
        B, T = case.inputs["tgt"].shape
        if isinstance(got, Tensor) and got.shape in ((B, T - 1), (B, T)):
            return (f"yours has shape {tuple(got.shape)}, one number per token: sum over the "
                    f"positions to get one log-probability per sequence, (B,) = ({B},)")
        if isinstance(got, Tensor) and got.shape in ((B, 1), (1, B)):
            return f"return shape (B,) = ({B},); yours is {tuple(got.shape)}"
        return _structure(("log-probabilities",), got, want)

    count = _run(check, cases, learner, lambda case: sequence_log_prob(**case.inputs),
                 parts=("log-probabilities",), variants=_sequence_log_prob_variants(),
                 structure=structure)
    _passed(check, count)


# --- one beam step: the best candidates of each source ---


def _top_candidates(log_probs: Tensor, next_log_probs: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    B, k, V = next_log_probs.shape
    scores = (log_probs[:, :, None] + next_log_probs).reshape(B, k * V)  # (B, k, V) -> (B, k * V)
    top, index = scores.topk(n, dim=-1)  # (B, n), best first
    return top, index // V, index % V


def _top_candidates_variants() -> list[Variant]:
    def inputs(case: _Case) -> tuple[Tensor, Tensor, int]:
        i = case.inputs
        return i["log_probs"], i["next_log_probs"], i["n"]

    def last_only(case: _Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        B, k, V = nlp.shape
        alive = torch.where(torch.isinf(lp), lp, torch.zeros_like(lp))  # -inf rows stay dead
        return _top_candidates(alive, nlp, n)

    def ranked_by_last(case: _Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        _, beams, tokens = last_only(case)
        return lp.gather(1, beams) + nlp[torch.arange(nlp.size(0))[:, None], beams, tokens], beams, tokens

    def flat(case: _Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        B, k, V = nlp.shape
        top, index = (lp[:, :, None] + nlp).reshape(-1).topk(B * n)
        return top.view(B, n), (index // V % k).view(B, n), (index % V).view(B, n)

    def decompose(case: _Case, how: str) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        B, k, V = nlp.shape
        top, index = (lp[:, :, None] + nlp).reshape(B, k * V).topk(n, dim=-1)
        if how == "by_k":
            return top, index % k, index // k
        if how == "flat_index":
            return top, index // V, index
        return top, index // k, index % V

    def smallest(case: _Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        B, k, V = nlp.shape
        scores = (lp[:, :, None] + nlp).reshape(B, k * V)
        scores = scores.masked_fill(torch.isinf(scores), math.inf)
        top, index = scores.topk(n, dim=-1, largest=False)
        return top, index // V, index % V

    decomposition = ("the flat index of a candidate in the (B, k * V) scores is "
                     "beam * V + token: beam = index // V, token = index % V")
    return [
        ("the candidates are ranked by the new token's log-probability alone: a hypothesis's "
         "score is the sum over all its tokens, log_probs[:, :, None] + next_log_probs",
         last_only),
        ("the candidates are ranked by the new token's log-probability alone: rank them by their "
         "total score, log_probs[:, :, None] + next_log_probs", ranked_by_last),
        ("the top-k runs over the whole batch, so one source's candidates take another's "
         "places: take the top n of each source's k * V candidates, scores.view(B, k * V)"
         ".topk(n, dim=-1)", flat),
        (decomposition, lambda c: decompose(c, "by_k")),
        (decomposition, lambda c: decompose(c, "div_k")),
        ("the tokens are the flat indices into the k * V candidates: token = index % V "
         "(and beam = index // V)", lambda c: decompose(c, "flat_index")),
        ("these are the n worst candidates: topk returns the largest by default "
         "(largest=True), best first", smallest),
    ]


@_isolated
def check_top_candidates(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(log_probs, next_log_probs, n) -> (scores, beams, tokens)``, one step of beam
    search: ``log_probs (B, k)`` scores the live hypotheses (``-inf``: no hypothesis),
    ``next_log_probs (B, k, V)`` their next-token log-probabilities; the result holds, for each
    source, its ``n`` best extensions, best first (each ``(B, n)``):
    ``scores[b, i] = log_probs[b, beams[b, i]] + next_log_probs[b, beams[b, i], tokens[b, i]]``.
    """
    check = "check_top_candidates"
    g = torch.Generator().manual_seed(seed)

    def case(name: str, B: int, k: int, V: int, n: int, dead: int = 0,
             offsets: Sequence[float] | None = None) -> _Case:
        log_probs = -3.0 * torch.rand(B, k, generator=g)
        if offsets is not None:
            log_probs = log_probs + torch.tensor(offsets)[:, None]
        if dead:
            log_probs[:, k - dead:] = -math.inf
        next_log_probs = F.log_softmax(_randn(g, B, k, V, std=2.0), dim=-1)
        return _Case(name, {"log_probs": log_probs, "next_log_probs": next_log_probs, "n": n},
                     positional=3)

    cases = [
        case("B=2 sources, k=3 hypotheses each, V=5, n=3", 2, 3, 5, 3),
        case("the first step: only hypothesis 0 is live, the others are -inf; n=2k=6", 2, 3, 6, 6,
             dead=2),
        case("3 sources with scores on different scales, k=2, V=4, n=4", 3, 2, 4, 4,
             offsets=[0.0, -6.0, -12.0]),
        case("one source, one hypothesis (greedy), V=7, n=2", 1, 1, 7, 2),
        case("k=4, V=3, n=8: the best candidates come from several hypotheses", 2, 4, 3, 8),
    ]
    parts = ("scores", "beams", "tokens")

    def learner(case: _Case) -> Any:
        args, kwargs = case.args()
        return _call(check, f"running {case.where}", fn, *args, **kwargs)

    def reference(case: _Case) -> Any:
        return _top_candidates(**case.inputs)

    def structure(got: Any, want: Any, case: _Case) -> str | None:
        B, k, V = case.inputs["next_log_probs"].shape
        n = case.inputs["n"]
        if isinstance(got, (tuple, list)) and got and isinstance(got[0], Tensor):
            if got[0].shape == (B, k, n):
                return (f"the scores have shape (B, k, n) = {(B, k, n)}: that is the top n of each "
                        f"hypothesis; flatten each source's candidates to (B, k * V) first, so the "
                        f"n best of a source can come from any of its hypotheses")
        problem = _structure(parts, got, want)
        if problem is None:
            scores, beams, tokens = got
            if bool(((beams < 0) | (beams >= k)).any()) or bool(((tokens < 0) | (tokens >= V)).any()):
                return (f"beams must be in [0, k) = [0, {k}) and tokens in [0, V) = [0, {V}): "
                        f"split the flat index into beam = index // V and token = index % V")
        return problem

    def hints(got: Any, want: Any, case: _Case) -> str | None:
        scores, beams, tokens = got
        lp, nlp = case.inputs["log_probs"], case.inputs["next_log_probs"]
        B, k, V = nlp.shape
        candidates = (lp[:, :, None] + nlp).reshape(B, k * V)
        for b in range(B):
            for value in scores[b].tolist():
                if not bool(torch.isclose(candidates[b], torch.tensor(value), atol=1e-5).any()):
                    return (f"source {b} got a score that is none of its own candidates': the "
                            f"top n must be taken per source, over scores.view(B, k * V)")
        if _close(scores, want[0]) and not (_close(beams, want[1]) and _close(tokens, want[2])):
            return ("the scores are right but not the beams or tokens they come from: with "
                    "index in [0, k * V), beam = index // V and token = index % V")
        chosen = lp[:, :, None] + nlp
        if _close(scores.sort(dim=-1, descending=True).values, want[0]):
            return "the right candidates, in the wrong order: return them best first"
        del chosen
        return None

    count = _run(check, cases, learner, reference, parts=parts,
                 variants=_top_candidates_variants(), structure=structure, hints=hints)
    _passed(check, count)


# --- beam search ---


@dataclass
class _BeamBug:
    """Switches for the mistakes the beam search check knows (all off: the right answer)."""

    all_live: bool = False  # all k start rows live at score 0: the beam fills with duplicates
    last_token: bool = False  # a hypothesis is scored by its last token's log-probability only
    extend_finished: str = ""  # "untrimmed" / "trimmed": EOS is an ordinary token
    flat_topk: bool = False  # one top-k over the whole batch's B * k * V candidates
    no_reorder: bool = False  # row j keeps its own prefix and gets the token chosen for slot j
    tiled_memory: bool = False  # row r reads source r % B's memory (repeat, not repeat_interleave)
    every_eos: bool = False  # every EOS among the top 2k is set aside, even below the k-th live
    top_k_only: bool = False  # only the top k candidates: the beam shrinks when some finish
    stop: str = "exact"  # "first": at the first finished; "k_finished"; "raw_bound"
    pick: str = "best"  # "last_finished", "live" (the top live row), "finished_only"
    penalty: str = "ok"  # "ignored", "mean" (log p / |y|), "with_bos" (|y| + 1), "multiply"
    ignore_mask: bool = False


def _beam_math(model: nn.Module, src: Tensor, max_len: int, bos_id: int, eos_id: int,
               beam_size: int = 4, src_mask: Tensor | None = None, length_alpha: float = 0.0,
               bug: _BeamBug | None = None) -> list[Tensor]:
    """Beam search, written plainly with Python lists, with switches for common mistakes."""
    bug = bug or _BeamBug()
    B, k = src.size(0), beam_size
    alpha = 0.0 if bug.penalty == "ignored" else (length_alpha or 0.0)

    def score(log_prob: float, length: int) -> float:
        if bug.penalty == "mean":
            return log_prob / length
        if bug.penalty == "multiply":
            return log_prob * length_penalty(length, alpha)
        return log_prob / length_penalty(length + (bug.penalty == "with_bos"), alpha)

    mask = None if src_mask is None or bug.ignore_mask else src_mask.expand(B, 1, 1, src.size(1))
    memory = model.encode(src, mask)
    rows = torch.arange(B).repeat(k) if bug.tiled_memory else torch.arange(B).repeat_interleave(k)
    memory, mask = memory[rows], None if mask is None else mask[rows]
    hyps = [[bos_id] for _ in range(B * k)]
    scores = [[0.0 if j == 0 or bug.all_live else -math.inf for j in range(k)] for _ in range(B)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    active = [True] * B
    top_live: list[list[int] | None] = [None] * B
    for t in range(1, max_len + 1):
        logits = model.decode(torch.tensor(hyps), memory, mask, causal_mask(t))
        step = F.log_softmax(logits[:, -1].float(), dim=-1)  # (B * k, V)
        per_source = []
        for b in range(B):
            candidates = []
            for j in range(k):
                if scores[b][j] == -math.inf:
                    continue
                row = b * k + j
                values = step[row].tolist()
                for v, value in enumerate(values):
                    candidates.append((value if bug.last_token else scores[b][j] + value, row, v))
            candidates.sort(key=lambda c: -c[0])
            per_source.append(candidates[: (k if bug.top_k_only else 2 * k)])
        if bug.flat_topk:  # slots filled in the order of one ranking of the whole batch
            merged = sorted((c for b in range(B) if active[b] for c in per_source[b]),
                            key=lambda c: -c[0])[: 2 * B * k]
            per_source = [[] for _ in range(B)]
            for n, c in enumerate(merged):
                per_source[min(n // (2 * k), B - 1)].append(c)
        new_hyps: list[list[int]] = []
        new_scores = [[-math.inf] * k for _ in range(B)]
        for b in range(B):
            chosen = 0
            for total, row, v in per_source[b]:
                if not active[b] or (chosen == k and not bug.every_eos):
                    break
                prefix = hyps[b * k + chosen] if bug.no_reorder and chosen < k else hyps[row]
                if v == eos_id and not bug.extend_finished:
                    finished[b].append((score(total, t), hyps[row] + [v]))
                    continue
                if chosen == k:
                    continue
                new_hyps.append(prefix + [v])
                new_scores[b][chosen] = total
                chosen += 1
            while chosen < k:
                new_hyps.append(hyps[b * k] + [eos_id])
                chosen += 1
            if not active[b]:
                continue
            live = max(new_scores[b])
            if live > -math.inf:
                top_live[b] = new_hyps[b * k + new_scores[b].index(live)]
            if not finished[b]:
                continue
            best = max(s for s, _ in finished[b])
            if bug.stop == "first" or (bug.stop == "k_finished" and len(finished[b]) >= k):
                active[b] = False
            elif bug.stop == "raw_bound" and best >= live:
                active[b] = False
            elif bug.stop == "exact" and best >= score(live, max_len):
                active[b] = False
        hyps, scores = new_hyps, new_scores
        if not any(active):
            break
    else:
        for b in range(B):
            if active[b] and bug.pick != "finished_only":
                finished[b] += [(score(s, max_len), hyps[b * k + j]) for j, s in enumerate(scores[b])
                                if s > -math.inf]
    out = []
    for b in range(B):
        if bug.pick == "live" and top_live[b] is not None:
            tokens = top_live[b]
        elif bug.pick == "last_finished" and finished[b]:
            tokens = finished[b][-1][1]
        elif finished[b]:
            tokens = max(finished[b], key=lambda f: f[0])[1]
        else:
            tokens = hyps[b * k]
        if bug.extend_finished == "trimmed" and eos_id in tokens[1:]:
            tokens = tokens[: tokens.index(eos_id, 1) + 1]
        out.append(torch.tensor(tokens))
    return out


_BEAM_VARIANTS: list[tuple[str, _BeamBug]] = [
    ("all k hypotheses start live: at the first step the beam holds k copies of BOS, so it fills "
     "with k copies of one hypothesis and your answer is greedy decoding's. Start each source with "
     "one live hypothesis: scores 0 for the first row and -inf for the other k - 1 "
     "(log_probs[:, 1:] = -inf); or is beam_size ignored?", _BeamBug(all_live=True)),
    ("the hypotheses are ranked by the log-probability of their last token: a hypothesis's score "
     "is the running sum over its tokens, log_probs[:, :, None] + next_log_probs",
     _BeamBug(last_token=True)),
    ("finished hypotheses are extended: a hypothesis that emits EOS is finished; set it aside "
     "(with its score) and keep k live hypotheses in the beam", _BeamBug(extend_finished="trimmed")),
    ("finished hypotheses are extended: a hypothesis that emits EOS is finished; set it aside "
     "(with its score) and keep k live hypotheses in the beam",
     _BeamBug(extend_finished="untrimmed")),
    ("the top-k runs over the whole batch, so the hypotheses of different sources are mixed: take "
     "each source's best candidates among its own k * V, scores.view(B, k * V).topk(..., dim=-1)",
     _BeamBug(flat_topk=True)),
    ("the rows of memory do not line up with the hypotheses: row b * k + j belongs to source b, so "
     "expand memory (and src_mask) with repeat_interleave(k, dim=0); repeat(k, 1, 1) tiles the "
     "batch and gives row r the memory of source r % B", _BeamBug(tiled_memory=True)),
    ("the rows are not reordered after the selection: the new beam's row j must continue the "
     "hypothesis its candidate came from, tokens = torch.cat([tokens[rows], new_tokens[:, None]], "
     "dim=1), not the hypothesis that was in row j", _BeamBug(no_reorder=True)),
    ("the search stops at the first hypothesis that finishes: a live hypothesis may still beat "
     "it. Go on until the best finished score is at least the best live log-probability (divided "
     "by lp(max_len)), or until max_len", _BeamBug(stop="first")),
    ("the search stops when k hypotheses have finished, but a live one can still beat them: go on "
     "until the best finished score is at least the best live log-probability (divided by "
     "lp(max_len)), or until max_len", _BeamBug(stop="k_finished")),
    ("you return the last hypothesis to finish: return the finished hypothesis with the best "
     "score", _BeamBug(pick="last_finished")),
    ("you return a hypothesis of the beam, not the best finished one: hypotheses that end with "
     "EOS are set aside as finished, and the answer is the best of them (live hypotheses count "
     "only when max_len is reached)", _BeamBug(pick="live")),
    ("when max_len is reached, the live hypotheses count as finished too (scored with "
     "lp(max_len)): the best of them can beat every hypothesis that ended with EOS",
     _BeamBug(pick="finished_only")),
    ("with beam_size=1 beam search must be greedy decoding: an EOS candidate ranked below the "
     "k-th live one is not set aside. Go through the candidates best first and stop as soon as "
     "k live ones are chosen", _BeamBug(every_eos=True)),
    ("finished hypotheses are scored by their mean log-probability, log p / |y|: the score is "
     "log p / lp(|y|) with lp(|y|) = ((5 + |y|) / 6) ** length_alpha, which is 1 when "
     "length_alpha=0 (no length normalization)", _BeamBug(penalty="mean")),
    ("src_mask is ignored: pass it to model.encode, and (one row per hypothesis, "
     "repeat_interleave(k, dim=0)) to model.decode", _BeamBug(ignore_mask=True)),
]

_PENALTY_VARIANTS: list[tuple[str, _BeamBug]] = [
    ("length_alpha is ignored: a finished hypothesis scores log p / lp(|y|), "
     "lp(|y|) = length_penalty(|y|, length_alpha)", _BeamBug(penalty="ignored")),
    ("the length penalty multiplies the log-probability; divide by it: log p / lp(|y|)",
     _BeamBug(penalty="multiply")),
    ("the length |y| counts BOS: it counts the generated tokens, EOS included (a hypothesis that "
     "finishes at step t has |y| = t)", _BeamBug(penalty="with_bos")),
    ("the stopping rule ignores the length penalty: a live hypothesis may still reach "
     "log p / lp(max_len), which is larger than its log p; stop when the best finished score "
     "is at least best live log p / lp(max_len)", _BeamBug(stop="raw_bound")),
    ("only the top k candidates are considered, so the beam shrinks when some of them end with "
     "EOS: go through the top 2k, so that k live hypotheses remain after the finished are set "
     "aside", _BeamBug(top_k_only=True)),
]


_TABLE_NAMES = "pad BOS EOS A B C D E F G H I J K L"


def _chapter_table() -> _TableModel:
    """Chapter 6's example: greedy decoding finds A B EOS (p = 0.18), beam search B EOS (0.364)."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.5, "B": 0.4, "EOS": 0.1},
        "BOS A": {"B": 0.36, "C": 0.34, "EOS": 0.3},
        "BOS B": {"B": 0.05, "C": 0.04, "EOS": 0.91},
    })


def _three_sources_table() -> _TableModel:
    """Three sources with their own tokens and answers of different lengths; G never ends."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.5, "B": 0.45, "EOS": 0.05},
        "BOS A": {"A": 0.26, "B": 0.25, "C": 0.25, "EOS": 0.24},
        "BOS B": {"C": 0.55, "A": 0.44, "EOS": 0.01},
    }, D={
        "BOS": {"D": 0.6, "E": 0.25, "EOS": 0.15},
        "BOS D": {"E": 0.5, "F": 0.3, "EOS": 0.2},
        "BOS D E": {"F": 0.9, "EOS": 0.1},
        "BOS D F": {"E": 0.6, "EOS": 0.4},
    }, G={
        "*": {"G": 0.8, "EOS": 0.15, "H": 0.05},
    })


def _late_table() -> _TableModel:
    """Hypotheses finish early, but a live one beats them later: the stopping rule matters."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.4, "EOS": 0.31, "B": 0.29},
        "BOS A": {"C": 0.9, "EOS": 0.1},
        "BOS B": {"EOS": 0.9, "C": 0.1},
    }, D={
        "BOS": {"D": 0.5, "E": 0.4, "EOS": 0.1},
        "BOS D": {"EOS": 0.45, "F": 0.55},
        "BOS E": {"EOS": 0.8, "F": 0.2},
        "BOS D F": {"E": 0.8, "EOS": 0.2},
    })


def _eos_second_table() -> _TableModel:
    """EOS is the second-best first token, and greedy decoding's path ends below it."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.5, "EOS": 0.4, "B": 0.1},
        "BOS A": {"B": 0.36, "C": 0.34, "EOS": 0.3},
    })


def _length_table() -> _TableModel:
    """A short and a long answer: the short one is more probable, the long one wins with the
    length penalty (alpha = 1); source D's short answer finishes while the long one's prefix is
    less probable, so the stopping rule must allow for the penalty."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.79, "B": 0.21},
        "BOS A": {"C": 0.57, "EOS": 0.43},
        "BOS A C": {"C": 0.99, "EOS": 0.01},
        "BOS A C C": {"EOS": 0.67, "B": 0.33},
        "BOS B": {"EOS": 0.6, "C": 0.4},
    }, D={
        "BOS": {"D": 0.66, "E": 0.34},
        "BOS D": {"EOS": 0.515, "F": 0.485},
        "BOS D F": {"F": 0.97, "EOS": 0.03},
        "BOS E": {"EOS": 0.3, "F": 0.7},
    })


def _penalty_table() -> _TableModel:
    """Three sources for length_alpha=1. D: the long answer is a little more probable than the
    short one, and wins unless the penalty multiplies the log-probability. G: the long answer
    wins only if |y| leaves BOS out. J: the winner ranks below an EOS candidate at the first step
    (it survives only if k live hypotheses are kept besides the finished ones)."""
    return _table_model(_TABLE_NAMES, D={
        "BOS": {"D": 0.7, "EOS": 0.3},
        "BOS D": {"E": 0.68, "F": 0.32},
        "BOS D E": {"F": 0.8, "EOS": 0.2},
        "BOS D E F": {"EOS": 0.84, "E": 0.16},
    }, G={
        "BOS": {"G": 0.6, "EOS": 0.4},
        "BOS G": {"H": 0.55, "I": 0.45},
        "BOS G H": {"EOS": 0.912, "I": 0.088},
    }, J={
        "BOS": {"J": 0.5, "EOS": 0.3, "K": 0.2},
        "BOS J": {"J": 0.28, "K": 0.27, "L": 0.25, "EOS": 0.2},
        "BOS K": {"K": 0.99, "EOS": 0.01},
        "BOS K K": {"K": 0.99, "EOS": 0.01},
        "BOS K K K": {"EOS": 0.99, "K": 0.01},
    })


def _beam_cases(g: torch.Generator, penalty: bool) -> list[_Case]:
    def case(name: str, model: nn.Module, src: Tensor, max_len: int, beam_size: int,
             src_mask: Tensor | None = None, length_alpha: float | None = None) -> _Case:
        inputs = {"model": model, "src": src, "max_len": max_len, "bos_id": 1, "eos_id": 2,
                  "beam_size": beam_size, "src_mask": src_mask}
        if length_alpha is not None:
            inputs["length_alpha"] = length_alpha
        return _Case(name, inputs)

    def sources(model: _TableModel, *names: str) -> Tensor:
        return torch.tensor([[model.ids[n], 0] for n in names])

    chapter, three, late = _chapter_table(), _three_sources_table(), _late_table()
    eos_second, lengths, penalties = _eos_second_table(), _length_table(), _penalty_table()
    src_t, mask_t = _decoding_sources(g, [6, 4, 2])
    src_u, mask_u = _decoding_sources(g, [3, 5])
    post_ln = _random_transformer(_POST_LN_SEED, norm_first=False)
    pre_ln = _random_transformer(_PRE_LN_SEED, norm_first=True)
    cases = [
        case("a table model where greedy decoding misses the most probable sequence", chapter,
             sources(chapter, "A"), 5, 2),
        case("a table model, 3 sources with their own answers (the last one never ends)", three,
             sources(three, "A", "D", "G"), 4, 2),
        case("a table model where hypotheses finish before the best one", late,
             sources(late, "A", "D"), 5, 2),
        case("a table model, beam_size=1 (greedy decoding)", eos_second,
             sources(eos_second, "A"), 5, 1),
        case("a table model, answers of different lengths", lengths, sources(lengths, "A", "D"),
             5, 2),
        case("a random post-LN Transformer, 3 padded sources", post_ln, src_t, 6, 3, mask_t),
        case("a random pre-LN Transformer, 2 padded sources, beam_size=1", pre_ln, src_u, 5, 1,
             mask_u),
        case("a random pre-LN Transformer, 2 padded sources, beam_size=4", pre_ln, src_u, 5, 4,
             mask_u),
    ]
    if penalty:
        cases += [
            case("a table model, length_alpha=1: the long answer wins", lengths,
                 sources(lengths, "A"), 5, 2, length_alpha=1.0),
            case("a table model, length_alpha=1: the stopping rule", lengths,
                 sources(lengths, "D"), 5, 2, length_alpha=1.0),
            case("a table model, length_alpha=1: what the length counts", penalties,
                 sources(penalties, "D", "G", "J"), 5, 2, length_alpha=1.0),
            case("a random post-LN Transformer, length_alpha=0.8", post_ln, src_t, 6, 3, mask_t,
                 length_alpha=0.8),
        ]
    return cases


def _takes_length_alpha(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "length_alpha" or p.kind is inspect.Parameter.VAR_KEYWORD
               for p in parameters)


@_isolated
def check_beam_search(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(model, src, max_len, bos_id, eos_id, beam_size=4, src_mask=None)``, beam
    search, which returns for each source its best hypothesis as a 1-d tensor of ids
    (``bos_id`` ... ``eos_id``, or ``max_len`` tokens), as :func:`transformer_lib.beam_search`.

    The models: hand-made table models where greedy decoding misses the most probable
    sequence, batches whose sources need different answers (one never ends), hypotheses that
    finish before the best one, ``beam_size=1`` (which must be greedy decoding); and small
    random :class:`transformer_lib.Transformer` s with padded sources. If ``fn`` takes a
    ``length_alpha`` argument (the length penalty :func:`transformer_lib.length_penalty`), cases
    with ``length_alpha > 0`` run too.
    """
    check = "check_beam_search"
    g = torch.Generator().manual_seed(seed)
    penalty = _takes_length_alpha(fn)
    cases = _beam_cases(g, penalty)

    def learner(case: _Case) -> Any:
        args, kwargs = _decoding_args(case)
        return _call(check, f"running {case.where}", fn, *args, **kwargs)

    def reference(case: _Case) -> list[Tensor]:
        args, kwargs = _decoding_args(case)
        return beam_search(*args, **kwargs, use_cache=False)

    def var(bug: _BeamBug) -> Callable[[_Case], Any]:
        def run(case: _Case) -> list[Tensor]:
            args, kwargs = _decoding_args(case)
            return _beam_math(*args, **kwargs, bug=bug)
        return run

    variants = [(d, var(bug)) for d, bug in _BEAM_VARIANTS + (_PENALTY_VARIANTS if penalty else [])]
    count = _run_decoding(check, cases, learner, reference, variants,
                          lambda got, want, case: _sequence_symptoms(got, want, case, beam=True),
                          log_probs=True)
    note = "" if penalty else " (your function takes no length_alpha: the length penalty is not checked)"
    print(f"{check}: all {count} cases pass{note}")


# --- lab 05: efficient training ----------------------------------------------------------------


_isolated_training = functools.partial(_isolated, autograd=True)  # for the checks that train


def _as_number(value: Any) -> float | None:
    """A Python number (or a 0-d tensor) as a float; ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        return float(value.item())
    return None


def _what_it_is(value: Any) -> str:
    if value is None:
        return "None (is a `return` missing?)"
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


_TINY_GPT = {"vocab_size": 11, "context_length": 8, "d_model": 16, "num_heads": 2, "num_layers": 1}


def _tiny_gpt(seed: int, **options: Any) -> GPT:
    torch.manual_seed(seed)  # the caller's generator is forked: this changes nothing outside
    return GPT(GPTConfig(**{**_TINY_GPT, **options}))


# --- FLOPs per token ---


@dataclass
class _Shape:
    """The sizes of a GPT that FLOPs depend on, and its full parameter count."""

    config: GPTConfig
    L: int
    D: int
    H: int
    F: int
    V: int
    C: int
    T: int
    tied: bool

    @classmethod
    def of(cls, config: GPTConfig) -> _Shape:
        return cls(config, config.num_layers, config.d_model, config.num_heads, config.d_ff,
                   config.vocab_size, config.context_length, config.context_length,
                   config.tie_output)

    @functools.cached_property
    def P(self) -> int:
        """Every parameter, as sum(p.numel() for p in GPT(config).parameters()); only a diagnosis
        needs it (the meta device's first use takes a second)."""
        with torch.device("meta"):  # no memory, no initialization: only the shapes
            return sum(p.numel() for p in GPT(self.config).parameters())

    def n(self, *, attention: int = 4, ffn: int = 2, F: int | None = None, out: int = 1,
          extra: int = 0) -> int:
        """N, the weights that multiply activations (with switches for common mistakes)."""
        F = self.F if F is None else F
        return self.L * (attention * self.D ** 2 + ffn * self.D * F) + out * self.D * self.V + extra

    @property
    def attention(self) -> int:
        return 12 * self.L * self.T * self.D

    def describe(self) -> str:
        c = self.config
        return (f"GPTConfig(vocab_size={c.vocab_size}, context_length={c.context_length}, "
                f"d_model={c.d_model}, num_heads={c.num_heads}, num_layers={c.num_layers}, "
                f"d_ff={c.d_ff}, tie_output={c.tie_output})")


_FLOPS_CONFIGS = (
    {"vocab_size": 1000, "context_length": 256, "d_model": 256, "num_heads": 4, "num_layers": 2},
    {"vocab_size": 512, "context_length": 512, "d_model": 384, "num_heads": 6, "num_layers": 3,
     "d_ff": 1000, "tie_output": False},
    {"vocab_size": 8000, "context_length": 1024, "d_model": 256, "num_heads": 4, "num_layers": 4,
     "d_ff": 768},
    {"vocab_size": 300, "context_length": 128, "d_model": 512, "num_heads": 8, "num_layers": 6,
     "tie_output": False},
)
_FLOPS_RTOL = 0.01  # biases and LayerNorms add well under 1% at D >= 256: counting them is fine


def _flops_variants() -> list[tuple[Any, Callable[[_Shape], float]]]:
    every = ("you count every parameter (sum of p.numel() over model.parameters()): the position "
             "embeddings are a lookup, not a multiplication, and so is the input token table when "
             "it is not tied to the output; N counts only the weights that multiply activations, "
             "L(4D² + 2DF) + DV")
    return [
        ("this counts the forward pass only (2N + 4·L·T·D): training adds the backward pass, which "
         "costs twice the forward (gradients for the inputs and for the weights), so 6N + 12·L·T·D",
         lambda s: 2 * s.n() + s.attention / 3),
        ("the backward pass is counted as one forward pass (4N + 8·L·T·D): it costs two (gradients "
         "for the inputs and for the weights), so training costs 6N + 12·L·T·D",
         lambda s: 4 * s.n() + 2 * s.attention / 3),
        ("the attention term is missing (this is 6N only): Q·Kᵀ and the weighted sum of the values "
         "multiply activations by activations, which no weight counts; add 12·L·T·D",
         lambda s: 6 * s.n()),
        ("the attention term counts only the forward pass (4·L·T·D): with the backward it is three "
         "times that, 12·L·T·D", lambda s: 6 * s.n() + s.attention / 3),
        ("the attention term is halved (a causal kernel skips about half of it): by convention "
         "(PaLM, nanoGPT) it is counted in full, 12·L·T·D", lambda s: 6 * s.n() + s.attention / 2),
        ("the attention term is multiplied by the number of heads: 12·L·T·D already covers all H "
         "heads (H·d_head = D)", lambda s: 6 * s.n() + s.attention * s.H),
        ("the attention term is per window, not per token (12·L·T²·D): per token it is 12·L·T·D",
         lambda s: 6 * s.n() + s.attention * s.T),
        ("this is the cost of a whole window of T tokens: divide by T = context_length, the "
         "answer is per token", lambda s: (6 * s.n() + s.attention) * s.T),
        (every, lambda s: 6 * s.P + s.attention),
        (every + "; and add the attention term, 12·L·T·D", lambda s: 6 * s.P),
        ("the position-embedding table (C·D) is counted in N: position embeddings are a lookup, "
         "not a multiplication", lambda s: 6 * s.n(extra=s.C * s.D) + s.attention),
        ("the token table is counted twice (D·V for the input and D·V for the output): the input "
         "embedding is a lookup, which costs nothing; only the output projection multiplies, "
         "once, whether or not it is tied", lambda s: 6 * s.n(out=2) + s.attention),
        ("with tie_output=False the input token table is counted too: it is a lookup, not a "
         "multiplication; only the output projection (D·V) counts, tied or not",
         lambda s: 6 * s.n(out=1 if s.tied else 2) + s.attention),
        ("the output projection (D·V, the logits) is missing from N: it multiplies every "
         "position's vector by a (D, V) matrix, tied or not",
         lambda s: 6 * s.n(out=0) + s.attention),
        (lambda s: f"the feed-forward width is taken as 4·d_model: use config.d_ff (here F = "
                   f"{s.F}, not 4·D = {4 * s.D})",
         lambda s: 6 * s.n(F=4 * s.D) + s.attention),
        ("the feed-forward has two matrices, D×F and F×D: 2·D·F weights per layer",
         lambda s: 6 * s.n(ffn=1) + s.attention),
        ("the attention has four projections (query, key, value and output): 4·D² weights per "
         "layer", lambda s: 6 * s.n(attention=3) + s.attention),
    ]


def _close_rel(a: float, b: float, rtol: float) -> bool:
    return math.isfinite(a) and abs(a - b) <= rtol * abs(b)


@_isolated
def check_flops_per_token(fn: Callable[..., Any]) -> None:
    """Check ``fn(config: GPTConfig) -> float``, the training FLOPs per token (forward and
    backward) of a :class:`transformer_lib.GPT` at ``T = config.context_length``, as
    :func:`transformer_lib.train.flops_per_token`: :math:`6N + 12LTD` with
    :math:`N = L(4D^2 + 2DF) + DV`, the weights that multiply activations.

    Agreement to 1% is enough (counting the biases and LayerNorms too is fine). The configs have
    different L, T, D, F and V, ``d_ff`` other than ``4 * d_model``, and untied output projections.
    """
    # imported here: transformer_lib.train brings in the training command's dependencies
    from transformer_lib.train import flops_per_token

    check = "check_flops_per_token"
    shapes = [_Shape.of(GPTConfig(**options)) for options in _FLOPS_CONFIGS]
    total = len(shapes)
    got: list[float] = []
    for number, shape in enumerate(shapes, 1):
        where = f"case {number} of {total} ({shape.describe()})"
        out = _call(check, f"running {where}", fn, shape.config)
        value = _as_number(out)
        if value is None:
            raise AssertionError(f"{check}: return the FLOPs per token as a number (a float); "
                                 f"yours returned {_what_it_is(out)}\n  in {where}")
        got.append(value)
    want = [float(flops_per_token(shape.config)) for shape in shapes]
    wrong = [i for i in range(total) if not _close_rel(got[i], want[i], _FLOPS_RTOL)]
    if not wrong:
        _passed(check, total)
        return
    first = wrong[0]
    shape = shapes[first]
    diagnosis = None
    for upto in (total, first + 1):  # every case, then the cases up to the first wrong one
        for message, variant in _flops_variants():
            if all(_close_rel(got[i], variant(shapes[i]), _FLOPS_RTOL) for i in range(upto)):
                diagnosis = message(shape) if callable(message) else message
                break
        if diagnosis:
            break
    diagnosis = diagnosis or ("your count differs from 6N + 12·L·T·D by more than 1%, and it "
                              "matches none of the common mistakes this check knows; count N "
                              "layer by layer, then add the attention term")
    lines = [f"{check}: {diagnosis}",
             f"  in case {first + 1} of {total} ({shape.describe()})",
             f"  expected 6N + 12·L·T·D with N = L(4D² + 2DF) + DV = {shape.n():,} "
             f"(L={shape.L}, D={shape.D}, F={shape.F}, V={shape.V}, T={shape.T}); every case:"]
    for i, s in enumerate(shapes):
        mark = "   <- more than 1% off" if i in wrong else ""
        lines.append(f"    case {i + 1} (L={s.L}, D={s.D}, F={s.F}, V={s.V}, T={s.T}, "
                     f"{'tied' if s.tied else 'untied'}): yours {got[i]:.5g}, expected "
                     f"{want[i]:.5g} (x{got[i] / want[i]:.3f}){mark}")
    raise AssertionError("\n".join(lines))


# --- one optimizer update with gradient accumulation ---


@dataclass
class _StepBug:
    """Switches for known mistakes of ``train_step`` (the defaults: the right answer)."""

    divide: bool = True  # loss / K before backward
    zero: str = "start"  # "start" (once per update), "each" (before every backward), "never",
    #                      "before_step" (between the backward passes and step: no update)
    step_each: str = ""  # "zero": step (and zero_grad) after every micro-batch; "keep": step only
    clip: str = "sum"  # "sum" (once, after the loop), "each" (each micro-batch's own gradient),
    #                    "running" (the sum so far, after every backward), "none"
    returns: str = "mean"  # "mean", "last", "first", "sum", "divided" (the mean of loss / K)


def _clip(model: nn.Module, max_norm: float | None) -> None:
    if max_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def _train_step_math(model: nn.Module, optimizer: torch.optim.Optimizer,
                     micro_batches: Sequence[tuple[Tensor, Tensor]], dtype: torch.dtype | None = None,
                     max_norm: float | None = None, *, bug: _StepBug | None = None) -> float:
    """One update by gradient accumulation, with switches for common mistakes."""
    bug = bug or _StepBug()
    K = len(micro_batches)
    params = list(model.parameters())
    losses = []
    if bug.zero == "start":
        optimizer.zero_grad()
    for x, y in micro_batches:
        if bug.zero == "each":
            optimizer.zero_grad()
        saved = None
        if bug.clip == "each":  # this micro-batch's gradient alone, clipped, then added
            saved = [p.grad for p in params]
            for p in params:
                p.grad = None
        context = (torch.autocast(device_type=x.device.type, dtype=dtype) if dtype is not None
                   else contextlib.nullcontext())
        with context:
            loss = lm_loss(model(x), y)
        losses.append(loss.item())
        (loss / K if bug.divide else loss).backward()
        if bug.clip in ("each", "running"):
            _clip(model, max_norm)
        if saved is not None:
            for p, g in zip(params, saved):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        if bug.step_each:
            optimizer.step()
            if bug.step_each == "zero":
                optimizer.zero_grad()
    if bug.clip == "sum":
        _clip(model, max_norm)
    if bug.zero == "before_step":
        optimizer.zero_grad()
    if not bug.step_each:
        optimizer.step()
    mean = sum(losses) / K
    return {"mean": mean, "last": losses[-1], "first": losses[0], "sum": sum(losses),
            "divided": mean / K}[bug.returns]


_STEP_LR = 0.5  # plain SGD: an update proportional to the gradient (AdamW would hide its scale)
_STEP_UPDATES = 2  # two updates in a row on the same model: gradients must not leak into the next


@dataclass
class _StepCase:
    name: str
    K: int
    batch: int  # windows per micro-batch
    dtype: torch.dtype | None = None
    max_norm: float | None = None
    updates: list[list[tuple[Tensor, Tensor]]] = field(default_factory=list)
    template: nn.Module | None = None

    def kwargs(self) -> dict[str, Any]:
        options = {"dtype": self.dtype, "max_norm": self.max_norm}
        return {k: v for k, v in options.items() if v is not None}

    def describe(self) -> str:
        options = "".join(f", {k}={v}" for k, v in self.kwargs().items())
        plural = "es" if self.K > 1 else ""
        return (f"{self.name}: K={self.K} micro-batch{plural} of {self.batch} windows of "
                f"{_TINY_GPT['context_length']} tokens{options}")

    @property
    def low_precision(self) -> bool:
        return self.dtype is not None


@dataclass
class _StepRun:
    """What one run of two updates did."""

    returned: list[Any] = field(default_factory=list)
    params: list[Tensor] = field(default_factory=list)  # all parameters, flat, after each update
    forward_dtypes: list[set[torch.dtype]] = field(default_factory=list)  # of hooked Linears
    weight_dtypes: list[set[torch.dtype]] = field(default_factory=list)


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten().double() for p in model.parameters()])


def _step_run(case: _StepCase, step: Callable[..., Any]) -> _StepRun:
    assert case.template is not None
    model = copy.deepcopy(case.template)
    optimizer = torch.optim.SGD(model.parameters(), lr=_STEP_LR)
    run = _StepRun()
    seen: set[torch.dtype] = set()

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            seen.add(output.dtype)

    watched = (model.blocks.layers[0].ffn.linear1, model.out_proj)
    handles = [m.register_forward_hook(hook) for m in watched]
    try:
        for number, batches in enumerate(case.updates, 1):
            seen.clear()
            copies = [(x.clone(), y.clone()) for x, y in batches]
            run.returned.append(step(model, optimizer, copies, number))
            run.params.append(_flat(model))
            run.forward_dtypes.append(set(seen))
            run.weight_dtypes.append({p.dtype for p in model.parameters()})
    finally:
        for handle in handles:
            handle.remove()
    return run


def _step_variant(case: _StepCase, bug: _StepBug) -> _StepRun:
    return _step_run(case, lambda model, optimizer, batches, number: _train_step_math(
        model, optimizer, batches, case.dtype, case.max_norm, bug=bug))


def _step_cases(g: torch.Generator) -> list[_StepCase]:
    V, T = _TINY_GPT["vocab_size"], _TINY_GPT["context_length"]
    cases = [
        _StepCase("one micro-batch, dtype and max_norm left at their defaults", 1, 4),
        _StepCase("two micro-batches", 2, 2),
        _StepCase("four micro-batches", 4, 2),
        _StepCase("clipping: the gradient's norm is well above max_norm", 2, 2, max_norm=0.05),
        _StepCase("bfloat16 autocast", 2, 2, dtype=torch.bfloat16),
    ]
    for number, case in enumerate(cases):
        # random weights, not GPT-2's small ones: the micro-batches' losses then differ clearly
        case.template = _randomize(_tiny_gpt(100 + number), g)
        case.updates = [[(torch.randint(0, V, (case.batch, T), generator=g),
                          torch.randint(0, V, (case.batch, T), generator=g))
                         for _ in range(case.K)] for _ in range(_STEP_UPDATES)]
    return cases


_STEP_EACH = ("optimizer.step() runs after every micro-batch: that makes K updates instead of "
              "one; call it once, after the loop over the micro-batches")
_CLIP_IN_LOOP = ("the gradient is clipped inside the loop, micro-batch by micro-batch: clip once, "
                 "after all K backward passes, the accumulated gradient (the whole batch's): "
                 "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) just before "
                 "optimizer.step()")
_STEP_VARIANTS: list[tuple[Any, _StepBug]] = [
    (lambda case: f"the loss is not divided by K = {case.K}: the gradients of the K micro-batches "
                  f"add up, so the update is K times too large; call backward on "
                  f"lm_loss(model(x), y) / K", _StepBug(divide=False)),
    (_STEP_EACH, _StepBug(step_each="zero")),
    (_STEP_EACH, _StepBug(step_each="keep")),
    ("only the last micro-batch's gradient reaches the update: the gradients are set to zero "
     "before every backward (or backward runs only once, after the loop); zero them once per "
     "update, and call backward on every micro-batch's loss", _StepBug(zero="each")),
    ("the gradients are never set to zero, so the second update also adds the first one's "
     "gradient: call optimizer.zero_grad() once per update, before the first backward or after "
     "optimizer.step()", _StepBug(zero="never")),
    ("the parameters did not change: call optimizer.step() after the backward passes, and set "
     "the gradients to zero after it (or before the first backward), not between the backward "
     "passes and step", _StepBug(zero="before_step")),
    (_CLIP_IN_LOOP, _StepBug(clip="each")),
    (_CLIP_IN_LOOP, _StepBug(clip="running")),
    ("max_norm is ignored, or the clipping has no effect: clip the gradient after all the backward "
     "passes and before optimizer.step() (before the backward passes there is nothing to clip; "
     "after step it is too late)", _StepBug(clip="none")),
]
_LOSS_VARIANTS: list[tuple[str, _StepBug]] = [
    ("the loss returned is the last micro-batch's: return the mean of the K micro-batch losses, "
     "the loss of the whole batch", _StepBug(returns="last")),
    ("the loss returned is the first micro-batch's: return the mean of the K micro-batch losses, "
     "the loss of the whole batch", _StepBug(returns="first")),
    ("the loss returned is the sum of the K micro-batch losses: return their mean, the loss of "
     "the whole batch", _StepBug(returns="sum")),
    ("the loss returned is divided by K twice (the mean of loss / K): return the mean of the "
     "micro-batch losses as lm_loss gives them (or the sum of the divided ones)",
     _StepBug(returns="divided")),
]


def _param_tolerance(case: _StepCase) -> float:
    """How far (relative to the update's size) a right answer may be from the reference: float32,
    another order of operations (~1e-6); bfloat16, its 8-bit mantissa (~1e-2). The mistakes this
    check knows are off by 0.1 or more."""
    return 5e-2 if case.low_precision else 2e-3


def _params_error(got: Tensor, want: Tensor, start: Tensor) -> float:
    """|got - want| relative to the size of the expected update."""
    size = float((want - start).norm())
    return float((got - want).norm()) / max(size, 1e-12)


def _params_match(got: _StepRun, want: _StepRun, case: _StepCase) -> bool:
    start = _flat(case.template)
    for a, b, ref in zip(got.params, want.params, [start, *want.params]):
        size = max(float((b - ref).norm()), float((a - ref).norm()), 1e-12)
        if not float((a - b).norm()) / size <= _param_tolerance(case):
            return False
    return True


def _loss_match(got: Any, want: float, case: _StepCase) -> bool:
    value = _as_number(got)
    # bfloat16: within 0.02 nats (a correct order of operations differs by ~1e-3)
    tol = 2e-2 if case.low_precision else 1e-5 * (1.0 + abs(want))
    return value is not None and abs(value - want) <= tol


def _step_param_diff(got: Tensor, want: Tensor, start: Tensor, model: nn.Module, update: int) -> str:
    mine, theirs = got - start, want - start
    cos = float(mine @ theirs) / max(float(mine.norm() * theirs.norm()), 1e-30)
    index = int((got - want).abs().argmax())
    name, offset = "", index
    for pname, p in model.named_parameters():
        if offset < p.numel():
            position = []
            for size in reversed(p.shape):
                position.append(offset % size)
                offset //= size
            name = f"{pname}{list(reversed(position))}"
            break
        offset -= p.numel()
    return "\n".join([
        f"  after update {update}: |yours - expected| = {_params_error(got, want, start):.3g} × "
        f"the size of the expected update",
        f"    the update (the change of all parameters, L2 norm): yours {float(mine.norm()):.4g}, "
        f"expected {float(theirs.norm()):.4g}, cos(angle between them) = {cos:.3f}",
        f"    largest difference at {name}: yours {float(got[index]):.6f}, expected "
        f"{float(want[index]):.6f}"])


@_isolated_training
def check_train_step(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(model, optimizer, micro_batches, dtype=None, max_norm=None) -> float``: one
    optimizer update by gradient accumulation over ``micro_batches = [(x, y), ...]`` (K pairs of
    ``(B, T)`` token ids). For each micro-batch: the forward pass under
    ``torch.autocast(device_type=x.device.type, dtype=dtype)`` if ``dtype`` is not None (no
    autocast otherwise), ``loss = lm_loss(model(x), y) / K``, ``loss.backward()``; then, if
    ``max_norm`` is given, the global gradient norm clipped to it, once; ``optimizer.step()``; the
    gradients set to zero (before the first backward or after the step). It returns the mean of
    the K micro-batch losses (the loss of the whole batch) as a Python float (``.item()``): a
    tensor is rejected.

    The cases: a tiny :class:`transformer_lib.GPT` trained by plain SGD (whose update shows the
    gradient's scale, which AdamW would hide), two updates in a row on the same model (gradients
    must not leak into the next update), K = 1, 2 and 4, clipping that is active, and bfloat16
    autocast (a hook checks that the Linear layers ran in bfloat16; the weights must stay float32).
    """
    check = "check_train_step"
    g = torch.Generator().manual_seed(seed)
    cases = _step_cases(g)
    total = len(cases)
    seen: list[tuple[_StepCase, _StepRun]] = []  # the cases passed, for the diagnosis
    for number, case in enumerate(cases, 1):
        where = f"case {number} of {total} ({case.describe()})"

        def learner(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Any, update: int,
                    case: _StepCase = case, where: str = where) -> Any:
            return _call(check, f"running update {update} of {_STEP_UPDATES} in {where}", fn, model,
                         optimizer, batches, **case.kwargs())

        got = _step_run(case, learner)
        want = _step_variant(case, _StepBug())
        start = _flat(case.template)
        for update in range(_STEP_UPDATES):
            at = f"\n  in update {update + 1} of {_STEP_UPDATES} of {where}"
            if got.weight_dtypes[update] != {torch.float32}:
                dtypes = ", ".join(sorted(str(d) for d in got.weight_dtypes[update]))
                raise AssertionError(
                    f"{check}: your function changed the weights' dtype to {dtypes} (model.to(...) "
                    f"or .half()?): keep the weights in float32 and run only the forward pass under "
                    f"torch.autocast(device_type=x.device.type, dtype=dtype){at}")
            forward = got.forward_dtypes[update]
            if case.dtype is None and torch.bfloat16 in forward:
                raise AssertionError(
                    f"{check}: with dtype=None the forward pass ran in bfloat16: "
                    f"torch.autocast(..., dtype=None) falls back to its default dtype (bfloat16 on "
                    f"a CPU); with dtype=None use no autocast at all (contextlib.nullcontext(), or "
                    f"torch.autocast(..., enabled=dtype is not None)){at}")
            if case.dtype is not None and forward and case.dtype not in forward:
                raise AssertionError(
                    f"{check}: dtype={case.dtype} is ignored: the Linear layers ran in "
                    f"{', '.join(sorted(str(d) for d in forward))}; run the forward pass (model(x) "
                    f"and the loss) under torch.autocast(device_type=x.device.type, dtype=dtype); "
                    f"the backward pass runs outside it{at}")
            before = start if update == 0 else want.params[update - 1]
            if _params_error(got.params[update], want.params[update], before) > _param_tolerance(case):
                problem = None
                for message, bug in _STEP_VARIANTS:  # it must match every case so far
                    if all(_params_match(run, _step_variant(c, bug), c) for c, run in
                           [*seen, (case, got)]):
                        problem = message(case) if callable(message) else message
                        break
                problem = problem or ("your parameters after the update differ from the "
                                      "expected ones, and they match none of the common mistakes "
                                      "this check knows; compare your code with the steps above")
                raise AssertionError(f"{check}: {problem}{at}\n" + _step_param_diff(
                    got.params[update], want.params[update], before, case.template, update + 1))
            returned = got.returned[update]
            if not isinstance(returned, float):
                hint = (" (loss.item(), or float(loss)): a tensor keeps its autograd graph alive"
                        if isinstance(returned, Tensor) else "")
                raise AssertionError(f"{check}: return the loss as a Python float{hint}; yours "
                                     f"returned {_what_it_is(returned)}{at}")
            expected = want.returned[update]
            if not _loss_match(returned, expected, case):
                problem = None
                for message, bug in _LOSS_VARIANTS:
                    if all(_loss_match(a, b, c) for c, run in [*seen, (case, got)]
                           for a, b in zip(run.returned, _step_variant(c, bug).returned)):
                        problem = message
                        break
                problem = problem or ("the loss returned differs from the mean of the K "
                                      "micro-batch losses, and it matches none of the common "
                                      "mistakes this check knows")
                raise AssertionError(f"{check}: {problem}{at}\n  the loss returned: yours "
                                     f"{returned:.6f}, expected {expected:.6f}")
        seen.append((case, got))
    _passed(check, total)


# --- the learning-rate schedule ---


def _cosine(p: float, max_lr: float, min_lr: float) -> float:
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * p))


def _lr_math(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    return max_lr * warmup_cosine_schedule(step, warmup_steps, total_steps,
                                           min_factor=min_lr / max_lr)


def _lr_bug(*, warmup: Callable[[int, float, float, int], float] | None = None,
            decay: Callable[[int, float, float, int, int], float] | None = None,
            warmup_until: str = "<=") -> Callable[..., float]:
    """The schedule with its warmup or its decay replaced by a learner's mistake."""

    def lr(s: int, M: float, m: float, w: int, N: int) -> float:
        warm = s <= w if warmup_until == "<=" else s < w
        if warm:
            return warmup(s, M, m, w) if warmup else M * s / w
        if decay:
            return decay(s, M, m, w, N)
        return _cosine(min(1.0, (s - w) / (N - w)), M, m)

    return lr


def _lr_variants() -> list[tuple[str, Callable[..., float]]]:
    progress = ("the decay's progress is measured over total_steps: measure it from the end of the "
                "warmup, p = (step - warmup_steps) / (total_steps - warmup_steps), so that it goes "
                "from 0 at warmup_steps to 1 at total_steps")
    no_warmup = ("there is no warmup: for step <= warmup_steps the learning rate rises linearly "
                 "from 0, max_lr * step / warmup_steps")
    return [
        ("this is the multiplier (between 0 and 1) of warmup_cosine_schedule: multiply it by "
         "max_lr", lambda s, M, m, w, N: _lr_math(s, M, m, w, N) / M),
        ("your schedule is one step late: steps count from 1 (the number of the update about to "
         "be made), so step 1 gets max_lr / warmup_steps and step warmup_steps gets max_lr; yours "
         "gives step s the value of step s - 1",
         lambda s, M, m, w, N: _lr_math(s - 1, M, m, w, N) if s > 1 else (0.0 if w else M)),
        ("an off-by-one in the warmup: with steps counted from 1, the warmup gives max_lr * step "
         "/ warmup_steps (step warmup_steps reaches max_lr); yours uses step - 1",
         _lr_bug(warmup=lambda s, M, m, w: M * (s - 1) / w)),
        ("an off-by-one in the warmup: with steps counted from 1, the warmup gives max_lr * step "
         "/ warmup_steps (step 1 gets max_lr / warmup_steps); yours uses step + 1",
         _lr_bug(warmup=lambda s, M, m, w: M * (s + 1) / w, warmup_until="<")),
        ("an off-by-one in the warmup: it divides by warmup_steps + 1, so it never reaches max_lr; "
         "use max_lr * step / warmup_steps", _lr_bug(warmup=lambda s, M, m, w: M * s / (w + 1))),
        (no_warmup, _lr_bug(warmup=lambda s, M, m, w: M)),
        (no_warmup, lambda s, M, m, w, N: _cosine(min(1.0, s / N), M, m)),
        (no_warmup, lambda s, M, m, w, N: _cosine(min(1.0, (s - 1) / N), M, m)),
        ("the warmup starts from min_lr: it rises from 0, max_lr * step / warmup_steps",
         _lr_bug(warmup=lambda s, M, m, w: m + (M - m) * s / w)),
        ("the cosine decays to 0: it must end at min_lr, "
         "min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * p))",
         _lr_bug(decay=lambda s, M, m, w, N: _cosine(min(1.0, (s - w) / (N - w)), M, 0.0))),
        ("min_lr is added to the whole cosine, which then starts at max_lr + min_lr: scale the "
         "cosine by max_lr - min_lr, min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * p))",
         _lr_bug(decay=lambda s, M, m, w, N: m + _cosine(min(1.0, (s - w) / (N - w)), M, 0.0))),
        (progress, _lr_bug(decay=lambda s, M, m, w, N: _cosine(min(1.0, s / N), M, m))),
        (progress, _lr_bug(decay=lambda s, M, m, w, N: _cosine(min(1.0, (s - w) / N), M, m))),
        ("the decay is linear: use half a cosine, "
         "min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * p))",
         _lr_bug(decay=lambda s, M, m, w, N: M - (M - m) * min(1.0, (s - w) / (N - w)))),
        ("after total_steps the learning rate must stay at min_lr: clamp the progress, "
         "p = min(1, (step - warmup_steps) / (total_steps - warmup_steps)); yours follows the "
         "cosine back up", _lr_bug(decay=lambda s, M, m, w, N: _cosine((s - w) / (N - w), M, m))),
        ("after total_steps the learning rate must stay at min_lr, not drop to 0",
         _lr_bug(decay=lambda s, M, m, w, N: _cosine((s - w) / (N - w), M, m) if s <= N else 0.0)),
        ("this is a full cosine period, which comes back up to max_lr: the decay is half a period, "
         "cos(pi * p) with p from 0 to 1",
         _lr_bug(decay=lambda s, M, m, w, N: m + 0.5 * (M - m) * (1 + math.cos(
             2 * math.pi * min(1.0, (s - w) / (N - w)))))),
        ("the decay is (max_lr - min_lr) * cos(pi * p), which goes below min_lr: use "
         "min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * p)), which goes from max_lr to min_lr",
         _lr_bug(decay=lambda s, M, m, w, N: m + (M - m) * math.cos(
             math.pi * min(1.0, (s - w) / (N - w))))),
    ]


_LR_CASES: tuple[tuple[dict[str, Any], tuple[int, ...]], ...] = (
    ({"max_lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "total_steps": 100},
     (1, 2, 5, 9, 10, 11, 30, 55, 80, 99, 100, 101, 150)),
    ({"max_lr": 3.0, "min_lr": 0.3, "warmup_steps": 4, "total_steps": 12}, tuple(range(1, 17))),
    ({"max_lr": 6e-4, "min_lr": 0.0, "warmup_steps": 0, "total_steps": 50},
     (1, 2, 10, 25, 49, 50, 51, 80)),
    ({"max_lr": 0.5, "min_lr": 0.05, "warmup_steps": 1, "total_steps": 6}, tuple(range(1, 9))),
)


def _lr_close(got: float | None, want: float, max_lr: float) -> bool:
    return got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9 * max_lr)


@_isolated
def check_lr_schedule(fn: Callable[..., Any]) -> None:
    """Check ``fn(step, max_lr, min_lr, warmup_steps, total_steps) -> float``, the learning rate
    of update ``step`` (counted from 1): ``max_lr * step / warmup_steps`` while
    ``step <= warmup_steps``, then half a cosine from ``max_lr`` (at ``warmup_steps``) down to
    ``min_lr`` (at ``total_steps``), and ``min_lr`` after that; that is
    ``max_lr * warmup_cosine_schedule(step, warmup_steps, total_steps, min_lr / max_lr)``.

    The settings: a long and a short schedule, ``warmup_steps`` 0 and 1, ``min_lr = 0``, and steps
    past ``total_steps``.
    """
    check = "check_lr_schedule"
    total = len(_LR_CASES)
    got: list[list[float | None]] = []
    first_wrong = None
    for number, (setting, steps) in enumerate(_LR_CASES, 1):
        args = tuple(setting.values())
        where = f"case {number} of {total} ({_kwargs(setting)})"
        values = []
        for step in steps:
            try:
                out = _call(check, f"computing step {step} of {where}", fn, step, *args)
            except AssertionError as err:
                if setting["warmup_steps"] == 0 and "ZeroDivisionError" in str(err):
                    raise AssertionError(f"{err}\n  hint: warmup_steps=0 means no warmup: the "
                                         f"schedule starts at max_lr and decays from step 1; test "
                                         f"step <= warmup_steps before dividing") from None
                raise
            value = _as_number(out)
            if value is None:
                raise AssertionError(f"{check}: return the learning rate as a number (a float); "
                                     f"yours returned {_what_it_is(out)}\n  at step {step} in "
                                     f"{where}")
            values.append(value)
        got.append(values)
        want = [_lr_math(step, *args) for step in steps]
        if first_wrong is None and not all(_lr_close(a, b, setting["max_lr"])
                                           for a, b in zip(values, want)):
            first_wrong = number - 1
    if first_wrong is None:
        _passed(check, total)
        return

    def matches(variant: Callable[..., float], i: int) -> bool:
        setting, steps = _LR_CASES[i]
        try:
            return all(_lr_close(a, variant(step, *setting.values()), setting["max_lr"])
                       for a, step in zip(got[i], steps))
        except (ArithmeticError, ValueError):
            return False

    diagnosis = None
    for upto in (total, first_wrong + 1):  # every case, then the cases up to the first wrong one
        diagnosis = next((message for message, variant in _lr_variants()
                          if all(matches(variant, i) for i in range(upto))), None)
        if diagnosis:
            break
    diagnosis = diagnosis or ("your learning rates differ from the schedule's, and they match "
                              "none of the common mistakes this check knows; compare your code "
                              "with the formula above, step by step")
    setting, steps = _LR_CASES[first_wrong]
    lines = [f"{check}: {diagnosis}",
             f"  in case {first_wrong + 1} of {total} ({_kwargs(setting)})",
             "    step         yours      expected"]
    for step, value in zip(steps, got[first_wrong]):
        want = _lr_math(step, *setting.values())
        mark = "   <- wrong" if not _lr_close(value, want, setting["max_lr"]) else ""
        lines.append(f"    {step:4d}  {value:12.6g}  {want:12.6g}{mark}")
    raise AssertionError("\n".join(lines))


# --- saving and resuming a training run ---


_RESUME_CASES = (
    # name, model options, save after this step, total steps, seeds (model, data order, resumed)
    ("tied embeddings, saved after step 3 of 6", {}, 3, 6, (11, 12, 13)),
    ("untied output projection, saved after step 4 of 7", {"tie_output": False}, 4, 7, (21, 22, 23)),
)
_RESUME_BATCH = 4


def _resume_train(model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                  data: Tensor, first: int, last: int, total_steps: int) -> list[float]:
    """Steps ``first .. last`` of a short run: random windows of ``data`` drawn from
    ``generator``, the learning rate of each step from a warmup + cosine schedule."""
    T = _TINY_GPT["context_length"]
    losses = []
    for step in range(first, last + 1):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * warmup_cosine_schedule(step, 2, total_steps, min_factor=0.1)
        starts = torch.randint(0, data.numel() - T, (_RESUME_BATCH,), generator=generator)
        x = torch.stack([data[s:s + T] for s in starts.tolist()])
        y = torch.stack([data[s + 1:s + T + 1] for s in starts.tolist()])
        loss = lm_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _new_run(seed: int, options: dict[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _tiny_gpt(seed, **options)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _same_tensors(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The optimizer's per-parameter state (AdamW: step, exp_avg, exp_avg_sq), flat."""
    state = optimizer.state_dict()["state"]
    return {f"{index}.{name}": torch.as_tensor(value).detach().clone()
            for index, entry in state.items() for name, value in entry.items()}


@_isolated_training
def check_resume(save_state: Callable[..., Any], load_state: Callable[..., Any]) -> None:
    """Check ``save_state(path, model, optimizer, step, generator)`` and
    ``load_state(path, model, optimizer, generator) -> int``, which save a training run into the
    folder ``path`` and resume it (with :func:`transformer_lib.save_checkpoint` and
    :func:`transformer_lib.load_checkpoint`; the generator's state is
    ``generator.get_state()``, restored with ``generator.set_state(...)``).

    A tiny :class:`transformer_lib.GPT` is trained by AdamW on windows drawn from a
    ``torch.Generator``, with a warmup + cosine learning rate (so the step number matters): once
    without a break, and once saved part-way, then loaded into a new model, a new optimizer and a
    new generator (other seeds) and continued from the step ``load_state`` returns. The resumed
    steps must give the same losses and the same final weights as the run without a break.
    """
    check = "check_resume"
    total = len(_RESUME_CASES)
    for number, (name, options, saved_at, steps, (model_seed, data_seed, new_seed)) in \
            enumerate(_RESUME_CASES, 1):
        where = f"case {number} of {total} ({name})"
        data = torch.randint(0, _TINY_GPT["vocab_size"], (64,),
                             generator=torch.Generator().manual_seed(data_seed))

        model, optimizer = _new_run(model_seed, options)
        generator = torch.Generator().manual_seed(data_seed + 1000)
        expected = _resume_train(model, optimizer, generator, data, 1, steps, steps)
        final = {k: v.clone() for k, v in model.state_dict().items()}

        model, optimizer = _new_run(model_seed, options)
        generator = torch.Generator().manual_seed(data_seed + 1000)
        _resume_train(model, optimizer, generator, data, 1, saved_at, steps)
        saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
        saved_moments = _optimizer_tensors(optimizer)
        saved_order = generator.get_state().clone()

        resumed, resumed_optimizer = _new_run(new_seed, options)
        resumed_generator = torch.Generator().manual_seed(new_seed)
        initial_weights = {k: v.clone() for k, v in resumed.state_dict().items()}
        initial_order = resumed_generator.get_state().clone()
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "checkpoint")  # a str: os.path.join, Path(path), f-strings
            _call(check, f"saving after step {saved_at} in {where}", save_state, path, model,
                  optimizer, saved_at, generator)
            step = _call(check, f"loading the checkpoint saved after step {saved_at} in {where}",
                         load_state, path, resumed, resumed_optimizer, resumed_generator)

        at = f"\n  in {where}"
        if isinstance(step, Tensor) and step.dim() == 0 and not step.is_floating_point():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step != saved_at:
            shown = "None (is a `return` missing?)" if step is None else repr(step)
            raise AssertionError(f"{check}: load_state returned {shown}: return the step saved in "
                                 f"the checkpoint (here {saved_at}, an int), so that training "
                                 f"goes on from step {saved_at + 1}{at}")
        weights = resumed.state_dict()
        if not _same_tensors(weights, saved_weights):
            if _same_tensors(weights, initial_weights):
                problem = ("the model's weights were not loaded (it still has its own initial "
                           "weights): load_checkpoint(path, model, optimizer) loads them into the "
                           "model you pass it")
            else:
                problem = ("the model's weights differ from the ones saved: save the model after "
                           "the step you save, and load them with load_checkpoint(path, model, "
                           "optimizer)")
            raise AssertionError(f"{check}: {problem}{at}")
        moments = _optimizer_tensors(resumed_optimizer)
        if not _same_tensors(moments, saved_moments):
            if not moments:
                problem = ("the optimizer's state was not restored (AdamW's moments exp_avg and "
                           "exp_avg_sq and its step count are empty, as in a new optimizer): pass "
                           "the optimizer to save_checkpoint and to load_checkpoint, which loads "
                           "it with optimizer.load_state_dict")
            else:
                problem = ("the optimizer's state differs from the one saved (AdamW's moments "
                           "exp_avg and exp_avg_sq, and its step count): save it with the model, "
                           "save_checkpoint(path, model, optimizer, ...), and pass the optimizer "
                           "to load_checkpoint")
            raise AssertionError(f"{check}: {problem}{at}")
        order_now = resumed_generator.get_state()
        if not torch.equal(order_now, saved_order):
            if torch.equal(order_now, initial_order):
                problem = ("the generator's state was not restored: the resumed run would draw "
                           "other batches than the run without a break; save "
                           "generator=generator.get_state() in the checkpoint and restore it with "
                           "generator.set_state(state['generator'])")
            else:
                problem = ("the generator's state differs from the one saved: save "
                           "generator.get_state() when you save the model (drawing numbers in "
                           "between changes it), and restore it with generator.set_state(...)")
            raise AssertionError(f"{check}: {problem}{at}")
        losses = _resume_train(resumed, resumed_optimizer, resumed_generator, data, step + 1,
                               steps, steps)
        wanted = expected[saved_at:]
        if (not all(abs(a - b) <= 1e-6 for a, b in zip(losses, wanted))
                or not all(torch.allclose(resumed.state_dict()[k], v, rtol=0, atol=1e-6)
                           for k, v in final.items())):
            rows = "\n".join(f"    step {saved_at + 1 + i}: resumed {a:.6f}, without a break "
                             f"{b:.6f}" for i, (a, b) in enumerate(zip(losses, wanted)))
            raise AssertionError(
                f"{check}: the resumed run differs from the run without a break, although the "
                f"weights, the optimizer's state and the generator were restored: does load_state "
                f"give the model new parameter tensors (model.load_state_dict(..., assign=True), "
                f"or a new model)? The optimizer updates the model's own ones; load into them{at}\n"
                f"  the losses:\n{rows}")
    _passed(check, total)
