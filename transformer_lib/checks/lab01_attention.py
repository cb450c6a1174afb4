"""Checks for lab 1 (attention and masks): ``check_attention``, ``check_causal_mask``,
``check_padding_mask``; and the test of dropout in training that lab 2 shares
(:class:`DropoutProfile`, :func:`run_dropout_cases`).

Hand-written (not generated from a chapter); the engine they share is ``engine.py``. Every
check registers an ``engine.Spec`` (``tests/test_checks_specs.py``).

Dropout draws random numbers, so a check cannot compare a learner's dropout with the
reference's draw by draw (``F.dropout``, ``nn.Dropout`` and the ``dropout_p`` of
``F.scaled_dot_product_attention`` draw differently, and all are right). It compares what any
correct dropout shares instead: about a share ``p`` of the weights is 0, the others are divided by
``1 - p``, and the output is computed from exactly those weights. The value of a dropout case is
``[I | V]`` (an identity beside random columns), so the output shows the weights that made it:
``output[..., :S]`` *is* those weights, and ``output[..., S:]`` must be them times ``V``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_lib.attention import causal_mask, padding_mask, scaled_dot_product_attention
from transformer_lib.checks.engine import (
    Case,
    Mistake,
    Spec,
    call_learner,
    close,
    diagnose_at,
    isolated,
    passed,
    randn,
    register,
    run_cases,
    same,
    structure_problem,
)

# --- attention, with switches for the mistakes --------------------------------------------------


def attention_math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *,
                   scale: float | None = None, softmax_dim: int | str = -1, fill: str = "min",
                   zero_empty: bool = True, invert: bool = False, scores_transposed: bool = False,
                   softmax: bool = True, mask_after: bool = False, mask_added: bool = False,
                   scale_after: bool = False, values: Tensor | None = None,
                   dropout_p: float = 0.0) -> tuple[Tensor, Tensor]:
    """Attention with switches that reproduce common mistakes (all off: the right answer).
    ``dropout_p`` applies ``F.dropout`` to the weights (from the global random stream)."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    if scores_transposed:
        scores = k @ q.transpose(-2, -1)
    else:
        scores = q @ k.transpose(-2, -1)
    if not scale_after:
        scores = scores * scale
    if mask is not None and invert:
        mask = ~mask
    if mask is not None and mask_added:
        scores = scores + mask
    elif mask is not None and not mask_after:
        value = {"min": torch.finfo(scores.dtype).min, "-inf": -math.inf, "-1e9": -1e9,
                 "zero": 0.0}[fill]
        scores = scores.masked_fill(~mask, value)
    if softmax_dim == "implicit":  # softmax without dim=: PyTorch's choice for the scores' rank
        softmax_dim = 0 if scores.dim() in (0, 1, 3) else 1
    weights = torch.softmax(scores, dim=softmax_dim) if softmax else scores
    if scale_after:
        weights = weights * scale
    if mask is not None and mask_after:
        weights = weights * mask
    elif mask is not None and zero_empty:
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ (v if values is None else values), weights


# --- dropout in training, by its statistics ---------------------------------------------------

DROPOUT_FAMILY = ("dropout", "unscaled", "times 1-p", "keep rate", "twice")


@dataclass(frozen=True)
class Dropped:
    """How a tensor computed with dropout compares with the same tensor without dropout.

    ``kind``: ``"none"`` (equal: no dropout), ``"dropout"`` (a share ``p`` is 0, the rest is
    divided by ``1 - p``), ``"unscaled"`` (a share ``p`` is 0, the rest unchanged),
    ``"times 1-p"`` (the rest multiplied by ``1 - p``), ``"keep rate"`` (a share ``1 - p`` is 0),
    ``"twice"`` (dropout applied twice), ``"sums to 1"`` (weights, not a dropout pattern, rows
    summing to 1) or ``"other"``; ``share`` and ``scale`` are the measured numbers, for messages."""

    kind: str
    share: float = field(default=math.nan, compare=False)
    scale: float = field(default=math.nan, compare=False)

    def describe(self) -> str:
        if self.kind == "none":
            return "no dropout (the same as without dropout)"
        if self.kind == "sums to 1":
            return ("not 0 or a multiple of the weights without dropout, and every row still sums "
                    "to 1")
        if math.isnan(self.share):
            return "not 0 or a multiple of the values without dropout"
        text = f"{self.share:.0%} are 0"
        if math.isnan(self.scale):
            return text + ", the others are not one multiple of their values without dropout"
        return text + f", the others are {self.scale:.3f} times their values without dropout"


