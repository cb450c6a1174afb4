"""Checks for lab 2 (multi-head attention): ``check_split_heads``, ``check_merge_heads``,
``check_multi_head_attention``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``. Every
check registers an ``engine.Spec`` (``tests/test_checks_specs.py``). Dropout in training mode is
tested as in lab 1 (``lab01_attention.run_dropout_cases``): by what every correct dropout shares,
not draw by draw.
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
    Spec,
    build_module,
    call_learner,
    close,
    isolated,
    passed,
    randn,
    randomize,
    register,
    run_cases,
    structure_problem,
)
from transformer_lib.checks.lab01_attention import (
    DROPOUT_FAMILY,
    DropoutProfile,
    Dropped,
    attention_math,
    column_dropout_kind,
    dropout_kind,
    expected_dropout,
    profile_agree,
    run_dropout_cases,
)
from transformer_lib.multihead import MultiHeadAttention, merge_heads, split_heads

# --- splitting and merging heads -------------------------------------------------------------


def _heads_sizes() -> list[tuple[int, int, int, int]]:
    return [(2, 5, 3, 4), (1, 4, 2, 3), (3, 2, 6, 1), (2, 7, 4, 5)]  # (B, T, H, Dh)


def _split_cases(g: torch.Generator) -> list[Case]:
    return [Case(f"B={B}, T={T}, H={H}, Dh={Dh}", {"x": randn(g, B, T, H * Dh), "num_heads": H},
                 positional=2) for B, T, H, Dh in _heads_sizes()]


def _split_shape(case: Case) -> tuple[int, int, int, int]:
    x, H = case.inputs["x"], case.inputs["num_heads"]
    return x.size(0), x.size(1), H, x.size(2) // H


def _split_reference(case: Case) -> Tensor:
    B, T, H, Dh = _split_shape(case)
    return case.inputs["x"].reshape(B, T, H, Dh).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)


def _split_mistakes() -> list[Mistake]:
    def var(make: Callable[[Tensor, int, int, int, int], Tensor]) -> Callable[[Case], Tensor]:
        return lambda case: make(case.inputs["x"], *_split_shape(case))

    return [
        Mistake("the heads are split without a transpose: view(B, H, T, Dh) has the "
                "right shape but cuts the sequence into pieces instead of cutting each position's "
                "features; use view(B, T, H, Dh).transpose(1, 2)",
                var(lambda x, B, T, H, Dh: x.reshape(B, H, T, Dh))),
        Mistake("each head must get a contiguous block of Dh features (head h: features h * Dh to "
                "(h + 1) * Dh - 1); view(B, T, Dh, H) interleaves them: use view(B, T, H, Dh)",
                var(lambda x, B, T, H, Dh: x.reshape(B, T, Dh, H).permute(0, 3, 1, 2))),
        Mistake("the transpose comes before the reshape: x.transpose(1, 2) is (B, D, T), "
                "and cutting that into (B, H, T, Dh) mixes positions and features; reshape first, "
                "view(B, T, H, Dh), then .transpose(1, 2)",
                var(lambda x, B, T, H, Dh: x.transpose(1, 2).reshape(B, H, T, Dh))),
    ]


def _split_structure(got: Any, want: Tensor, case: Case) -> str | None:
    B, T, H, Dh = _split_shape(case)
    if isinstance(got, Tensor) and got.shape == (B, T, H, Dh) != want.shape:
        return (f"the result has shape (B, T, H, Dh) = {(B, T, H, Dh)}: the heads axis must come "
                f"before the positions, (B, H, T, Dh); add .transpose(1, 2)")
    if isinstance(got, Tensor) and got.shape in ((B, Dh, T, H), (B, T, Dh, H)) != want.shape:
        return (f"the result has shape {tuple(got.shape)}: "
                "num_heads and the head size are swapped; "
                "H = num_heads heads of Dh = D // num_heads features, view(B, T, H, Dh), "
                f"then .transpose(1, 2) for (B, H, T, Dh) = {(B, H, T, Dh)}")
    if isinstance(got, Tensor) and got.shape == (B, H, Dh, T) != want.shape:
        return (f"the result has shape (B, H, Dh, T) = {(B, H, Dh, T)}: the last two axes are "
                f"swapped; after view(B, T, H, Dh), swap only the positions and the heads, "
                f".transpose(1, 2), for (B, H, T, Dh) = {(B, H, T, Dh)}")
    return structure_problem(("heads",), got, want)


@isolated
def check_split_heads(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x, num_heads)``: ``(B, T, D) -> (B, H, T, Dh)``, head ``h`` getting the
    features ``h * Dh`` to ``(h + 1) * Dh - 1`` of every position."""
    check = "check_split_heads"
    cases = _split_cases(torch.Generator().manual_seed(seed))

    def learner(case: Case) -> Any:
        args, kwargs = case.args()
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    count = run_cases(check, cases, learner, _split_reference, parts=("heads",),
                      mistakes=_split_mistakes(), structure=_split_structure)
    passed(check, count)


