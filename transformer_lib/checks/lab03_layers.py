"""Checks for lab 3 (encoder and decoder layers): ``check_feed_forward``,
``check_sublayer_connection``, ``check_encoder_layer``, ``check_decoder_layer``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lib.attention import causal_mask
from transformer_lib.checks.engine import (
    Case,
    Mistake,
    call_learner,
    isolated,
    module_runners,
    passed,
    randn,
    randomize,
    run_cases,
    structure_problem,
)
from transformer_lib.decoder import DecoderLayer
from transformer_lib.encoder import ACTIVATIONS, EncoderLayer, FeedForward, sublayer_connection


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


@isolated
def check_feed_forward(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, d_ff, dropout=0.0, activation="relu")`` with submodules
    ``linear1``, ``linear2``: ``forward(x (..., D)) -> (..., D)``, as
    :class:`transformer_lib.FeedForward`."""
    check = "check_feed_forward"
    g = torch.Generator().manual_seed(seed)
    cases = [
        Case("relu, (B, T, D) input", {"x": randn(g, 2, 5, 8)},
              init={"d_model": 8, "d_ff": 32, "dropout": 0.0, "activation": "relu"}),
        Case("gelu, (T, D) input", {"x": randn(g, 6, 8)},
              init={"d_model": 8, "d_ff": 16, "dropout": 0.0, "activation": "gelu"}),
        Case("dropout=0.5, in eval mode", {"x": randn(g, 2, 4, 12)},
              init={"d_model": 12, "d_ff": 24, "dropout": 0.5, "activation": "relu"}, repeat=True),
    ]
    for case in cases:
        case.positional, case.init_positional = 1, 2  # FeedForward(d_model, d_ff, ...)(x)

    def var(**options: Any) -> Callable[[Case], Any]:
        return lambda case: _ffn_math(case.state["reference"], case.inputs["x"], **options)

    variants: list[tuple[Any, Callable[[Case], Any]]] = [
        ("the activation is missing: FFN(x) = linear2(activation(linear1(x)))", var(where="none")),
        ("the activation is applied after linear2; it belongs between the two: "
         "linear2(activation(linear1(x)))", var(where="end")),
        ("the activation is applied after both linear layers; only the hidden layer has one: "
         "linear2(activation(linear1(x)))", var(where="both")),
        ("the activation argument is ignored: 'gelu' must use F.gelu", var(activation="relu")),
    ]
    count = run_cases(check, cases, *module_runners(check, cls, FeedForward, _FFN_NAMES, g),
                 mistakes=[Mistake(*v) for v in variants], structure=lambda got, want, case: structure_problem(
                     ("output",), got, want))
    passed(check, count)


