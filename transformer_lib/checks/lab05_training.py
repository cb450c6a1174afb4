"""Checks for lab 5 (efficient training): ``check_flops_per_token``, ``check_train_step``,
``check_lr_schedule``, ``check_resume``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``. Each check's
known mistakes are ``engine.Mistake``s, named only through ``engine.diagnose``; the first three
register an ``engine.Spec`` (``tests/test_checks_specs.py``).
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
    Case,
    Mistake,
    Spec,
    call_learner,
    diagnose,
    diagnose_at,
    format_kwargs,
    isolated,
    isolated_training,
    passed,
    quietly,
    randomize,
    register,
)
from transformer_lib.efficiency import flops_per_token
from transformer_lib.gpt import GPT, GPTConfig, lm_loss
from transformer_lib.training import clip_grad_norm, warmup_cosine_schedule


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


def _diagnosis(mistakes: Sequence[Mistake], evidence: Sequence[tuple[Case, Any]], failed: int,
               agree: Callable[[Any, Any], bool]) -> str | None:
    """The known mistake that the learner's outputs show, worded for ``evidence[failed]`` (the
    first wrong case): on every case; then, for code with two mistakes, on the cases up to the
    first wrong one (:func:`engine.diagnose_at`), but only where those are two or more, so that a
    diagnosis never rests on one case alone."""
    if failed == 0:
        return diagnose(mistakes, evidence, evidence[0][0], agree)
    return diagnose_at(mistakes, evidence, failed, evidence[failed][1], None, agree)


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
          extra: int = 0, layers: int | None = None, out_per_layer: bool = False) -> int:
        """N, the weights that multiply activations (with switches for common mistakes)."""
        F = self.F if F is None else F
        L = self.L if layers is None else layers
        per_layer = attention * self.D ** 2 + ffn * self.D * F
        if out_per_layer:
            return L * (per_layer + out * self.D * self.V) + extra
        return L * per_layer + out * self.D * self.V + extra

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
    {"vocab_size": 3000, "context_length": 128, "d_model": 512, "num_heads": 8, "num_layers": 6,
     "tie_output": False},
)
_FLOPS_RTOL = 0.01  # biases and LayerNorms add well under 1% at D >= 256: counting them is fine


def _flops_cases() -> list[Case]:
    cases = []
    for number, options in enumerate(_FLOPS_CONFIGS, 1):
        config = GPTConfig(**options)
        cases.append(Case(f"config {number}", {"config": config},
                          state={"shape": _Shape.of(config)}))
    return cases


def _shape(case: Case) -> _Shape:
    return case.state["shape"]


def _flops_reference(case: Case) -> float:
    """6N + 12·L·T·D, every switch of the mistakes' math off."""
    s = _shape(case)
    return float(6 * s.n() + s.attention)


def _flops_package(case: Case) -> float:
    return float(flops_per_token(case.inputs["config"]))


def _same_count(got: Any, want: Any) -> bool:
    """Two FLOP counts agree to 1% (``None``, a count that could not be computed, agrees with
    nothing)."""
    if got is None or want is None:
        return False
    return math.isfinite(got) and abs(got - want) <= _FLOPS_RTOL * abs(want)


def _count(message: str | Callable[[Case], str], count: Callable[[_Shape], float]) -> Mistake:
    """A mistake in the FLOP count: ``count(shape)`` is what code that makes it returns."""
    return Mistake(message, lambda case: float(count(_shape(case))))