register(Spec(check="check_split_heads",
              cases=lambda: _split_cases(torch.Generator().manual_seed(0)),
              reference=_split_reference,
              package=lambda case: split_heads(**case.inputs),
              mistakes=_split_mistakes))


def _merge_cases(g: torch.Generator) -> list[Case]:
    return [Case(f"B={B}, H={H}, T={T}, Dh={Dh}", {"x": randn(g, B, H, T, Dh)}, positional=1)
            for B, T, H, Dh in _heads_sizes()]


def _merge_reference(case: Case) -> Tensor:
    B, H, T, Dh = case.inputs["x"].shape
    return case.inputs["x"].transpose(1, 2).reshape(B, T, H * Dh)  # (B, H, T, Dh) -> (B, T, D)


def _merge_mistakes() -> list[Mistake]:
    def merged(order: tuple[int, ...]) -> Callable[[Case], Tensor]:
        def output(case: Case) -> Tensor:
            B, H, T, Dh = case.inputs["x"].shape
            return case.inputs["x"].permute(*order).reshape(B, T, H * Dh)
        return output

    return [
        Mistake("the heads are merged without transposing back: (B, H, T, Dh) must become "
                "(B, T, H, Dh) before the reshape to (B, T, D): x.transpose(1, 2).reshape(B, T, D)",
                merged((0, 1, 2, 3))),
        Mistake("the features are interleaved: head h's Dh features must stay together, as the "
                "block h * Dh to (h + 1) * Dh - 1; transpose(1, 2) gives (B, T, H, Dh), then "
                "reshape", merged((0, 2, 3, 1))),
        Mistake("the wrong axes are transposed: transpose(2, 3) (or (-2, -1)) swaps positions and "
                "features; swap the heads and the positions, x.transpose(1, 2), then reshape to "
                "(B, T, H * Dh)", merged((0, 1, 3, 2))),
    ]


def _merge_structure(got: Any, want: Tensor, case: Case) -> str | None:
    B, H, T, Dh = case.inputs["x"].shape
    if isinstance(got, Tensor) and got.shape == (B, T, H, Dh) != want.shape:
        return (f"the result has shape (B, T, H, Dh) = {(B, T, H, Dh)}: reshape it to "
                f"(B, T, H * Dh) = {(B, T, H * Dh)}, one vector of width D per position")
    if isinstance(got, Tensor) and got.shape == (B, T, Dh) != want.shape:
        return (f"the result has shape (B, T, Dh) = {(B, T, Dh)}: the heads are reduced (summed or "
                f"averaged) into one; concatenate them instead, (B, T, H * Dh) = {(B, T, H * Dh)}")
    if isinstance(got, Tensor) and got.shape == (B, H * T, Dh) != want.shape:
        return (f"the result has shape (B, H * T, Dh) = {(B, H * T, Dh)}: the heads are stacked "
                f"along the positions; each position's heads go side by side in its features, "
                f"(B, T, H * Dh) = {(B, T, H * Dh)}: x.transpose(1, 2).reshape(B, T, H * Dh)")
    return structure_problem(("merged heads",), got, want)