class _Halve(nn.Module):
    """A stand-in for dropout that halves its input, so a check can see where it is applied."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x

    def extra_repr(self) -> str:
        return "a dropout stand-in that multiplies by 0.5"


@isolated
def check_sublayer_connection(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x, sublayer, norm, dropout, norm_first)``: post-LN
    ``norm(x + dropout(sublayer(x)))`` or pre-LN ``x + dropout(sublayer(norm(x)))``.

    The check passes a stand-in for ``dropout`` that halves its input (so it can see where
    dropout is applied) and a LayerNorm with random gain and bias.
    """
    check = "check_sublayer_connection"
    g = torch.Generator().manual_seed(seed)
    D = 8
    linear = randomize(nn.Linear(D, D), g)

    def sublayer(x: Tensor) -> Tensor:
        return torch.tanh(linear(x)) * 2.0

    norm = randomize(nn.LayerNorm(D), g)
    halve = _Halve()
    cases = [
        Case("post-LN (norm_first=False)", {"x": randn(g, 2, 5, D), "norm_first": False}),
        Case("pre-LN (norm_first=True)", {"x": randn(g, 2, 5, D), "norm_first": True}),
        Case("post-LN, another batch", {"x": randn(g, 3, 4, D) + 1.0, "norm_first": False}),
        Case("pre-LN, another batch", {"x": randn(g, 3, 4, D) + 1.0, "norm_first": True}),
    ]

    def call(case: Case, f: Callable[..., Any]) -> Any:
        return f(case.inputs["x"], sublayer, norm, halve, case.inputs["norm_first"])

    def learner(case: Case) -> Any:
        return call_learner(check, f"running {case.describe()}", fn, case.inputs["x"], sublayer, norm,
                     halve, case.inputs["norm_first"])

    def var(make: Callable[[Tensor, bool], Tensor]) -> Callable[[Case], Tensor]:
        return lambda case: make(case.inputs["x"], case.inputs["norm_first"])

    def f(x: Tensor) -> Tensor:
        return sublayer(x)

    def post(x: Tensor) -> Tensor:
        return norm(x + halve(f(x)))

    def pre(x: Tensor) -> Tensor:
        return x + halve(f(norm(x)))

    def placement(case: Case) -> str:
        if case.inputs["norm_first"]:
            return ("norm_first=True must give pre-LN, x + dropout(sublayer(norm(x))); yours "
                    "computes post-LN, norm(x + dropout(sublayer(x)))")
        return ("norm_first=False (post-LN, as in the paper) must give "
                "norm(x + dropout(sublayer(x))); yours computes pre-LN, "
                "x + dropout(sublayer(norm(x)))")

    variants: list[tuple[Any, Callable[[Case], Any]]] = [
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
    count = run_cases(check, cases, learner, lambda case: call(case, sublayer_connection),
                 mistakes=[Mistake(*v) for v in variants],
                 structure=lambda got, want, case: structure_problem(("output",), got, want))
    passed(check, count)


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


def _placement_message(case: Case) -> str:
    if case.init["norm_first"]:
        return ("norm_first=True must give pre-LN sub-layers, x + sublayer(norm(x)); yours "
                "computes post-LN, norm(x + sublayer(x)) (is norm_first ignored?)")
    return ("norm_first=False (post-LN, as in the paper) must give norm(x + sublayer(x)); yours "
            "computes pre-LN, x + sublayer(norm(x))")


def _layer_variants(decoder: bool) -> list[tuple[Any, Callable[[Case], Any]]]:
    def var(**options: Any) -> Callable[[Case], Any]:
        bug = _LayerBug(**options)

        def run(case: Case) -> Tensor:
            i = case.inputs
            if decoder:
                return _layer_math(case.state["reference"], i["x"], i["memory"], i.get("self_mask"),
                                   i.get("memory_mask"), bug)
            return _layer_math(case.state["reference"], i["x"], None, i.get("mask"), None, bug)

        return run

    ffn_index = 2 if decoder else 1
    variants: list[tuple[Any, Callable[[Case], Any]]] = [
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


@isolated
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
             repeat: bool = False) -> Case:
        return Case(name, {"x": randn(g, B, 5, 16), "mask": mask}, init=init, repeat=repeat,
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
    count = run_cases(check, cases, *module_runners(check, cls, EncoderLayer, _ENCODER_NAMES, g),
                 mistakes=[Mistake(*v) for v in _layer_variants(decoder=False)],
                 structure=lambda got, want, case: structure_problem(("output",), got, want))
    passed(check, count)


_DECODER_NAMES = ("the contract's names: self_attn and cross_attn (each a MultiHeadAttention: "
                  "q_proj, k_proj, v_proj, out_proj), ffn (linear1, linear2), norm1 "
                  "(self-attention's), norm2 (cross-attention's), norm3 (the feed-forward "
                  "network's)")


@isolated
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
             repeat: bool = False) -> Case:
        return Case(name, {"x": randn(g, B, T, D), "memory": randn(g, B, S, D),
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
    count = run_cases(check, cases, *module_runners(check, cls, DecoderLayer, _DECODER_NAMES, g),
                 mistakes=[Mistake(*v) for v in _layer_variants(decoder=True)],
                 structure=lambda got, want, case: structure_problem(("output",), got, want))
    passed(check, count)