def _flops_mistakes() -> list[Mistake]:
    every = ("your N includes the embedding tables (as sum(p.numel() for p in model.parameters()) "
             "does): the position embeddings are a lookup, not a multiplication, and so is the "
             "input token table when it is not tied to the output; N counts only the weights that "
             "multiply activations, L(4D² + 2DF) + DV")
    layers = ("the layers are counted once: N's per-layer weights (4D² + 2DF) and the attention "
              "term (12·T·D) both come once per layer, so multiply each by L = num_layers")

    return [
        _count("this counts the forward pass only (2N + 4·L·T·D): training adds the backward pass, "
               "which costs twice the forward (gradients for the inputs and for the weights), so "
               "6N + 12·L·T·D", lambda s: 2 * s.n() + s.attention / 3),
        _count("the backward pass is counted as one forward pass (4N + 8·L·T·D): it costs two "
               "(gradients for the inputs and for the weights), so training costs 6N + 12·L·T·D",
               lambda s: 4 * s.n() + 2 * s.attention / 3),
        _count("the weights are counted for the forward pass only (2N): with the backward pass "
               "each weight costs 6 FLOPs per token, 6N (the attention term 12·L·T·D is right)",
               lambda s: 2 * s.n() + s.attention),
        _count("a multiply-add is counted as 1 FLOP (3N + 6·L·T·D): it is 2, one multiplication "
               "and one addition, so 6N + 12·L·T·D", lambda s: 3 * s.n() + s.attention / 2),
        _count("the attention term is missing (this is 6N only): Q·Kᵀ and the weighted sum of the "
               "values multiply activations by activations, which no weight counts; add 12·L·T·D",
               lambda s: 6 * s.n()),
        _count("the attention term counts only the forward pass (4·L·T·D): with the backward it is "
               "three times that, 12·L·T·D", lambda s: 6 * s.n() + s.attention / 3),
        _count("the attention term is halved (a causal kernel skips about half of it): by "
               "convention (PaLM, nanoGPT) it is counted in full, 12·L·T·D",
               lambda s: 6 * s.n() + s.attention / 2),
        _count("the attention term is multiplied by the number of heads: 12·L·T·D already covers "
               "all H heads (H·d_head = D)", lambda s: 6 * s.n() + s.attention * s.H),
        _count("the attention term uses the head size D/H (12·L·T·D/H): the H heads together cover "
               "d_model, so it is 12·L·T·D", lambda s: 6 * s.n() + s.attention / s.H),
        _count("the attention term is per window, not per token (12·L·T²·D): per token it is "
               "12·L·T·D", lambda s: 6 * s.n() + s.attention * s.T),
        _count("the attention term has T where D belongs (12·L·T²): it is 12·L·T·D, T keys of D "
               "numbers for each token", lambda s: 6 * s.n() + 12 * s.L * s.T * s.T),
        _count("this is the cost of a whole window of T tokens: divide by T = context_length, the "
               "answer is per token", lambda s: (6 * s.n() + s.attention) * s.T),
        _count(layers, lambda s: 6 * s.n(layers=1) + s.attention / s.L),
        _count("the attention term is counted once, not once per layer: multiply it by L = "
               "num_layers, 12·L·T·D", lambda s: 6 * s.n() + s.attention / s.L),
        _count("the output projection (D·V) is counted once per layer: it runs once, after the "
               "last layer, so N = L(4D² + 2DF) + DV",
               lambda s: 6 * s.n(out_per_layer=True) + s.attention),
        _count(every, lambda s: 6 * s.P + s.attention),
        _count(every + "; and add the attention term, 12·L·T·D", lambda s: 6 * s.P),
        _count("the position-embedding table (C·D) is counted in N: position embeddings are a "
               "lookup, not a multiplication", lambda s: 6 * s.n(extra=s.C * s.D) + s.attention),
        _count("the token table is counted twice (D·V for the input and D·V for the output): the "
               "input embedding is a lookup, which costs nothing; only the output projection "
               "multiplies, once, whether or not it is tied",
               lambda s: 6 * s.n(out=2) + s.attention),
        _count("with tie_output=False the input token table is counted too: it is a lookup, not a "
               "multiplication; only the output projection (D·V) counts, tied or not",
               lambda s: 6 * s.n(out=1 if s.tied else 2) + s.attention),
        _count("the output projection (D·V, the logits) is missing from N: it multiplies every "
               "position's vector by a (D, V) matrix, tied or not",
               lambda s: 6 * s.n(out=0) + s.attention),
        _count(lambda case: f"the feed-forward width is taken as 4·d_model: use config.d_ff "
                            f"(here F = {_shape(case).F}, not 4·D = {4 * _shape(case).D})",
               lambda s: 6 * s.n(F=4 * s.D) + s.attention),
        _count("the feed-forward has two matrices, D×F and F×D: 2·D·F weights per layer",
               lambda s: 6 * s.n(ffn=1) + s.attention),
        _count("the attention has four projections (query, key, value and output): 4·D² weights "
               "per layer", lambda s: 6 * s.n(attention=3) + s.attention),
    ]


@isolated
def check_flops_per_token(fn: Callable[..., Any]) -> None:
    """Check ``fn(config: GPTConfig) -> float``, the training FLOPs per token (forward and
    backward) of a :class:`transformer_lib.GPT` at ``T = config.context_length``, as
    :func:`transformer_lib.efficiency.flops_per_token`: :math:`6N + 12LTD` with
    :math:`N = L(4D^2 + 2DF) + DV`, the weights that multiply activations.

    Agreement to 1% is enough (counting the biases and LayerNorms too is fine). The configs have
    different L, T, D, H, F and V, ``d_ff`` other than ``4 * d_model``, and untied output
    projections. A wrong count is compared with the known mistakes on every config.
    """
    check = "check_flops_per_token"
    cases = _flops_cases()
    total = len(cases)
    got: list[float] = []
    for number, case in enumerate(cases, 1):
        where = case.where = f"case {number} of {total} ({_shape(case).describe()})"
        out = call_learner(check, f"running {where}", fn, case.inputs["config"])
        value = _as_number(out)
        if value is None:
            raise AssertionError(f"{check}: return the FLOPs per token as a number (a float); "
                                 f"yours returned {_what_it_is(out)}\n  in {where}")
        got.append(value)
    want = [_flops_reference(case) for case in cases]
    wrong = [i for i in range(total) if not _same_count(got[i], want[i])]
    if not wrong:
        passed(check, total)
        return
    first = wrong[0]
    shape = _shape(cases[first])
    diagnosis = _diagnosis(_flops_mistakes(), list(zip(cases, got)), first, _same_count)
    diagnosis = diagnosis or ("your count differs from 6N + 12·L·T·D by more than 1%, and it "
                              "matches none of the common mistakes this check knows; count N "
                              "layer by layer, then add the attention term")
    lines = [f"{check}: {diagnosis}",
             f"  in {cases[first].where}",
             f"  expected 6N + 12·L·T·D with N = L(4D² + 2DF) + DV = {shape.n():,} "
             f"(L={shape.L}, D={shape.D}, F={shape.F}, V={shape.V}, T={shape.T}); every case:"]
    for i, case in enumerate(cases):
        s = _shape(case)
        mark = "   <- more than 1% off" if i in wrong else ""
        lines.append(f"    case {i + 1} (L={s.L}, D={s.D}, F={s.F}, V={s.V}, T={s.T}, "
                     f"{'tied' if s.tied else 'untied'}): yours {got[i]:.5g}, expected "
                     f"{want[i]:.5g} (x{got[i] / want[i]:.3f}){mark}")
    raise AssertionError("\n".join(lines))