@isolated
def check_merge_heads(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x)``: ``(B, H, T, Dh) -> (B, T, H * Dh)``, the inverse of splitting heads."""
    check = "check_merge_heads"
    cases = _merge_cases(torch.Generator().manual_seed(seed))

    def learner(case: Case) -> Any:
        return call_learner(check, f"running {case.where}", fn, case.inputs["x"])

    count = run_cases(check, cases, learner, _merge_reference, parts=("merged heads",),
                      mistakes=_merge_mistakes(), structure=_merge_structure)
    passed(check, count)


# --- multi-head attention --------------------------------------------------------------------


def _linear(layer: nn.Linear, x: Tensor, transpose: bool = True, bias: bool = True) -> Tensor:
    weight = layer.weight.T if transpose else layer.weight
    return x @ weight + (layer.bias if layer.bias is not None and bias else 0.0)


def _mha_math(m: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
              need_weights: bool = False, *, split: str = "ok", merge: str = "ok",
              out_proj: bool = True, out_bias: bool = True, in_bias: bool = True,
              scale: str = "head", heads: bool = True, softmax_dim: int = -1,
              swap_kv: bool = False, kv_from_query: bool = False, shared_proj: bool = False,
              skip: str = "", mask_mode: str = "ok", weight_transpose: bool = True,
              dropout_p: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-head attention with switches for common mistakes; returns (out, weights, out)."""
    B, T, D = query.shape
    H = m.num_heads if heads else 1
    Dh = D // H
    if kv_from_query:
        key = value = query
    if swap_kv:
        key, value = value, key
    S = key.size(1)
    projections = [m.q_proj, m.q_proj, m.q_proj] if shared_proj else [m.q_proj, m.k_proj, m.v_proj]
    q, k, v = (x if role == skip else _linear(layer, x, weight_transpose, in_bias)
               for role, layer, x in zip("qkv", projections, (query, key, value)))

    def split_heads(t: Tensor, length: int) -> Tensor:
        if split == "no transpose":
            return t.reshape(B, H, length, Dh)
        if split == "interleave":
            return t.reshape(B, length, Dh, H).permute(0, 3, 1, 2)
        return t.reshape(B, length, H, Dh).transpose(1, 2)  # (B, L, D) -> (B, H, L, Dh)

    q, k, v = split_heads(q, T), split_heads(k, S), split_heads(v, S)
    Dh_model = D // m.num_heads
    factor = {"head": 1 / math.sqrt(Dh_model), "model": 1 / math.sqrt(D), "none": 1.0,
              "twice": 1 / Dh_model}[scale]
    if mask_mode == "ignore":
        mask = None
    heads_out, weights = attention_math(q, k, v, mask, scale=factor, softmax_dim=softmax_dim,
                                        invert=mask_mode == "invert", dropout_p=dropout_p)
    if merge == "no transpose":
        merged = heads_out.reshape(B, T, D)
    elif merge == "interleave":
        merged = heads_out.permute(0, 2, 3, 1).reshape(B, T, D)
    else:
        merged = heads_out.transpose(1, 2).reshape(B, T, D)
    out = _linear(m.out_proj, merged, weight_transpose, out_bias) if out_proj else merged
    return out, weights, out


def _training(case: Case) -> bool:
    return "training" in case.state


