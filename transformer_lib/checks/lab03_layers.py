"""Checks for lab 3 (encoder and decoder layers): ``check_feed_forward``,
``check_sublayer_connection``, ``check_encoder_layer``, ``check_decoder_layer``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``. Each known
mistake is an ``engine.Mistake``: the reference math with switches turned (:func:`_ffn_math` for
the feed-forward network, :class:`_Wiring` and :func:`_connect` for one sub-layer connection,
:class:`_LayerBug` and :func:`_layer_math` for a whole layer), named only through the engine's
diagnosis; every check registers an ``engine.Spec`` (``tests/test_checks_specs.py``).

Dropout is checked in training mode, where it must act in the places the lab names: on the
attention weights (inside ``MultiHeadAttention``), after the feed-forward activation and on each
sub-layer's output, at the rate the layer was built with. To see where it acts, the check makes
dropout deterministic while it runs: ``F.dropout`` (which ``nn.Dropout`` calls), ``torch.dropout``
and the dropout of ``F.scaled_dot_product_attention`` drop a fixed pattern of entries, which
depends only on the tensor's shape, and scale the others by ``1 / (1 - p)``. The outputs then do
not depend on the random state or on the order of the calls, and dropout in each place (or at
another rate) changes them in its own way.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lib.attention import causal_mask
from transformer_lib.checks.engine import (
    Case,
    Mistake,
    Spec,
    build_module,
    call_learner,
    isolated,
    one_thread,
    passed,
    quietly,
    randn,
    randomize,
    register,
    run_cases,
    same,
    structure_problem,
)
from transformer_lib.decoder import DecoderLayer
from transformer_lib.encoder import ACTIVATIONS, EncoderLayer, FeedForward, sublayer_connection

# --- dropout that drops a fixed pattern ----------------------------------------------------------

_PATTERNS: dict[tuple[int, ...], Tensor] = {}


def _pattern(shape: Sequence[int]) -> Tensor:
    """Uniform numbers in [0, 1), the same for every tensor of this shape: dropout at rate p drops
    the entries where the pattern is below p."""
    key = tuple(int(size) for size in shape)
    if key not in _PATTERNS:
        seed = 7
        for size in key:
            seed = (seed * 1_000_003 + size) % 2**31
        if len(_PATTERNS) > 64:
            _PATTERNS.clear()
        _PATTERNS[key] = torch.rand(key, generator=torch.Generator().manual_seed(seed))
    return _PATTERNS[key]


def _fixed_drop(x: Tensor, p: float) -> Tensor:
    """Dropout at rate ``p`` with the fixed pattern: drop, then scale the rest by 1 / (1 - p)."""
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = _pattern(x.shape).to(x.device) >= p
    return x * keep / (1.0 - p)


@contextmanager
def _dropout_fixed(active: bool = True) -> Iterator[list[float]]:
    """While active, every dropout in training mode drops the fixed pattern (``F.dropout``, and so
    ``nn.Dropout``; ``torch.dropout``; ``F.scaled_dot_product_attention`` with ``dropout_p > 0``,
    on its weights). Yields the list of the rates dropout was called with."""
    rates: list[float] = []
    if not active:
        yield rates
        return
    saved = F.dropout, torch.dropout, F.scaled_dot_product_attention

    def dropout(input: Tensor, p: float = 0.5, training: bool = True,
                inplace: bool = False) -> Tensor:
        if not training:
            return input
        rates.append(float(p))
        out = _fixed_drop(input, float(p))
        return input.copy_(out) if inplace else out

    def torch_dropout(input: Tensor, p: float, train: bool) -> Tensor:
        return dropout(input, p, train)

    def attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                  dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                  **kwargs: Any) -> Tensor:
        if not dropout_p:
            return saved[2](query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                            is_causal=is_causal, scale=scale, **kwargs)
        scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
        scores = query @ key.transpose(-2, -1) * scale  # (..., T, S)
        if is_causal:
            T, S = scores.shape[-2:]
            scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), -math.inf)
        if attn_mask is not None:
            scores = (scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool
                      else scores + attn_mask)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        return dropout(weights, dropout_p) @ value

    F.dropout, torch.dropout, F.scaled_dot_product_attention = (  # type: ignore[assignment]
        dropout, torch_dropout, attention)
    try:
        yield rates
    finally:
        F.dropout, torch.dropout, F.scaled_dot_product_attention = saved  # type: ignore[misc]


class _FixedDropout(nn.Dropout):
    """``nn.Dropout(p)`` that drops the fixed pattern: the dropout the sub-layer check passes."""

    def forward(self, input: Tensor) -> Tensor:
        return _fixed_drop(input, self.p) if self.training else input

    def extra_repr(self) -> str:
        return (f"p={self.p}, in training mode; drops a fixed pattern of entries, so the check "
                f"sees where dropout acts")


def _training(case: Case) -> bool:
    return bool(case.state.get("training"))


def _dropout_hint(check: str, learner: Callable[[Case], Any], what: str
                  ) -> Callable[[Any, Any, Case], str | None]:
    """Symptoms of dropout gone wrong in a training-mode case: a rate that is not the one the
    module was built with (read from the calls of dropout), or output that changes from call to
    call (a dropout the check does not see)."""

    def hint(got: Any, want: Any, case: Case) -> str | None:
        if not _training(case):
            return None
        p = case.init["dropout"]
        wrong = sorted({r for r in case.state.get("rates", []) if abs(r - p) > 1e-9 and r > 0})
        if wrong:
            rates = " and ".join(f"p={r:g}" for r in wrong)
            return (f"in training mode, dropout is applied with {rates}, but {what} was built with "
                    f"dropout={p:g}: every dropout in it uses that rate "
                    f"(nn.Dropout(dropout), not a fixed number or nn.Dropout()'s default 0.5)")
        again = learner(case)
        if not same(got, again):
            return ("in training mode your output changes from one call to the next, although the "
                    "check makes nn.Dropout, F.dropout and torch.dropout drop a fixed pattern of "
                    "entries while it runs: your dropout is done another way (torch.rand, "
                    "torch.bernoulli, or a dropout function imported by name), which the check "
                    "cannot follow; use nn.Dropout(dropout), as the lab does")
        return None

    return hint


def _memo(output: Callable[[Case], Any]) -> Callable[[Case], Any]:
    """``output``, computed once per case (a diagnosis asks for it several times)."""
    seen: dict[int, tuple[Case, Any]] = {}

    def run(case: Case) -> Any:
        hit = seen.get(id(case))
        if hit is None or hit[0] is not case:
            hit = seen[id(case)] = (case, output(case))
        return hit[1]

    return run


def _spec(check: str, cases: Callable[[], list[Case]], reference: Callable[[Case], Any],
          package: Callable[[Case], Any], mistakes: Callable[[], list[Mistake]]) -> None:
    """Register the check's Spec; its mistakes' outputs, too, are computed on one thread."""

    def one_thread_mistakes() -> list[Mistake]:
        return [Mistake(m.message, one_thread(m.output)) for m in mistakes()]

    register(Spec(check=check, cases=one_thread(quietly(cases)), reference=one_thread(reference),
                  package=one_thread(package), mistakes=one_thread_mistakes))


def _module_runner(check: str, cls: Any, names: str) -> Callable[[Case], Any]:
    """``learner(case)``: the learner's module for the case (built once, with the weights of the
    randomized reference in ``case.state["reference"]``), run in eval or in training mode (with the
    fixed dropout; the rates it was called with go to ``case.state["rates"]``)."""
    modules: dict[int, nn.Module] = {}

    def learner(case: Case) -> Any:
        if id(case) not in modules:
            modules[id(case)] = build_module(check, cls, case, case.state["reference"], names)
        module = modules[id(case)]
        module.train(_training(case))
        args, kwargs = case.args()
        mode = "in training mode" if _training(case) else "in eval mode"
        with _dropout_fixed(_training(case)) as rates:
            out = call_learner(check, f"running forward {mode} on {case.where}", module, *args,
                               **kwargs)
        case.state["rates"] = rates
        return out

    return learner


def _run_package(case: Case) -> Any:
    """The package's module (``case.state["reference"]``) on the case, in the case's mode."""
    module = case.state["reference"]
    module.train(_training(case))
    try:
        with _dropout_fixed(_training(case)):
            return module(**case.inputs)
    finally:
        module.eval()


def _structure(got: Any, want: Any, case: Case) -> str | None:
    return structure_problem(("output",), got, want)


# --- exercise 1: the feed-forward network ------------------------------------------------------

_GELU_TANH = "gelu_tanh"


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    if name == _GELU_TANH:
        return lambda t: F.gelu(t, approximate="tanh")
    return ACTIVATIONS[name]


def _ffn_math(ffn: nn.Module, x: Tensor, activation: str | None = None, *, where: str = "middle",
              dropout: str = "hidden", p: float = 0.0, residual: bool = False) -> Tensor:
    """linear2(dropout(act(linear1(x)))), or a known mistake: the activation ``where`` ("none",
    "end", "both"), dropout (at rate ``p``, 0 in eval) on the "input", "before" the activation, on
    the "output", "twice" (hidden and output) or "none"; ``residual`` adds x."""
    if activation == _GELU_TANH and ffn.activation != "gelu":
        activation = None  # the tanh approximation replaces only the exact GELU
    act = _activation(activation or ffn.activation)

    def drop(t: Tensor) -> Tensor:
        return _fixed_drop(t, p) if p else t

    h = drop(x) if dropout == "input" else x
    h = ffn.linear1(h)  # (..., D) -> (..., F)
    if dropout == "before":
        h = drop(h)
    if where in ("middle", "both"):
        h = act(h)
    if dropout in ("hidden", "twice"):
        h = drop(h)
    y = ffn.linear2(h)  # (..., F) -> (..., D)
    if where in ("end", "both"):
        y = act(y)
    if dropout in ("output", "twice"):
        y = drop(y)
    return x + y if residual else y


_FFN_NAMES = ("the contract's names: linear1 = nn.Linear(d_model, d_ff) and "
              "linear2 = nn.Linear(d_ff, d_model) (and a dropout module, which has no parameters)")
_FFN_FORMULA = "linear2(dropout(activation(linear1(x))))"


def _ffn_cases(seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)

    def init(D: int, F_: int, dropout: float, activation: str) -> dict[str, Any]:
        return {"d_model": D, "d_ff": F_, "dropout": dropout, "activation": activation}

    cases = [
        Case("relu, (B, T, D) input", {"x": randn(g, 2, 5, 8)}, init=init(8, 32, 0.0, "relu")),
        Case("gelu, (T, D) input", {"x": randn(g, 6, 8)}, init=init(8, 16, 0.0, "gelu")),
        Case("dropout=0.5, in eval mode", {"x": randn(g, 2, 4, 12)}, init=init(12, 24, 0.5, "relu"),
             repeat=True),
        Case("dropout=0.25, in training mode", {"x": randn(g, 2, 4, 12)},
             init=init(12, 24, 0.25, "relu"), state={"training": True}),
        Case("gelu, dropout=0.4, in training mode", {"x": randn(g, 3, 10)},
             init=init(10, 20, 0.4, "gelu"), state={"training": True}),
        Case("gelu, (B, T, D) input, dropout=0.2, in training mode", {"x": randn(g, 2, 3, 8)},
             init=init(8, 12, 0.2, "gelu"), state={"training": True}),
    ]
    for case in cases:
        case.positional, case.init_positional = 1, 2  # FeedForward(d_model, d_ff, ...)(x)
        case.state["reference"] = randomize(FeedForward(**case.init), g).eval()
    return cases


def _ffn_output(case: Case, **options: Any) -> Tensor:
    p = case.init["dropout"] if _training(case) else 0.0
    return _ffn_math(case.state["reference"], case.inputs["x"], p=p, **options)


def _ffn_mistakes() -> list[Mistake]:
    variants: list[tuple[str, dict[str, Any]]] = [
        (f"the activation is missing: FFN(x) = {_FFN_FORMULA}", {"where": "none"}),
        (f"the activation is applied after linear2; it belongs between the two: {_FFN_FORMULA}",
         {"where": "end"}),
        (f"the activation is applied after both linear layers; only the hidden layer has one: "
         f"{_FFN_FORMULA}", {"where": "both"}),
        ("the activation argument is ignored: 'gelu' must use F.gelu", {"activation": "relu"}),
        ("activation='gelu' is the exact GELU, F.gelu(x) (or nn.GELU()); yours is its tanh "
         "approximation", {"activation": _GELU_TANH}),
        (f"the feed-forward network adds its input x to its output: FFN(x) = {_FFN_FORMULA} has no "
         f"residual connection (the layer adds it, around the whole sub-layer)",
         {"residual": True}),
        (f"in training mode no dropout acts in your feed-forward network: build self.dropout = "
         f"nn.Dropout(dropout) and apply it after the activation, {_FFN_FORMULA}",
         {"dropout": "none"}),
        (f"dropout is applied after linear2; it belongs after the activation, on the hidden layer: "
         f"{_FFN_FORMULA}", {"dropout": "output"}),
        (f"dropout is applied to the input x; it belongs after the activation, on the hidden "
         f"layer: {_FFN_FORMULA}", {"dropout": "input"}),
        (f"dropout is applied before the activation; it belongs after it: {_FFN_FORMULA}",
         {"dropout": "before"}),
        (f"dropout is applied twice, after the activation and after linear2; only after the "
         f"activation: {_FFN_FORMULA}", {"dropout": "twice"}),
    ]
    return [Mistake(message, _memo(lambda case, o=options: _ffn_output(case, **o)))
            for message, options in variants]


@isolated
def check_feed_forward(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, d_ff, dropout=0.0, activation="relu")`` with submodules
    ``linear1``, ``linear2``: ``forward(x (..., D)) -> (..., D)``, as
    :class:`transformer_lib.FeedForward`, in eval mode and in training mode (dropout after the
    activation, at the rate it was built with)."""
    check = "check_feed_forward"
    learner = _module_runner(check, cls, _FFN_NAMES)
    count = run_cases(check, _ffn_cases(seed), learner, _ffn_output, mistakes=_ffn_mistakes(),
                      structure=_structure,
                      hints=_dropout_hint(check, learner, "the feed-forward network"))
    passed(check, count)