def dropout_kind(got: Tensor, plain: Tensor, p: float, *, rows: bool, live: float = 1e-3,
                 zero: float = 1e-6) -> Dropped:
    """Classify ``got`` (computed with dropout of probability ``p``) against ``plain`` (the same
    without dropout); ``rows``: they are attention weights, whose rows sum to 1 without dropout.
    Only the entries with ``|plain| > live`` are counted; an entry ``|got| <= zero`` is dropped."""
    if (not isinstance(got, Tensor) or got.shape != plain.shape
            or not bool(torch.isfinite(got).all())):
        return Dropped("other")
    got, plain = got.detach().double(), plain.detach().double()
    if close(got, plain):
        return Dropped("none", 0.0, 1.0)
    if rows and bool((got[plain == 0].abs() > zero).any()):
        return Dropped("other")  # weight on a masked key
    counted = plain.abs() > live
    dropped = got.abs() <= zero
    kept = counted & ~dropped
    share = float(dropped[counted].double().mean())
    if not bool(kept.any()):
        return Dropped("other", share)
    ratio = got[kept] / plain[kept]
    scale = float(ratio.median())
    if not bool(((ratio - scale).abs() <= 1e-3 * abs(scale) + 1e-5).all()):
        if rows:
            visible = plain.sum(-1) > 0.5
            if torch.allclose(got.sum(-1)[visible], torch.ones(()).double(), atol=1e-4):
                return Dropped("sums to 1", share)
        return Dropped("other", share)
    return Dropped(_rate_kind(share, scale, int(counted.sum()), p), share, scale)


def _rate_kind(share: float, scale: float, n: int, p: float) -> str:
    """The kind of dropout that zeroes a share ``share`` of ``n`` entries and multiplies the
    others by ``scale``, for dropout probability ``p`` (the share within 4.5 standard
    deviations of the expected one)."""

    def near_share(expected: float) -> bool:
        return abs(share - expected) <= max(4.5 * math.sqrt(expected * (1 - expected) / n), 0.02)

    def near_scale(expected: float) -> bool:
        return abs(scale - expected) <= 1e-3 * expected

    q = 1 - p
    if near_share(p) and near_scale(1 / q):
        return "dropout"
    if near_share(p) and near_scale(1.0):
        return "unscaled"
    if near_share(p) and near_scale(q):
        return "times 1-p"
    if near_share(q) and (near_scale(1 / p) or near_scale(1 / q) or near_scale(1.0)):
        return "keep rate"
    if near_share(1 - q * q) and near_scale(1 / (q * q)):
        return "twice"
    return "other"


def column_dropout_kind(got: Tensor, plain: Tensor, p: float, *, live: float = 1e-3) -> Dropped:
    """``got`` against the weights ``plain`` (..., T, S) when whole columns (keys) are dropped
    together, as dropout on the values ``[I | V]`` shows in ``output[..., :S]``: ``"values"`` if
    every key's column is 0 or one multiple of its weights, at a dropout's rate, else
    ``"other"``."""
    if (not isinstance(got, Tensor) or got.shape != plain.shape
            or not bool(torch.isfinite(got).all())):
        return Dropped("other")
    got, plain = got.detach().double(), plain.detach().double()
    norm = (plain * plain).sum(-2)  # (..., S)
    counted = norm > live * live
    scales = (got * plain).sum(-2) / norm.clamp_min(1e-30)  # each key's multiple, least squares
    if not close(got, plain * scales.unsqueeze(-2)) or not bool(counted.any()):
        return Dropped("other")
    dropped = scales.abs() <= 1e-6
    share = float(dropped[counted].double().mean())
    kept = scales[counted & ~dropped]
    if kept.numel() == 0:
        return Dropped("other", share)
    scale = float(kept.median())
    if not bool(((kept - scale).abs() <= 1e-3 * abs(scale) + 1e-5).all()):
        return Dropped("other", share)
    kind = _rate_kind(share, scale, int(counted.sum()), p)
    return Dropped("values" if kind in DROPOUT_FAMILY else "other", share, scale)


@dataclass(frozen=True)
class DropoutProfile:
    """What a learner's code does with dropout on one case, by kinds of :class:`Dropped`.

    ``weights``: the weights it returns; ``used``: the weights that made its output, or
    ``"output"`` or ``"values"`` (lab 2 also ``"heads"``) when dropout acts there instead of on
    the weights;
    ``same``: the returned weights are the ones that made the output; ``fused`` (lab 2): the
    output of ``forward`` without ``need_weights``, as ``used``. ``details`` (not compared) hold
    the measured numbers, for the message."""

    weights: str
    used: str
    same: bool
    fused: str = ""
    details: tuple[str, ...] = field(default=(), compare=False)


RIGHT_DROPOUT = DropoutProfile("dropout", "dropout", True)


def expected_dropout(p: float) -> str:
    """The line of a dropout verdict that says what right dropout gives."""
    return (f"expected: about {p:.0%} are 0, the others are 1 / (1 - {p}) = {1 / (1 - p):.3f} "
            f"times their values without dropout")