def _mha_mistakes() -> list[Mistake]:
    """The mistakes of the eval-mode cases; on a training case, each gives the profile of code
    with that mistake and a right dropout."""

    def var(**options: Any) -> Callable[[Case], Any]:
        def output(case: Case) -> Any:
            reference = case.state["reference"]
            if _training(case):
                p = case.init["dropout"]

                def run(need_weights: bool) -> Any:
                    out, weights, _ = _mha_math(reference, **case.inputs, dropout_p=p, **options)
                    return (out, weights) if need_weights else out

                return _mha_case_profile(run, case)
            return _mha_math(reference, **case.inputs, **options)
        return output

    split = ("the heads are split without a transpose: view(B, H, T, Dh) cuts the sequence into "
             "pieces instead of cutting each position's features; use "
             "view(B, T, H, Dh).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)")
    interleaved = ("each head must get a contiguous block of Dh features (head h: features h * Dh "
                   "to (h + 1) * Dh - 1); view(B, T, Dh, H) interleaves them: split with "
                   "view(B, T, H, Dh).transpose(1, 2), and merge back the same way")
    never_split = ("the heads are never split: attention runs once over all d_model features; "
                   "reshape the projections to (B, H, T, Dh) so each head attends on its own")
    return [
        Mistake(split, var(split="no transpose")),
        Mistake(split, var(split="no transpose", merge="no transpose")),
        Mistake(interleaved, var(split="interleave")),
        Mistake(interleaved, var(split="interleave", merge="interleave")),
        Mistake("the heads are merged without transposing back: (B, H, T, Dh) must become "
                "(B, T, H, Dh) before the reshape to (B, T, D): "
                "heads.transpose(1, 2).reshape(B, T, D)",
                var(merge="no transpose")),
        Mistake("the heads are merged with their features interleaved: head h's output must stay "
                "the block of features h * Dh to (h + 1) * Dh - 1 of the merged vector; "
                "heads.transpose(1, 2).reshape(B, T, D)", var(merge="interleave")),
        Mistake("the output projection is missing: apply out_proj to the merged heads",
                var(out_proj=False)),
        Mistake("the output projection's bias is missing: call self.out_proj(x), which adds "
                "out_proj.bias (x @ out_proj.weight.T alone leaves it out)", var(out_bias=False)),
        Mistake("the biases of q_proj, k_proj and v_proj are missing: call the layers, "
                "self.q_proj(query), which add their bias (x @ weight.T alone leaves it out)",
                var(in_bias=False)),
        Mistake("the biases are missing: call the layers, self.q_proj(query) ... self.out_proj(x), "
                "which add their bias (x @ weight.T alone leaves it out)",
                var(in_bias=False, out_bias=False)),
        Mistake("the scores are scaled by sqrt(d_model); each head compares vectors of width "
                "Dh = d_model // num_heads, so scale by sqrt(Dh)", var(scale="model")),
        Mistake("the scores are scaled twice: they end up divided by Dh, not sqrt(Dh) "
                "(scaled_dot_product_attention divides by sqrt(Dh) already; do not scale q or "
                "the scores yourself as well)", var(scale="twice")),
        Mistake("the scores are not scaled: divide them by sqrt(Dh), Dh = d_model // num_heads",
                var(scale="none")),
        Mistake(never_split, var(heads=False, scale="model")),
        Mistake(never_split, var(heads=False)),
        Mistake("the softmax runs over the queries: normalize over the keys, "
                "softmax(scores, dim=-1)", var(softmax_dim=-2)),
        Mistake("the softmax runs over dim=1, the heads: normalize over the keys, "
                "softmax(scores, dim=-1)", var(softmax_dim=1)),
        Mistake("keys and values are swapped: keys come from k_proj(key), values from "
                "v_proj(value)", var(swap_kv=True)),
        Mistake("keys and values are computed from the query: use the key and value arguments "
                "(they differ from the query in cross-attention)", var(kv_from_query=True)),
        Mistake("one projection serves queries, keys and values (q_proj): keys come from "
                "self.k_proj(key), values from self.v_proj(value)", var(shared_proj=True)),
        Mistake("the queries are not projected: q = self.q_proj(query)", var(skip="q")),
        Mistake("the keys are not projected: k = self.k_proj(key)", var(skip="k")),
        Mistake("the values are not projected: v = self.v_proj(value)", var(skip="v")),
        Mistake("the mask is ignored: pass it to the attention of every head (it broadcasts to "
                "(B, H, T, S))", var(mask_mode="ignore")),
        Mistake("the mask is inverted: True means 'may attend' (nn.MultiheadAttention's boolean "
                "masks mean the opposite)", var(mask_mode="invert")),
        Mistake("a projection uses x @ weight instead of x @ weight.T: call the layer, "
                "self.q_proj(x), which computes x @ W^T + b", var(weight_transpose=False)),
    ]