register(Spec(check="check_flops_per_token", cases=_flops_cases, reference=_flops_reference,
              package=_flops_package, mistakes=_flops_mistakes, agree=_same_count))


# --- one optimizer update with gradient accumulation ---


@dataclass(frozen=True)
class _StepBug:
    """Switches for known mistakes of ``train_step`` (the defaults: the right answer)."""

    divide: str = "K"  # the micro-batch's loss divided by "K", "none", or "batch" (its B windows)
    zero: str = "start"  # "start" (once per update), "each" (before every backward), "never",
    #                      "before_step" (between the backward passes and step: no update)
    step: str = "after"  # "after" (once, after the loop); "each" (after every micro-batch, then
    #                      zero_grad); "each_keep" (after every micro-batch, no zero_grad);
    #                      "before" (step and zero_grad first, then the backward passes)
    clip: str = "sum"  # "sum" (once, after the loop), "each" (each micro-batch's own gradient),
    #                    "running" (the sum so far, after every backward), "before_last" (the sum
    #                    so far, just before the last backward), "before_each" (the sum so far,
    #                    before every backward), "none"
    data: str = "all"  # which (x, y) the loop sees: "all"; "first" (micro_batches[0], K times);
    #                    "drop_first", "drop_last" (K - 1 of them); "swapped" (y as the input);
    #                    "shifted" (targets shifted once more: logits[:, :-1] against y[:, 1:])
    returns: str = "mean"  # "mean", "last", "first", "sum", "divided" (the mean of loss / K),
    #                        "last_divided" (the last micro-batch's loss / K)
    scaler: str = ""  # a GradScaler (its first scale, 2**16) misused: "clip_scaled" (no
    #                   scaler.unscale_ before clipping), "step_scaled" (optimizer.step() directly)


_SCALE = 2.0 ** 16  # torch.amp.GradScaler's init_scale


def _clip(model: nn.Module, max_grad_norm: float | None) -> None:
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)


def _micro_batches(batches: Sequence[tuple[Tensor, Tensor]],
                   data: str) -> list[tuple[Tensor, Tensor]]:
    """The micro-batches that the loop of code with the mistake ``data`` sees."""
    if data == "first":
        return [batches[0]] * len(batches)
    if data == "drop_first":
        return list(batches[1:])
    if data == "drop_last":
        return list(batches[:-1])
    if data == "swapped":
        return [(y, x) for x, y in batches]
    return list(batches)


def _train_step_math(model: nn.Module, optimizer: torch.optim.Optimizer,
                     micro_batches: Sequence[tuple[Tensor, Tensor]],
                     dtype: torch.dtype | None = None,
                     max_grad_norm: float | None = None, *, bug: _StepBug | None = None) -> float:
    """One update by gradient accumulation, with switches for common mistakes."""
    bug = bug or _StepBug()
    K = len(micro_batches)
    params = list(model.parameters())
    if bug.step == "before":
        optimizer.step()
    if bug.zero == "start":
        optimizer.zero_grad()
    used = _micro_batches(micro_batches, bug.data)
    losses = []
    for number, (x, y) in enumerate(used, 1):
        if bug.zero == "each":
            optimizer.zero_grad()
        if bug.clip == "before_each" or (bug.clip == "before_last" and number == len(used)):
            _clip(model, max_grad_norm)
        saved = None
        if bug.clip == "each":  # this micro-batch's gradient alone, clipped, then added
            saved = [p.grad for p in params]
            for p in params:
                p.grad = None
        context = (torch.autocast(device_type=x.device.type, dtype=dtype) if dtype is not None
                   else contextlib.nullcontext())
        with context:
            logits = model(x)
            loss = (lm_loss(logits[:, :-1], y[:, 1:]) if bug.data == "shifted"
                    else lm_loss(logits, y))
        losses.append(loss.item())
        divisor = {"K": K, "none": 1, "batch": x.size(0)}[bug.divide]
        (loss / divisor * (_SCALE if bug.scaler else 1.0)).backward()
        if bug.clip in ("each", "running"):
            _clip(model, max_grad_norm)
        if saved is not None:
            for p, g in zip(params, saved):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        if bug.step in ("each", "each_keep"):
            optimizer.step()
            if bug.step == "each":
                optimizer.zero_grad()
    if bug.clip == "sum":
        _clip(model, max_grad_norm)
    if bug.scaler == "clip_scaled":  # scaler.step(optimizer) unscales what was clipped scaled
        for p in params:
            if p.grad is not None:
                p.grad /= _SCALE
    if bug.zero == "before_step":
        optimizer.zero_grad()
    if bug.step == "after":
        optimizer.step()
    if not losses:
        return 0.0
    mean = sum(losses) / K
    return {"mean": mean, "last": losses[-1], "first": losses[0], "sum": sum(losses),
            "divided": mean / K, "last_divided": losses[-1] / K}[bug.returns]


_STEP_LR = 0.5  # plain SGD: an update proportional to the gradient (AdamW would hide its scale)
_STEP_UPDATES = 2  # two updates in a row on the same model: gradients must not leak into the next


