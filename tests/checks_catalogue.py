"""The catalogue of implementations the lab checks (``transformer_lib.checks``) are tested
against: one registry for every lab, with what each check must say about each entry.

The test modules of the checks, ``test_checks_labNN.py`` and ``test_checks_catalogue_labNN.py``,
write their implementations as learners write them and register them here as they are imported:

    catalogue.wrong("check_attention", {"no scale": (attention_no_scale, "not scaled"), ...})
    catalogue.accepted("check_attention", [scaled_dot_product_attention, attention_einsum], cases=7)

A wrong implementation comes with a part of the diagnosis it must get, or with ``GENERIC``
where the check may only say that it knows no mistake that fits. ``test_checks_catalogue.py``
runs every entry (one test for the rejections, one for the accepted implementations) and counts
them (:func:`counts`): at most a tenth of the rejections of each module, each lab and all labs
may be generic.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer_lib import checks

__all__ = ["AMBIGUOUS", "GENERIC", "Entry", "accepted", "counts", "entries", "wrong"]

# what every check's generic message says (engine.GENERIC, and the checks' own wordings of it):
# it knows no mistake that fits. A rejection that names its mistake never says it.
GENERIC = "none of the common mistakes this check knows"
# what a rejection never says: the check could not tell which of its known mistakes was made
AMBIGUOUS = "more than one known mistake"
# the test modules that register entries, next to this file
REGISTERING = "test_checks_*lab[0-9][0-9].py"


@dataclass(frozen=True)
class Entry:
    """One implementation, and the verdict its check must give."""

    check: str  # the check's name in transformer_lib.checks, "check_attention"
    name: str  # what the implementation does, or how it is written: "no scale"
    arguments: tuple[Any, ...]  # what the check is called with (check_resume's: save, load)
    diagnosis: str | None  # wrong: a part of the message it must get, or GENERIC; None: accepted
    cases: int | None  # accepted: how many cases the check says pass
    module: str  # the test module that registered it
    marks: tuple[Any, ...] = ()  # pytest marks for its test

    @property
    def lab(self) -> str:
        """``"lab01"``: from the module of ``transformer_lib.checks`` that holds the check."""
        return getattr(checks, self.check).__module__.rsplit(".", 1)[-1].split("_")[0]

    @property
    def id(self) -> str:
        return f"{self.check}[{self.name}]"

    @property
    def generic(self) -> bool:
        return self.diagnosis == GENERIC

    def run(self) -> None:
        getattr(checks, self.check)(*self.arguments)


_ENTRIES: list[Entry] = []
_IMPORTED: dict[str, dict[str, Any]] = {}  # module name -> the namespace that registered


def _registering_module() -> str:
    """The name of the module calling ``wrong`` or ``accepted``. A module imported again (after
    an error, say) registers afresh: its earlier entries go."""
    namespace = sys._getframe(2).f_globals
    module = namespace["__name__"]
    if _IMPORTED.setdefault(module, namespace) is not namespace:
        _ENTRIES[:] = [e for e in _ENTRIES if e.module != module]
        _IMPORTED[module] = namespace
    return module


def wrong(check: str, implementations: Mapping[str, tuple[Any, str]], *,
          marks: Iterable[Any] = ()) -> None:
    """Register wrong implementations: ``{name: (implementation, diagnosis)}``, where the
    diagnosis is a part of the message the check must give (or ``GENERIC``). An implementation
    is what the check is given, or a tuple of what it is given (``(save, load)``)."""
    module = _registering_module()
    for name, (implementation, diagnosis) in implementations.items():
        if not diagnosis:
            raise ValueError(f"{check}[{name}]: give the diagnosis it must get, or GENERIC")
        _register(Entry(check, name, _arguments(implementation), diagnosis, None, module,
                        tuple(marks)))


def accepted(check: str, implementations: Iterable[Any] | Mapping[str, Any], *, cases: int,
             marks: Iterable[Any] = ()) -> None:
    """Register correct implementations, each of which the check must pass on all ``cases``:
    a list (each named by its ``__name__``) or ``{name: implementation}``."""
    module = _registering_module()
    if not isinstance(implementations, Mapping):
        implementations = {_name(implementation): implementation
                           for implementation in implementations}
    for name, implementation in implementations.items():
        _register(Entry(check, name, _arguments(implementation), None, cases, module,
                        tuple(marks)))


def _arguments(implementation: Any) -> tuple[Any, ...]:
    return implementation if isinstance(implementation, tuple) else (implementation,)


def _name(implementation: Any) -> str:
    names = [getattr(part, "__name__", "<lambda>") for part in _arguments(implementation)]
    if "<lambda>" in names:
        raise ValueError("a lambda has no name to show: register it as {name: implementation}")
    return ", ".join(names)


def _register(entry: Entry) -> None:
    if entry.check not in checks.__all__:
        raise ValueError(f"{entry.id}: transformer_lib.checks has no {entry.check}")
    if any(e.check == entry.check and e.name == entry.name for e in _ENTRIES):
        raise ValueError(f"{entry.id} is registered twice (in {entry.module}): names are test "
                         f"ids, give each entry of a check its own")
    _ENTRIES.append(entry)


def entries() -> list[Entry]:
    """Every registered entry, after importing each registering module (pytest has imported
    those it collected already); by check, in the order of ``checks.__all__``, then by module,
    then in the order registered."""
    for path in sorted(Path(__file__).parent.glob(REGISTERING)):
        importlib.import_module(path.stem)
    order = {check: i for i, check in enumerate(checks.__all__)}
    return sorted(_ENTRIES, key=lambda e: (order[e.check], e.module))


def counts(entries: Iterable[Entry]) -> tuple[list[tuple[str, int, int, int, int]], str]:
    """Per module, per lab and for all labs: (what, wrong, named, generic, accepted), with the
    table as text. Named: rejected with a diagnosis that names the mistake; generic: rejected
    with the generic message."""
    entries = list(entries)

    def row(what: str, group: list[Entry]) -> tuple[str, int, int, int, int]:
        rejected = [e for e in group if e.diagnosis is not None]
        generic = sum(e.generic for e in rejected)
        return (what, len(rejected), len(rejected) - generic, generic,
                len(group) - len(rejected))

    rows = []
    for lab in sorted({e.lab for e in entries}):
        in_lab = [e for e in entries if e.lab == lab]
        for module in sorted({e.module for e in in_lab}):
            rows.append(row(f"{lab}  {module}", [e for e in in_lab if e.module == module]))
        rows.append(row(f"{lab}  all", in_lab))
    rows.append(row("all labs", entries))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  wrong  named  generic  accepted"]
    lines += [f"{what:{width}}  {w:5d}  {n:5d}  {g:7d}  {a:8d}" for what, w, n, g, a in rows]
    return rows, "\n".join(lines)
