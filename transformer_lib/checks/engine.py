"""The engine of the lab checks: cases, comparisons, diffs, known mistakes and their diagnosis,
and calling the learner's code. Hand-written (not generated from a chapter); the checks
themselves live in one module per lab (``lab01_attention.py`` ... ``lab07_modern.py``), and
``tests/test_checks*.py`` hold the catalogue of wrong implementations they must diagnose.

Every check runs the learner's code on random inputs (from its own seeded generator, so the
notebook's random state is left alone) over the cases learners get wrong: keys and values of
different sizes, padding and causal masks, queries that may attend to nothing, both norm
placements, batches whose items need different answers, dropout in training mode. For a class,
the check builds the library's module with the same arguments, sets **every** parameter to
random values (LayerNorm gains and biases included), loads them into the learner's module by the
contract's names, and compares the two.

* On success a check prints one line: ``check_attention: all 7 cases pass``.
* On failure it raises ``AssertionError`` naming the likely mistake. Each check describes the
  mistakes it knows as :class:`Mistake` objects (what code with that mistake returns, and what
  to tell the learner); at the first failing case the learner's code also runs on the remaining
  cases, and :func:`diagnose` names a mistake only if it agrees with the learner's output on all
  of them (for code with two mistakes, on the cases up to the failure). Failing that, the check
  looks at properties of the output (NaN, weights on masked keys, rows that do not sum to one),
  and only then says that no known mistake fits. The message also shows the case and a small
  diff. Decoders are run on hand-made table models, whose answers are known and whose sources
  need different answers, and on small random Transformers; their diff shows the learner's
  sequences next to the expected ones. The training checks (lab 05) train tiny GPTs, with
  autograd on (plain SGD shows a gradient's scale, which AdamW would hide), and compare the
  parameters after each update; a count of FLOPs or a learning rate is compared as a number.
* An exception inside the learner's code is reported as such (``AssertionError: your code raised
  ...``, with the learner's lines); a ``NotImplementedError`` from a lab's stub becomes a
  friendly ``NotImplementedError`` saying which exercise is not done yet.
* In IPython, a verdict shows its message first and only the learner's own line of the
  traceback (:func:`show_in_notebook`).
* Every check registers a :class:`Spec` (its cases, its reference, the package's function, its
  mistakes), which ``tests/test_checks_specs.py`` uses to verify the check's design.
"""

from __future__ import annotations

import functools
import math
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

RTOL, ATOL = 1e-4, 1e-5  # float32 agreement: different but correct orders of operations pass
STUB = re.compile(r"^(Exercise \d+ \(.*\)): write your code here$", re.DOTALL)
THIS_FILE = Path(__file__).resolve()
TORCH_DIR = Path(torch.__file__).resolve().parent
PACKAGE_DIR = THIS_FILE.parents[1]  # transformer_lib/


# --- running a check ---------------------------------------------------------------------------


def isolated(check: Callable[..., None], *, autograd: bool = False) -> Callable[..., None]:
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
        except (AssertionError, NotImplementedError) as err:
            err.from_check = check.__name__  # type: ignore[attr-defined]  # see show_in_notebook
            raise
        finally:
            torch.set_num_threads(threads)

    return wrapper


def one_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run on one thread, as the checks run (see :func:`isolated`): for a :class:`Spec`'s
    functions, which the tests call outside a check (the tensors are tiny, and several threads
    on a busy machine make them many times slower)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def quietly(build: Callable[[], Any]) -> Callable[[], Any]:
    """A :class:`Spec`'s ``cases``: built as the check builds them, leaving the caller's random
    state alone."""

    def cases() -> Any:
        with torch.random.fork_rng(devices=[]):
            return build()

    return cases


# --- how a verdict looks in a notebook ---------------------------------------------------------


def show_in_notebook(shell: Any, etype: type[BaseException], value: BaseException, tb: Any,
                     tb_offset: int | None = None) -> list[str]:
    """IPython's handler for AssertionError and NotImplementedError: a check's verdict shows its
    message first and then only the learner's own line (the cell's call of the check), without
    the check's frames; any other exception gets IPython's usual traceback."""
    check = getattr(value, "from_check", None)
    if check is None:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return []
    red, bold, reset = "\x1b[31m", "\x1b[1m", "\x1b[0m"
    lines = [f"{red}{bold}{etype.__name__}{reset}: {value}"]
    calls = [frame for frame in traceback.extract_tb(tb)
             if not _inside_libraries(Path(frame.filename).resolve())]
    if calls:
        frame = calls[-1]
        code = f": {frame.line.strip()}" if frame.line else ""
        lines.append(f"\n({check} failed, called at line {frame.lineno}{code})")
    # what shell.showtraceback ends with (a kernel's hook)
    shell._showtraceback(etype, value, lines)
    return lines