@dataclass
class _StepCase(Case):
    """A case of ``check_train_step``: K micro-batches of ``batch`` windows for each of the two
    updates, the options passed, and the model they start from."""

    K: int = 1
    batch: int = 1  # windows per micro-batch
    dtype: torch.dtype | None = None
    max_grad_norm: float | None = None
    updates: list[list[tuple[Tensor, Tensor]]] = field(default_factory=list)
    template: nn.Module | None = None

    def kwargs(self) -> dict[str, Any]:
        options = {"dtype": self.dtype, "max_grad_norm": self.max_grad_norm}
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

    case: _StepCase
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
    run = _StepRun(case)
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
    """The run of code with the mistakes ``bug`` on a case (computed once per case)."""
    key = ("run", bug)
    if key not in case.state:
        case.state[key] = _step_run(case, lambda model, optimizer, batches, number:
                                    _train_step_math(model, optimizer, batches, case.dtype,
                                                     case.max_grad_norm, bug=bug))
    return case.state[key]


def _step_reference(case: _StepCase) -> _StepRun:
    return _step_variant(case, _StepBug())


def _step_package(case: _StepCase) -> _StepRun:
    """The update on the whole batch at once (the micro-batches have equal sizes, so their mean
    loss is the batch's), clipped with the package's :func:`transformer_lib.clip_grad_norm`."""

    def whole_batch(model: nn.Module, optimizer: torch.optim.Optimizer,
                    batches: list[tuple[Tensor, Tensor]], number: int) -> float:
        x = torch.cat([x for x, _ in batches])
        y = torch.cat([y for _, y in batches])
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=case.dtype, enabled=case.dtype is not None):
            loss = lm_loss(model(x), y)
        loss.backward()
        if case.max_grad_norm is not None:
            clip_grad_norm(model.parameters(), case.max_grad_norm)
        optimizer.step()
        return loss.item()

    return _step_run(case, whole_batch)


def _step_cases(g: torch.Generator | None = None) -> list[_StepCase]:
    g = torch.Generator().manual_seed(0) if g is None else g
    V, T = _TINY_GPT["vocab_size"], _TINY_GPT["context_length"]
    cases = [
        _StepCase("one micro-batch, dtype and max_grad_norm left at their defaults", {}, K=1,
                  batch=4),
        _StepCase("two micro-batches", {}, K=2, batch=2),
        _StepCase("four micro-batches", {}, K=4, batch=2),
        _StepCase("clipping: the gradient's norm is well above max_grad_norm", {}, K=2, batch=2,
                  max_grad_norm=0.05),
        _StepCase("clipping, three micro-batches", {}, K=3, batch=2, max_grad_norm=0.1),
        _StepCase("bfloat16 autocast", {}, K=2, batch=2, dtype=torch.bfloat16),
    ]
    for number, case in enumerate(cases):
        # random weights, not GPT-2's small ones: the micro-batches' losses then differ clearly
        case.template = randomize(_tiny_gpt(100 + number), g)
        case.updates = [[(torch.randint(0, V, (case.batch, T), generator=g),
                          torch.randint(0, V, (case.batch, T), generator=g))
                         for _ in range(case.K)] for _ in range(_STEP_UPDATES)]
    return cases


def _step_mistake(message: str | Callable[[Case], str], bug: _StepBug) -> Mistake:
    """A mistake in ``train_step``: its run is the reference's with the switches ``bug``."""
    return Mistake(message, functools.partial(_step_variant, bug=bug))