_spec("check_feed_forward", _ffn_cases, _ffn_output, _run_package, _ffn_mistakes)


# --- exercise 2: the sub-layer connection ------------------------------------------------------


@dataclass(frozen=True)
class _Wiring:
    """How one sub-layer is wrapped; :func:`_right` gives the right wiring for a placement."""

    pre_norm: bool  # the sub-layer takes norm(x) (pre-LN), else x itself
    post: str  # the norm after: of the "sum" (post-LN), of the "branch" alone, or "none"
    residual: str = "x"  # what is added to the branch: "x", "norm" (norm(x)) or "none"
    dropout: str = "output"  # "output" (right), "none", "input" (of the sub-layer), "stream" (x
    # itself, before the residual is taken), "x" (the residual), "sum", "after" (the result,
    # after the norm in post-LN), "twice" (the output)
    double: bool = False  # x added once more, around the whole connection


def _right(norm_first: bool) -> _Wiring:
    return _Wiring(pre_norm=norm_first, post="none" if norm_first else "sum")


def _connect(x: Tensor, sublayer: Callable[[Tensor], Tensor], norm: Callable[[Tensor], Tensor],
             drop: Callable[[Tensor], Tensor], w: _Wiring) -> Tensor:
    """One sub-layer connection wired as ``w`` says: right, post-LN norm(x + drop(sublayer(x)))
    and pre-LN x + drop(sublayer(norm(x)))."""
    outer = x
    if w.dropout == "stream":
        x = drop(x)
    inp = norm(x) if w.pre_norm else x
    if w.dropout == "input":
        inp = drop(inp)
    out = sublayer(inp)
    if w.dropout in ("output", "twice"):
        out = drop(out)
    if w.dropout == "twice":
        out = drop(out)
    if w.post == "branch":
        out = norm(out)
    res = x if w.residual == "x" else norm(x) if w.residual == "norm" else torch.zeros_like(x)
    if w.dropout == "x":
        res = drop(res)
    total = res + out
    if w.dropout == "sum":
        total = drop(total)
    if w.post == "sum":
        total = norm(total)
    if w.dropout == "after":
        total = drop(total)
    return outer + total if w.double else total