def run_dropout_cases(check: str, cases: Sequence[Case], profile: Callable[[Case], DropoutProfile],
                      want: Callable[[Case], DropoutProfile], mistakes: Sequence[Mistake],
                      explain: Callable[[Case], str], *, first: int, total: int) -> int:
    """The dropout cases, numbered from ``first``: at the first whose profile is not ``want``,
    raise an AssertionError naming the mistake through the engine's :func:`diagnose_at`
    (evidence: the profiles of every dropout case), else ``explain(case)`` and the measured
    numbers."""
    for index, case in enumerate(cases):
        where = case.where = f"case {first + index} of {total} ({case.describe()})"
        got = profile(case)
        if got == want(case):
            continue
        evidence = [(case, got) if j == index else None for j in range(len(cases))]
        for j, other in enumerate(cases):
            if j != index:
                other.where = f"case {first + j} of {total} ({other.describe()})"
                try:
                    evidence[j] = (other, profile(other))
                except AssertionError:
                    pass
        seen = [e for e in evidence if e is not None]
        failed = next(i for i, e in enumerate(seen) if e[0] is case)
        case.where = where
        problem = (diagnose_at(mistakes, seen, failed, got, want(case), agree=operator.eq)
                   or explain(case))
        details = "".join(f"\n  {line}" for line in got.details)
        raise AssertionError(f"{check}: {problem}\n  in {where}{details}")
    return len(cases)


def profile_agree(a: Any, b: Any) -> bool:
    """A check's comparison where some cases give a :class:`DropoutProfile`."""
    if isinstance(a, DropoutProfile) or isinstance(b, DropoutProfile):
        return a == b
    return same(a, b)


# --- check_attention -----------------------------------------------------------------------


def _qkv(case: Case) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    i = case.inputs
    return i["query"], i["key"], i["value"], i.get("mask")


def _dropout_p(case: Case) -> float:
    return float(case.inputs.get("dropout_p", 0.0))


def _attention_profile(case: Case, out: Tensor, weights: Tensor) -> DropoutProfile:
    """Profile of an attention's ``(out, weights)`` on a dropout case, whose value is
    ``[I | V]``."""
    p = _dropout_p(case)
    plain_out, plain = case.state["plain"]
    S = plain.size(-1)
    value = case.inputs["value"]
    returned = dropout_kind(weights, plain, p, rows=True)
    made = out[..., :S] if isinstance(out, Tensor) and out.shape == plain_out.shape else None
    if made is not None and close(out[..., S:], made @ value[..., S:]):
        used = dropout_kind(made, plain, p, rows=True)
        made_text = used.describe()
    else:
        elementwise = dropout_kind(out, plain_out, p, rows=False)
        made_text = "none: your output is not weights @ value for any weights"
        columns = column_dropout_kind(made, plain, p)
        if elementwise.kind in DROPOUT_FAMILY:
            used = Dropped("output", elementwise.share, elementwise.scale)
            made_text += (f"; it is the output without dropout, with {used.share:.0%} of the "
                          f"numbers 0 and the others {used.scale:.3f} times their values")
        elif columns.kind == "values":
            used = columns
            made_text += (f"; it is the weights without dropout times the values with "
                          f"{used.share:.0%} of the keys' values 0 and the others {used.scale:.3f} "
                          f"times theirs")
        else:
            used = Dropped("other")
    same_weights = made is not None and close(weights, made)
    details = (f"your weights: {returned.describe()}",
               f"the weights that made your output: {made_text}",
               expected_dropout(p) + "; the output is computed from the weights returned")
    return DropoutProfile(returned.kind, used.kind, same_weights, details=details)


def _attention_case_profile(fn: Callable[..., Any], case: Case, check: str = "") -> DropoutProfile:
    """Run ``fn`` on a dropout case (seeded) and profile its result."""
    torch.manual_seed(case.state["seed"])
    args, kwargs = case.args()
    got = (call_learner(check, f"running {case.where}", fn, *args, **kwargs) if check
           else fn(*args, **kwargs))
    problem = structure_problem(("output", "weights"), got, case.state["plain"])
    if problem is not None:
        raise AssertionError(f"{check}: {problem}\n  in {case.where}")
    return _attention_profile(case, *got)