def _step_mistakes() -> list[Mistake]:
    """The known mistakes that change the parameters after an update."""
    step_each = ("optimizer.step() runs after every micro-batch: that makes K updates instead of "
                 "one; call it once, after the loop over the micro-batches")
    clip_in_loop = ("the gradient is clipped inside the loop, micro-batch by micro-batch: clip "
                    "once, after all K backward passes, the accumulated gradient (the whole "
                    "batch's): torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm) "
                    "just before optimizer.step()")
    clip_before_last = ("the gradient is clipped before the last micro-batch's backward, so that "
                        "micro-batch's gradient is added after the clipping, unclipped: clip once, "
                        "after all K backward passes, just before optimizer.step()")
    left_out = ("one micro-batch is left out: the loop runs over K - 1 of them (micro_batches[1:] "
                "or range(K - 1)?); every one of the K micro-batches must add its gradient")
    return [
        _step_mistake(lambda case: f"the loss is not divided by K = {case.K}: the gradients of "
                                   f"the K micro-batches add up, so the update is K times too "
                                   f"large; call backward on lm_loss(model(x), y) / K",
                      _StepBug(divide="none")),
        _step_mistake(lambda case: f"the loss is divided by the micro-batch's size (B = "
                                   f"{case.batch} windows) instead of by the number of "
                                   f"micro-batches (K = {case.K}): lm_loss already averages over "
                                   f"the B·T positions; divide by K = len(micro_batches)",
                      _StepBug(divide="batch")),
        _step_mistake(step_each, _StepBug(step="each")),
        _step_mistake(step_each, _StepBug(step="each_keep")),
        _step_mistake("optimizer.step() runs before the backward passes, so each call applies the "
                      "gradients of the call before it (and the first call changes nothing): take "
                      "the step once, after the last backward (and after the clipping)",
                      _StepBug(step="before")),
        _step_mistake("only the last micro-batch's gradient reaches the update: the gradients are "
                      "set to zero before every backward (or backward runs only once, after the "
                      "loop); zero them once per update, and call backward on every micro-batch's "
                      "loss", _StepBug(zero="each")),
        _step_mistake("the gradients are never set to zero, so the second update also adds the "
                      "first one's gradient: call optimizer.zero_grad() once per update, before "
                      "the first backward or after optimizer.step()", _StepBug(zero="never")),
        _step_mistake("the parameters did not change: is optimizer.step() missing, or are the "
                      "gradients set to zero between the backward passes and step? Call step after "
                      "the last backward, and zero the gradients after it (or before the first "
                      "backward)", _StepBug(zero="before_step")),
        _step_mistake(clip_in_loop, _StepBug(clip="each")),
        _step_mistake(clip_in_loop, _StepBug(clip="running")),
        _step_mistake(clip_before_last, _StepBug(clip="before_last")),
        _step_mistake(clip_before_last, _StepBug(clip="before_each")),
        _step_mistake("max_grad_norm is ignored, or the clipping has no effect: clip the gradient "
                      "after all the backward passes and before optimizer.step() (before the "
                      "backward passes there is nothing to clip; after step it is too late)",
                      _StepBug(clip="none")),
        _step_mistake("the gradient is clipped while the GradScaler's scale still multiplies it, "
                      "so the clipping shrinks it far too much: call scaler.unscale_(optimizer) "
                      "before clipping (with bfloat16 no scaler is needed at all)",
                      _StepBug(scaler="clip_scaled")),
        _step_mistake("optimizer.step() sees the gradients still multiplied by the GradScaler's "
                      "scale: step with scaler.step(optimizer), which unscales them, then "
                      "scaler.update() (with bfloat16 no scaler is needed at all)",
                      _StepBug(scaler="step_scaled")),
        _step_mistake("only the first micro-batch's data reaches the update (micro_batches[0], "
                      "perhaps K times): loop over every (x, y) in micro_batches",
                      _StepBug(data="first")),
        _step_mistake(left_out, _StepBug(data="drop_first")),
        _step_mistake(left_out, _StepBug(data="drop_last")),
        _step_mistake("the inputs and the targets are swapped: each micro-batch is a pair (x, y), "
                      "the input ids first; the loss is lm_loss(model(x), y)",
                      _StepBug(data="swapped")),
        _step_mistake("the targets are shifted once more (logits[:, :-1] against y[:, 1:]?): y is "
                      "already aligned with the logits, y[:, t] is the target of position t (the "
                      "token after x[:, t]); the loss is lm_loss(model(x), y)",
                      _StepBug(data="shifted")),
    ]


