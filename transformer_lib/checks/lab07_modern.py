"""Checks for lab 7 (modern decoder blocks): ``check_rms_norm``, ``check_swiglu``,
``check_rotary``, ``check_grouped_query_attention``, ``check_modern_attention``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``. Each check
compares the learner's code with the package's own (``transformer_lib.modern.RMSNorm`` and
``SwiGLUFeedForward``, chapter 3's ``apply_rotary``, and ``MultiHeadAttention`` with
``num_kv_heads`` and ``rope_base``) and describes its known mistakes as ``engine.Mistake`` s,
computed by this module's math with one switch turned (:func:`_rms_math`, :func:`_swiglu_math`,
:func:`_rotary_math`, :func:`_gqa_math`, :func:`_layer_math`; all switches off: the right
answer). Every check registers an ``engine.Spec`` (``tests/test_checks_specs.py``).

The package's rotary layout is *interleaved* pairs, features ``(2i, 2i + 1)``, as in the RoFormer
paper; Hugging Face's LLaMA pairs feature ``i`` with ``i + Dh/2`` instead ("halves"). Code that
rotates halves is named as such. Grouped-query attention shares key/value head ``j`` among the
``group = H // KV`` consecutive query heads ``j * group ... (j + 1) * group - 1``
(``repeat_interleave(group, dim=1)``, as LLaMA's ``repeat_kv`` and
``F.scaled_dot_product_attention(..., enable_gqa=True)``); tiling them (``repeat``) is named too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    structure_problem,
)
from transformer_lib.embeddings import apply_rotary
from transformer_lib.modern import RMSNorm, SwiGLUFeedForward
from transformer_lib.multihead import MultiHeadAttention, merge_heads, split_heads

# --- shared plumbing -----------------------------------------------------------------------------


def _register(check: str, cases: Callable[[], list[Case]], reference: Callable[[Case], Any],
              package: Callable[[Case], Any], mistakes: Callable[[], list[Mistake]]) -> None:
    """Register the check's Spec, its functions run on one thread as the check runs them."""

    def one_thread_mistakes() -> list[Mistake]:
        return [Mistake(m.message, one_thread(m.output)) for m in mistakes()]

    register(Spec(check=check, cases=one_thread(quietly(cases)), reference=one_thread(reference),
                  package=one_thread(package), mistakes=one_thread_mistakes))


def _module_learner(check: str, cls: Any, names: str) -> Callable[[Case], Any]:
    """``learner(case)``: the learner's module for the case, built once with the weights of the
    randomized package module in ``case.state["reference"]``, run in eval mode."""
    modules: dict[int, nn.Module] = {}

    def learner(case: Case) -> Any:
        if id(case) not in modules:
            modules[id(case)] = build_module(check, cls, case, case.state["reference"], names)
        args, kwargs = case.args()
        return call_learner(check, f"running forward on {case.where}", modules[id(case)], *args,
                            **kwargs)

    return learner


def _function_learner(check: str, fn: Callable[..., Any]) -> Callable[[Case], Any]:
    def learner(case: Case) -> Any:
        args, kwargs = case.args()
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    return learner


def _run_package_module(case: Case) -> Any:
    return case.state["reference"](**case.inputs)


def _output_form(got: Any, want: Any, case: Case) -> str | None:
    return structure_problem(("output",), got, want)


# --- exercise 1: RMSNorm -------------------------------------------------------------------------

_RMS = "x / sqrt(mean(x ** 2, dim=-1) + eps) * weight"