_POST = "norm(x + dropout(sublayer(x)))"
_PRE = "x + dropout(sublayer(norm(x)))"
_BOTH = f"post-LN {_POST}, pre-LN {_PRE}"
_IN = {"pre": "with norm_first=True (pre-LN), ", "post": "with norm_first=False (post-LN), ",
       "both": ""}

# Mistakes in the wiring of one connection, as (message, wiring for norm_first) per placement
# ("both", or the one placement where the learner's code goes wrong): the sub-layer check uses
# them all, the layer checks those that are not about placement or dropout.
_WiringFor = Callable[[bool], _Wiring]


def _only(where: str, wrong: _WiringFor) -> _WiringFor:
    """``wrong`` in the placement(s) ``where``, the right wiring in the other."""
    return lambda nf: wrong(nf) if where == "both" or (where == "pre") == nf else _right(nf)


def _norm_wirings() -> list[tuple[str, str, _WiringFor]]:
    """(kind, message, wiring) for the mistakes in where the norm goes."""
    no_norm = _Wiring(pre_norm=False, post="none")
    return [
        ("residual_norm_pre", f"pre-LN adds the input x itself, not norm(x): {_PRE}",
         _only("pre", lambda nf: replace(_right(nf), residual="norm"))),
        ("residual_norm_post", f"post-LN adds x itself and normalizes the sum, {_POST}; yours adds "
         f"norm(x) to the sub-layer's output", _only("post", lambda nf: replace(no_norm,
                                                                                residual="norm"))),
        ("residual_norm", f"the residual adds norm(x) where x itself belongs: {_BOTH}",
         lambda nf: replace(_right(nf), post="none", residual="norm")),
        ("branch_post", f"post-LN normalizes the sum x + dropout(sublayer(x)), not the sub-layer's "
         f"output alone: {_POST}", _only("post", lambda nf: replace(no_norm, post="branch"))),
        ("branch_pre", f"pre-LN normalizes the sub-layer's input, {_PRE}; yours normalizes its "
         f"output, x + norm(dropout(sublayer(x)))",
         _only("pre", lambda nf: replace(no_norm, post="branch"))),
        ("branch", f"the norm is applied to the sub-layer's output alone, "
         f"x + norm(dropout(sublayer(x))), whatever norm_first says: {_BOTH}",
         lambda nf: replace(no_norm, post="branch")),
        ("sum_pre", f"pre-LN has no norm after the residual sum: {_PRE}",
         _only("pre", lambda nf: _Wiring(pre_norm=True, post="sum"))),
        ("input_post", f"post-LN normalizes only the sum, {_POST}; yours also normalizes the "
         f"sub-layer's input", _only("post", lambda nf: _Wiring(pre_norm=True, post="sum"))),
        ("twice", f"each sub-layer's input and sum are both normalized, whatever norm_first says; "
         f"norm_first picks one: {_BOTH}", lambda nf: _Wiring(pre_norm=True, post="sum")),
        ("residual_norm_always", f"yours computes norm(x) + dropout(sublayer(norm(x))) whatever "
         f"norm_first says; the residual adds x itself, and norm_first picks where the norm goes: "
         f"{_BOTH}", lambda nf: _Wiring(pre_norm=True, post="none", residual="norm")),
        ("none_pre", f"pre-LN normalizes the sub-layer's input: {_PRE}; yours uses no norm",
         _only("pre", lambda nf: no_norm)),
        ("none_post", f"post-LN ends with the norm: {_POST}; yours uses no norm",
         _only("post", lambda nf: no_norm)),
        ("none", f"the norm is never applied: {_BOTH}", lambda nf: no_norm),
    ]


