"""Checks for lab 2 (multi-head attention): ``check_split_heads``, ``check_merge_heads``,
``check_multi_head_attention``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from transformer_lib.attention import causal_mask
from transformer_lib.checks.engine import (
    Case,
    Mistake,
    call_learner,
    isolated,
    learner_modules,
    passed,
    randn,
    run_cases,
    structure_problem,
)
from transformer_lib.checks.lab01_attention import attention_math
from transformer_lib.multihead import MultiHeadAttention


def _heads_cases() -> list[tuple[int, int, int, int]]:
    return [(2, 5, 3, 4), (1, 4, 2, 3), (3, 2, 6, 1), (2, 7, 4, 5)]  # (B, T, H, Dh)


@isolated
def check_split_heads(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x, num_heads)``: ``(B, T, D) -> (B, H, T, Dh)``, head ``h`` getting the
    features ``h * Dh`` to ``(h + 1) * Dh - 1`` of every position."""
    check = "check_split_heads"
    g = torch.Generator().manual_seed(seed)
    cases = [Case(f"B={B}, T={T}, H={H}, Dh={Dh}", {"x": randn(g, B, T, H * Dh), "num_heads": H},
                   positional=2) for B, T, H, Dh in _heads_cases()]

    def shape(case: Case) -> tuple[int, int, int, int]:
        x, H = case.inputs["x"], case.inputs["num_heads"]
        return x.size(0), x.size(1), H, x.size(2) // H

    def learner(case: Case) -> Any:
        args, kwargs = case.args()
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    def reference(case: Case) -> Tensor:
        B, T, H, Dh = shape(case)
        return case.inputs["x"].view(B, T, H, Dh).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)

    def structure(got: Any, want: Tensor, case: Case) -> str | None:
        B, T, H, Dh = shape(case)
        if isinstance(got, Tensor) and got.shape == (B, T, H, Dh) != want.shape:
            return (f"the result has shape (B, T, H, Dh) = {(B, T, H, Dh)}: the heads axis must come "
                    f"before the positions, (B, H, T, Dh); add .transpose(1, 2)")
        return structure_problem(("heads",), got, want)

    variants: list[tuple[Any, Callable[[Case], Any]]] = [
        ("the heads are split without a transpose: view(B, H, T, Dh) has the right shape but cuts "
         "the sequence into pieces instead of cutting each position's features; use "
         "view(B, T, H, Dh).transpose(1, 2)",
         lambda c: c.inputs["x"].reshape(shape(c)[0], shape(c)[2], shape(c)[1], shape(c)[3])),
        ("each head must get a contiguous block of Dh features (head h: features h * Dh to "
         "(h + 1) * Dh - 1); view(B, T, Dh, H) interleaves them: use view(B, T, H, Dh)",
         lambda c: c.inputs["x"].reshape(shape(c)[0], shape(c)[1], shape(c)[3], shape(c)[2])
         .permute(0, 3, 1, 2)),
    ]
    count = run_cases(check, cases, learner, reference, parts=("heads",), mistakes=[Mistake(*v) for v in variants],
                 structure=structure)
    passed(check, count)