def _attention_cases(g: torch.Generator) -> list[Case]:
    def qkv(*batch: int, T: int, S: int, Dk: int, Dv: int) -> dict[str, Tensor]:
        return {"query": randn(g, *batch, T, Dk, std=1.5), "key": randn(g, *batch, S, Dk, std=1.5),
                "value": randn(g, *batch, S, Dv)}

    def dropout_qkv(*batch: int, T: int, S: int, Dk: int, Dv: int) -> dict[str, Tensor]:
        identity = torch.eye(S).expand(*batch, S, S)  # output[..., :S] shows the weights used
        return {"query": randn(g, *batch, T, Dk), "key": randn(g, *batch, S, Dk),
                "value": torch.cat([identity, randn(g, *batch, S, Dv)], dim=-1)}

    lengths = torch.tensor([6, 4, 0])
    padding = (torch.arange(6) < lengths[:, None]).view(3, 1, 1, 6)  # (B, 1, 1, S)
    random = torch.rand(2, 3, 4, 5, generator=g) < 0.5  # (B, H, T, S)
    random[..., 0] = True
    random[0, 1, 2] = False  # these queries may attend to nothing
    random[1, 0, 0] = False
    cases = [
        Case("(B, T, Dk) inputs, no mask", qkv(2, T=4, S=4, Dk=8, Dv=8)),
        Case("keys and values of different sizes (T != S, Dk != Dv)", qkv(2, T=3, S=5, Dk=6, Dv=4)),
        Case("causal mask (T, T)", {**qkv(2, T=5, S=5, Dk=8, Dv=4), "mask": causal_mask(5)}),
        Case("(B, H, T, Dk) inputs, padding mask (B, 1, 1, S), items of lengths 6, 4 and 0",
             {**qkv(3, 2, T=4, S=6, Dk=4, Dv=5), "mask": padding}),
        Case("random mask (B, H, T, S) with queries that may attend to nothing",
             {**qkv(2, 3, T=4, S=5, Dk=6, Dv=4), "mask": random}),
        Case("with dropout, (B, T, Dk) inputs",
             {**dropout_qkv(4, T=8, S=16, Dk=8, Dv=4), "mask": None, "dropout_p": 0.25}),
        Case("with dropout, (B, H, T, Dk) inputs, padding mask (B, 1, 1, S), lengths 12 and 7",
             {**dropout_qkv(2, 3, T=8, S=12, Dk=8, Dv=4),
              "mask": (torch.arange(12) < torch.tensor([[12], [7]])).view(2, 1, 1, 12),
              "dropout_p": 0.6}),
    ]
    for case in cases:
        case.positional = 3  # fn(query, key, value, mask=..., dropout_p=...)
        if _dropout_p(case) > 0:
            case.state["seed"] = int(torch.randint(2**31, (1,), generator=g))
            case.state["plain"] = attention_math(*_qkv(case))
    return cases


def _attention_spec_cases() -> list[Case]:
    return _attention_cases(torch.Generator().manual_seed(0))


def _attention_reference(case: Case) -> Any:
    if _dropout_p(case) > 0:
        return RIGHT_DROPOUT
    return attention_math(*_qkv(case))


def _attention_package(case: Case) -> Any:
    if _dropout_p(case) > 0:
        return _attention_case_profile(scaled_dot_product_attention, case)
    return scaled_dot_product_attention(**case.inputs)


INVERTED = ("the mask is inverted: True means 'may attend', so hide the scores where the mask is "
            "False, scores.masked_fill(~mask, ...), not where it is True")


