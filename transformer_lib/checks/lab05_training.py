"""Checks for lab 5 (efficient training): ``check_flops_per_token``, ``check_train_step``,
``check_lr_schedule``, ``check_resume``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import numbers
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from transformer_lib.checks.engine import (
    call_learner,
    format_kwargs,
    isolated,
    isolated_training,
    passed,
    randomize,
)
from transformer_lib.gpt import GPT, GPTConfig, lm_loss
from transformer_lib.training import warmup_cosine_schedule


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


@isolated
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
        out = call_learner(check, f"running {where}", fn, shape.config)
        value = _as_number(out)
        if value is None:
            raise AssertionError(f"{check}: return the FLOPs per token as a number (a float); "
                                 f"yours returned {_what_it_is(out)}\n  in {where}")
        got.append(value)
    want = [float(flops_per_token(shape.config)) for shape in shapes]
    wrong = [i for i in range(total) if not _close_rel(got[i], want[i], _FLOPS_RTOL)]
    if not wrong:
        passed(check, total)
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
        case.template = randomize(_tiny_gpt(100 + number), g)
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


@isolated_training
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
            return call_learner(check, f"running update {update} of {_STEP_UPDATES} in {where}", fn, model,
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
    passed(check, total)


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


@isolated
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
        where = f"case {number} of {total} ({format_kwargs(setting)})"
        values = []
        for step in steps:
            try:
                out = call_learner(check, f"computing step {step} of {where}", fn, step, *args)
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
        passed(check, total)
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
             f"  in case {first_wrong + 1} of {total} ({format_kwargs(setting)})",
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


@isolated_training
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
            call_learner(check, f"saving after step {saved_at} in {where}", save_state, path, model,
                  optimizer, saved_at, generator)
            step = call_learner(check, f"loading the checkpoint saved after step {saved_at} in {where}",
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
    passed(check, total)