@isolated
def check_merge_heads(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x)``: ``(B, H, T, Dh) -> (B, T, H * Dh)``, the inverse of splitting heads."""
    check = "check_merge_heads"
    g = torch.Generator().manual_seed(seed)
    cases = [Case(f"B={B}, H={H}, T={T}, Dh={Dh}", {"x": randn(g, B, H, T, Dh)}, positional=1)
             for B, T, H, Dh in _heads_cases()]

    def learner(case: Case) -> Any:
        return call_learner(check, f"running {case.where}", fn, case.inputs["x"])

    def reference(case: Case) -> Tensor:
        B, H, T, Dh = case.inputs["x"].shape
        return case.inputs["x"].transpose(1, 2).reshape(B, T, H * Dh)  # (B, H, T, Dh) -> (B, T, D)

    def structure(got: Any, want: Tensor, case: Case) -> str | None:
        B, H, T, Dh = case.inputs["x"].shape
        if isinstance(got, Tensor) and got.shape == (B, T, H, Dh) != want.shape:
            return (f"the result has shape (B, T, H, Dh) = {(B, T, H, Dh)}: reshape it to "
                    f"(B, T, H * Dh) = {(B, T, H * Dh)}, one vector of width D per position")
        return structure_problem(("merged heads",), got, want)

    def merged(x: Tensor, order: tuple[int, ...]) -> Tensor:
        B, H, T, Dh = x.shape
        return x.permute(*order).reshape(B, T, H * Dh)

    variants: list[tuple[Any, Callable[[Case], Any]]] = [
        ("the heads are merged without transposing back: (B, H, T, Dh) must become (B, T, H, Dh) "
         "before the reshape to (B, T, D): x.transpose(1, 2).reshape(B, T, D)",
         lambda c: merged(c.inputs["x"], (0, 1, 2, 3))),
        ("the features are interleaved: head h's Dh features must stay together, as the block "
         "h * Dh to (h + 1) * Dh - 1; transpose(1, 2) gives (B, T, H, Dh), then reshape",
         lambda c: merged(c.inputs["x"], (0, 2, 3, 1))),
    ]
    count = run_cases(check, cases, learner, reference, parts=("merged heads",), mistakes=[Mistake(*v) for v in variants],
                 structure=structure)
    passed(check, count)


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
    heads_out, weights = attention_math(q, k, v, mask, scale=factor, softmax_dim=softmax_dim,
                                         invert=mask_mode == "invert")
    if merge_transpose:
        merged = heads_out.transpose(1, 2).reshape(B, T, D)
    else:
        merged = heads_out.reshape(B, T, D)
    out = _linear(m.out_proj, merged, weight_transpose) if out_proj else merged
    return out, weights, out


def _mha_variants() -> list[tuple[Any, Callable[[Case], Any]]]:
    def var(**options: Any) -> Callable[[Case], Any]:
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


def _mha_cases(g: torch.Generator) -> list[Case]:
    def case(name: str, *, D: int = 16, H: int = 4, B: int = 2, T: int = 5, S: int | None = None,
             bias: bool = True, dropout: float = 0.0, cross: bool = False, distinct: bool = False,
             mask: Tensor | None = None, repeat: bool = False) -> Case:
        S = T if S is None else S
        query = randn(g, B, T, D)
        key = randn(g, B, S, D) if cross or distinct or S != T else query
        value = randn(g, B, S, D) if distinct else key
        return Case(name, {"query": query, "key": key, "value": value, "mask": mask},
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


@isolated
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
    module_for = learner_modules(check, cls, MultiHeadAttention, _MHA_NAMES, g)

    def learner(case: Case) -> Any:
        where = case.where
        module = module_for(case)
        args, kwargs = case.args()
        out = call_learner(check, f"running forward on {where}", module, *args, **kwargs)
        pair = call_learner(check, f"running forward(..., need_weights=True) on {where}", module,
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

    def reference(case: Case) -> Any:
        out, weights = case.state["reference"](**case.inputs, need_weights=True)
        return out, weights, out

    def structure(got: Any, want: Any, case: Case) -> str | None:
        weights, expected = got[1], want[1]
        if isinstance(weights, Tensor) and weights.shape != expected.shape:
            B, H, T, S = expected.shape
            if weights.shape == (B, T, S):
                return (f"the weights have shape (B, T, S) = {(B, T, S)}; return one (T, S) "
                        f"matrix per head, (B, H, T, S) = {(B, H, T, S)}, not their average")
            if weights.shape == (B * H, T, S):
                return (f"the weights have shape (B * H, T, S) = {(B * H, T, S)}; return "
                        f"(B, H, T, S) = {(B, H, T, S)}")
        return structure_problem(parts, got, want)

    count = run_cases(check, cases, learner, reference, parts=parts, mistakes=[Mistake(*v) for v in _mha_variants()],
                 structure=structure)
    passed(check, count)