def _inside_libraries(path: Path) -> bool:
    return PACKAGE_DIR in path.parents or TORCH_DIR in path.parents


def install_notebook_display() -> bool:
    """In IPython (a notebook's kernel), show check verdicts with :func:`show_in_notebook`.
    Leaves a shell alone that already has its own handler; returns whether it installed one."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "set_custom_exc") or shell.custom_exceptions:
        return False
    shell.set_custom_exc((AssertionError, NotImplementedError), show_in_notebook)
    return True


# --- calling the learner's code -------------------------------------------------------------


def learner_frames(err: BaseException, limit: int = 3) -> list[str]:
    """The learner's own lines from a traceback: not the package's, not PyTorch's."""
    frames = traceback.extract_tb(err.__traceback__)
    keep = []
    for frame in frames:
        if _inside_libraries(Path(frame.filename).resolve()):
            continue
        keep.append(frame)
    if not keep and frames:
        keep = [frames[-1]]
    lines = []
    for frame in keep[-limit:]:
        code = f": {frame.line.strip()}" if frame.line else ""
        lines.append(f"    line {frame.lineno}, in {frame.name}{code}")
    return lines


ERROR_HINTS = [
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


def call_learner(check: str, where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the learner's code; turn its exceptions into messages about the learner's code."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        stub = STUB.match(str(err))
        if stub:
            message = (f"{check}: {stub.group(1)} is not done yet. Replace the line "
                       f"`raise NotImplementedError(...)` with your code, run that cell, then run "
                       f"this check again.")
        else:
            message = (f"{check}: your code raised NotImplementedError({str(err)!r}): some part "
                       f"of it is not written yet.")
        raise NotImplementedError(message) from None
    except Exception as err:
        lines = [f"{check}: your code raised {type(err).__name__}: {err}", *learner_frames(err),
                 f"  while {where}"]
        for pattern, hint in ERROR_HINTS:
            if pattern in str(err):
                lines.append(f"  hint: {hint}")
        raise AssertionError("\n".join(lines)) from None


# --- cases, comparisons and diffs -----------------------------------------------------------


@dataclass
class Case:
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


def as_tuple(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def close(a: Any, b: Any) -> bool:
    """Same shape and dtype kind, equal to float32 rounding; NaN matches NaN."""
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape:
        return False
    if a.dtype == torch.bool or b.dtype == torch.bool:
        return a.dtype == b.dtype and bool((a == b).all())
    return torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL, equal_nan=True)


def same(got: Any, want: Any) -> bool:
    got, want = as_tuple(got), as_tuple(want)
    return len(got) == len(want) and all(close(a, b) for a, b in zip(got, want))


def fmt_number(value: float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"


def fmt_row(t: Tensor, limit: int = 6) -> str:
    values = t.flatten().tolist()
    text = ", ".join(fmt_number(v) for v in values[:limit])
    return f"[{text}{', ...' if len(values) > limit else ''}]"


def diff_tensor(name: str, got: Any, want: Tensor) -> str | None:
    """A few lines locating the largest difference; ``None`` if the tensors agree."""
    if not isinstance(got, Tensor):
        return (f"  {name}: yours is a {type(got).__name__}, "
                f"expected a tensor of shape {tuple(want.shape)}")
    if got.shape != want.shape:
        return f"  {name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if close(got, want):
        return None
    if want.dtype == torch.bool or got.dtype == torch.bool:
        wrong = got.bool() != want
        count = int(wrong.sum())
        lines = [f"  {name}: {count} of {want.numel()} entries differ (1 = True, 0 = False)"]
        if want.dim() == 2 and want.size(0) <= 8:
            for i in range(want.size(0)):
                lines.append(f"    row {i}: yours {fmt_row(got[i].bool(), 8)}   expected "
                             f"{fmt_row(want[i], 8)}")
        else:
            index = tuple(int(i) for i in wrong.nonzero()[0])
            lines.append(f"    yours    {fmt_row(got.bool()[index[:-1]], 8)} at {list(index[:-1])}")
            lines.append(f"    expected {fmt_row(want[index[:-1]], 8)}")
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
        return f"{head}\n    yours {fmt_number(g.item())}, expected {fmt_number(w.item())}"
    if not (want.is_floating_point() or got.is_floating_point()):
        g, w = g.long(), w.long()  # token ids and indices: show them as integers
    at = "[" + ", ".join([str(i) for i in index[:-1]] + [":"]) + "]"
    return "\n".join([head, f"    yours    {at} = {fmt_row(g[tuple(index[:-1])])}",
                      f"    expected {at} = {fmt_row(w[tuple(index[:-1])])}"])


def diff(got: Any, want: Any, parts: Sequence[str]) -> str:
    got, want = as_tuple(got), as_tuple(want)
    lines = []
    for i, (name, a, b) in enumerate(zip(parts, got, want)):
        if any(want[j] is b and close(got[j], a) for j in range(i)):
            continue  # the same tensor again (MultiHeadAttention's two outputs): shown already
        if diff := diff_tensor(name, a, b):
            lines.append(diff)
    return "\n".join(lines)


@dataclass(frozen=True)
class Mistake:
    """A known mistake: what code that makes it returns on a case, and what to tell the learner.

    ``output(case)`` computes the mistaken result (usually the check's reference math with one
    switch turned, or the package's function on altered inputs); ``message`` is the diagnosis, a
    string or ``message(case) -> str`` when it depends on the case. Every check describes its
    known mistakes this way and names one only through :func:`diagnose`.
    """

    message: str | Callable[[Case], str]
    output: Callable[[Case], Any]

    def says(self, case: Case) -> str:
        return self.message(case) if callable(self.message) else self.message


def mistaken_output(mistake: Mistake, case: Case) -> Any:
    """The mistake's output on a case; ``None`` if computing it fails there (it cannot fit)."""
    try:
        return mistake.output(case)
    except Exception:
        return None


def diagnose(mistakes: Sequence[Mistake], evidence: Sequence[tuple[Case, Any]], case: Case,
             agree: Callable[[Any, Any], bool] = same) -> str | None:
    """Name the learner's mistake, where the evidence shows it unambiguously.

    ``evidence`` holds ``(case, learner's output)`` for every case the learner's code ran on (all
    of a check's cases, not only those up to the first failure). A known mistake *fits* when
    ``agree(learner's output, mistake's output)`` holds on every one of them. If exactly one
    diagnosis fits, it is returned (worded for ``case``, the failing case); if none fits,
    ``None`` (the caller falls back to symptoms, then to a generic message). If several different
    diagnoses fit, which the checks' case design avoids for single mistakes (a test verifies
    that every two known mistakes of a check differ on its cases), the message says so and lists
    them, rather than picking one.
    """
    messages: list[str] = []
    for mistake in mistakes:
        if all(agree(got, mistaken_output(mistake, seen)) for seen, got in evidence):
            message = mistake.says(case)
            if message not in messages:
                messages.append(message)
    if not messages:
        return None
    if len(messages) == 1:
        return messages[0]
    listed = "; or ".join(f"({i}) {m}" for i, m in enumerate(messages, 1))
    return f"your output fits more than one known mistake on every case: {listed}"


@dataclass(frozen=True)
class Spec:
    """What a check compares, for the tests (``tests/test_checks_specs.py``), which verify for
    every registered check that its bug-free reference equals the package's own function on the
    check's cases, that every known mistake changes the result of some case, and that any two
    mistakes with different messages differ on some case (so :func:`diagnose` never has to choose).

    ``cases()`` builds the check's cases as the check does (seed 0, modules randomized),
    ``reference(case)`` is the check's own bug-free computation (its mistakes' math with every
    switch off), ``package(case)`` the package's function or module on the case, ``mistakes()``
    the check's known mistakes, and ``agree(a, b)`` the check's comparison of two outputs.
    """

    check: str
    cases: Callable[[], list[Case]]
    reference: Callable[[Case], Any]
    package: Callable[[Case], Any]
    mistakes: Callable[[], list[Mistake]]
    agree: Callable[[Any, Any], bool] = same


SPECS: dict[str, Spec] = {}


def register(spec: Spec) -> Spec:
    """Add a check's :class:`Spec` to ``SPECS`` (each lab module registers its checks)."""
    if spec.check in SPECS:
        raise ValueError(f"register: a spec for {spec.check} exists already")
    SPECS[spec.check] = spec
    return spec


def close_shape(got: Sequence[Any], want: Any) -> bool:
    """The first part of ``got`` is a tensor of the expected shape."""
    first, expected = got[0] if got else None, as_tuple(want)[0]
    return isinstance(first, Tensor) and first.shape == expected.shape


def first_part_agrees(got: Any, want: Any) -> bool:
    """The first returned value (the output, beside weights) agrees."""
    got_t, want_t = as_tuple(got), as_tuple(want)
    return bool(got_t) and bool(want_t) and same(got_t[0], want_t[0])


def diagnose_at(mistakes: Sequence[Mistake], evidence: Sequence[tuple[Case, Any]], failed: int,
                got: Any, want: Any, agree: Callable[[Any, Any], bool] = same) -> str | None:
    """:func:`diagnose` for a failure at ``evidence[failed]``, in this order: on every case; then
    on the cases up to the failure (code with two mistakes: the first one to show is named,
    since every case before it agreed with the reference); then, the same two ways, on the first
    returned value alone (when the weights are right and the output is not, or the other way
    round)."""
    case = evidence[failed][0]
    prefix = evidence[:failed + 1]
    found = diagnose(mistakes, evidence, case, agree) or diagnose(mistakes, prefix, case, agree)
    if found is None and agree is same and not first_part_agrees(got, want):
        found = (diagnose(mistakes, evidence, case, first_part_agrees)
                 or diagnose(mistakes, prefix, case, first_part_agrees))
    return found


GENERIC = ("your output differs from the reference, and it matches none of the common mistakes "
           "this check knows; compare your code with the equations above, step by step")


def run_cases(
    check: str,
    cases: Sequence[Case],
    learner: Callable[[Case], Any],
    reference: Callable[[Case], Any],
    *,
    parts: Sequence[str] = ("output",),
    mistakes: Sequence[Mistake] = (),
    structure: Callable[[Any, Any, Case], str | None] | None = None,
    hints: Callable[[Any, Any, Case], str | None] | None = None,
    total: int | None = None,
    agree: Callable[[Any, Any], bool] = same,
    details: Callable[[Any, Any, Case], str] | None = None,
) -> int:
    """Run every case; raise an AssertionError with a diagnosis at the first failure.

    At a failure, the learner's code also runs on the cases after it, so that the diagnosis
    rests on every case (see :func:`diagnose`): first on everything returned, then, if that
    names nothing, on the first returned value alone (a mistake in the output that leaves the
    weights right, or the other way round, is still named).

    ``agree(got, want)`` decides whether an output is right (and whether it fits a known
    mistake); ``details(got, want, case)`` shows the difference (by default, a diff of each of
    ``parts``). Outputs that are not tuples of tensors (decoded sequences, say) bring their own.
    """
    seen: list[tuple[Case, Any]] = []
    for number, case in enumerate(cases, 1):
        where = case.where = f"case {number} of {total or len(cases)} ({case.describe()})"
        got = learner(case)
        want = reference(case)
        problem = structure(got, want, case) if structure else None
        if problem is not None and agree is same and isinstance(got, (tuple, list)) \
                and close_shape(got, want):
            # the output is fine in form: a known mistake may explain both it and the problem
            def in_form(out: Any, other: Case) -> bool:
                return isinstance(out, (tuple, list)) and close_shape(out, reference(other))

            evidence = [*seen, (case, got), *_later(cases, number, learner, total, in_form)]
            if not first_part_agrees(got, want):
                diagnosis = (diagnose(mistakes, evidence, case, first_part_agrees)
                             or diagnose(mistakes, evidence[:len(seen) + 1], case,
                                         first_part_agrees))
                problem = f"{diagnosis} ({problem})" if diagnosis else problem
            case.where = where
        if problem is None and case.repeat:
            again = learner(case)
            if not same(got, again):
                problem = ("your output changes from one call to the next in eval mode: dropout "
                           "must act only in training mode (use an nn.Dropout submodule, or pass "
                           "training=self.training / dropout_p only when self.training)")
        if problem is None and agree(got, want):
            seen.append((case, got))
            continue
        shown = ""
        if problem is None:
            def well_formed(out: Any, other: Case) -> bool:
                return structure is None or structure(out, reference(other), other) is None

            evidence = [*seen, (case, got), *_later(cases, number, learner, total, well_formed)]
            case.where = where
            problem = diagnose_at(mistakes, evidence, len(seen), got, want, agree)
            problem = problem or (hints(got, want, case) if hints else None) or GENERIC
            shown = "\n" + (details(got, want, case) if details else diff(got, want, parts))
        raise AssertionError(f"{check}: {problem}\n  in {where}{shown}")
    return len(cases)


def _later(cases: Sequence[Case], number: int, learner: Callable[[Case], Any], total: int | None,
           keep: Callable[[Any, Case], bool]) -> list[tuple[Case, Any]]:
    """The learner's outputs on the cases after case ``number``: evidence for a diagnosis. A case
    where the learner's code raises, or whose output ``keep`` rejects (the wrong form), is left
    out."""
    outputs = []
    for other_number, other in enumerate(cases[number:], number + 1):
        other.where = f"case {other_number} of {total or len(cases)} ({other.describe()})"
        try:
            out = learner(other)
        except (AssertionError, NotImplementedError):
            continue
        if keep(out, other):
            outputs.append((other, out))
    return outputs


def passed(check: str, count: int) -> None:
    print(f"{check}: all {count} cases pass")


def structure_problem(parts: Sequence[str], got: Any, want: Any,
                      dtype_reasons: dict[str, str] | None = None) -> str | None:
    """Type, count, shape and dtype problems, which no numeric diagnosis can explain.

    A wrong dtype is named as such; ``dtype_reasons`` may add, per part, why the exercise's
    contract asks for that dtype (for example "token ids index a vocabulary: int64")."""
    got_t, want_t = as_tuple(got), as_tuple(want)
    if len(want_t) > 1 and not isinstance(got, (tuple, list)):
        return (f"return a tuple ({', '.join(parts)}); yours returned a single "
                f"{type(got).__name__}")
    if len(got_t) != len(want_t):
        return f"return {len(want_t)} values ({', '.join(parts)}); yours returned {len(got_t)}"
    for name, a in zip(parts, got_t):
        if not isinstance(a, Tensor):
            return f"the {name} must be a torch.Tensor; yours is a {type(a).__name__}"
    if (len(want_t) == 2 and got_t[0].shape == want_t[1].shape
            and got_t[1].shape == want_t[0].shape and want_t[0].shape != want_t[1].shape):
        return f"return ({parts[0]}, {parts[1]}) in this order; yours are the other way round"
    for name, a, b in zip(parts, got_t, want_t):
        if a.shape != b.shape:
            return f"the shape of the {name} is {tuple(a.shape)}, expected {tuple(b.shape)}"
        if a.dtype != b.dtype:
            reason = (dtype_reasons or {}).get(name)
            return (f"the dtype of the {name} is {a.dtype}, expected {b.dtype}"
                    + (f" ({reason})" if reason else ""))
    return None


# --- random tensors and modules -------------------------------------------------------------


def randn(g: torch.Generator, *shape: int, std: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=g) * std


@torch.no_grad()
def randomize(module: nn.Module, g: torch.Generator) -> nn.Module:
    """Every parameter random: weights ~ N(0, 1.5 / fan_in), biases ~ N(0, 0.5),
    LayerNorm gains ~ 1 + N(0, 0.3) (so a check sees a norm that is left at 1 and 0)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            p.copy_(randn(g, *p.shape, std=1.5 / math.sqrt(p.shape[-1])))
        elif name.split(".")[-1] == "weight":  # a LayerNorm gain
            p.copy_(1.0 + randn(g, *p.shape, std=0.3))
        else:
            p.copy_(randn(g, *p.shape, std=0.5))
    return module


def build_module(check: str, cls: Any, case: Case, reference: nn.Module,
                 names_hint: str) -> nn.Module:
    """Instantiate the learner's class and load the reference's (random) parameters into it."""
    where = case.where
    args, kwargs = case.init_args()
    module = call_learner(check, f"building {getattr(cls, '__name__', cls)}"
                                 f"({format_kwargs(case.init)}) for {where}", cls, *args, **kwargs)
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


def format_kwargs(init: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in init.items())




def learner_modules(check: str, cls: Any, reference_cls: Any, names: str,
                     g: torch.Generator) -> Callable[[Case], nn.Module]:
    """``module_for(case)``: the learner's module for a case, built once per case and given the
    weights of a randomized reference (kept in ``case.state["reference"]``)."""
    modules: dict[int, nn.Module] = {}

    def module_for(case: Case) -> nn.Module:
        if id(case) not in modules:
            reference = randomize(reference_cls(**case.init), g).eval()
            case.state["reference"] = reference
            modules[id(case)] = build_module(check, cls, case, reference, names)
        return modules[id(case)]

    return module_for


def module_runners(check: str, cls: Any, reference_cls: Any, names: str,
                    g: torch.Generator) -> tuple[Callable[[Case], Any], Callable[[Case], Any]]:
    """``learner(case)`` and ``reference(case)`` for a layer class with one forward call."""
    module_for = learner_modules(check, cls, reference_cls, names, g)

    def learner(case: Case) -> Any:
        module = module_for(case)
        args, kwargs = case.args()
        return call_learner(check, f"running forward on {case.where}", module, *args, **kwargs)

    def reference(case: Case) -> Any:
        return case.state["reference"](**case.inputs)

    return learner, reference


isolated_training = functools.partial(isolated, autograd=True)  # for the checks that train
