"""Checks for lab 1 (attention and masks): ``check_attention``, ``check_causal_mask``,
``check_padding_mask``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from transformer_lib.attention import causal_mask, padding_mask, scaled_dot_product_attention
from transformer_lib.checks.engine import (
    ATOL,
    RTOL,
    Case,
    Mistake,
    call_learner,
    close,
    isolated,
    passed,
    randn,
    run_cases,
    structure_problem,
)


def attention_math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *,
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


def _attention_variants() -> list[tuple[Any, Callable[[Case], Any]]]:
    def qkv(case: Case) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        i = case.inputs
        return i["query"], i["key"], i["value"], i.get("mask")

    def var(**options: Any) -> Callable[[Case], Any]:
        return lambda case: attention_math(*qkv(case), **options)

    def scaled(by: Callable[[Tensor, Tensor, Tensor], float]) -> Callable[[Case], Any]:
        return lambda case: attention_math(*qkv(case), scale=by(*qkv(case)[:3]))

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
         lambda case: attention_math(*qkv(case)[:3], None)),
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
         lambda case: attention_math(*qkv(case), values=qkv(case)[1])),
    ]


def _attention_hints(got: Any, want: Any, case: Case) -> str | None:
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
    if close(weights, want_weights):
        return "your weights are right but the output is not: output = weights @ value"
    return None


def _attention_cases(g: torch.Generator) -> list[Case]:
    def qkv(*batch: int, T: int, S: int, Dk: int, Dv: int) -> dict[str, Tensor]:
        return {"query": randn(g, *batch, T, Dk, std=1.5), "key": randn(g, *batch, S, Dk, std=1.5),
                "value": randn(g, *batch, S, Dv)}

    lengths = torch.tensor([6, 4, 2])
    padding = (torch.arange(6) < lengths[:, None]).view(3, 1, 1, 6)  # (B, 1, 1, S)
    random = torch.rand(2, 3, 4, 5, generator=g) < 0.5  # (B, H, T, S)
    random[..., 0] = True
    random[0, 1, 2] = False  # these queries may attend to nothing
    random[1, 0, 0] = False
    cases = [
        Case("(B, T, Dk) inputs, no mask", qkv(2, T=4, S=4, Dk=8, Dv=8)),
        Case("keys and values of different sizes (T != S, Dk != Dv)", qkv(2, T=3, S=5, Dk=6, Dv=4)),
        Case("a head axis, (B, H, T, Dk) inputs", qkv(2, 3, T=4, S=6, Dk=8, Dv=3)),
        Case("causal mask (T, T)", {**qkv(2, T=5, S=5, Dk=8, Dv=4), "mask": causal_mask(5)}),
        Case("padding mask (B, 1, 1, S), items of lengths 6, 4 and 2",
              {**qkv(3, 2, T=4, S=6, Dk=4, Dv=5), "mask": padding}),
        Case("random mask (B, H, T, S) with queries that may attend to nothing",
              {**qkv(2, 3, T=4, S=5, Dk=6, Dv=4), "mask": random}),
    ]
    for case in cases:
        case.positional = 3  # fn(query, key, value, mask=...)
    return cases


def _check_attention_dropout(check: str, fn: Callable[..., Any], g: torch.Generator) -> None:
    q, k, v = randn(g, 2, 6, 8, std=1.5), randn(g, 2, 6, 8, std=1.5), randn(g, 2, 6, 4)
    p = 0.5
    where = "case 7 of 7 (dropout_p=0.5: query (2, 6, 8), key (2, 6, 8), value (2, 6, 4))"
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
    got = call_learner(check, f"running {where}", fn, q, k, v, dropout_p=p)
    want_out, plain = scaled_dot_product_attention(q, k, v)
    problem = structure_problem(("output", "weights"), got, (want_out, plain))
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
        elif not close(out, weights @ v):
            problem = ("the output must be computed from the weights after dropout "
                       "(output = weights @ value), and those are the weights to return")
    if problem:
        raise AssertionError(f"{check}: {problem}\n  in {where}")


@isolated
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

    def learner(case: Case) -> Any:
        args, kwargs = case.args()
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    count = run_cases(check, cases, learner, lambda case: scaled_dot_product_attention(**case.inputs),
                 parts=("output", "weights"), mistakes=[Mistake(*v) for v in _attention_variants()],
                 structure=lambda got, want, case: _weights_shape(got, want) or
                 structure_problem(("output", "weights"), got, want),
                 hints=_attention_hints, total=len(cases) + 1)
    _check_attention_dropout(check, fn, g)
    passed(check, count + 1)


def _weights_shape(got: Any, want: Any) -> str | None:
    if isinstance(got, (tuple, list)) and len(got) == 2 and isinstance(got[1], Tensor):
        weights, expected = got[1], want[1]
        if weights.shape == expected.transpose(-2, -1).shape != expected.shape:
            return (f"the weights have shape {tuple(weights.shape)}, i.e. (..., S, T); they should be "
                    f"(..., T, S) = {tuple(expected.shape)}: one row per query, scores = "
                    f"query @ key.transpose(-2, -1)")
    return None


# --- masks (lab 01) --------------------------------------------------------------------------


@isolated
def check_causal_mask(fn: Callable[..., Any]) -> None:
    """Check ``fn(size, device=None) -> (size, size)`` bool, True on and below the diagonal."""
    check = "check_causal_mask"
    cases = [Case(f"{n} positions", {"size": n}) for n in (5, 1, 2, 7)]

    def learner(case: Case) -> Any:
        return call_learner(check, f"calling causal_mask({case.inputs['size']}) in {case.where}", fn,
                     case.inputs["size"])

    def structure(got: Any, want: Any, case: Case) -> str | None:
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

    def var(make: Callable[[int], Tensor]) -> Callable[[Case], Tensor]:
        return lambda case: make(case.inputs["size"])

    def ones(n: int) -> Tensor:
        return torch.ones(n, n, dtype=torch.bool)

    variants: list[tuple[Any, Callable[[Case], Any]]] = [
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
    count = run_cases(check, cases, learner, lambda case: causal_mask(**case.inputs),
                 parts=("mask",), mistakes=[Mistake(*v) for v in variants], structure=structure)
    out = call_learner(check, "calling causal_mask(3, device='meta')", fn, 3, device="meta")
    if not isinstance(out, Tensor) or out.device.type != "meta":
        device = out.device if isinstance(out, Tensor) else None
        raise AssertionError(f"{check}: causal_mask(3, device='meta') returned a tensor on "
                             f"{device}: create it on the requested device, "
                             f"torch.ones(size, size, dtype=torch.bool, device=device)")
    passed(check, count + 1)


@isolated
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
        Case("padding at the end, pad_id=0", {"tokens": right, "pad_id": 0}),
        Case("pad_id=3 (0 is an ordinary token)", {"tokens": pad3, "pad_id": 3}),
        Case("padding at the start, pad_id=0", {"tokens": left, "pad_id": 0}),
        Case("no padding at all", {"tokens": torch.randint(1, 9, (2, 4), generator=g), "pad_id": 0}),
    ]

    def learner(case: Case) -> Any:
        return call_learner(check, f"calling padding_mask in {case.where}", fn,
                     case.inputs["tokens"], case.inputs["pad_id"])

    def structure(got: Any, want: Tensor, case: Case) -> str | None:
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

    variants: list[tuple[Any, Callable[[Case], Any]]] = [
        ("the mask is inverted: True must mark the real tokens (tokens != pad_id), the ones a query "
         "may attend to", lambda c: view(c.inputs["tokens"] == c.inputs["pad_id"])),
        ("pad_id is ignored: the mask compares with 0; compare with the pad_id argument",
         lambda c: view(c.inputs["tokens"] != 0)),
        ("the mask assumes the padding is at the end (it is built from lengths); mark each "
         "position by comparing its token with pad_id",
         lambda c: view(torch.arange(c.inputs["tokens"].size(1))
                        < (c.inputs["tokens"] != c.inputs["pad_id"]).sum(1, keepdim=True))),
    ]
    count = run_cases(check, cases, learner, lambda case: padding_mask(**case.inputs),
                 parts=("mask",), mistakes=[Mistake(*v) for v in variants], structure=structure)
    passed(check, count)