_DROPOUT_FIX = "apply it to the sub-layer's output, before adding x"
_DROPOUT_MODES = {
    "none": f"dropout is not applied: {_DROPOUT_FIX}",
    "sum": f"dropout is applied after the residual sum; {_DROPOUT_FIX}",
    "after": f"dropout is applied after the residual sum; {_DROPOUT_FIX}",
    "input": f"dropout is applied to the sub-layer's input; {_DROPOUT_FIX}",
    "stream": f"dropout is applied to the sub-layer's input; {_DROPOUT_FIX}",
    "x": f"dropout is applied to the residual x; {_DROPOUT_FIX}",
    "twice": "dropout is applied twice to the sub-layer's output; once is enough: "
             f"{_BOTH}",
}


def _sublayer_wirings() -> list[tuple[Any, _WiringFor]]:
    """(message, wiring) for every mistake the sub-layer check knows."""

    def placement(case: Case) -> str:
        if case.inputs["norm_first"]:
            return (f"norm_first=True must give pre-LN, {_PRE}; yours computes post-LN, {_POST}")
        return (f"norm_first=False (post-LN, as in the paper) must give {_POST}; yours computes "
                f"pre-LN, {_PRE}")

    variants: list[tuple[Any, _WiringFor]] = [
        (placement, lambda nf: _right(not nf)),
        (placement, lambda nf: _right(False)),
        (placement, lambda nf: _right(True)),
    ]
    for where in ("both", "pre", "post"):
        variants.append((f"{_IN[where]}the residual connection is missing: add the input x to the "
                         f"sub-layer's output",
                         _only(where, lambda nf: replace(_right(nf), residual="none"))))
    variants += [(message, wiring) for _, message, wiring in _norm_wirings()]
    variants.append((f"the input x is added twice (x + norm(x + ...), or 2x + ...): the residual "
                     f"connection adds it once: {_BOTH}",
                     lambda nf: replace(_right(nf), double=True)))
    for mode, message in _DROPOUT_MODES.items():
        for where in ("both", "pre", "post"):
            variants.append((_IN[where] + message,
                             _only(where, lambda nf, m=mode: replace(_right(nf), dropout=m))))
    return variants


_SC_DIM = 8