def _loss_mistakes() -> list[Mistake]:
    """The known mistakes in the loss returned (with the right update)."""
    return [
        _step_mistake("the loss returned is the last micro-batch's: return the mean of the K "
                      "micro-batch losses, the loss of the whole batch", _StepBug(returns="last")),
        _step_mistake("the loss returned is the last micro-batch's, divided by K: return the mean "
                      "of the K micro-batch losses (the sum of the divided ones), the loss of the "
                      "whole batch", _StepBug(returns="last_divided")),
        _step_mistake("the loss returned is the first micro-batch's: return the mean of the K "
                      "micro-batch losses, the loss of the whole batch", _StepBug(returns="first")),
        _step_mistake("the loss returned is the sum of the K micro-batch losses: return their "
                      "mean, the loss of the whole batch", _StepBug(returns="sum")),
        _step_mistake("the loss returned is divided by K twice (the mean of loss / K): return the "
                      "mean of the micro-batch losses as lm_loss gives them (or the sum of the "
                      "divided ones)", _StepBug(returns="divided")),
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


def _same_update(got: _StepRun | None, want: _StepRun | None) -> bool:
    """The parameters after every update agree, relative to the size of the updates."""
    if got is None or want is None or len(got.params) != len(want.params):
        return False
    case = want.case
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


def _same_losses(got: _StepRun | None, want: _StepRun | None) -> bool:
    """The losses returned by every update agree."""
    if got is None or want is None or len(got.returned) != len(want.returned):
        return False
    return all(_loss_match(a, b, want.case) for a, b in zip(got.returned, want.returned))


def _same_run(got: _StepRun | None, want: _StepRun | None) -> bool:
    return _same_update(got, want) and _same_losses(got, want)


def _step_param_diff(got: Tensor, want: Tensor, start: Tensor, model: nn.Module,
                     update: int) -> str:
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
    """Check ``fn(model, optimizer, micro_batches, dtype=None, max_grad_norm=None) -> float``: one
    optimizer update by gradient accumulation over ``micro_batches = [(x, y), ...]`` (K pairs of
    ``(B, T)`` token ids). For each micro-batch: the forward pass under
    ``torch.autocast(device_type=x.device.type, dtype=dtype)`` if ``dtype`` is not None (no
    autocast otherwise), ``loss = lm_loss(model(x), y) / K``, ``loss.backward()``; then, if
    ``max_grad_norm`` is given, the global gradient norm clipped to it, once;
    ``optimizer.step()``; the gradients set to zero (before the first backward or after the
    step). It returns the mean of the K micro-batch losses (the loss of the whole batch) as a
    Python float (``.item()``): a tensor is rejected.

    The cases: a tiny :class:`transformer_lib.GPT` trained by plain SGD (whose update shows the
    gradient's scale, which AdamW would hide), two updates in a row on the same model (gradients
    must not leak into the next update), K = 1, 2, 3 and 4, clipping that is active, and bfloat16
    autocast (a hook checks that the Linear layers ran in bfloat16; the weights must stay float32).
    At a failure the learner's code also runs on the later cases, and a known mistake is named
    only when it fits the parameters (or the losses returned) on every case.
    """
    check = "check_train_step"
    cases = _step_cases(torch.Generator().manual_seed(seed))
    total = len(cases)

    def learner(case: _StepCase) -> _StepRun:
        def step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Any,
                 update: int) -> Any:
            return call_learner(check, f"running update {update} of {_STEP_UPDATES} in "
                                f"{case.where}", fn, model, optimizer, batches, **case.kwargs())

        return _step_run(case, step)

    def evidence_from(number: int, got: _StepRun) -> list[tuple[Case, Any]]:
        """The runs so far (every one right), this one, and the later ones that run at all."""
        later = []
        for other_number, other in enumerate(cases[number:], number + 1):
            other.where = f"case {other_number} of {total} ({other.describe()})"
            try:
                later.append((other, learner(other)))
            except (AssertionError, NotImplementedError):
                continue
        return [*seen, (cases[number - 1], got), *later]

    seen: list[tuple[Case, Any]] = []  # the cases passed, for the diagnosis
    for number, case in enumerate(cases, 1):
        where = case.where = f"case {number} of {total} ({case.describe()})"
        got = learner(case)
        want = _step_reference(case)
        start = _flat(case.template)
        for update in range(_STEP_UPDATES):
            at = f"\n  in update {update + 1} of {_STEP_UPDATES} of {where}"
            if got.weight_dtypes[update] != {torch.float32}:
                dtypes = ", ".join(sorted(str(d) for d in got.weight_dtypes[update]))
                raise AssertionError(
                    f"{check}: your function changed the weights' dtype to {dtypes} (model.to(...) "
                    "or .half()?): keep the weights in float32 and run only the forward pass "
                    f"under torch.autocast(device_type=x.device.type, dtype=dtype){at}")
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
            error = _params_error(got.params[update], want.params[update], before)
            if error > _param_tolerance(case):
                problem = _diagnosis(_step_mistakes(), evidence_from(number, got), len(seen),
                                     _same_update)
                case.where = where
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
                problem = _diagnosis(_loss_mistakes(), evidence_from(number, got), len(seen),
                                     _same_losses)
                case.where = where
                problem = problem or ("the loss returned differs from the mean of the K "
                                      "micro-batch losses, and it matches none of the common "
                                      "mistakes this check knows")
                raise AssertionError(f"{check}: {problem}{at}\n  the loss returned: yours "
                                     f"{returned:.6f}, expected {expected:.6f}")
        seen.append((case, got))
    passed(check, total)


register(Spec(check="check_train_step", cases=quietly(_step_cases), reference=_step_reference,
              package=_step_package, mistakes=lambda: [*_step_mistakes(), *_loss_mistakes()],
              agree=_same_run))


# --- the learning-rate schedule ---


def _cosine(p: float, max_lr: float, min_lr: float) -> float:
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * p))