# dropout in training mode: how each kind shows, and what to do
_KIND_TEXT = {
    "none": "no dropout is applied",
    "output": "dropout acts on the layer's output (after out_proj), not on the attention weights",
    "heads": "dropout acts on the heads' outputs (before out_proj), not on the attention weights",
    "values": "dropout acts on the values, not on the attention weights",
    "sums to 1": ("the attention weights still sum to 1 over the keys, so dropout acts before the "
                  "softmax (on the scores, the queries or the keys), not on the weights after it"),
    "keep rate": ("dropout zeroes about 1 - p of the attention weights (p = dropout): "
                  "nn.Dropout(p), F.dropout(x, p) and dropout_p all take the probability of "
                  "zeroing"),
    "twice": "dropout is applied twice to the attention weights",
    "unscaled": "the kept attention weights are not divided by 1 - p (p = dropout)",
}
_FIX = ("pass dropout_p = self.dropout if self.training else 0.0 to scaled_dot_product_attention, "
        "which drops the attention weights after the softmax")


def _mha_dropout_mistakes() -> list[Mistake]:
    P = DropoutProfile
    profiles: list[tuple[Any, DropoutProfile]] = []
    for kind, text in _KIND_TEXT.items():
        elementwise = kind in ("output", "heads", "values")
        returned = "none" if elementwise else kind
        same_weights = not elementwise
        profiles += [
            (f"in training mode {text}: {_FIX}", P(returned, kind, same_weights, kind)),
            (f"with need_weights=True in training mode {text} (without need_weights your layer is "
             f"right): {_FIX}, in both paths", P(returned, kind, same_weights, "dropout")),
            (f"without need_weights in training mode {text} (with need_weights=True your layer is "
             f"right): {_FIX}, in both paths", P("dropout", "dropout", True, kind)),
        ]
    profiles += [
        ("with need_weights=True in training mode, the weights you return are those before "
         "dropout; return the weights after dropout, the ones that made the output",
         P("none", "dropout", False, "dropout")),
        ("in training mode the output is computed from the attention weights before dropout: with "
         "need_weights=True the weights you return went through dropout, but they did not make "
         "the output; compute the heads from the dropped weights "
         "(scaled_dot_product_attention(q, k, v, mask, dropout_p) does both)",
         P("dropout", "none", False, "none")),
        ("with need_weights=True in training mode, the output is computed from the attention "
         "weights before dropout, and the weights you return went through dropout: compute the "
         "heads from the dropped weights and return those",
         P("dropout", "none", False, "dropout")),
        ("with need_weights=True in training mode, the weights you return are not the ones that "
         "made the output: each went through its own dropout (a separate random draw); apply "
         "dropout once, compute the heads from its result and return that",
         P("dropout", "dropout", False, "dropout")),
    ]

    def output(profile: DropoutProfile) -> Callable[[Case], Any]:
        return lambda case: profile if _training(case) else _mha_reference(case)

    return [Mistake(message, output(profile)) for message, profile in profiles]


RIGHT_MHA_DROPOUT = DropoutProfile("dropout", "dropout", True, "dropout")


def _mha_reference(case: Case) -> Any:
    """The check's own bug-free math; the profile of a right dropout on a training case."""
    if _training(case):
        return RIGHT_MHA_DROPOUT
    return _mha_math(case.state["reference"], **case.inputs)


def _mha_package(case: Case) -> Any:
    reference = case.state["reference"]
    if _training(case):
        def run(need_weights: bool) -> Any:
            return reference.train()(**case.inputs, need_weights=need_weights)
        try:
            return _mha_case_profile(run, case)
        finally:
            reference.eval()
    out, weights = reference(**case.inputs, need_weights=True)
    return out, weights, out