def _attention_mistakes() -> list[Mistake]:
    """The mistakes of the cases without dropout; on a dropout case, each gives the profile of
    code with that mistake and a right dropout."""

    def var(**options: Any) -> Callable[[Case], Any]:
        def output(case: Case) -> Any:
            q, k, v, mask = _qkv(case)
            if options.get("mask_ignored"):
                mask = None
            rest = {key: value for key, value in options.items() if key != "mask_ignored"}
            for key, make in list(rest.items()):
                if callable(make):
                    rest[key] = make(q, k, v)
            if _dropout_p(case) > 0:
                return _attention_case_profile(
                    lambda *a, **kw: attention_math(q, k, v, mask, dropout_p=_dropout_p(case),
                                                    **rest), case)
            return attention_math(q, k, v, mask, **rest)
        return output

    return [
        Mistake("the scores are not scaled: divide query @ key^T by sqrt(d_k), where d_k = "
                "query.size(-1)", var(scale=1.0)),
        Mistake("the scores are divided by d_k; divide them by sqrt(d_k) instead (math.sqrt(d_k)); "
                "or are they scaled twice?", var(scale=lambda q, k, v: 1.0 / q.size(-1))),
        Mistake("the scores are divided by d_k / 2: in Python, d_k ** 1/2 means (d_k ** 1) / 2; "
                "write d_k ** 0.5 or math.sqrt(d_k)", var(scale=lambda q, k, v: 2.0 / q.size(-1))),
        Mistake("the scores are divided by 2 * d_k: in Python, scores / d_k ** 1/2 means "
                "(scores / d_k) / 2; write scores / math.sqrt(d_k) (or d_k ** 0.5)",
                var(scale=lambda q, k, v: 0.5 / q.size(-1))),
        Mistake("the scores are multiplied by sqrt(d_k); divide by it instead",
                var(scale=lambda q, k, v: math.sqrt(q.size(-1)))),
        Mistake("the scores are scaled with the values' width d_v = value.size(-1); the scale uses "
                "the width that queries and keys share, d_k = query.size(-1)",
                var(scale=lambda q, k, v: 1.0 / math.sqrt(v.size(-1)))),
        Mistake("the scores are scaled with the number of queries (query.size(-2)); "
                "d_k is the last axis, query.size(-1)",
                var(scale=lambda q, k, v: 1.0 / math.sqrt(q.size(-2)))),
        Mistake("the scores are scaled with the number of keys (key.size(-2)); d_k is the last "
                "axis, query.size(-1)", var(scale=lambda q, k, v: 1.0 / math.sqrt(k.size(-2)))),
        Mistake("the weights are divided by sqrt(d_k) after the softmax, so they no longer sum to "
                "1: divide the scores, before the softmax", var(scale_after=True)),
        *(Mistake("the softmax runs over the queries (dim=-2; for 3-D inputs also dim=1): each "
                  "query's weights must sum to 1 over the keys, softmax(scores, dim=-1)",
                  var(softmax_dim=-2, zero_empty=zero)) for zero in (True, False)),
        *(Mistake("the softmax runs over dim=1, which for (B, H, T, S) scores is the heads: "
                  "normalize over the keys, the last axis, softmax(scores, dim=-1), whatever the "
                  "number of leading axes", var(softmax_dim=1, zero_empty=zero))
          for zero in (True, False)),
        Mistake("the softmax runs over the batch (dim=0; softmax without dim= picks it for 3-D "
                "inputs): normalize over the keys, softmax(scores, dim=-1)", var(softmax_dim=0)),
        Mistake("the softmax has no dim=, so PyTorch picks one from the scores' number of axes: "
                "dim=0 (the batch) for 3-D scores and dim=1 for 4-D ones, never the keys; write "
                "softmax(scores, dim=-1)", var(softmax_dim="implicit")),
        Mistake("the weights are not normalized: apply a softmax over the keys (dim=-1) to the "
                "scores", var(softmax=False)),
        Mistake("the scores are key @ query^T, transposed: the score of query i and key j is "
                "(query @ key.transpose(-2, -1))[..., i, j]", var(scores_transposed=True)),
        Mistake("the mask is ignored: before the softmax, fill the scores where mask is False with "
                "a large negative number (scores.masked_fill(~mask, ...))", var(mask_ignored=True)),
        Mistake(INVERTED, var(invert=True)),
        Mistake(INVERTED, var(invert=True, fill="-inf", zero_empty=False)),
        Mistake(INVERTED, var(invert=True, fill="-1e9", zero_empty=False)),
        Mistake("the hidden keys' scores are set to 0 (scores * mask, "
                "or masked_fill with 0), and a score of 0 still gets weight after the softmax: "
                "fill them with a very negative number, torch.finfo(scores.dtype).min",
                var(fill="zero", zero_empty=False)),
        Mistake("the hidden keys' scores are set to 0 (scores * mask, "
                "or masked_fill with 0), and a score of 0 still gets weight after the softmax: "
                "fill them with a very negative number, torch.finfo(scores.dtype).min",
                var(fill="zero")),
        Mistake("the mask is added to the scores: a bool mask adds 1 where it is True, which hides "
                "nothing; fill the hidden scores instead, scores.masked_fill(~mask, "
                "torch.finfo(scores.dtype).min)", var(mask_added=True, zero_empty=False)),
        Mistake("the mask is added to the scores: a bool mask adds 1 where it is True, which hides "
                "nothing; fill the hidden scores instead, scores.masked_fill(~mask, "
                "torch.finfo(scores.dtype).min)", var(mask_added=True)),
        Mistake("a query that may attend to nothing gives NaN: "
                "with -inf in every score of its row, the softmax computes 0/0. Fill with a large "
                "finite negative number (torch.finfo(scores.dtype).min) and set the weights of "
                "such rows to zero (mask.any(dim=-1, keepdim=True) tells which "
                "rows have a visible key)",
                var(fill="-inf", zero_empty=False)),
        Mistake("a query that may attend to nothing gets a uniform average of all values instead "
                "of zeros: after the softmax, zero the weights of rows with no visible key "
                "(weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0))",
                var(fill="-1e9", zero_empty=False)),
        Mistake("the mask is applied after the softmax, so the remaining weights no longer sum to "
                "1: mask the scores before the softmax", var(mask_after=True)),
        Mistake("the output averages the keys; it should average the values: output = weights @ "
                "value", lambda case: (var()(case) if _dropout_p(case) > 0
                                       else attention_math(*_qkv(case),
                                                           values=case.inputs["key"]))),
    ]


def _dropout_mistakes(profiles: Sequence[tuple[str, DropoutProfile]],
                      plain: Callable[[Case], Any]) -> list[Mistake]:
    """Mistakes of dropout in training: on a dropout case the profile, on the others what
    ``plain(case)`` gives (the right answer: the mistake does not show without dropout)."""

    def output(profile: DropoutProfile) -> Callable[[Case], Any]:
        return (lambda case: profile if _dropout_p(case) > 0
                or "training" in case.state else plain(case))

    return [Mistake(message, output(profile)) for message, profile in profiles]