def _rms_math(norm: nn.Module, x: Tensor, *, center: bool = False, spread: str = "rms",
              eps_where: str = "inside", gain: str = "times", dim: int | None = -1,
              fixed_eps: float | None = None) -> Tensor:
    """RMSNorm, with switches for the mistakes: ``center`` subtracts the mean; ``spread`` is what
    x is divided by ("rms", "std", "std_unbiased", "abs", "abs_no_sqrt", "length",
    "normalize", "no_sqrt", "times_rms"); ``eps_where`` "inside" or "outside"; ``gain``
    "times", "plus" or "none"; ``dim`` the mean's dimension (``None``: the whole tensor);
    ``fixed_eps`` replaces the module's eps (0: none)."""
    eps = norm.eps if fixed_eps is None else fixed_eps

    def mean(t: Tensor) -> Tensor:
        return t.mean() if dim is None else t.mean(dim=dim, keepdim=True)

    if center:
        x = x - x.mean(dim=-1, keepdim=True)
    if spread in ("std", "std_unbiased"):
        square = x.var(dim=-1, keepdim=True, correction=int(spread == "std_unbiased"))
    elif spread in ("abs", "abs_no_sqrt"):
        square = mean(x.abs())
    elif spread == "length":
        square = x.pow(2).sum(dim=-1, keepdim=True)
    else:
        square = mean(x.pow(2))  # (..., D) -> (..., 1)
    if spread == "normalize":  # F.normalize: x / max(||x||, eps)
        y = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    elif spread in ("no_sqrt", "abs_no_sqrt"):
        y = x / (square + eps)
    elif eps_where == "outside":
        y = x / (square.sqrt() + eps)
    elif spread == "times_rms":
        y = x * (square + eps).sqrt()
    else:
        y = x * torch.rsqrt(square + eps)
    if gain == "times":
        return y * norm.weight
    return y + norm.weight if gain == "plus" else y


def _rms_cases(seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)

    def case(name: str, x: Tensor, D: int, eps: float) -> Case:
        made = Case(name, {"x": x}, init={"d_model": D, "eps": eps}, positional=1,
                    init_positional=1)
        made.state["reference"] = randomize(RMSNorm(D, eps), g).eval()
        return made

    def shifted(*shape: int, std: float = 1.0) -> Tensor:  # each vector with its own mean
        return randn(g, *shape, std=std) + randn(g, *shape[:-1], 1, std=1.5 * std)

    return [
        case("(B, T, D) input, vectors with nonzero means", shifted(2, 4, 8), 8, 1e-6),
        case("(T, D) input", shifted(5, 12, std=3.0), 12, 1e-5),
        case("one vector (D,)", shifted(16), 16, 1e-6),
        case("eps=0.1 and small inputs, where eps matters", shifted(3, 2, 8, std=0.2), 8, 0.1),
        case("(B, T, D) input with T = D", shifted(3, 6, 6), 6, 1e-6),
    ]


def _rms_output(case: Case, **options: Any) -> Tensor:
    return _rms_math(case.state["reference"], case.inputs["x"], **options)


def _rms_mistakes() -> list[Mistake]:
    std = ("you divide by the standard deviation (x.std or x.var subtract the mean inside them); "
           "RMSNorm divides by the root mean square of the features themselves, which equals the "
           f"standard deviation only when their mean is 0: {_RMS}")
    layer_norm = ("you subtract the mean and divide by the standard deviation: that is LayerNorm "
                  f"(without its bias). RMSNorm subtracts nothing: {_RMS}")
    wrong_dim = ("the mean square is taken over the wrong dimension: each vector is normalized "
                 "on its own, over its D features, the last dimension: "
                 "x.pow(2).mean(dim=-1, keepdim=True)")
    absolute = ("the root mean square squares the features, sqrt(mean(x ** 2) + eps); yours "
                "averages their absolute values, x.abs().mean(...)")
    length = ("you divide by the vector's length, sqrt(sum(x ** 2)) (x.norm or F.normalize); the "
              "root mean square takes the mean, not the sum: the length divided by sqrt(D), "
              f"{_RMS}")
    unused_eps = ("the eps the module was built with is not used: add self.eps to the mean "
                  "square, inside the square root (keep RMSNorm(d_model, eps)'s argument on self)")
    variants: list[tuple[str, dict[str, Any]]] = [
        (std, {"spread": "std"}),
        (std, {"spread": "std_unbiased"}),
        (layer_norm, {"center": True, "spread": "std"}),
        (layer_norm, {"center": True, "spread": "std_unbiased"}),
        ("eps is added outside the square root: sqrt(mean(x ** 2) + eps), not "
         "sqrt(mean(x ** 2)) + eps", {"eps_where": "outside"}),
        (unused_eps, {"fixed_eps": 0.0}),  # no eps, or a number of its own
        (unused_eps, {"fixed_eps": 1e-5}),
        (unused_eps, {"fixed_eps": 1e-6}),
        (unused_eps, {"fixed_eps": 1e-8}),
        ("the gain is missing: multiply the normalized vector by self.weight (a learned scale "
         "per feature)", {"gain": "none"}),
        ("the gain is added; it multiplies: x / sqrt(mean(x ** 2) + eps) * self.weight",
         {"gain": "plus"}),
        (wrong_dim, {"dim": None}),
        (wrong_dim, {"dim": 0}),
        (wrong_dim, {"dim": -2}),
        (absolute, {"spread": "abs"}),
        (absolute, {"spread": "abs_no_sqrt"}),
        (length, {"spread": "length"}),
        (length, {"spread": "normalize"}),
        (f"the square root is missing: you divide by the mean square itself; {_RMS}",
         {"spread": "no_sqrt"}),
        ("you multiply by the root mean square; divide by it (or multiply by torch.rsqrt(...)): "
         f"{_RMS}", {"spread": "times_rms"}),
    ]
    return [Mistake(message, lambda case, o=options: _rms_output(case, **o))
            for message, options in variants]