def _mha_profile(case: Case, fused: Any, out: Any, weights: Any) -> DropoutProfile:
    """Profile a layer on a training case: ``v_proj`` is the identity and ``out_proj`` twice the
    identity plus a bias, and each head's value is ``[I | V]``, so the output shows the weights
    that made it (:mod:`lab01_attention`)."""
    p = case.init["dropout"]
    reference = case.state["reference"]
    plain_out, plain = case.state["plain"]
    B, H, T, S = plain.shape
    D = plain_out.size(-1)
    Dh = D // H
    bias = reference.out_proj.bias
    values = case.inputs["value"].view(B, S, H, Dh).transpose(1, 2)[..., S:]  # (B, H, S, Dh - S)

    def made_by(output: Any) -> tuple[Dropped, Tensor | None, str]:
        if not isinstance(output, Tensor) or output.shape != plain_out.shape:
            return Dropped("other"), None, "none: the output has the wrong shape"
        merged = (output.detach() - bias) / 2  # out_proj is 2 x identity + bias
        heads = merged.view(B, T, H, Dh).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)
        made = heads[..., :S]
        if close(heads[..., S:], made @ values):
            kind = dropout_kind(made, plain, p, rows=True)
            return kind, made, kind.describe()
        text = "none: your output is not out_proj(heads) with heads = weights @ v for any weights"
        for name, got, want in (("heads", merged, (plain_out - bias) / 2),
                                ("output", output, plain_out)):
            kind = dropout_kind(got, want, p, rows=False)
            if kind.kind in DROPOUT_FAMILY:
                where = "the heads' outputs" if name == "heads" else "the layer's output"
                return (Dropped(name, kind.share, kind.scale), made,
                        f"{text}; it shows {where} without dropout, with {kind.share:.0%} of the "
                        f"numbers 0 and the others {kind.scale:.3f} times their values")
        columns = column_dropout_kind(made, plain, p)
        if columns.kind == "values":
            return (columns, made, f"{text}; it shows the weights without dropout times the values "
                    f"with {columns.share:.0%} of the keys' values 0 and the others "
                    f"{columns.scale:.3f} times theirs")
        return Dropped("other"), made, text

    returned = dropout_kind(weights, plain, p, rows=True)
    used, made, used_text = made_by(out)
    fused_kind, _, fused_text = made_by(fused)
    same_weights = made is not None and close(weights, made)
    details = (f"your weights (need_weights=True): {returned.describe()}",
               f"the weights that made your output (need_weights=True): {used_text}",
               f"the weights that made your output without need_weights: {fused_text}",
               expected_dropout(p) + "; the output is computed from the weights returned")
    return DropoutProfile(returned.kind, used.kind, same_weights, fused_kind.kind, details=details)


def _mha_case_profile(run: Callable[[bool], Any], case: Case, check: str = "") -> DropoutProfile:
    """``run(need_weights)`` is a layer's forward in training mode on the case (seeded)."""
    torch.manual_seed(case.state["seed"])
    fused = run(False)
    torch.manual_seed(case.state["seed"] + 1)
    pair = run(True)
    plain_out, plain = case.state["plain"]
    where = case.where
    if isinstance(fused, (tuple, list)):
        raise AssertionError(f"{check}: without need_weights=True, forward must return only the "
                             f"output tensor; yours returned a {type(fused).__name__}\n"
                             f"  in {where}")
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise AssertionError(f"{check}: with need_weights=True, forward must return (output, "
                             f"weights); yours returned a {type(pair).__name__}\n  in {where}")
    problem = (structure_problem(("output",), fused, plain_out)
               or structure_problem(("output", "weights"), pair, (plain_out, plain)))
    if problem is not None:
        raise AssertionError(f"{check}: {problem}\n  in {where}")
    return _mha_profile(case, fused, *pair)