def _sublayer_cases(seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    D = _SC_DIM
    linear = randomize(nn.Linear(D, D), g)
    norm = randomize(nn.LayerNorm(D), g)
    dropout = _FixedDropout(0.25).train()

    def sublayer(x: Tensor) -> Tensor:
        return torch.tanh(linear(x)) * 2.0

    cases = [
        Case("post-LN (norm_first=False)", {"x": randn(g, 2, 5, D), "norm_first": False}),
        Case("pre-LN (norm_first=True)", {"x": randn(g, 2, 5, D), "norm_first": True}),
        Case("post-LN, another batch", {"x": randn(g, 3, 4, D) + 1.0, "norm_first": False}),
        Case("pre-LN, another batch", {"x": randn(g, 3, 4, D) + 1.0, "norm_first": True}),
    ]
    for case in cases:
        case.state.update(sublayer=sublayer, norm=norm, dropout=dropout)
    return cases


def _sublayer_output(case: Case, wiring: _WiringFor = _right) -> Tensor:
    s = case.state
    return _connect(case.inputs["x"], s["sublayer"], s["norm"], s["dropout"],
                    wiring(case.inputs["norm_first"]))


def _sublayer_package(case: Case) -> Tensor:
    s = case.state
    return sublayer_connection(case.inputs["x"], s["sublayer"], s["norm"], s["dropout"],
                               case.inputs["norm_first"])


def _sublayer_mistakes() -> list[Mistake]:
    return [Mistake(message, lambda case, w=wiring: _sublayer_output(case, w))
            for message, wiring in _sublayer_wirings()]


@isolated
def check_sublayer_connection(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x, sublayer, norm, dropout, norm_first)``: post-LN
    ``norm(x + dropout(sublayer(x)))`` or pre-LN ``x + dropout(sublayer(norm(x)))``.

    The check passes a LayerNorm with random gain and bias, and as ``dropout`` an
    ``nn.Dropout(0.25)`` in training mode that drops a fixed pattern of entries (so it can see
    where dropout acts); ``F.dropout`` drops the same pattern while ``fn`` runs.
    """
    check = "check_sublayer_connection"

    def learner(case: Case) -> Any:
        s = case.state
        with _dropout_fixed() as rates:
            out = call_learner(check, f"running {case.describe()}", fn, case.inputs["x"],
                               s["sublayer"], s["norm"], s["dropout"], case.inputs["norm_first"])
        s["rates"] = rates
        return out

    def hints(got: Any, want: Any, case: Case) -> str | None:
        p = case.state["dropout"].p
        wrong = sorted({r for r in case.state.get("rates", []) if abs(r - p) > 1e-9 and r > 0})
        if wrong:
            return (f"dropout is applied with p={wrong[0]:g}, but the dropout module you are given "
                    f"has p={p:g}: apply that module, dropout(...), "
                    "rather than a dropout of your own")
        return None

    count = run_cases(check, _sublayer_cases(seed), learner, _sublayer_output,
                      mistakes=_sublayer_mistakes(), structure=_structure, hints=hints)
    passed(check, count)


_spec("check_sublayer_connection", _sublayer_cases, _sublayer_output, _sublayer_package,
      _sublayer_mistakes)


# --- exercises 3 and 4: the encoder and decoder layers -----------------------------------------


def _norm(layer: nn.LayerNorm, x: Tensor, eps: float | None = None) -> Tensor:
    return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias,
                        layer.eps if eps is None else eps)


@dataclass(frozen=True)
class _LayerBug:
    """Switches for the mistakes the layer checks know (all off: the right answer). Sub-layers are
    numbered in order: 0 self-attention, (1 cross-attention,) then the feed-forward network."""

    placement: str = "ok"  # "pre", "post", "swapped"
    wiring: str = "ok"  # a kind from _norm_wirings(): the connection's norm wired wrong ...
    wiring_at: tuple[int, ...] | None = None  # ... in these sub-layers (None: all)
    no_residual: tuple[int, ...] = ()  # sub-layers without the residual connection
    double_residual: tuple[int, ...] = ()  # sub-layers with x added once more around them
    feeds: tuple[tuple[int, int, bool], ...] = ()  # (sub-layer, k, raw): it takes the stream
    # before sub-layer k (0: the layer's input; -1: the previous sub-layer's output alone, before
    # its residual) instead of its own input; raw: not normalized
    self_kv_raw: bool = False  # pre-LN self-attention: keys and values x itself, not norm1(x)
    discard: tuple[int, ...] = ()  # sub-layers whose result is thrown away
    masks: str = "ok"  # see _layer_math
    norms: tuple[int, ...] | None = None  # which norm each sub-layer uses (by index)
    activation: str | None = None
    eps: float | None = None
    cross: str = "ok"  # keys and values: "self" (the normalized queries), "x" (the stream x),
    # "norm_memory" (norm2(memory) in pre-LN), "norm_memory_always"
    modules: str = "ok"  # "self_for_cross": cross-attention calls self_attn; "cross_for_self"
    order: str = "ok"  # "cross_first"
    dropout: str = "output"  # the residual dropout, as _Wiring.dropout (training mode only) ...
    dropout_in: str = "both"  # ... in the placement(s) "both", "pre" or "post" ...
    dropout_at: tuple[int, ...] | None = None  # ... in these sub-layers (None: all)
    no_attn_dropout: tuple[int, ...] = ()  # attentions (0 self, 1 cross) without dropout
    no_ffn_dropout: bool = False

    def training_only(self) -> bool:
        """The mistake shows only in training mode (it is about dropout)."""
        dropout_fields = {"dropout", "dropout_in", "dropout_at", "no_attn_dropout",
                          "no_ffn_dropout"}
        return all(getattr(self, f) == getattr(_LayerBug(), f)
                   for f in self.__dataclass_fields__ if f not in dropout_fields)


def _attend(mha: nn.Module, query: Tensor, kv: Tensor, mask: Tensor | None, train: bool) -> Tensor:
    was = mha.training
    mha.train(train)
    try:
        return mha(query, kv, kv, mask=mask)
    finally:
        mha.train(was)


def _layer_math(layer: nn.Module, x: Tensor, memory: Tensor | None, self_mask: Tensor | None,
                memory_mask: Tensor | None, bug: _LayerBug, p: float = 0.0) -> Tensor:
    """An encoder layer (memory is None) or a decoder layer, computed from its submodules, with
    dropout at rate ``p`` (training mode, the fixed pattern; 0 in eval mode)."""
    decoder = memory is not None
    all_norms = [layer.norm1, layer.norm2] + ([layer.norm3] if decoder else [])
    norms = [all_norms[i] for i in bug.norms] if bug.norms else all_norms
    norm_first = {"pre": True, "post": False, "swapped": not layer.norm_first}.get(
        bug.placement, layer.norm_first)
    T = x.size(1)
    if bug.masks == "ignore_self":
        self_mask = None
    elif bug.masks == "ignore_memory":
        memory_mask = None
    elif bug.masks == "ignore_both":
        self_mask = memory_mask = None
    elif bug.masks == "swap":
        self_mask, memory_mask = memory_mask, self_mask
    elif bug.masks == "self_in_cross":
        memory_mask = self_mask
    elif bug.masks == "invert":
        self_mask = None if self_mask is None else ~self_mask
    elif bug.masks == "invert_memory":
        memory_mask = None if memory_mask is None else ~memory_mask
    elif bug.masks == "own_causal":
        self_mask = causal_mask(T)
    elif bug.masks == "own_causal_and":
        self_mask = causal_mask(T) if self_mask is None else causal_mask(T) & self_mask

    def drop(t: Tensor) -> Tensor:
        return _fixed_drop(t, p) if p else t

    stream = [x]  # the stream before each sub-layer
    branches: list[Tensor] = []  # each sub-layer's own output, before dropout and residual

    def attend(y: Tensor) -> Tensor:
        module = layer.cross_attn if bug.modules == "cross_for_self" else layer.self_attn
        kv = stream[-1] if bug.self_kv_raw else y
        return _attend(module, y, kv, self_mask, bool(p) and 0 not in bug.no_attn_dropout)

    def cross(y: Tensor) -> Tensor:
        kv = memory
        if bug.cross == "self":
            kv = y
        elif bug.cross == "x":
            kv = stream[-1]
        elif bug.cross == "norm_memory_always" or (bug.cross == "norm_memory" and norm_first):
            kv = _norm(norms[1], memory, bug.eps)
        module = layer.self_attn if bug.modules == "self_for_cross" else layer.cross_attn
        return _attend(module, y, kv, memory_mask, bool(p) and 1 not in bug.no_attn_dropout)

    def ffn(y: Tensor) -> Tensor:
        return _ffn_math(layer.ffn, y, bug.activation, p=0.0 if bug.no_ffn_dropout else p)

    sublayers = [attend, cross, ffn] if decoder else [attend, ffn]
    if bug.order == "cross_first":
        sublayers[0], sublayers[1] = sublayers[1], sublayers[0]
    feeds = {i: (k, raw) for i, k, raw in bug.feeds}
    wrong_wiring = {kind: wiring for kind, _, wiring in _norm_wirings()}.get(bug.wiring)
    for i, (f, n) in enumerate(zip(sublayers, norms)):
        def norm(t: Tensor, n: nn.LayerNorm = n) -> Tensor:
            return _norm(n, t, bug.eps)

        w = _right(norm_first)
        if wrong_wiring is not None and (bug.wiring_at is None or i in bug.wiring_at):
            w = wrong_wiring(norm_first)
        if i in bug.no_residual:
            w = replace(w, residual="none")
        if (bug.dropout_in == "both" or (bug.dropout_in == "pre") == norm_first) and (
                bug.dropout_at is None or i in bug.dropout_at):
            w = replace(w, dropout=bug.dropout)
        w = replace(w, double=i in bug.double_residual)
        if i in feeds:  # the sub-layer works on another tensor than its own input
            k, raw = feeds[i]
            source = branches[-1] if k < 0 else stream[k]
            taken = source if raw or not w.pre_norm else norm(source)

            def f(_: Tensor, sublayer: Callable[[Tensor], Tensor] = f,
                  taken: Tensor = taken) -> Tensor:
                return sublayer(taken)

        def recorded(y: Tensor, sublayer: Callable[[Tensor], Tensor] = f) -> Tensor:
            branches.append(sublayer(y))
            return branches[-1]

        out = _connect(stream[-1], recorded, norm, drop, w)
        stream.append(stream[-1] if i in bug.discard else out)
    return stream[-1]


def _placement_message(case: Case) -> str:
    if case.init["norm_first"]:
        return ("norm_first=True must give pre-LN sub-layers, x + sublayer(norm(x)); yours "
                "computes post-LN, norm(x + sublayer(x)) (is norm_first ignored?)")
    return ("norm_first=False (post-LN, as in the paper) must give norm(x + sublayer(x)); yours "
            "computes pre-LN, x + sublayer(norm(x))")


_SUBLAYERS = {False: ["self-attention", "feed-forward"],
              True: ["self-attention", "cross-attention", "feed-forward"]}


def _norm_assignment_message(norms: tuple[int, ...], decoder: bool) -> str:
    """What a layer whose sub-layer i uses norm ``norms[i] + 1`` does wrong."""
    subs = _SUBLAYERS[decoder]
    right = ", ".join(f"norm{i + 1} with {'the ' if s == 'feed-forward' else ''}{s}"
                      + (" network" if s == "feed-forward" else "") for i, s in enumerate(subs))
    if sorted(norms) == list(range(len(subs))):
        if not decoder:
            return f"the norms are swapped: {right}"
        uses = ", ".join(f"{s} uses norm{k + 1}" for s, k in zip(subs, norms))
        return f"the norms are used in the wrong order ({uses}): {right}"
    if len(set(norms)) == 1:
        return (f"the same norm (norm{norms[0] + 1}) is used for every sub-layer: "
                f"each has its own, {right}")
    shared = [k for k in set(norms) if norms.count(k) > 1][0]
    users = " and ".join(s for s, k in zip(subs, norms) if k == shared)
    return f"norm{shared + 1} is used for both {users}: each sub-layer has its own norm, {right}"


def _dropout_message(bug: _LayerBug, decoder: bool) -> str:
    """What a layer with a dropout mistake (``bug.training_only()``) does wrong."""
    subs = _SUBLAYERS[decoder]
    parts = []
    if bug.no_attn_dropout:
        which = [("self_attn", "self-attention"), ("cross_attn", "cross-attention")]
        names = [which[i] for i in bug.no_attn_dropout]
        modules = " and ".join(n for n, _ in names)
        whose = "the attention" if len(names) == 2 or not decoder else f"the {names[0][1]}"
        parts.append(f"{whose} weights get no dropout (build {modules} with "
                     f"MultiHeadAttention(d_model, num_heads, dropout=dropout))")
    if bug.no_ffn_dropout:
        parts.append("the feed-forward network applies no dropout (build ffn with "
                     "FeedForward(d_model, d_ff, dropout=dropout, activation=activation))")
    if bug.dropout != "output":
        on = ("each sub-layer's" if bug.dropout_at is None
              else f"the {subs[bug.dropout_at[0]]} sub-layer's")
        parts.append({
            "none": f"no dropout acts on {on} output (apply self.dropout to {on} output, before "
                    f"the residual sum)",
            "input": f"dropout is applied to {on} input; it belongs on its output, before the "
                     f"residual sum",
            "stream": f"dropout is applied to {on} input; it belongs on its output, before the "
                      f"residual sum",
            "x": f"dropout is applied to the residual x; it belongs on {on} output, before the sum",
            "sum": f"dropout is applied after the residual sum; it belongs on {on} output, before "
                   f"the sum",
            "after": f"dropout is applied after the residual sum; it belongs on {on} output, "
                     f"before the sum",
            "twice": f"dropout is applied twice to {on} output; once is enough",
        }[bug.dropout])
    where = {"both": "", "pre": " with norm_first=True (pre-LN)",
             "post": " with norm_first=False (post-LN)"}[bug.dropout_in]
    return f"in training mode{where}, " + "; ".join(parts)


def _layer_bugs(decoder: bool) -> list[tuple[Any, _LayerBug]]:
    """(message, switches) for every mistake the layer checks know."""
    subs = _SUBLAYERS[decoder]
    n = len(subs)
    ffn_index = n - 1
    bugs: list[tuple[Any, _LayerBug]] = [
        (_placement_message, _LayerBug(placement="swapped")),
        (_placement_message, _LayerBug(placement="pre")),
        (_placement_message, _LayerBug(placement="post")),
        ("the residual connection around self-attention is missing: add the sub-layer's input",
         _LayerBug(no_residual=(0,))),
        ("the residual connection around the feed-forward network is missing: add the "
         "sub-layer's input", _LayerBug(no_residual=(ffn_index,))),
        ("the residual connections are missing: each sub-layer's input is added to its output",
         _LayerBug(no_residual=tuple(range(n)))),
        ("the input x is added twice in each sub-layer (x + norm(x + ...), or 2x + ...): the "
         "residual connection adds it once; sublayer_connection(x, ...) already includes it",
         _LayerBug(double_residual=tuple(range(n)))),
        *[(f"the input x is added twice in the {s} sub-layer (x + norm(x + ...), or 2x + ...): "
           f"the residual connection adds it once; sublayer_connection(x, ...) already includes it",
           _LayerBug(double_residual=(i,))) for i, s in enumerate(subs)],
        (f"the feed-forward network is fed the {subs[-2]}'s output alone, before its residual "
         f"sum; it takes the {subs[-2]} sub-layer's result",
         _LayerBug(feeds=((ffn_index, -1, False),))),
        ("in pre-LN, the self-attention's keys and values are x itself; its queries, keys and "
         "values are all norm1(x): self_attn(y, y, y) with y = norm1(x)",
         _LayerBug(self_kv_raw=True)),
        ("the activation argument is ignored: activation='gelu' must use F.gelu in the "
         "feed-forward network", _LayerBug(activation="relu")),
        ("layer_norm_eps is ignored: pass eps=layer_norm_eps to the LayerNorms",
         _LayerBug(eps=1e-5)),
        (f"the feed-forward network is fed the layer's input x; it takes the {subs[-2]} "
         f"sub-layer's output", _LayerBug(feeds=((ffn_index, 0, False),))),
        (f"the feed-forward network is fed the layer's input x; it takes the {subs[-2]} "
         f"sub-layer's output", _LayerBug(feeds=((ffn_index, 0, True),))),
        (f"the self-attention sub-layer's result is thrown away: the {subs[1]} sub-layer must take "
         f"it (x = ...)", _LayerBug(discard=(0,))),
    ]
    # the norm wired wrong, in every sub-layer or in one
    for kind, message, _ in _norm_wirings():
        if kind == "sum_pre":
            bugs.append(("pre-LN has no norm after each residual sum: x = x + sublayer(norm(x)) "
                         "(a pre-LN stack puts one final norm after its last layer instead)",
                         _LayerBug(wiring=kind)))
        else:
            bugs.append((f"in every sub-layer, {message}", _LayerBug(wiring=kind)))
        for i, s in enumerate(subs):
            bugs.append((f"in the {s} sub-layer, {message}",
                         _LayerBug(wiring=kind, wiring_at=(i,))))
    # the norms of the sub-layers mixed up or shared
    for norms in itertools.product(range(n), repeat=n):
        if norms != tuple(range(n)):
            bugs.append((_norm_assignment_message(norms, decoder), _LayerBug(norms=norms)))
    if decoder:
        bugs += [
            ("the self-attention mask is ignored: pass self_mask (e.g. the causal mask) to the "
             "self-attention, so a position cannot see later ones", _LayerBug(masks="ignore_self")),
            ("the memory mask is ignored: pass memory_mask to the cross-attention, so padded "
             "source positions get no attention", _LayerBug(masks="ignore_memory")),
            ("both masks are ignored: pass self_mask to the self-attention and memory_mask to the "
             "cross-attention", _LayerBug(masks="ignore_both")),
            ("the masks are swapped: self_mask belongs to the self-attention, memory_mask to the "
             "cross-attention", _LayerBug(masks="swap")),
            ("the self-attention mask is applied to the cross-attention too: cross-attention "
             "takes memory_mask (the source has no future to hide)",
             _LayerBug(masks="self_in_cross")),
            ("self_mask is inverted: True means 'may attend'", _LayerBug(masks="invert")),
            ("memory_mask is inverted: True means 'may attend'", _LayerBug(masks="invert_memory")),
            ("the layer builds its own causal mask and ignores self_mask: pass self_mask to the "
             "self-attention as it is (it may hold padding too, or be None: then every position "
             "sees every other)", _LayerBug(masks="own_causal")),
            ("the layer adds a causal mask of its own to self_mask: use self_mask as it is (the "
             "caller puts the causal mask in it; None lets every position see every other)",
             _LayerBug(masks="own_causal_and")),
            ("the cross-attention does not look at memory: its keys and values come from the "
             "encoder output, cross_attn(y, memory, memory)", _LayerBug(cross="self")),
            ("the cross-attention does not look at memory: its keys and values come from the "
             "encoder output, cross_attn(y, memory, memory)", _LayerBug(cross="x")),
            ("in pre-LN, norm2 normalizes the queries only; memory goes into the cross-attention "
             "as it is (the encoder has normalized it already)", _LayerBug(cross="norm_memory")),
            ("memory is normalized before the cross-attention; it goes in as it is (the encoder "
             "has normalized it already): cross_attn(y, memory, memory)",
             _LayerBug(cross="norm_memory_always")),
            ("the cross-attention sub-layer calls self.self_attn; it has its own module, "
             "self.cross_attn(y, memory, memory)", _LayerBug(modules="self_for_cross")),
            ("the self-attention sub-layer calls self.cross_attn; it has its own module, "
             "self.self_attn(y, y, y)", _LayerBug(modules="cross_for_self")),
            ("the residual connection around cross-attention is missing: add the sub-layer's "
             "input", _LayerBug(no_residual=(1,))),
            ("the sub-layers are in the wrong order: self-attention, then cross-attention, then "
             "the feed-forward network", _LayerBug(order="cross_first")),
            ("the cross-attention sub-layer's result is thrown away: the feed-forward sub-layer "
             "must take it (x = ...)", _LayerBug(discard=(1,))),
            ("the feed-forward network is fed the self-attention sub-layer's output; it takes the "
             "cross-attention sub-layer's", _LayerBug(feeds=((2, 1, False),))),
            ("the cross-attention is fed the layer's input x; it takes the self-attention "
             "sub-layer's output", _LayerBug(feeds=((1, 0, False),))),
            ("the sub-layers all take the layer's input x; they run one after the other, each on "
             "the previous one's output", _LayerBug(feeds=((1, 0, False), (2, 0, False)))),
        ]
    else:
        bugs += [
            ("the mask is ignored: pass it to the self-attention", _LayerBug(masks="ignore_self")),
            ("the mask is inverted: True means 'may attend'", _LayerBug(masks="invert")),
            ("the encoder layer uses a causal mask: an encoder sees the whole source; pass the "
             "mask it is given, as it is", _LayerBug(masks="own_causal")),
            ("the encoder layer adds a causal mask to the mask it is given: an encoder sees the "
             "whole source; pass the mask as it is", _LayerBug(masks="own_causal_and")),
        ]
    # dropout: where it acts in training mode
    attn_options = [(), (0, 1), (0,), (1,)] if decoder else [(), (0,)]
    modes = ("output", "none", "input", "stream", "x", "sum", "after", "twice")
    for attn, no_ffn, mode in itertools.product(attn_options, (False, True), modes):
        bug = _LayerBug(no_attn_dropout=attn, no_ffn_dropout=no_ffn, dropout=mode)
        if bug != _LayerBug():
            bugs.append((_dropout_message(bug, decoder), bug))
    for mode, where in itertools.product(modes[1:], ("pre", "post")):
        bug = _LayerBug(dropout=mode, dropout_in=where)
        bugs.append((_dropout_message(bug, decoder), bug))
    for i in range(n):
        bug = _LayerBug(dropout="none", dropout_at=(i,))
        bugs.append((_dropout_message(bug, decoder), bug))
    return bugs


def _layer_output(case: Case, bug: _LayerBug | None = None) -> Tensor:
    """The layer's output on a case (eval or training mode), with ``bug``'s switches."""
    i = case.inputs
    p = case.init["dropout"] if _training(case) else 0.0
    with _dropout_fixed(_training(case)):
        if "memory" in i:
            return _layer_math(case.state["reference"], i["x"], i["memory"], i.get("self_mask"),
                               i.get("memory_mask"), bug or _LayerBug(), p)
        return _layer_math(case.state["reference"], i["x"], None, i.get("mask"), None,
                           bug or _LayerBug(), p)


def _layer_mistakes(decoder: bool) -> list[Mistake]:
    right = _memo(_layer_output)

    def output(bug: _LayerBug) -> Callable[[Case], Any]:
        if bug.training_only():  # the same as the right answer in eval mode
            return _memo(lambda case: _layer_output(case, bug) if _training(case) else right(case))
        return _memo(lambda case: _layer_output(case, bug))

    return [Mistake(message, output(bug)) for message, bug in _layer_bugs(decoder)]


def _layer_init(D: int, H: int, F_: int, norm_first: bool, activation: str = "relu",
                eps: float = 1e-5, dropout: float = 0.0) -> dict[str, Any]:
    return {"d_model": D, "num_heads": H, "d_ff": F_, "dropout": dropout, "activation": activation,
            "norm_first": norm_first, "layer_norm_eps": eps}


_ENCODER_NAMES = ("the contract's names: self_attn (a MultiHeadAttention: q_proj, k_proj, v_proj, "
                  "out_proj), ffn (linear1, linear2), norm1 (after or before self-attention), "
                  "norm2 (the feed-forward network's)")


def _encoder_cases(seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 2])
    padding = (torch.arange(5) < lengths[:, None]).view(3, 1, 1, 5)

    def case(name: str, init: dict[str, Any], B: int = 2, mask: Tensor | None = None,
             repeat: bool = False, training: bool = False) -> Case:
        return Case(name, {"x": randn(g, B, 5, 16), "mask": mask}, init=init, repeat=repeat,
                    positional=1, init_positional=3, state={"training": training})

    cases = [
        case("post-LN (norm_first=False), no mask", _layer_init(16, 4, 32, False)),
        case("pre-LN (norm_first=True), no mask", _layer_init(16, 4, 32, True)),
        case("post-LN, padding mask (B, 1, 1, S)", _layer_init(16, 4, 32, False), B=3,
             mask=padding),
        case("pre-LN, padding mask (B, 1, 1, S)", _layer_init(16, 4, 32, True), B=3, mask=padding),
        case("post-LN, activation='gelu'", _layer_init(16, 2, 24, False, "gelu")),
        case("pre-LN, layer_norm_eps=0.1", _layer_init(16, 4, 32, True, eps=0.1)),
        case("dropout=0.3, in eval mode", _layer_init(16, 4, 32, False, dropout=0.3), repeat=True),
        case("post-LN, padding mask, dropout=0.25, in training mode",
             _layer_init(16, 4, 32, False, dropout=0.25), B=3, mask=padding, training=True),
        case("pre-LN, padding mask, dropout=0.4, in training mode",
             _layer_init(16, 4, 32, True, dropout=0.4), B=3, mask=padding, training=True),
        case("post-LN, activation='gelu', layer_norm_eps=0.1, dropout=0.3, in training mode",
             _layer_init(16, 2, 24, False, "gelu", eps=0.1, dropout=0.3), training=True),
        case("pre-LN, activation='gelu', layer_norm_eps=0.1, dropout=0.2, in training mode",
             _layer_init(16, 4, 24, True, "gelu", eps=0.1, dropout=0.2), training=True),
    ]
    for c in cases:
        c.state["reference"] = randomize(EncoderLayer(**c.init), g).eval()
    return cases


def _layer_check(check: str, cls: Any, cases: list[Case], names: str, what: str,
                 decoder: bool) -> None:
    learner = _module_runner(check, cls, names)
    count = run_cases(check, cases, learner, _run_package, mistakes=_layer_mistakes(decoder),
                      structure=_structure, hints=_dropout_hint(check, learner, what))
    passed(check, count)


@isolated
def check_encoder_layer(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, num_heads, d_ff, dropout=0.1, activation="relu",
    norm_first=False, layer_norm_eps=1e-5)`` with ``forward(x, mask=None)``, as
    :class:`transformer_lib.EncoderLayer`: both norm placements, padding masks, GELU, the
    LayerNorm eps, dropout switched off in eval mode, and in training mode dropout where the lab
    puts it (attention weights, feed-forward hidden layer, each sub-layer's output)."""
    _layer_check("check_encoder_layer", cls, _encoder_cases(seed), _ENCODER_NAMES,
                 "the encoder layer", decoder=False)


_spec("check_encoder_layer", _encoder_cases, _layer_output, _run_package,
      lambda: _layer_mistakes(decoder=False))


_DECODER_NAMES = ("the contract's names: self_attn and cross_attn (each a MultiHeadAttention: "
                  "q_proj, k_proj, v_proj, out_proj), ffn (linear1, linear2), norm1 "
                  "(self-attention's), norm2 (cross-attention's), norm3 (the feed-forward "
                  "network's)")


def _decoder_cases(seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    B, T, S, D = 3, 4, 6, 16
    memory_padding = (torch.arange(S) < torch.tensor([6, 4, 2])[:, None]).view(B, 1, 1, S)
    tgt_padding = (torch.arange(5) < torch.tensor([5, 3, 4])[:, None]).view(B, 1, 1, 5)
    src_padding = (torch.arange(5) < torch.tensor([2, 5, 3])[:, None]).view(B, 1, 1, 5)
    short_padding = (torch.arange(T) < torch.tensor([4, 2, 3])[:, None]).view(B, 1, 1, T)

    def case(name: str, init: dict[str, Any], T: int = T, S: int = S,
             self_mask: Tensor | None = None, memory_mask: Tensor | None = None,
             repeat: bool = False, training: bool = False) -> Case:
        return Case(name, {"x": randn(g, B, T, D), "memory": randn(g, B, S, D),
                           "self_mask": self_mask, "memory_mask": memory_mask},
                    init=init, repeat=repeat, positional=2, init_positional=3,
                    state={"training": training})

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
        case("post-LN, causal & padding self_mask, memory padding mask, dropout=0.25, in training "
             "mode", _layer_init(D, 4, 32, False, dropout=0.25),
             self_mask=causal_mask(T) & short_padding, memory_mask=memory_padding, training=True),
        case("pre-LN, causal & padding self_mask, memory padding mask, dropout=0.4, in training "
             "mode", _layer_init(D, 4, 32, True, dropout=0.4),
             self_mask=causal_mask(T) & short_padding, memory_mask=memory_padding, training=True),
        case("post-LN, activation='gelu', layer_norm_eps=0.1, causal self_mask, dropout=0.3, in "
             "training mode", _layer_init(D, 2, 24, False, "gelu", eps=0.1, dropout=0.3),
             self_mask=causal_mask(T), training=True),
        case("pre-LN, activation='gelu', layer_norm_eps=0.1, no masks, dropout=0.2, in training "
             "mode", _layer_init(D, 4, 24, True, "gelu", eps=0.1, dropout=0.2), training=True),
    ]
    for c in cases:
        c.state["reference"] = randomize(DecoderLayer(**c.init), g).eval()
    return cases


@isolated
def check_decoder_layer(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, num_heads, d_ff, dropout=0.1, activation="relu",
    norm_first=False, layer_norm_eps=1e-5)`` with
    ``forward(x, memory, self_mask=None, memory_mask=None)``, as
    :class:`transformer_lib.DecoderLayer`: both norm placements, causal and padding masks (each
    in its own attention), targets and sources of different lengths, GELU, the LayerNorm eps,
    dropout switched off in eval mode, and in training mode dropout where the lab puts it
    (attention weights, feed-forward hidden layer, each sub-layer's output)."""
    _layer_check("check_decoder_layer", cls, _decoder_cases(seed), _DECODER_NAMES,
                 "the decoder layer", decoder=True)


_spec("check_decoder_layer", _decoder_cases, _layer_output, _run_package,
      lambda: _layer_mistakes(decoder=True))