_RMS_NAMES = ("the contract's names: one parameter, weight, of shape (d_model,) (the gain; "
              "RMSNorm has no bias)")


@isolated
def check_rms_norm(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, eps=1e-6)`` with one parameter ``weight`` ``(D,)``:
    ``forward(x (..., D)) -> x / sqrt(mean(x ** 2) + eps) * weight``, as
    :class:`transformer_lib.modern.RMSNorm` (and ``torch.nn.RMSNorm``), with a random gain."""
    check = "check_rms_norm"
    count = run_cases(check, _rms_cases(seed), _module_learner(check, cls, _RMS_NAMES),
                      _rms_output, mistakes=_rms_mistakes(), structure=_output_form)
    passed(check, count)


_register("check_rms_norm", _rms_cases, _rms_output, _run_package_module, _rms_mistakes)

# --- exercise 2: the SwiGLU feed-forward network -------------------------------------------------

_SWIGLU = "down_proj(F.silu(gate_proj(x)) * up_proj(x))"


def _swiglu_math(ffn: nn.Module, x: Tensor, *, act: str = "silu", on: str = "gate",
                 combine: str = "times", residual: bool = False) -> Tensor:
    """SwiGLU, with switches: the activation ``act`` ("silu", "gelu", "gelu_tanh", "relu",
    "sigmoid", "none") on the branch ``on`` ("gate", "up", "both", "product");
    ``combine`` "times", "plus", "gate_only", "up_only"; ``residual`` adds x."""
    activation = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "sigmoid": torch.sigmoid,
                  "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
                  "none": lambda t: t}[act]
    gate, up = ffn.gate_proj(x), ffn.up_proj(x)  # (..., D) -> (..., F) each
    if on in ("gate", "both"):
        gate = activation(gate)
    if on in ("up", "both"):
        up = activation(up)
    hidden = {"times": lambda: gate * up, "plus": lambda: gate + up,
              "gate_only": lambda: gate, "up_only": lambda: up}[combine]()
    if on == "product":
        hidden = activation(hidden)
    y = ffn.down_proj(hidden)  # (..., F) -> (..., D)
    return x + y if residual else y


def _swiglu_cases(seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)

    def case(name: str, x: Tensor, D: int, F_: int) -> Case:
        made = Case(name, {"x": x}, init={"d_model": D, "d_ff": F_}, positional=1,
                    init_positional=2)
        made.state["reference"] = randomize(SwiGLUFeedForward(D, F_), g).eval()
        return made

    return [
        case("(B, T, D) input", randn(g, 2, 5, 8), 8, 12),
        case("(T, D) input, d_ff < d_model", randn(g, 4, 12), 12, 6),
        case("(B, T, D) input, large values (std 3)", randn(g, 2, 3, 6, std=3.0), 6, 16),
        case("one vector (D,)", randn(g, 10), 10, 20),
    ]


def _swiglu_output(case: Case, **options: Any) -> Tensor:
    return _swiglu_math(case.state["reference"], case.inputs["x"], **options)


def _swiglu_mistakes() -> list[Mistake]:
    missing = ("one of the two branches is missing: the hidden vector is the product of the "
               f"gate, through SiLU, and the up branch: {_SWIGLU}")
    gelu = ("the activation is GELU (that is GEGLU); SwiGLU's is SiLU, F.silu(z) = z * "
            f"sigmoid(z): {_SWIGLU}")
    variants: list[tuple[str, dict[str, Any]]] = [
        ("SiLU is on the up branch: the gate is the branch that goes through SiLU, "
         f"{_SWIGLU}; yours is F.silu(up_proj(x)) * gate_proj(x)", {"on": "up"}),
        (f"SiLU is applied to both branches; only the gate goes through it: {_SWIGLU}",
         {"on": "both"}),
        (f"SiLU is applied after the product; it acts on the gate alone: {_SWIGLU}",
         {"on": "product"}),
        (gelu, {"act": "gelu"}),
        (gelu, {"act": "gelu_tanh"}),
        (f"the activation is ReLU (that is ReGLU); SwiGLU's is SiLU, F.silu: {_SWIGLU}",
         {"act": "relu"}),
        ("the gate goes through a sigmoid, as in the original GLU; SwiGLU's gate goes through "
         f"SiLU, z * sigmoid(z) (F.silu): {_SWIGLU}", {"act": "sigmoid"}),
        (f"the activation is missing: the gate goes through SiLU, {_SWIGLU}", {"act": "none"}),
        (f"the two branches are added; they are multiplied, feature by feature: {_SWIGLU}",
         {"combine": "plus"}),
        (missing, {"combine": "gate_only"}),
        (missing, {"combine": "up_only", "on": "up"}),
        (f"the feed-forward network adds its input x to its output: {_SWIGLU} has no residual "
         f"connection (the block adds it, around the whole sub-layer)", {"residual": True}),
    ]
    return [Mistake(message, lambda case, o=options: _swiglu_output(case, **o))
            for message, options in variants]


_SWIGLU_NAMES = ("the contract's names: gate_proj = nn.Linear(d_model, d_ff, bias=False), "
                 "up_proj = nn.Linear(d_model, d_ff, bias=False) and "
                 "down_proj = nn.Linear(d_ff, d_model, bias=False)")


@isolated
def check_swiglu(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, d_ff)`` with submodules ``gate_proj``, ``up_proj``,
    ``down_proj`` (no biases): ``forward(x (..., D)) -> down_proj(silu(gate_proj(x)) *
    up_proj(x))``, as :class:`transformer_lib.modern.SwiGLUFeedForward`."""
    check = "check_swiglu"
    count = run_cases(check, _swiglu_cases(seed), _module_learner(check, cls, _SWIGLU_NAMES),
                      _swiglu_output, mistakes=_swiglu_mistakes(), structure=_output_form)
    passed(check, count)