def _attention_dropout_mistakes() -> list[Mistake]:
    def rate(case: Case) -> str:
        p = _dropout_p(case)
        return (f"about {1 - p:.0%} of your weights are 0 with dropout_p={p}: dropout_p is the "
                f"probability of zeroing a weight, not of keeping it (F.dropout(weights, "
                f"p=dropout_p))")

    P = DropoutProfile
    return _dropout_mistakes([
        ("dropout_p is ignored: with dropout_p > 0, apply dropout to the weights after "
         "the softmax, F.dropout(weights, p=dropout_p), and compute the output from the "
         "dropped weights",
         P("none", "none", True)),
        ("the output is computed from the weights after dropout, but the weights returned are "
         "those before it: return the dropped weights, the ones that made the output",
         P("none", "dropout", False)),
        ("the weights returned are after dropout, but the output is computed from the weights "
         "before it: compute output = weights @ value from the dropped weights",
         P("dropout", "none", False)),
        ("the weights you return are not the ones that made the output: each went through its own "
         "dropout (a separate random draw); apply dropout once, compute the output from its "
         "result and return that", P("dropout", "dropout", False)),
        ("the kept weights are not rescaled: dropout divides what it keeps by (1 - dropout_p), so "
         "the expected weight stays the same; torch.nn.functional.dropout does it for you",
         P("unscaled", "unscaled", True)),
        ("the kept weights are multiplied by (1 - dropout_p); dropout divides them by it, so the "
         "expected weight stays the same (F.dropout does it for you)",
         P("times 1-p", "times 1-p", True)),
        (rate, P("keep rate", "keep rate", True)),
        ("dropout is applied twice: about 1 - (1 - dropout_p)^2 of the weights are 0, and the "
         "others are divided by (1 - dropout_p)^2; apply it once", P("twice", "twice", True)),
        ("dropout is applied to the output, not to the weights: apply it to the weights after the "
         "softmax, compute output = weights @ value from them, and return those weights",
         P("none", "output", False)),
        ("dropout is applied to the values, not to the weights: apply it to the weights after the "
         "softmax, compute output = weights @ value from them, and return those weights",
         P("none", "values", False)),
        ("with dropout_p > 0 your weights still sum to 1 over the keys, so dropout does not act on "
         "the weights after the softmax (it acts before it, on the scores, the query or the key, "
         "or the weights are normalized again): apply F.dropout to the weights after the "
         "softmax; it zeroes some and divides the others by 1 - dropout_p",
         P("sums to 1", "sums to 1", True)),
    ], _attention_reference)


def _attention_hints(got: Any, want: Any, case: Case) -> str | None:
    out, weights = got
    want_out, want_weights = want
    mask = case.inputs.get("mask")
    if torch.isnan(out).any() or torch.isnan(weights).any():
        return ("your result has NaN where the reference has numbers; a row of scores that are all "
                "-inf gives NaN in the softmax")
    kind = dropout_kind(weights, want_weights, 0.5, rows=True)
    if kind.share > 0 and not math.isnan(kind.scale) and not math.isnan(kind.share):
        return (f"{kind.share:.0%} of your weights are 0 here, and the others "
                f"{kind.scale:.3f} times the right ones, although dropout_p=0.0: apply dropout "
                f"with p=dropout_p, only when dropout_p > 0")
    if mask is not None:
        hidden = ~mask.expand_as(weights)
        if (weights[hidden].abs() > 1e-6).any():
            return ("your weights are not zero on masked keys "
                    "(where the mask is False): fill those scores with a large negative number "
                    "before the softmax")
    visible = want_weights.sum(-1) > 0.5
    if not torch.allclose(weights.sum(-1)[visible], torch.ones_like(weights.sum(-1)[visible]),
                          atol=1e-4):
        return ("your weights do not sum to 1 over the keys for each query: the softmax must "
                "normalize over the last axis")
    if close(weights, want_weights):
        return "your weights are right but the output is not: output = weights @ value"
    return None


def _weights_shape(got: Any, want: Any) -> str | None:
    if isinstance(got, (tuple, list)) and len(got) == 2 and isinstance(got[1], Tensor):
        weights, expected = got[1], want[1]
        if weights.shape == expected.transpose(-2, -1).shape != expected.shape:
            return (f"the weights have shape {tuple(weights.shape)}, i.e. (..., S, T); "
                    f"they should be (..., T, S) = {tuple(expected.shape)}: "
                    f"one row per query, scores = query @ key.transpose(-2, -1)")
    return None


def _explain_attention_dropout(case: Case) -> str:
    p = _dropout_p(case)
    return (f"with dropout_p={p}, dropout must zero each weight with probability {p} and divide "
            f"the others by 1 - {p}, after the softmax; the output is computed from those "
            f"weights, and they are the weights to return. Yours differ:")