def _lr_math(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    return max_lr * warmup_cosine_schedule(step, warmup_steps, total_steps,
                                           min_factor=min_lr / max_lr)


def _lr_bug(*, warmup: Callable[[int, float, float, int], float] | None = None,
            decay: Callable[[int, float, float, int, int], float] | None = None,
            progress: Callable[[int, int, int], float] | None = None,
            curve: Callable[[float, float, float], float] | None = None,
            warmup_until: str = "<=") -> Callable[..., float]:
    """The schedule with a learner's mistake in one part: the ``warmup``, the whole ``decay``,
    the decay's ``progress`` p, or its ``curve(p, max_lr, min_lr)`` (with no argument: the
    schedule itself)."""

    def lr(s: int, M: float, m: float, w: int, N: int) -> float:
        warm = s <= w if warmup_until == "<=" else s < w
        if warm:
            return warmup(s, M, m, w) if warmup else M * s / w
        if decay:
            return decay(s, M, m, w, N)
        p = min(1.0, progress(s, w, N) if progress else (s - w) / (N - w))
        return curve(p, M, m) if curve else _cosine(p, M, m)

    return lr


_LR_CASES: tuple[tuple[dict[str, Any], tuple[int, ...]], ...] = (
    ({"max_lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "total_steps": 100},
     (1, 2, 5, 9, 10, 11, 30, 55, 80, 99, 100, 101, 150)),
    ({"max_lr": 3.0, "min_lr": 0.3, "warmup_steps": 4, "total_steps": 12}, tuple(range(1, 17))),
    ({"max_lr": 6e-4, "min_lr": 0.0, "warmup_steps": 0, "total_steps": 50},
     (1, 2, 10, 25, 49, 50, 51, 80)),
    ({"max_lr": 0.5, "min_lr": 0.05, "warmup_steps": 1, "total_steps": 6}, tuple(range(1, 9))),
)


def _lr_cases() -> list[Case]:
    """One case per setting; its output is the learning rate at each of its steps."""
    return [Case(f"setting {number}", dict(setting), state={"steps": steps})
            for number, (setting, steps) in enumerate(_LR_CASES, 1)]


def _lr_over_steps(schedule: Callable[..., float]) -> Callable[[Case], tuple[float, ...]]:
    """A case's output under ``schedule(step, max_lr, min_lr, warmup_steps, total_steps)``."""
    return lambda case: tuple(float(schedule(step, *case.inputs.values()))
                              for step in case.state["steps"])


_lr_reference = _lr_over_steps(_lr_bug())
_lr_package = _lr_over_steps(_lr_math)


def _lr_mistake(message: str, schedule: Callable[..., float]) -> Mistake:
    """A mistake in the schedule: ``schedule(step, max_lr, min_lr, warmup_steps, total_steps)``
    is what code that makes it returns."""
    return Mistake(message, _lr_over_steps(schedule))


def _lr_mistakes() -> list[Mistake]:
    progress = ("the decay's progress is measured over total_steps: measure it from the end of the "
                "warmup, p = (step - warmup_steps) / (total_steps - warmup_steps), so that it goes "
                "from 0 at warmup_steps to 1 at total_steps")
    no_warmup = ("there is no warmup: for step <= warmup_steps the learning rate rises linearly "
                 "from 0, max_lr * step / warmup_steps")
    floor_warmup = ("the warmup uses floor division (//), which rounds down: "
                    "max_lr * step / warmup_steps, with /")
    late_decay = ("the decay starts one step late: step warmup_steps + 1 gets max_lr again; the "
                  "progress p = (step - warmup_steps) / (total_steps - warmup_steps) is 0 at "
                  "warmup_steps and 1 at total_steps")
    formula = "min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * p))"
    return [
        _lr_mistake("this is the multiplier (between 0 and 1) of warmup_cosine_schedule: multiply "
                    "it by max_lr", lambda s, M, m, w, N: _lr_math(s, M, m, w, N) / M),
        _lr_mistake("your schedule is one step late: steps count from 1 (the number of the update "
                    "about to be made), so step 1 gets max_lr / warmup_steps and step warmup_steps "
                    "gets max_lr; yours gives step s the value of step s - 1",
                    lambda s, M, m, w, N: (_lr_math(s - 1, M, m, w, N) if s > 1
                                           else 0.0 if w else M)),
        _lr_mistake("an off-by-one in the warmup: with steps counted from 1, the warmup gives "
                    "max_lr * step / warmup_steps (step warmup_steps reaches max_lr); yours uses "
                    "step - 1", _lr_bug(warmup=lambda s, M, m, w: M * (s - 1) / w)),
        _lr_mistake("an off-by-one in the warmup: with steps counted from 1, the warmup gives "
                    "max_lr * step / warmup_steps (step 1 gets max_lr / warmup_steps); yours uses "
                    "step + 1",
                    _lr_bug(warmup=lambda s, M, m, w: M * (s + 1) / w, warmup_until="<")),
        _lr_mistake("an off-by-one in the warmup: it divides by warmup_steps + 1, so it never "
                    "reaches max_lr; use max_lr * step / warmup_steps",
                    _lr_bug(warmup=lambda s, M, m, w: M * s / (w + 1))),
        _lr_mistake(floor_warmup, _lr_bug(warmup=lambda s, M, m, w: M * (s // w))),
        _lr_mistake(floor_warmup, _lr_bug(warmup=lambda s, M, m, w: M * s // w)),
        _lr_mistake(no_warmup, _lr_bug(warmup=lambda s, M, m, w: M)),
        _lr_mistake(no_warmup, lambda s, M, m, w, N: _cosine(min(1.0, s / N), M, m)),
        _lr_mistake(no_warmup, lambda s, M, m, w, N: _cosine(min(1.0, (s - 1) / N), M, m)),
        _lr_mistake("the warmup starts from min_lr: it rises from 0, max_lr * step / warmup_steps",
                    _lr_bug(warmup=lambda s, M, m, w: m + (M - m) * s / w)),
        _lr_mistake(f"the cosine decays to 0: it must end at min_lr, {formula}",
                    _lr_bug(curve=lambda p, M, m: _cosine(p, M, 0.0))),
        _lr_mistake(f"min_lr is added to the whole cosine, which then starts at max_lr + min_lr: "
                    f"scale the cosine by max_lr - min_lr, {formula}",
                    _lr_bug(curve=lambda p, M, m: m + _cosine(p, M, 0.0))),
        _lr_mistake(progress, _lr_bug(progress=lambda s, w, N: s / N)),
        _lr_mistake(progress, _lr_bug(progress=lambda s, w, N: (s - w) / N)),
        _lr_mistake(late_decay, _lr_bug(progress=lambda s, w, N: (s - w - 1) / (N - w))),
        _lr_mistake(late_decay, _lr_bug(progress=lambda s, w, N: (s - w - 1) / (N - w - 1))),
        _lr_mistake("the decay's progress uses floor division (//), which stays 0 until "
                    "total_steps: use /, p = (step - warmup_steps) / (total_steps - warmup_steps)",
                    _lr_bug(progress=lambda s, w, N: (s - w) // (N - w))),
        _lr_mistake(f"the decay is linear: use half a cosine, {formula}",
                    _lr_bug(curve=lambda p, M, m: M - (M - m) * p)),
        _lr_mistake(f"the decay runs backwards, from min_lr up to max_lr: it goes from max_lr at "
                    f"warmup_steps down to min_lr, {formula} (1 + cos, not 1 - cos)",
                    _lr_bug(curve=lambda p, M, m: m + 0.5 * (M - m) * (1 - math.cos(math.pi * p)))),
        _lr_mistake(f"the factor 0.5 is missing: 1 + cos(pi * p) goes from 2 to 0, so the decay "
                    f"would start at 2·max_lr - min_lr; use {formula}",
                    _lr_bug(curve=lambda p, M, m: m + (M - m) * (1 + math.cos(math.pi * p)))),
        _lr_mistake("the cosine's argument is missing π: cos(p) for p from 0 to 1 only goes from "
                    "1 to 0.54; half a period is cos(pi * p)",
                    _lr_bug(curve=lambda p, M, m: m + 0.5 * (M - m) * (1 + math.cos(p)))),
        _lr_mistake("after total_steps the learning rate must stay at min_lr: clamp the progress, "
                    "p = min(1, (step - warmup_steps) / (total_steps - warmup_steps)); yours "
                    "follows the cosine back up",
                    _lr_bug(decay=lambda s, M, m, w, N: _cosine((s - w) / (N - w), M, m))),
        _lr_mistake("after total_steps the learning rate must stay at min_lr, not drop to 0",
                    _lr_bug(decay=lambda s, M, m, w, N: (_cosine((s - w) / (N - w), M, m)
                                                         if s <= N else 0.0))),
        _lr_mistake("this is a full cosine period, which comes back up to max_lr: the decay is "
                    "half a period, cos(pi * p) with p from 0 to 1",
                    _lr_bug(curve=lambda p, M, m: m + 0.5 * (M - m) * (1 + math.cos(
                        2 * math.pi * p)))),
        _lr_mistake(f"the decay is (max_lr - min_lr) * cos(pi * p), which goes below min_lr: use "
                    f"{formula}, which goes from max_lr to min_lr",
                    _lr_bug(curve=lambda p, M, m: m + (M - m) * math.cos(math.pi * p))),
    ]


def _lr_close(got: float | None, want: float, scale: float) -> bool:
    return got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9 * scale)


def _same_lrs(got: Sequence[float] | None, want: Sequence[float] | None) -> bool:
    """Two schedules agree at every step (to 1e-6, relative; near 0, to 1e-9 of the largest)."""
    if got is None or want is None or len(got) != len(want):
        return False
    scale = max((abs(v) for v in want), default=0.0)
    return all(_lr_close(a, b, scale) for a, b in zip(got, want))


@isolated
def check_lr_schedule(fn: Callable[..., Any]) -> None:
    """Check ``fn(step, max_lr, min_lr, warmup_steps, total_steps) -> float``, the learning rate
    of update ``step`` (counted from 1): ``max_lr * step / warmup_steps`` while
    ``step <= warmup_steps``, then half a cosine from ``max_lr`` (at ``warmup_steps``) down to
    ``min_lr`` (at ``total_steps``), and ``min_lr`` after that; that is
    ``max_lr * warmup_cosine_schedule(step, warmup_steps, total_steps, min_lr / max_lr)``.

    The settings: a long and a short schedule, ``warmup_steps`` 0 and 1, ``min_lr = 0``, and steps
    past ``total_steps``. Wrong rates are compared with the known mistakes on every setting.
    """
    check = "check_lr_schedule"
    cases = _lr_cases()
    total = len(cases)
    got: list[tuple[float, ...]] = []
    for number, case in enumerate(cases, 1):
        setting = case.inputs
        where = case.where = f"case {number} of {total} ({format_kwargs(setting)})"
        values = []
        for step in case.state["steps"]:
            try:
                out = call_learner(check, f"computing step {step} of {where}", fn, step,
                                   *setting.values())
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
        got.append(tuple(values))
    wants = [_lr_reference(case) for case in cases]
    wrong = [i for i in range(total) if not _same_lrs(got[i], wants[i])]
    if not wrong:
        passed(check, total)
        return
    first = wrong[0]
    diagnosis = _diagnosis(_lr_mistakes(), list(zip(cases, got)), first, _same_lrs)
    diagnosis = diagnosis or ("your learning rates differ from the schedule's, and they match "
                              "none of the common mistakes this check knows; compare your code "
                              "with the formula above, step by step")
    case = cases[first]
    scale = max(abs(v) for v in wants[first])
    lines = [f"{check}: {diagnosis}", f"  in {case.where}", "    step         yours      expected"]
    for step, value, want in zip(case.state["steps"], got[first], wants[first]):
        mark = "   <- wrong" if not _lr_close(value, want, scale) else ""
        lines.append(f"    {step:4d}  {value:12.6g}  {want:12.6g}{mark}")
    raise AssertionError("\n".join(lines))


register(Spec(check="check_lr_schedule", cases=_lr_cases, reference=_lr_reference,
              package=_lr_package, mistakes=_lr_mistakes, agree=_same_lrs))


# --- saving and resuming a training run ---


_RESUME_CASES = (
    # name, model options, save after this step, total steps, seeds (model, data order, resumed)
    ("tied embeddings, saved after step 3 of 6", {}, 3, 6, (11, 12, 13)),
    ("untied output projection, saved after step 4 of 7", {"tie_output": False}, 4, 7,
     (21, 22, 23)),
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
            step = call_learner(check,
                                f"loading the checkpoint saved after step {saved_at} in {where}",
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