_register("check_swiglu", _swiglu_cases, _swiglu_output, _run_package_module, _swiglu_mistakes)

# --- exercise 3: rotary positions ----------------------------------------------------------------

_ROTATION = ("y_2i = x_2i cos(m theta_i) - x_2i+1 sin(m theta_i), "
             "y_2i+1 = x_2i sin(m theta_i) + x_2i+1 cos(m theta_i)")


def _rotary_math(x: Tensor, positions: Tensor, base: float = 10000.0, *, read: str = "pairs",
                 write: str = "pairs", sign: float = 1.0, shift: int = 0,
                 ignore_positions: bool = False, exponent: str = "2i",
                 fixed_base: float | None = None) -> Tensor:
    """Rotary positions, with switches: pairs ``read`` and ``write`` as "pairs" (2i, 2i+1) or
    "halves" (i, i + Dh/2); ``sign`` -1 rotates backwards; ``shift`` is added to the positions;
    ``ignore_positions`` uses 0 .. T-1; ``exponent`` "2i" (base ** (-2i/Dh)), "i"
    (base ** (-i/Dh)) or "+2i" (base ** (2i/Dh)); ``fixed_base`` replaces ``base``."""
    T, Dh = x.shape[-2:]
    base = base if fixed_base is None else fixed_base
    if ignore_positions:
        positions = torch.arange(T)
    i = torch.arange(Dh // 2, dtype=torch.float64)
    power = {"2i": -2 * i / Dh, "i": -i / Dh, "+2i": 2 * i / Dh}[exponent]
    theta = (base ** power).float()  # (Dh/2,)
    angle = (positions.float() + shift)[..., None] * theta  # (T,) -> (T, Dh/2)
    cos, sin = angle.cos(), sign * angle.sin()
    if read == "pairs":
        first, second = x[..., 0::2], x[..., 1::2]  # (..., T, Dh/2) each
    else:
        first, second = x[..., :Dh // 2], x[..., Dh // 2:]
    rotated = (first * cos - second * sin, first * sin + second * cos)
    if write == "pairs":
        return torch.stack(rotated, dim=-1).flatten(-2)  # (..., T, Dh/2, 2) -> (..., T, Dh)
    return torch.cat(rotated, dim=-1)


def _rotary_cases(seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)

    def case(name: str, x: Tensor, positions: Tensor, base: float = 10000.0) -> Case:
        return Case(name, {"x": x, "positions": positions, "base": base}, positional=2)

    return [
        case("(T, Dh) queries, positions 0 .. 5", randn(g, 6, 8), torch.arange(6)),
        case("(B, H, T, Dh) heads, positions 0 .. 4", randn(g, 2, 3, 5, 8), torch.arange(5)),
        case("positions 7 .. 12, as after 7 cached tokens", randn(g, 1, 2, 6, 4),
             torch.arange(7, 13)),
        case("base=100, Dh=16, positions 0 .. 3", randn(g, 4, 16), torch.arange(4), 100.0),
        case("Dh=2 (one pair), positions [3, 0, 9, 1] in no order", randn(g, 2, 4, 2),
             torch.tensor([3, 0, 9, 1])),
        case("positions 40 .. 44, Dh=12", randn(g, 2, 5, 12), torch.arange(40, 45)),
    ]


def _rotary_output(case: Case, **options: Any) -> Tensor:
    return _rotary_math(case.inputs["x"], case.inputs["positions"], case.inputs["base"], **options)


def _rotary_mistakes() -> list[Mistake]:
    one_more = ("your positions are one too many (counting from 1?): row t is rotated by "
                "positions[t] * theta_i, so position 0 is not rotated at all")
    variants: list[tuple[str, dict[str, Any]]] = [
        ("you rotate halves, feature i with feature i + Dh/2 (the layout of GPT-NeoX and Hugging "
         "Face's LLaMA), where the layout is interleaved pairs (2i, 2i+1): take x[..., 0::2] and "
         "x[..., 1::2], rotate them, and interleave them back", {"read": "halves",
                                                                 "write": "halves"}),
        ("the rotated pairs are written back as two halves (torch.cat([...], dim=-1) puts every "
         "pair's first feature first); write each pair back in its place (2i, 2i+1): "
         "torch.stack([y_even, y_odd], dim=-1).flatten(-2)", {"write": "halves"}),
        ("you read halves, feature i with feature i + Dh/2, where the pairs are interleaved, "
         "(2i, 2i+1): x[..., 0::2] and x[..., 1::2]", {"read": "halves"}),
        ("you rotate backwards, by -m theta_i: the sine's sign is flipped. " + _ROTATION,
         {"sign": -1.0}),
        ("the positions argument is not used: your rotation counts 0, 1, ..., T-1 (as "
         "torch.arange(T)); rotate row t by positions[t] (after 7 cached tokens the first new "
         "one is at position 7)", {"ignore_positions": True}),
        (one_more, {"shift": 1}),
        (one_more, {"shift": 1, "ignore_positions": True}),
        ("the frequencies are base ** (-i / Dh) for pair i; they are base ** (-2i / Dh), "
         "i = 0 ... Dh/2 - 1: base ** (-torch.arange(0, Dh, 2) / Dh)", {"exponent": "i"}),
        ("the frequencies grow with i, base ** (2i / Dh); they shrink: base ** (-2i / Dh), from 1 "
         "for the first pair to nearly 1 / base for the last", {"exponent": "+2i"}),
        ("the base argument is not used (your frequencies are those of base 10000 whatever base "
         "is): theta_i = base ** (-2i / Dh)", {"fixed_base": 10000.0}),
    ]
    return [Mistake(message, lambda case, o=options: _rotary_output(case, **o))
            for message, options in variants]


def _rotary_package(case: Case) -> Tensor:
    return apply_rotary(case.inputs["x"], case.inputs["positions"], case.inputs["base"])


@isolated
def check_rotary(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(x, positions, base=10000.0)``: ``x`` ``(..., T, Dh)`` with each interleaved
    pair of features ``(2i, 2i+1)`` of row ``t`` rotated by the angle
    ``positions[t] * base ** (-2i / Dh)``, as :func:`transformer_lib.apply_rotary`."""
    check = "check_rotary"
    count = run_cases(check, _rotary_cases(seed), _function_learner(check, fn), _rotary_output,
                      mistakes=_rotary_mistakes(), structure=_output_form)
    passed(check, count)


_register("check_rotary", _rotary_cases, _rotary_output, _rotary_package, _rotary_mistakes)

# --- exercise 4: grouped-query attention ---------------------------------------------------------

_TILED = ("the key/value heads are tiled (k.repeat(1, group, 1, 1), or expand on a new first "
          "axis): query head h then gets key/value head h % KV. Key/value head j serves the "
          "group of consecutive query heads j * group ... (j + 1) * group - 1: "
          "k.repeat_interleave(group, dim=1), and the same for v")


def _attend(q: Tensor, k: Tensor, v: Tensor, is_causal: bool, *, repeat: str = "interleave",
            scale: str = "head", causal: str = "lower", softmax_dim: int = -1) -> Tensor:
    """Attention of ``H`` query heads over ``KV`` key/value heads, with switches: ``repeat`` the
    key/value heads "interleave", "tile" or "first" (head 0 for all); ``scale`` by sqrt(Dh)
    "head", sqrt(H * Dh) "model", "none" or Dh "twice"; ``causal`` "lower", "ignore" or "upper"
    (the mask's other triangle); ``softmax_dim``."""
    H, Dh = q.size(1), q.size(-1)
    group = H // k.size(1)
    if repeat == "interleave":
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    elif repeat == "tile":
        k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
    else:
        k, v = k[:, :1].expand(-1, H, -1, -1), v[:, :1].expand(-1, H, -1, -1)
    factor = {"head": 1 / math.sqrt(Dh), "model": 1 / math.sqrt(H * Dh), "none": 1.0,
              "twice": 1 / Dh}[scale]
    scores = q @ k.transpose(-2, -1) * factor  # (B, H, T, Dh) @ (B, H, Dh, S) -> (B, H, T, S)
    if is_causal and causal != "ignore":
        T, S = scores.shape[-2:]
        allowed = torch.ones(T, S, dtype=torch.bool)
        allowed = allowed.tril() if causal == "lower" else allowed.triu()
        scores = scores.masked_fill(~allowed, -math.inf)
    return torch.softmax(scores, dim=softmax_dim) @ v  # (B, H, T, S) @ (B, H, S, Dh)


def _gqa_math(case: Case, **options: Any) -> Tensor:
    inputs = case.inputs
    return _attend(inputs["q"], inputs["k"], inputs["v"], inputs["is_causal"], **options)


def _gqa_cases(seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)

    def case(name: str, B: int, H: int, KV: int, T: int, S: int, Dh: int,
             is_causal: bool) -> Case:
        return Case(f"{name}: {H} query heads, {KV} key/value heads",
                    {"q": randn(g, B, H, T, Dh), "k": randn(g, B, KV, S, Dh),
                     "v": randn(g, B, KV, S, Dh), "is_causal": is_causal}, positional=3)

    return [
        case("groups of 2", 2, 4, 2, 5, 5, 8, False),
        case("groups of 3, causal", 1, 6, 2, 6, 6, 4, True),
        case("groups of 2, causal", 2, 6, 3, 4, 4, 6, True),
        case("cross-attention, T=3 queries over S=7 keys", 2, 4, 2, 3, 7, 8, False),
        case("multi-query attention (one key/value head), causal", 1, 4, 1, 5, 5, 8, True),
        case("plain multi-head attention (as many key/value heads as heads)", 2, 3, 3, 4, 4, 4,
             False),
    ]


def _gqa_mistakes() -> list[Mistake]:
    variants: list[tuple[str, dict[str, Any]]] = [
        (_TILED, {"repeat": "tile"}),
        ("every query head uses the first key/value head (k[:, 0] or k[:, :1]): key/value head j "
         "serves query heads j * group ... (j + 1) * group - 1, "
         "k.repeat_interleave(group, dim=1)", {"repeat": "first"}),
        ("the causal mask is missing: with is_causal=True, query t may attend to keys 0 ... t "
         "only (torch.ones(T, S, dtype=torch.bool).tril(), False where j > t)",
         {"causal": "ignore"}),
        ("the causal mask is the wrong triangle: query t may attend to keys 0 ... t, the lower "
         "triangle, torch.ones(T, S, dtype=torch.bool).tril() (triu keeps the future)",
         {"causal": "upper"}),
        ("the scores are scaled by sqrt(H * Dh), the model's width; each head compares vectors "
         "of width Dh = q.size(-1): divide by sqrt(Dh)", {"scale": "model"}),
        ("the scores are not scaled: divide them by sqrt(Dh), Dh = q.size(-1)", {"scale": "none"}),
        ("the scores are scaled twice: they end up divided by Dh, not sqrt(Dh) "
         "(F.scaled_dot_product_attention scales already)", {"scale": "twice"}),
        ("the softmax runs over the queries: normalize over the keys, softmax(scores, dim=-1)",
         {"softmax_dim": -2}),
    ]
    return [Mistake(message, lambda case, o=options: _gqa_math(case, **o))
            for message, options in variants]


def _gqa_package(case: Case) -> Tensor:
    """The package's :class:`MultiHeadAttention` with ``num_kv_heads``, given projections that
    pass q, k and v through unchanged: its grouped heads on the case's inputs."""
    q, k, v, is_causal = (case.inputs[name] for name in ("q", "k", "v", "is_causal"))
    B, H, T, Dh = q.shape
    KV = k.size(1)
    D = H * Dh
    mha = MultiHeadAttention(D, H, bias=False, num_kv_heads=KV).eval()
    with torch.no_grad():
        for layer in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj):
            layer.weight.copy_(torch.eye(*layer.weight.shape))  # the identity, or [I | 0]

    def widened(t: Tensor) -> Tensor:  # (B, KV, S, Dh) -> (B, S, D), the last features zero
        return F.pad(merge_heads(t), (0, D - KV * Dh))

    out = mha(merge_heads(q), widened(k), widened(v), is_causal=is_causal)  # (B, T, D)
    return split_heads(out, H)  # (B, T, D) -> (B, H, T, Dh)


def _gqa_form(got: Any, want: Any, case: Case) -> str | None:
    q, k = case.inputs["q"], case.inputs["k"]
    B, H, T, Dh = q.shape
    KV = k.size(1)
    if isinstance(got, Tensor) and got.shape == (B, KV, T, Dh) != want.shape:
        return (f"your output has one head per key/value head, {(B, KV, T, Dh)}: each of the "
                f"H={H} query heads gives its own output, (B, H, T, Dh) = {(B, H, T, Dh)}. Repeat "
                f"the keys and values for the query heads, k.repeat_interleave(H // KV, dim=1); "
                f"do not reduce the queries")
    return structure_problem(("output",), got, want)


@isolated
def check_grouped_query_attention(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(q, k, v, is_causal=False)``: ``q`` ``(B, H, T, Dh)``, ``k`` and ``v``
    ``(B, KV, S, Dh)``, ``KV`` dividing ``H``; returns ``(B, H, T, Dh)``, attention (scaled by
    ``sqrt(Dh)``, causal if asked) in which key/value head ``j`` serves the query heads
    ``j * group ... (j + 1) * group - 1``, ``group = H // KV``: as the package's
    ``MultiHeadAttention(..., num_kv_heads=KV)`` and
    ``F.scaled_dot_product_attention(..., enable_gqa=True)``."""
    check = "check_grouped_query_attention"
    count = run_cases(check, _gqa_cases(seed), _function_learner(check, fn), _gqa_math,
                      mistakes=_gqa_mistakes(), structure=_gqa_form)
    passed(check, count)


_register("check_grouped_query_attention", _gqa_cases, _gqa_math, _gqa_package, _gqa_mistakes)

# --- exercise 5: the attention layer of a modern decoder -----------------------------------------


def _layer_math(m: nn.Module, x: Tensor, *, rotate: str = "qk", rotate_first: bool = False,
                fixed_base: float | None = None, **attend: Any) -> Tensor:
    """Causal self-attention with rotary positions and grouped queries, as the package's
    ``MultiHeadAttention(..., num_kv_heads, rope_base)``, with switches: ``rotate`` names what
    is rotated ("qk", "qkv", "q", "k", ""); ``rotate_first`` rotates the projections before the
    heads are split (over all their features); ``fixed_base`` replaces ``rope_base``; the rest
    go to :func:`_attend`."""
    base = m.rope_base if fixed_base is None else fixed_base
    B, T, _ = x.shape
    positions = torch.arange(T)
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)  # (B, T, D), (B, T, KV Dh) twice
    heads = (m.num_heads, m.num_kv_heads, m.num_kv_heads)
    if rotate_first:
        q, k, v = (apply_rotary(t, positions, base) if role in rotate else t
                   for role, t in zip("qkv", (q, k, v)))
    q, k, v = (split_heads(t, h) for t, h in zip((q, k, v), heads))  # (B, T, h Dh) -> (B, h, T, Dh)
    if not rotate_first:
        q, k, v = (apply_rotary(t, positions, base) if role in rotate else t
                   for role, t in zip("qkv", (q, k, v)))
    heads_out = _attend(q, k, v, True, **attend)  # (B, H, T, Dh)
    return m.out_proj(merge_heads(heads_out))  # (B, H, T, Dh) -> (B, T, D) -> (B, T, D)


def _layer_cases(seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)

    def case(name: str, B: int, T: int, D: int, H: int, KV: int, base: float = 10000.0) -> Case:
        made = Case(f"{name}, d_model={D}", {"x": randn(g, B, T, D)},
                    init={"d_model": D, "num_heads": H, "num_kv_heads": KV, "rope_base": base},
                    positional=1, init_positional=3)
        reference = MultiHeadAttention(D, H, bias=False, num_kv_heads=KV, rope_base=base)
        made.state["reference"] = randomize(reference, g).eval()
        return made

    return [
        case("4 heads sharing 2 key/value heads", 2, 6, 32, 4, 2),
        case("6 heads sharing 2 key/value heads (groups of 3), rope_base=100", 1, 5, 24, 6, 2,
             100.0),
        case("one key/value head for 4 heads (multi-query attention)", 2, 4, 16, 4, 1),
        case("2 heads, 2 key/value heads (plain multi-head attention)", 1, 7, 16, 2, 2),
    ]


def _layer_output(case: Case, **options: Any) -> Tensor:
    return _layer_math(case.state["reference"], case.inputs["x"], **options)


def _layer_package(case: Case) -> Tensor:
    x = case.inputs["x"]
    return case.state["reference"](x, x, x, is_causal=True)


def _layer_mistakes() -> list[Mistake]:
    variants: list[tuple[str, dict[str, Any]]] = [
        ("the values are rotated too: only queries and keys carry positions (their dot product "
         "then depends on the distance between two positions); rotate q and k, not v",
         {"rotate": "qkv"}),
        ("only the queries are rotated: rotate the keys too, with the same positions",
         {"rotate": "q"}),
        ("only the keys are rotated: rotate the queries too, with the same positions",
         {"rotate": "k"}),
        ("the rotary positions are missing: rotate the queries and keys of every head, "
         "apply_rotary(q, positions, rope_base), positions 0 ... T-1", {"rotate": ""}),
        ("you rotate before splitting the heads: apply_rotary then pairs the features of all "
         "heads as one vector, with the frequencies of a width of d_model. Split first, then "
         "rotate each head's Dh features: apply_rotary on (B, H, T, Dh)",
         {"rotate_first": True}),
        ("rope_base is not used (your frequencies are those of base 10000): pass "
         "self.rope_base to apply_rotary", {"fixed_base": 10000.0}),
        (_TILED, {"repeat": "tile"}),
        ("the causal mask is missing: this is a decoder's self-attention, position t may attend "
         "to positions 0 ... t only (is_causal=True)", {"causal": "ignore"}),
        ("the scores are scaled by sqrt(d_model); each head compares vectors of width "
         "Dh = d_model // num_heads: divide by sqrt(Dh)", {"scale": "model"}),
    ]
    return [Mistake(message, lambda case, o=options: _layer_output(case, **o))
            for message, options in variants]


_LAYER_NAMES = ("the contract's names: q_proj = nn.Linear(d_model, d_model, bias=False), k_proj "
                "and v_proj = nn.Linear(d_model, num_kv_heads * Dh, bias=False) (keys and values "
                "have only num_kv_heads heads), out_proj = nn.Linear(d_model, d_model, bias=False)")


@isolated
def check_modern_attention(cls: type[nn.Module], *, seed: int = 0) -> None:
    """Check a class ``cls(d_model, num_heads, num_kv_heads, rope_base=10000.0)`` with
    submodules ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (no biases; ``k_proj`` and
    ``v_proj`` of width ``num_kv_heads * Dh``): ``forward(x (B, T, D)) -> (B, T, D)``, causal
    self-attention with rotary positions ``0 .. T-1`` on every head's queries and keys and
    grouped key/value heads, as the package's ``MultiHeadAttention(d_model, num_heads,
    bias=False, num_kv_heads=..., rope_base=...)`` with ``is_causal=True``."""
    check = "check_modern_attention"
    count = run_cases(check, _layer_cases(seed), _module_learner(check, cls, _LAYER_NAMES),
                      _layer_output, mistakes=_layer_mistakes(), structure=_output_form)
    passed(check, count)


_register("check_modern_attention", _layer_cases, _layer_output, _layer_package, _layer_mistakes)