@isolated
def check_attention(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(query, key, value, mask=None, dropout_p=0.0) -> (output, weights)``.

    Compares with :func:`transformer_lib.scaled_dot_product_attention` on 3-D and 4-D inputs,
    keys and values of different sizes, causal, padding and random masks (with queries that may
    attend to nothing: zero weights and zero output, never NaN); then, with ``dropout_p > 0``,
    checks that about a share ``dropout_p`` of the weights is 0, the others divided by
    ``1 - dropout_p``, and that the output comes from the weights returned. Prints one line if
    everything agrees; raises ``AssertionError`` naming the likely mistake otherwise.
    """
    check = "check_attention"
    cases = _attention_cases(torch.Generator().manual_seed(seed))
    plain = [case for case in cases if _dropout_p(case) == 0]
    dropped = [case for case in cases if _dropout_p(case) > 0]

    def learner(case: Case) -> Any:
        args, kwargs = case.args()
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    count = run_cases(check, plain, learner, _attention_reference, parts=("output", "weights"),
                      mistakes=_attention_mistakes(),
                      structure=lambda got, want, case: _weights_shape(got, want) or
                      structure_problem(("output", "weights"), got, want),
                      hints=_attention_hints, total=len(cases))
    count += run_dropout_cases(check, dropped,
                               lambda case: _attention_case_profile(fn, case, check),
                               lambda case: RIGHT_DROPOUT, _attention_dropout_mistakes(),
                               _explain_attention_dropout, first=len(plain) + 1, total=len(cases))
    passed(check, count)


register(Spec(check="check_attention", cases=_attention_spec_cases, reference=_attention_reference,
              package=_attention_package,
              mistakes=lambda: _attention_mistakes() + _attention_dropout_mistakes(),
              agree=profile_agree))


# --- masks (lab 01) --------------------------------------------------------------------------

MASK_DTYPE = "masks are bool tensors, True = may attend"


def _mask_dtype_problem(got: Tensor, want: Tensor) -> str | None:
    """A mask of the right shape but not bool: what the numbers show, and the contract."""
    if got.dtype == torch.bool:
        return None
    if got.is_floating_point() and bool(torch.isinf(got).any() | (got < -1e4).any()):
        return ("this is an additive float mask (0 where allowed, a large negative number where "
                "hidden); the contract's masks are bool with True = may attend, and attention "
                "hides the scores where the mask is False")
    if bool(((got == 0) | (got == 1)).all()) and bool((got.bool() == want).all()):
        return (f"the pattern is right but the dtype is {got.dtype}; {MASK_DTYPE} "
                f"(dtype=torch.bool, or .bool())")
    return structure_problem(("mask",), got, want, dtype_reasons={"mask": MASK_DTYPE})


def _causal_cases() -> list[Case]:
    return [Case(f"{n} positions", {"size": n}) for n in (5, 1, 2, 7)]


def _ones(n: int) -> Tensor:
    return torch.ones(n, n, dtype=torch.bool)


def _causal_mistakes() -> list[Mistake]:
    def var(make: Callable[[int], Tensor]) -> Callable[[Case], Tensor]:
        return lambda case: make(case.inputs["size"])

    return [
        Mistake("the mask is inverted: it is True above the diagonal (the future). Here True means "
                "'may attend' (nn.MultiheadAttention uses the opposite convention): keep the "
                "diagonal and below, torch.tril", var(lambda n: _ones(n).triu(1))),
        Mistake("the mask is the upper triangle, so position i would see the future: position i "
                "may attend to positions 0..i, the lower triangle (torch.tril)",
                var(lambda n: _ones(n).triu())),
        Mistake("the diagonal is missing: a position may attend to itself (tril with diagonal=0, "
                "or ~triu(diagonal=1))", var(lambda n: _ones(n).tril(-1))),
        Mistake("the diagonal is off by one: position i may also attend to position i + 1, its "
                "future; position i may attend to j <= i only (tril with diagonal=0, or "
                "~triu(diagonal=1))", var(lambda n: _ones(n).tril(1))),
        Mistake("nothing is hidden: the mask is all True; hide the positions above the diagonal",
                var(_ones)),
    ]


def _causal_structure(got: Any, want: Any, case: Case) -> str | None:
    if not isinstance(got, Tensor):
        return f"return a torch.Tensor; yours returned a {type(got).__name__}"
    n = case.inputs["size"]
    if got.shape != want.shape:
        extra = " (leave the batch and head axes to broadcasting)" if got.numel() == n * n else ""
        return f"the mask has shape {tuple(got.shape)}, expected (size, size) = ({n}, {n}){extra}"
    return _mask_dtype_problem(got, want)


@isolated
def check_causal_mask(fn: Callable[..., Any]) -> None:
    """Check ``fn(size, device=None) -> (size, size)`` bool, True on and below the diagonal."""
    check = "check_causal_mask"

    def learner(case: Case) -> Any:
        return call_learner(check, f"calling causal_mask({case.inputs['size']}) in {case.where}",
                            fn, case.inputs["size"])

    count = run_cases(check, _causal_cases(), learner, lambda case: causal_mask(**case.inputs),
                      parts=("mask",), mistakes=_causal_mistakes(), structure=_causal_structure,
                      total=5)
    out = call_learner(check, "calling causal_mask(3, device='meta')", fn, 3, device="meta")
    if not isinstance(out, Tensor) or out.device.type != "meta":
        device = out.device if isinstance(out, Tensor) else None
        raise AssertionError(f"{check}: causal_mask(3, device='meta') returned a tensor on "
                             f"{device}: create it on the requested device, "
                             f"torch.ones(size, size, dtype=torch.bool, device=device)\n"
                             f"  in case 5 of 5 (the device argument)")
    passed(check, count + 1)


register(Spec(check="check_causal_mask", cases=_causal_cases,
              reference=lambda case: _ones(case.inputs["size"]).tril(),
              package=lambda case: causal_mask(**case.inputs), mistakes=_causal_mistakes))


def _padding_cases(g: torch.Generator) -> list[Case]:
    right = torch.randint(1, 9, (3, 6), generator=g)
    right[1, 4:] = 0
    right[2, 2:] = 0
    pad3 = torch.randint(4, 9, (3, 5), generator=g)
    pad3[:, 0] = 0  # token 0 is an ordinary token here
    pad3[1, 4] = 1  # and so are ids below pad_id
    pad3[0, 3:] = 3
    pad3[1, :2] = 3  # padding at the start
    pad3[2, 1:] = 3
    left = torch.randint(3, 9, (2, 5), generator=g)
    left[1, 2:4] = torch.tensor([0, 1])  # ordinary tokens
    left[0, :2] = 2  # padding at the start (left-padded)
    return [
        Case("padding at the end, pad_id=0", {"tokens": right, "pad_id": 0}),
        Case("pad_id=3, padding at the end or the start (0 and 1 are ordinary tokens)",
             {"tokens": pad3, "pad_id": 3}),
        Case("padding at the start, pad_id=2 (0 and 1 are ordinary tokens)",
             {"tokens": left, "pad_id": 2}),
        Case("no padding at all",
             {"tokens": torch.randint(1, 9, (2, 4), generator=g), "pad_id": 0}),
    ]


def _padding_mistakes() -> list[Mistake]:
    def view(m: Tensor) -> Tensor:
        return m[:, None, None, :]

    return [
        Mistake("the mask is inverted: True must mark the real tokens (tokens != pad_id), the ones "
                "a query may attend to", lambda c: view(c.inputs["tokens"] == c.inputs["pad_id"])),
        Mistake("pad_id is ignored: the mask compares with 0; compare with the pad_id argument",
                lambda c: view(c.inputs["tokens"] != 0)),
        Mistake("the mask keeps only the tokens above pad_id (tokens > pad_id), but every id "
                "other than pad_id is a real token, smaller ones too: tokens != pad_id",
                lambda c: view(c.inputs["tokens"] > c.inputs["pad_id"])),
        Mistake("the mask assumes the padding is at the end (it is built from lengths); mark each "
                "position by comparing its token with pad_id",
                lambda c: view(torch.arange(c.inputs["tokens"].size(1))
                               < (c.inputs["tokens"] != c.inputs["pad_id"]).sum(1, keepdim=True))),
    ]


def _padding_structure(got: Any, want: Tensor, case: Case) -> str | None:
    if not isinstance(got, Tensor):
        return f"return a torch.Tensor; yours returned a {type(got).__name__}"
    B, S = case.inputs["tokens"].shape
    expected = f"(B, 1, 1, S) = {(B, 1, 1, S)}"
    if got.shape != want.shape:
        if got.shape == (B, S):
            return (f"the mask has shape (B, S) = {(B, S)}; return (B, 1, 1, S) so it broadcasts "
                    f"over heads and queries to (B, H, T, S): mask[:, None, None, :]")
        if got.shape == (B, 1, S):
            return (f"the mask has shape (B, 1, S) = {(B, 1, S)}: against (B, H, T, S) scores it "
                    f"lines up as (1, B, 1, S), its batch axis with the heads; return {expected}, "
                    f"mask[:, None, None, :]")
        if got.dim() >= 2 and tuple(got.shape[-2:]) == (S, S) and got.size(0) == B:
            return (f"the mask has shape {tuple(got.shape)}: it hides padded queries as well as "
                    f"padded keys; the padding mask hides keys only, and has shape {expected}")
        if got.numel() == B * S and got.dim() >= 1 and got.size(-1) == S and got.size(0) != B:
            return (f"the mask has shape {tuple(got.shape)}; it must be {expected}: the batch axis "
                    f"comes first, so each sequence's mask meets its own scores")
        if got.numel() == B * S:
            return (f"the mask has shape {tuple(got.shape)}; it must be {expected}: the key axis S "
                    f"is last, so the mask hides keys (columns of the scores), not queries")
        return f"the mask has shape {tuple(got.shape)}, expected {expected}"
    return _mask_dtype_problem(got, want)


@isolated
def check_padding_mask(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(tokens, pad_id) -> (B, 1, 1, S)`` bool, True where ``tokens != pad_id``."""
    check = "check_padding_mask"
    cases = _padding_cases(torch.Generator().manual_seed(seed))

    def learner(case: Case) -> Any:
        return call_learner(check, f"calling padding_mask in {case.where}", fn,
                            case.inputs["tokens"], case.inputs["pad_id"])

    count = run_cases(check, cases, learner, lambda case: padding_mask(**case.inputs),
                      parts=("mask",), mistakes=_padding_mistakes(), structure=_padding_structure)
    passed(check, count)


register(Spec(check="check_padding_mask",
              cases=lambda: _padding_cases(torch.Generator().manual_seed(0)),
              reference=lambda case: (case.inputs["tokens"]
                                      != case.inputs["pad_id"])[:, None, None],
              package=lambda case: padding_mask(**case.inputs), mistakes=_padding_mistakes))