def _mha_cases(g: torch.Generator) -> list[Case]:
    """The eval-mode cases, the training-mode cases; every case's reference layer (randomized)
    in ``case.state["reference"]``."""

    def case(name: str, *, D: int = 24, H: int = 4, B: int = 2, T: int = 5, S: int | None = None,
             bias: bool = True, dropout: float = 0.0, cross: bool = False, distinct: bool = False,
             mask: Tensor | None = None, repeat: bool = False) -> Case:
        S = T if S is None else S
        query = randn(g, B, T, D)
        key = randn(g, B, S, D) if cross or distinct or S != T else query
        value = randn(g, B, S, D) if distinct else key
        made = Case(name, {"query": query, "key": key, "value": value, "mask": mask},
                    init={"d_model": D, "num_heads": H, "dropout": dropout, "bias": bias},
                    repeat=repeat, positional=3, init_positional=2)
        made.state["reference"] = randomize(MultiHeadAttention(D, H, dropout, bias), g).eval()
        return made

    def training(name: str, p: float, lengths: list[int] | None = None) -> Case:
        B, T, S, D, H = 4, 6, 8, 32, 2
        Dh = D // H
        values = torch.cat([torch.eye(S).expand(B, H, S, S), randn(g, B, H, S, Dh - S)], dim=-1)
        mask = None
        if lengths is not None:
            mask = (torch.arange(S) < torch.tensor(lengths)[:, None]).view(B, 1, 1, S)
        made = Case(name, {"query": randn(g, B, T, D, std=0.5), "key": randn(g, B, S, D, std=0.5),
                           "value": values.transpose(1, 2).reshape(B, S, D), "mask": mask},
                    init={"d_model": D, "num_heads": H, "dropout": p, "bias": True},
                    positional=3, init_positional=2)
        reference = randomize(MultiHeadAttention(D, H, p), g).eval()
        with torch.no_grad():
            reference.v_proj.weight.copy_(torch.eye(D))  # heads = weights @ [I | V]
            reference.v_proj.bias.zero_()
            reference.out_proj.weight.copy_(2 * torch.eye(D))  # out = 2 * heads + bias
            plain = reference(**made.inputs, need_weights=True)  # (output, weights) without dropout
        made.state.update(reference=reference, training=True, plain=plain,
                          seed=int(torch.randint(2**30, (1,), generator=g)))
        return made

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
        training("training mode", 0.25),
        training("training mode, padding mask (B, 1, 1, S)", 0.6, [8, 5, 3, 8]),
    ]


_MHA_NAMES = ("the contract's names: q_proj, k_proj, v_proj and out_proj, each an "
              "nn.Linear(d_model, d_model, bias=bias). You may compute differently inside forward, "
              "but keep these four.")


def _mha_structure(parts: tuple[str, ...]) -> Callable[[Any, Any, Case], str | None]:
    def structure(got: Any, want: Any, case: Case) -> str | None:
        weights, expected = got[1], want[1]
        if isinstance(weights, Tensor) and weights.shape != expected.shape:
            B, H, T, S = expected.shape
            mask = case.inputs.get("mask")
            if weights.shape == (B, T, S):
                return (f"the weights have shape (B, T, S) = {(B, T, S)}; return one (T, S) "
                        f"matrix per head, (B, H, T, S) = {(B, H, T, S)}, not their average")
            if weights.shape == (B * H, T, S):
                return (f"the weights have shape (B * H, T, S) = {(B * H, T, S)}; return "
                        f"(B, H, T, S) = {(B, H, T, S)}")
            if weights.dim() == 5 and mask is not None:
                return (f"the weights have 5 axes, shape {tuple(weights.shape)}, with a mask of "
                        f"shape {tuple(mask.shape)}: an axis added to the mask (such as "
                        f"mask.unsqueeze(1)) broadcasts into an extra axis. The mask needs no "
                        f"change: it broadcasts to (B, H, T, S) = {(B, H, T, S)} as it is")
        return structure_problem(parts, got, want)
    return structure


def _explain_mha_dropout(case: Case) -> str:
    p = case.init["dropout"]
    return (f"in training mode with dropout={p}, dropout must zero each attention weight with "
            f"probability {p} and divide the others by 1 - {p}, after the softmax, in forward with "
            f"and without need_weights; the output is computed from those weights, and "
            f"need_weights=True returns them. Yours differ:")


@isolated
def check_multi_head_attention(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, num_heads, dropout=0.0, bias=True)`` whose
    ``forward(query, key, value, mask=None, need_weights=False)`` returns the output
    ``(B, T, D)``, or ``(output, weights (B, H, T, S))`` with ``need_weights=True``.

    The learner's module gets the parameters of a randomized
    :class:`transformer_lib.MultiHeadAttention` (by the names ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj``) and must give the same outputs and weights in eval mode: self- and
    cross-attention, keys different from values, causal, padding and per-head masks, no bias,
    dropout off in eval mode. In training mode, dropout must act on the attention weights (a share
    ``dropout`` of them 0, the others divided by ``1 - dropout``), with and without
    ``need_weights``, and ``need_weights=True`` returns the weights that made the output. Last,
    ``cls(10, 4)`` must raise ``ValueError`` (4 heads do not divide 10 features).
    """
    check = "check_multi_head_attention"
    parts = ("output", "weights", "output with need_weights=True")
    cases = _mha_cases(torch.Generator().manual_seed(seed))
    evaluated = [case for case in cases if not _training(case)]
    trained = [case for case in cases if _training(case)]
    total = len(cases) + 1
    modules: dict[int, nn.Module] = {}

    def module_for(case: Case) -> nn.Module:
        if id(case) not in modules:
            modules[id(case)] = build_module(check, cls, case, case.state["reference"], _MHA_NAMES)
        return modules[id(case)]

    def learner(case: Case) -> Any:
        where = case.where
        module = module_for(case).eval()
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

    def trained_profile(case: Case) -> DropoutProfile:
        module = module_for(case).train()
        args, kwargs = case.args()

        def run(need_weights: bool) -> Any:
            what = "forward(..., need_weights=True)" if need_weights else "forward"
            return call_learner(check, f"running {what} in training mode on {case.where}", module,
                                *args, **kwargs, need_weights=need_weights)

        return _mha_case_profile(run, case, check)

    count = run_cases(check, evaluated, learner, reference, parts=parts, mistakes=_mha_mistakes(),
                      structure=_mha_structure(parts), total=total)
    count += run_dropout_cases(check, trained, trained_profile, lambda case: RIGHT_MHA_DROPOUT,
                               _mha_dropout_mistakes(), _explain_mha_dropout,
                               first=len(evaluated) + 1, total=total)
    _check_divisible(check, cls, f"case {total} of {total}")
    passed(check, count + 1)


def _check_divisible(check: str, cls: Any, where: str) -> None:
    """``cls(10, 4)`` must raise ValueError, as the lab asks."""
    name = getattr(cls, "__name__", "MultiHeadAttention")
    try:
        cls(10, 4)
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(
            f"{check}: {name}(10, 4) raised {type(err).__name__}; when num_heads does not divide "
            f"d_model, __init__ must raise ValueError (raise ValueError(...), not assert): "
            f"if d_model % num_heads != 0: raise ValueError(...)\n  in {where} (d_model=10, "
            f"num_heads=4)") from None
    raise AssertionError(
        f"{check}: {name}(10, 4) raised no error; when num_heads does not divide d_model "
        f"(10 % 4 = 2), __init__ must raise ValueError: if d_model % num_heads != 0: raise "
        f"ValueError(...)\n  in {where} (d_model=10, num_heads=4)")


register(Spec(check="check_merge_heads",
              cases=lambda: _merge_cases(torch.Generator().manual_seed(0)),
              reference=_merge_reference,
              package=lambda case: merge_heads(**case.inputs),
              mistakes=_merge_mistakes))
register(Spec(check="check_multi_head_attention",
              cases=lambda: _mha_cases(torch.Generator().manual_seed(0)),
              reference=_mha_reference, package=_mha_package,
              mistakes=lambda: _mha_mistakes() + _mha_dropout_mistakes(), agree=profile_agree))
