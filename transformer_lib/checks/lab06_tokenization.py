"""Checks for lab 6 (tokenization, byte-level BPE): ``check_pair_counts``, ``check_merge_pair``,
``check_train_merges``, ``check_encode``, ``check_decode``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``. Each check
compares the learner's function with the package's own (``transformer_lib.tokenization``) and
describes its known mistakes as :class:`~transformer_lib.checks.engine.Mistake` s, computed by
this module's plain BPE math with one switch turned (``_counts_math``, ``_merge_math``,
``_train_math``, ``_encode_math``, ``_decode_math``; all switches off: the right answer). Every
check registers an ``engine.Spec`` (``tests/test_checks_specs.py``).

The outputs are Python values, not tensors: a dict of pair counts, lists of ids, a list of
merges, a string. They are compared exactly, with one allowance: a decoded string may show the
bytes of a cut character as one U+FFFD per byte (the package's ``bytes_to_text``) or as one
U+FFFD per cut sequence (Python's ``errors="replace"``). Both keep every byte visible and
neither crashes, so both are accepted; ``errors="ignore"``, which drops them, is not.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transformer_lib.checks.engine import (
    Case,
    Mistake,
    Spec,
    call_learner,
    isolated,
    passed,
    register,
    run_cases,
)
from transformer_lib.tokenization import (
    BPETokenizer,
    bytes_to_text,
    merge_pair,
    pair_counts,
    pretokenize,
    train_merges,
)

Pair = tuple[int, int]


class _Case(Case):
    """A case described by its name alone: its inputs are lists and texts, which the name shows
    in a readable form."""

    def describe(self) -> str:
        return self.name


# --- showing ids, tokens and merges ------------------------------------------------------------


def _vocab(merges: Sequence[Sequence[int]]) -> list[bytes]:
    """id -> bytes for a merge table (``None`` for a merge whose ids do not exist yet)."""
    vocab: list[Any] = [bytes([b]) for b in range(256)]
    for a, b in merges:
        ok = all(isinstance(i, int) and 0 <= i < len(vocab) and vocab[i] is not None
                 for i in (a, b))
        vocab.append(vocab[a] + vocab[b] if ok else None)
    return vocab


def _token(i: Any, vocab: Sequence[Any]) -> str:
    """One token as text: ``'th'``; ``'?'`` for an id that is no token."""
    if not isinstance(i, int) or not 0 <= i < len(vocab) or vocab[i] is None:
        return "?"
    return repr(vocab[i].decode("utf-8", errors="replace"))


def _window(values: Sequence[Any], start: int, limit: int = 10) -> str:
    """``[..., values[start], ..., values[start + limit - 1], ...]``."""
    start = max(0, min(start, len(values) - limit))
    shown = ", ".join(str(v) for v in values[start:start + limit])
    head = "..., " if start > 0 else ""
    tail = ", ..." if start + limit < len(values) else ""
    return f"[{head}{shown}{tail}]"


def _first_difference(got: Sequence[Any], want: Sequence[Any]) -> int:
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return i
    return min(len(got), len(want))


def _ids_diff(got: Sequence[Any], want: Sequence[Any], vocab: Sequence[Any] | None = None) -> str:
    """Yours above the expected ids, around where they first differ (with the tokens' text)."""
    at = _first_difference(got, want)
    start = max(0, at - 3)
    lines = [f"  yours    ({_count(got, 'id')}) {_window(got, start)}",
             f"  expected ({_count(want, 'id')}) {_window(want, start)}"]
    if vocab is not None:
        lines = [lines[0], "           as tokens " + _tokens_window(got, start, vocab),
                 lines[1], "           as tokens " + _tokens_window(want, start, vocab)]
    where = (f"the first difference is at index {at}" if at < min(len(got), len(want))
             else f"they agree up to index {at - 1}, then one of them ends")
    return "\n".join([*lines, f"  {where}"])


def _count(items: Sequence[Any], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _tokens_window(ids: Sequence[Any], start: int, vocab: Sequence[Any]) -> str:
    return _window([_token(i, vocab) for i in ids], start)


# --- exercise 1: pair counts -------------------------------------------------------------------


def _counts_math(ids: Sequence[int], *, skip_first: bool = False, skip_last: bool = False,
                 wrap: bool = False, step: int = 1, reverse: bool = False,
                 once: bool = False) -> dict[Pair, int]:
    """The pair counts, with switches for the mistakes (all off: the right answer)."""
    pairs = list(zip(ids, ids[1:]))[::step]  # step 2: zip(ids[::2], ids[1::2])
    if skip_last:
        pairs = pairs[:-1]
    if skip_first:
        pairs = pairs[1:]
    if wrap and ids:
        pairs.append((ids[-1], ids[0]))
    if reverse:
        pairs = [(b, a) for a, b in pairs]
    counts: dict[Pair, int] = {}
    for pair in pairs:
        counts[pair] = 1 if once else counts.get(pair, 0) + 1
    return counts


def _counts_cases() -> list[Case]:
    def case(name: str, ids: Sequence[int]) -> Case:
        return _Case(f"{name}: ids {list(ids)}", {"ids": list(ids)})

    return [
        case("'abab'", b"abab"),
        case("'aaa', one pair at two overlapping positions", b"aaa"),
        case("'hello world!', whose last pair occurs once", b"hello world!"),
        case("merged tokens (ids from 256)", [256, 97, 256, 97, 300, 256, 98]),
        case("'ab', a single pair", b"ab"),
        case("one id: no pair", [104]),
        case("no ids", []),
    ]


def _counts_mistakes() -> list[Mistake]:
    def var(**switches: Any) -> Callable[[Case], dict[Pair, int]]:
        return lambda case: _counts_math(case.inputs["ids"], **switches)

    return [
        Mistake("the last pair is not counted: the pairs are (ids[i], ids[i + 1]) for i in "
                "range(len(ids) - 1), the last one included (zip(ids, ids[1:]) gives them all)",
                var(skip_last=True)),
        Mistake("the first pair is not counted: the pairs are (ids[i], ids[i + 1]) for i from 0 "
                "to len(ids) - 2 (zip(ids, ids[1:]) gives them all)", var(skip_first=True)),
        Mistake("the sequence wraps around: (ids[-1], ids[0]) is counted as a pair, but the last "
                "id has no right neighbour (ids[(i + 1) % len(ids)] or ids[1:] + ids[:1] adds "
                "it); count zip(ids, ids[1:])", var(wrap=True)),
        Mistake("only the pairs that start at even positions are counted (zip(ids[::2], "
                "ids[1::2]), or a step of 2): pairs overlap, every id but the last starts one, "
                "so 'aaa' holds (a, a) twice; count zip(ids, ids[1:])", var(step=2)),
        Mistake("the pairs are the wrong way round, (ids[i + 1], ids[i]): a pair is (left id, "
                "right id), (ids[i], ids[i + 1])", var(reverse=True)),
        Mistake("each pair is counted once, however often it occurs: add 1 for every "
                "occurrence, counts[pair] = counts.get(pair, 0) + 1", var(once=True)),
    ]


def _counts_package(case: Case) -> dict[Pair, int]:
    return pair_counts(list(case.inputs["ids"]))


def _as_counts(out: Any) -> dict[Pair, Any] | None:
    if not isinstance(out, Mapping):
        return None
    try:
        return {tuple(key): value for key, value in out.items()}
    except TypeError:
        return None


def _same_counts(got: Any, want: Any) -> bool:
    a, b = _as_counts(got), _as_counts(want)
    return a is not None and b is not None and a == b


def _counts_form(got: Any, want: Any, case: Case) -> str | None:
    if not isinstance(got, Mapping):
        return (f"return a dict {{(a, b): count}} (a dict or a collections.Counter); yours "
                f"returned a {type(got).__name__}")
    for key, value in got.items():
        if isinstance(key, int):
            return (f"the keys are single ids ({key!r}); count pairs of neighbours, "
                    f"(ids[i], ids[i + 1]), with the pair as the key")
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(i, int) for i in key)):
            return (f"the keys must be pairs of ids, tuples (a, b) of two ints (merge_pair and "
                    f"training look pairs up that way); yours has the key {key!r}")
        if isinstance(value, bool) or not isinstance(value, int):
            return (f"the counts must be ints; the count of {key} is {value!r} "
                    f"({type(value).__name__})")
    return None


def _counts_details(got: Any, want: dict[Pair, int], case: Case) -> str:
    mine = _as_counts(got) or {}
    wrong = sorted(pair for pair in set(mine) | set(want) if mine.get(pair, 0) != want.get(pair, 0))
    lines = [f"  pair {pair}: yours {mine.get(pair, 0)}, expected {want.get(pair, 0)}"
             for pair in wrong[:6]]
    if len(wrong) > 6:
        lines.append(f"  ... ({len(wrong)} pairs differ)")
    return "\n".join(lines)


@isolated
def check_pair_counts(fn: Callable[..., Any]) -> None:
    """Check ``fn(ids) -> {(a, b): count}``: how many times each pair of neighbours occurs in
    the list ``ids``, overlapping occurrences included, as
    :func:`transformer_lib.tokenization.pair_counts`. Prints one line if every case agrees;
    raises ``AssertionError`` naming the likely mistake otherwise."""
    check = "check_pair_counts"

    def learner(case: Case) -> Any:
        return call_learner(check, f"running pair_counts on {case.where}", fn,
                            list(case.inputs["ids"]))

    count = run_cases(check, _counts_cases(), learner, _counts_package,
                      mistakes=_counts_mistakes(), agree=_same_counts, structure=_counts_form,
                      details=_counts_details)
    passed(check, count)


register(Spec(check="check_pair_counts", cases=_counts_cases,
              reference=lambda case: _counts_math(case.inputs["ids"]), package=_counts_package,
              mistakes=_counts_mistakes, agree=_same_counts))


# --- exercise 2: one merge -----------------------------------------------------------------------


def _merge_math(ids: Sequence[int], pair: Pair, new_id: int, *, advance: int = 2,
                neighbours: bool = False, right_to_left: bool = False, first_only: bool = False,
                unordered: bool = False, keep_last: bool = True,
                fixed_id: int | None = None) -> list[int]:
    """One merge, with switches for the mistakes (all off: the right answer)."""
    new = new_id if fixed_id is None else fixed_id

    def starts(i: int) -> bool:  # the pair starts at i
        found = (ids[i], ids[i + 1])
        return found == tuple(pair) or (unordered and found == tuple(pair)[::-1])

    out: list[int] = []
    if neighbours:  # each position decided by its neighbours alone
        for i in range(len(ids)):
            if i + 1 < len(ids) and starts(i):
                out.append(new)
            elif not (i > 0 and starts(i - 1)):
                out.append(ids[i])
        return out
    if right_to_left:
        i = len(ids) - 1
        while i >= 0:
            if i > 0 and starts(i - 1):
                out.append(new)
                i -= 2
            else:
                out.append(ids[i])
                i -= 1
        return out[::-1]
    i, merged = 0, False
    end = len(ids) if keep_last else len(ids) - 1
    while i < end:
        if i + 1 < len(ids) and starts(i) and not (first_only and merged):
            out.append(new)
            i += advance
            merged = True
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_cases() -> list[Case]:
    def case(name: str, ids: Sequence[int], pair: Pair, new_id: int) -> Case:
        return _Case(f"{name}: merge_pair({list(ids)}, {pair}, {new_id})",
                     {"ids": list(ids), "pair": pair, "new_id": new_id})

    a, b, c = 97, 98, 99
    return [
        case("'aaa', whose two occurrences of (a, a) overlap", b"aaa", (a, a), 256),
        case("'abcab', the pair at the start and at the end", b"abcab", (a, b), 300),
        case("'aaaaa'", b"aaaaa", (a, a), 256),
        case("'bab': the pair (a, b) only in that order", b"bab", (a, b), 260),
        case("merged tokens", [256, a, 256, a, b, c], (256, a), 257),
        case("'ababc', ending with an id that is not merged", b"ababc", (a, b), 256),
        case("no occurrence", b"xyz", (a, b), 256),
        case("one id", [a], (a, a), 256),
        case("no ids", [], (a, b), 256),
    ]


def _merge_mistakes() -> list[Mistake]:
    def var(**switches: Any) -> Callable[[Case], list[int]]:
        return lambda case: _merge_math(case.inputs["ids"], case.inputs["pair"],
                                        case.inputs["new_id"], **switches)

    return [
        Mistake("after a merge the scan moves on by one id, not two, so the pair's second id is "
                "kept (or merged again): [97, 98] with (97, 98) gives [256, 98]; after appending "
                "new_id, skip both ids (i += 2)", var(advance=1)),
        Mistake("overlapping occurrences are all merged: in 'aaa' the pair (a, a) starts at 0 "
                "and at 1, but once the first two a's are merged the third has no partner left. "
                "Scan left to right and, after a merge, skip both ids: [97, 97, 97] with "
                "(97, 97) gives [256, 97], not [256, 256]", var(neighbours=True)),
        Mistake("the scan runs right to left: in 'aaa' the first two a's merge, [256, 97], not "
                "the last two; scan from the left", var(right_to_left=True)),
        Mistake("only the first occurrence is merged: replace every occurrence of the pair, left "
                "to right, without overlaps", var(first_only=True)),
        Mistake("the pair's order is ignored: (b, a) is merged as well as (a, b); merge where "
                "ids[i] == pair[0] and ids[i + 1] == pair[1]", var(unordered=True)),
        Mistake("the last id is lost when it is not part of a merge: the loop stops at "
                "len(ids) - 1; loop while i < len(ids), and test i + 1 < len(ids) before "
                "looking at ids[i + 1]", var(keep_last=False)),
        Mistake("every merge gives id 256: use the new_id argument", var(fixed_id=256)),
        Mistake("nothing is merged: is a list compared with the tuple pair? In Python "
                "[97, 98] == (97, 98) is False; compare ids[i] == pair[0] and ids[i + 1] == "
                "pair[1], or tuple(ids[i:i + 2]) == pair",
                lambda case: list(case.inputs["ids"])),
    ]


def _merge_package(case: Case) -> list[int]:
    return merge_pair(list(case.inputs["ids"]), case.inputs["pair"], case.inputs["new_id"])


def _same_ids(got: Any, want: Any) -> bool:
    return (isinstance(got, (list, tuple)) and isinstance(want, (list, tuple))
            and list(got) == list(want))


def _ids_form(got: Any, what: str = "ids") -> str | None:
    if not isinstance(got, (list, tuple)):
        return f"return a list of {what} (ints); yours returned a {type(got).__name__}"
    for i, value in enumerate(got):
        if isinstance(value, bool) or not isinstance(value, int):
            return (f"return a list of {what}, each an int; item {i} of yours is {value!r} "
                    f"({type(value).__name__})")
    return None


@isolated
def check_merge_pair(fn: Callable[..., Any]) -> None:
    """Check ``fn(ids, pair, new_id) -> list[int]``: every occurrence of ``pair`` replaced by
    ``new_id``, scanning left to right without overlaps (``[97, 97, 97]`` with ``(97, 97)``
    gives ``[256, 97]``), as :func:`transformer_lib.tokenization.merge_pair`."""
    check = "check_merge_pair"

    def learner(case: Case) -> Any:
        i = case.inputs
        return call_learner(check, f"running {case.where}", fn, list(i["ids"]), i["pair"],
                            i["new_id"])

    count = run_cases(check, _merge_cases(), learner, _merge_package, mistakes=_merge_mistakes(),
                      agree=_same_ids, structure=lambda got, want, case: _ids_form(got),
                      details=lambda got, want, case: _ids_diff(list(got), want))
    passed(check, count)


register(Spec(check="check_merge_pair", cases=_merge_cases,
              reference=lambda case: _merge_math(**case.inputs), package=_merge_package,
              mistakes=_merge_mistakes, agree=_same_ids))


# --- exercise 3: training ----------------------------------------------------------------------

# A small text with code, prose, repeated words and characters of several bytes.
PARAGRAPH = (
    "def tokenize(text):\n"
    '    """Split the text into its tokens."""\n'
    "    tokens = []\n"
    "    for word in text.split():\n"
    "        tokens.append(word)\n"
    "    return tokens\n"
    "\n"
    "# The tokenizer splits the text; the model reads the tokens.\n"
    'print(tokenize("naïve café → résumé, naïve café"))\n'
)


def _pick(counts: dict[Pair, int], tie: str) -> Pair:
    """The most frequent pair; among ties the smallest (or, for the mistakes, the largest, the
    first counted or the last counted)."""
    top = max(counts.values())
    tied = [pair for pair, c in counts.items() if c == top]  # in the order first counted
    return {"smallest": min(tied), "largest": max(tied), "first": tied[0], "last": tied[-1]}[tie]


def _train_math(text: str, num_merges: int, *, pieces: str = "pattern", weighted: bool = True,
                as_bytes: bool = True, tie: str = "smallest", recount: bool = True,
                apply: bool = True, first_id: int = 256, same_id: bool = False, extra: int = 0,
                stop_at_one: bool = False) -> list[Pair]:
    """Naive training (every merge recounts the distinct pieces, weighted by frequency), with
    switches for the mistakes (all off: the right answer)."""
    split = {"pattern": pretokenize, "whole": lambda t: [t], "split": str.split}[pieces]
    words = [([*piece.encode("utf-8")] if as_bytes else [ord(c) for c in piece],
              n if weighted else 1) for piece, n in Counter(split(text)).items()]
    merges: list[Pair] = []
    initial: dict[Pair, int] | None = None
    for k in range(num_merges + extra):
        counts: dict[Pair, int] = {}
        for word, n in words:
            for pair in zip(word, word[1:]):
                counts[pair] = counts.get(pair, 0) + n
        if not recount:  # the first counts, less the pairs merged already
            initial = counts if initial is None else initial
            counts = {pair: c for pair, c in initial.items() if pair not in merges}
        if not counts:
            break
        best = _pick(counts, tie)
        if stop_at_one and counts[best] < 2:
            break
        merges.append(best)
        if apply:
            new_id = 256 if same_id else first_id + k
            words = [(merge_pair(word, best, new_id), n) for word, n in words]
    return merges


def _train_cases() -> list[Case]:
    def case(name: str, text: str, num_merges: int) -> Case:
        shown = repr(text) if len(text) <= 40 else f"{len(text)} characters of code and prose"
        return _Case(f"{name}: train_merges({shown}, {num_merges})",
                     {"text": text, "num_merges": num_merges})

    return [
        case("the classic example, one piece", "aaabdaaabac", 3),
        case("the counts of a frequent piece add up", "xy xy xy xy xy ab ac ad ae", 2),
        case("ties between pairs", "mz ya ab", 4),
        case("pieces that merges must not cross (and only 2 merges to make)",
             "ab.ab.ab.ab!x", 4),
        case("characters of several bytes", "éé éé → →→", 4),
        case("a longer text", PARAGRAPH, 30),
        case("no pair at all", "a b", 2),
    ]


def _train_mistakes() -> list[Mistake]:
    def var(**switches: Any) -> Callable[[Case], list[Pair]]:
        return lambda case: _train_math(case.inputs["text"], case.inputs["num_merges"],
                                        **switches)

    smallest = ("among pairs with the same count take the smallest pair (a, b): "
                "max(counts, key=lambda p: (counts[p], -p[0], -p[1])), or "
                "min(counts, key=lambda p: (-counts[p], p))")
    return [
        Mistake("pairs are counted across pre-token boundaries (the text as one sequence): split "
                "the text with pretokenize(text) and count pairs only inside each piece",
                var(pieces="whole")),
        Mistake("the text is split with text.split(), which drops the spaces (BPE's pieces keep "
                "them: ' the' is a piece, and a common one): split it with pretokenize(text)",
                var(pieces="split")),
        Mistake("each distinct piece is counted once: a piece that occurs n times adds its pairs "
                "n times (weight its pair counts by its frequency, or count every piece)",
                var(weighted=False)),
        Mistake("the pieces are read as characters (ord(c)), not as UTF-8 bytes: byte-level BPE "
                "starts from piece.encode('utf-8'), where 'é' is two ids, [195, 169]",
                var(as_bytes=False)),
        Mistake("ties are broken towards the largest pair: " + smallest, var(tie="largest")),
        Mistake("ties are broken by which pair was counted first (max(counts, key=counts.get) "
                "and Counter.most_common keep the first they meet): " + smallest,
                var(tie="first")),
        Mistake("ties are broken by which pair was counted last: " + smallest, var(tie="last")),
        Mistake("the pairs are counted once, before the first merge: every merge changes the "
                "counts (its pair disappears, pairs with the new token appear), so count again "
                "after each merge", var(recount=False)),
        Mistake("the merges repeat one pair: after choosing a pair, apply it to every piece "
                "(merge_pair(ids, pair, 256 + k)) before counting again", var(apply=False)),
        Mistake("merge k creates id 257 + k: ids 0 to 255 are the bytes, so the first merge "
                "creates 256 and merge k creates 256 + k", var(first_id=257)),
        Mistake("every merge creates id 256: merge k creates id 256 + k", var(same_id=True)),
        Mistake("one merge too many: make num_merges merges (fewer only when no pair is left)",
                var(extra=1)),
        Mistake("training stops when the most frequent pair occurs only once: keep merging "
                "until num_merges merges are made or no pair is left", var(stop_at_one=True)),
    ]


def _train_package(case: Case) -> list[Pair]:
    return train_merges(case.inputs["text"], case.inputs["num_merges"])


def _as_merges(out: Any) -> list[Pair] | None:
    if not isinstance(out, (list, tuple)):
        return None
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in out):
        return None
    return [tuple(p) for p in out]


def _same_merges(got: Any, want: Any) -> bool:
    a, b = _as_merges(got), _as_merges(want)
    return a is not None and a == b


def _merges_form(got: Any, want: Any, case: Case) -> str | None:
    if isinstance(got, Mapping):
        return ("return the merges as a list of pairs in the order learned (merge k creates id "
                "256 + k), not a dict: list(your_dict) if it maps each pair to its new id")
    if not isinstance(got, (list, tuple)):
        return f"return a list of pairs (a, b); yours returned a {type(got).__name__}"
    for k, pair in enumerate(got):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in pair)):
            return f"each merge is a pair (a, b) of two ids (ints); merge {k} of yours is {pair!r}"
    return None


def _merges_details(got: Any, want: list[Pair], case: Case) -> str:
    mine = _as_merges(got) or []
    at = _first_difference(mine, want)
    theirs, ours = _vocab(mine), _vocab(want)

    def spelled(pair: Pair | None, vocab: Sequence[Any]) -> str:
        if pair is None:
            return "(none)"
        return f"{pair} = {_token(pair[0], vocab)} + {_token(pair[1], vocab)}"

    lines = [f"  yours: {_count(mine, 'merge')}, expected {len(want)}; the first {at} agree"]
    if at < max(len(mine), len(want)):
        lines += [f"  merge {at}: yours    {spelled(mine[at] if at < len(mine) else None, theirs)}",
                  f"           expected {spelled(want[at] if at < len(want) else None, ours)}"]
    return "\n".join(lines)


def _merges_hints(got: Any, want: Any, case: Case) -> str | None:
    mine = _as_merges(got) or []
    for k, (a, b) in enumerate(mine):
        if max(a, b) >= 256 + k:
            return (f"merge {k} of yours, ({a}, {b}), uses an id that does not exist yet: merge "
                    f"k creates id 256 + k, so merge {k} can use ids up to {255 + k}")
    return None


HINT_NO_PAIR = ("no pair is left to merge (every piece is a single token): stop there and return "
                "the merges made so far (if not counts: break)")


@isolated
def check_train_merges(fn: Callable[..., Any]) -> None:
    """Check ``fn(text, num_merges) -> [(a, b), ...]``: the merges in the order learned, each the
    most frequent pair of neighbours counted inside the pieces of ``pretokenize(text)`` (ties
    to the smallest pair), merge ``k`` creating id ``256 + k``; fewer than ``num_merges`` if no
    pair is left, as :func:`transformer_lib.tokenization.train_merges`."""
    check = "check_train_merges"

    def learner(case: Case) -> Any:
        i = case.inputs
        try:
            return call_learner(check, f"running {case.where}", fn, i["text"], i["num_merges"])
        except AssertionError as err:
            if "arg is an empty sequence" not in str(err) and "argument is empty" not in str(err):
                raise
            raise AssertionError(f"{err}\n  hint: {HINT_NO_PAIR}") from None

    count = run_cases(check, _train_cases(), learner, _train_package,
                      mistakes=_train_mistakes(), agree=_same_merges, structure=_merges_form,
                      details=_merges_details, hints=_merges_hints)
    passed(check, count)


register(Spec(check="check_train_merges", cases=_train_cases,
              reference=lambda case: _train_math(**case.inputs), package=_train_package,
              mistakes=_train_mistakes, agree=_same_merges))


# --- exercise 4: encoding ----------------------------------------------------------------------


def _table(*tokens: tuple[str | bytes, str | bytes]) -> list[Pair]:
    """A merge table written as the two tokens each merge joins: ``("b", "c"), ("a", "bc")``
    (a token as text, or as bytes for part of a character: ``(b"\\xc3", b"\\xa9")``)."""
    vocab = {bytes([b]): b for b in range(256)}
    merges: list[Pair] = []
    for pair in tokens:
        left, right = (t.encode("utf-8") if isinstance(t, str) else t for t in pair)
        merges.append((vocab[left], vocab[right]))
        vocab[left + right] = 255 + len(merges)
    return merges


def _merge_ids(seq: list[int], ranks: dict[Pair, int], order: str, first_id: int) -> list[int]:
    """One piece's ids, merged in the given ``order`` (``"rank"``: the right one)."""
    while len(seq) > 1:
        present = [pair for pair in zip(seq, seq[1:]) if pair in ranks]
        if not present:
            break
        if order in ("rank", "once"):
            pair = min(present, key=ranks.__getitem__)
        elif order == "latest":
            pair = max(present, key=ranks.__getitem__)
        elif order == "leftmost":
            pair = present[0]
        else:  # "frequency": the most frequent in the piece, ties to the first
            counts = Counter(present)
            pair = max(counts, key=counts.__getitem__)
        seq = merge_pair(seq, pair, first_id + ranks[pair])
        if order == "once":
            break
    return seq


def _encode_math(text: str, merges: Sequence[Pair], *, pieces: str = "pattern",
                 order: str = "rank", as_bytes: bool = True, first_id: int = 256) -> list[int]:
    """Encoding, with switches for the mistakes (all off: the right answer)."""
    ranks = {tuple(pair): k for k, pair in enumerate(merges)}
    parts = {"pattern": pretokenize, "whole": lambda t: [t], "split": str.split}[pieces](text)
    ids: list[int] = []
    for part in parts:
        seq = [*part.encode("utf-8")] if as_bytes else [ord(c) for c in part]
        ids += _merge_ids(seq, ranks, order, first_id)
    return ids


def _encode_cases() -> list[Case]:
    def case(name: str, text: str, merges: list[Pair]) -> Case:
        shown = repr(text) if len(text) <= 40 else f"{len(text)} characters of code and prose"
        return _Case(f"{name}: encode({shown}, {len(merges)} merges)",
                     {"text": text, "merges": merges})

    trained = train_merges(PARAGRAPH, 40)
    return [
        case("rank, not frequency: (b, c) was learned before (a, b)", "ababc",
             _table(("b", "c"), ("a", "b"))),
        case("rank, not the leftmost pair: (b, c) was learned before (a, b)", "abcbc",
             _table(("b", "c"), ("a", "b"))),
        case("a merge that builds on an earlier one", "abc",
             _table(("a", "b"), ("b", "c"), ("ab", "c"))),
        case("merges within pieces only: two spaces merge in indentation, not here", "x  y",
             _table((" ", " "), (" ", "y"))),
        case("words with their spaces", " the cat sat on the mat",
             _table(("a", "t"), (" ", "t"), (" t", "h"), (" th", "e"), ("at", " "))),
        case("characters of several bytes", "é, café → é",
             _table((b"\xc3", b"\xa9"), (" ", b"\xe2"))),
        case("a table trained on a longer text", PARAGRAPH[:120], trained),
        case("no merges: bytes", "aé😀", []),
        case("an empty text", "", trained),
    ]


def _encode_mistakes() -> list[Mistake]:
    def var(**switches: Any) -> Callable[[Case], list[int]]:
        return lambda case: _encode_math(case.inputs["text"], case.inputs["merges"], **switches)

    by_rank = ("at each step merge the pair of neighbours whose merge was learned earliest (the "
               "lowest index in merges), wherever it is, until no pair has a merge")
    return [
        Mistake("merges are applied across pre-token boundaries: split the text with "
                "pretokenize(text) and encode each piece on its own (training counted pairs "
                "only inside pieces)", var(pieces="whole")),
        Mistake("text.split() drops the spaces and newlines, so the ids no longer spell the "
                "text: split it with pretokenize(text), whose pieces join back to the text",
                var(pieces="split")),
        Mistake("merges are applied in order of frequency (the most frequent pair in the piece "
                "first), not by rank: " + by_rank, var(order="frequency")),
        Mistake("merges are applied to the leftmost pair that has one, not by rank: " + by_rank,
                var(order="leftmost")),
        Mistake("merges are applied latest first (the highest rank): a later merge builds on "
                "earlier ones; " + by_rank, var(order="latest")),
        Mistake("only one merge is applied per piece: repeat, merging the lowest-rank pair each "
                "time, until no pair of neighbours is in the table", var(order="once")),
        Mistake("the text is read as characters (ord(c)), not as UTF-8 bytes: encode each piece "
                "with piece.encode('utf-8'), where 'é' is two ids, [195, 169]",
                var(as_bytes=False)),
        Mistake("merge k gives id 257 + k: merge k creates id 256 + k (ids 0 to 255 are the "
                "bytes)", var(first_id=257)),
    ]


def _encode_package(case: Case) -> list[int]:
    return BPETokenizer(case.inputs["merges"]).encode(case.inputs["text"])


def _encode_hints(got: Any, want: Any, case: Case) -> str | None:
    vocab = _vocab(case.inputs["merges"])
    bad = [i for i in got if not 0 <= i < len(vocab)]
    if bad:
        return (f"your ids include {bad[0]}, which is no token: the ids are the bytes, 0 to 255, "
                f"and the merges', 256 to {len(vocab) - 1}")
    spelled = b"".join(vocab[i] for i in got)
    if spelled != case.inputs["text"].encode("utf-8"):
        return (f"your ids do not spell the text (their bytes give "
                f"{spelled.decode('utf-8', errors='replace')[:60]!r}): every byte of the text "
                f"must be in exactly one token")
    return ("your ids spell the text, but its bytes are merged differently: in each piece of "
            "pretokenize(text), merge the pair of neighbours with the lowest rank (the earliest "
            "merge), again and again until no pair of neighbours is in the table")


@isolated
def check_encode(fn: Callable[..., Any]) -> None:
    """Check ``fn(text, merges) -> list[int]``: the pieces of ``pretokenize(text)``, each as
    UTF-8 bytes merged by rank (the earliest merge first, again and again), as
    ``BPETokenizer(merges).encode(text)``."""
    check = "check_encode"

    def learner(case: Case) -> Any:
        i = case.inputs
        return call_learner(check, f"running {case.where}", fn, i["text"], list(i["merges"]))

    count = run_cases(check, _encode_cases(), learner, _encode_package,
                      mistakes=_encode_mistakes(), agree=_same_ids,
                      structure=lambda got, want, case: _ids_form(got, "token ids"),
                      details=lambda got, want, case: _ids_diff(
                          list(got), want, _vocab(case.inputs["merges"])),
                      hints=_encode_hints)
    passed(check, count)


register(Spec(check="check_encode", cases=_encode_cases,
              reference=lambda case: _encode_math(**case.inputs), package=_encode_package,
              mistakes=_encode_mistakes, agree=_same_ids))


# --- exercise 5: decoding ----------------------------------------------------------------------


def _decode_math(ids: Sequence[int], merges: Sequence[Pair], *, errors: str = "package",
                 per_token: bool = False, swapped: bool = False, latin1: bool = False,
                 as_repr: bool = False) -> str:
    """Decoding, with switches for the mistakes (all off: the right answer)."""
    vocab = [bytes([b]) for b in range(256)]
    for a, b in merges:
        vocab.append(vocab[b] + vocab[a] if swapped else vocab[a] + vocab[b])

    def text(data: bytes) -> str:
        if latin1:
            return data.decode("latin-1")
        if as_repr:
            return str(data)
        return bytes_to_text(data) if errors == "package" else data.decode("utf-8", errors)

    if per_token:
        return "".join(text(vocab[i]) for i in ids)
    return text(b"".join(vocab[i] for i in ids))


def _decode_cases() -> list[Case]:
    def case(name: str, ids: Sequence[int], merges: list[Pair]) -> Case:
        return _Case(f"{name}: decode({list(ids)}, {len(merges)} merges)",
                     {"ids": list(ids), "merges": merges})

    hi = _table(("h", "i"), ("hi", "!"))
    return [
        case("bytes only", b"hi there", []),
        case("merged tokens, and merges of merges ('hi', 'hi!')", [257, 32, 256], hi),
        case("merges of merges, in order ('ab', then 'c' + 'ab')", [257, 256],
             _table(("a", "b"), ("c", "ab"))),
        case("'café' with the bytes of 'é' in two tokens", b"caf\xc3\xa9", []),
        case("a token holding the end of 'é' and a space", [195, 256, 97],
             _table((b"\xa9", " "))),
        case("cut inside a character: the first two of the three bytes of '→'",
             [97, 226, 134], []),
        case("a stray continuation byte between two letters", [97, 128, 98], []),
        case("'😀!', the four bytes of '😀' in three tokens", [240, 256, 128, 33],
             _table((b"\x9f", b"\x98"))),
        case("no ids", [], hi),
    ]


def _decode_mistakes() -> list[Mistake]:
    def var(**switches: Any) -> Callable[[Case], str]:
        return lambda case: _decode_math(case.inputs["ids"], case.inputs["merges"], **switches)

    return [
        Mistake("errors='ignore' drops the bytes of a cut character without a trace: decode "
                "with errors='replace', so that they show as U+FFFD", var(errors="ignore")),
        Mistake("each token is decoded on its own, so a character whose bytes are split over "
                "two tokens breaks: join the bytes of all the tokens first, then decode once",
                var(per_token=True)),
        Mistake("the bytes are decoded as Latin-1 (or chr of each byte), so a character of "
                "several bytes comes out as several: decode them as UTF-8, "
                "data.decode('utf-8', errors='replace')", var(latin1=True)),
        Mistake("a merged token's bytes are joined the wrong way round: merge (a, b) stands "
                "for vocab[a] + vocab[b]", var(swapped=True)),
        Mistake("str(data) gives the bytes object's repr, \"b'...'\": decode the bytes, "
                "data.decode('utf-8', errors='replace')", var(as_repr=True)),
    ]


def _decode_package(case: Case) -> str:
    return BPETokenizer(case.inputs["merges"]).decode(case.inputs["ids"])


def _one_replacement(text: str) -> str:
    return re.sub("\ufffd+", "\ufffd", text)


def _same_text(got: Any, want: Any) -> bool:
    """Equal strings, where a run of U+FFFD counts as one: a cut character may show as one
    U+FFFD per byte (bytes_to_text) or per cut sequence (errors='replace')."""
    return (isinstance(got, str) and isinstance(want, str)
            and _one_replacement(got) == _one_replacement(want))


def _text_form(got: Any, want: Any, case: Case) -> str | None:
    if isinstance(got, (bytes, bytearray)):
        return ("return a str: decode the joined bytes, data.decode('utf-8', "
                "errors='replace')")
    if not isinstance(got, str):
        return f"return a str; yours returned a {type(got).__name__}"
    return None


def _text_details(got: Any, want: str, case: Case) -> str:
    return f"  yours    {got!r}\n  expected {want!r}"


DECODE_HINTS = [
    ("can't decode byte", "a token can hold part of a character, and a sequence of ids can end "
     "inside one: decode with errors='replace' (the default, errors='strict', raises)"),
    ("bytes must be in range(0, 256)", "the ids of merged tokens are 256 and above: look up "
     "each id's bytes in a vocabulary built from the merges, vocab[256 + k] = vocab[a] + "
     "vocab[b] for merge k = (a, b)"),
]


@isolated
def check_decode(fn: Callable[..., Any]) -> None:
    """Check ``fn(ids, merges) -> str``: the tokens' bytes joined, then decoded as UTF-8 without
    losing or crashing on a cut character, as ``BPETokenizer(merges).decode(ids)``. A cut
    character may show as one U+FFFD per byte (``bytes_to_text``) or per cut sequence
    (``errors="replace"``): both pass."""
    check = "check_decode"

    def learner(case: Case) -> Any:
        i = case.inputs
        try:
            return call_learner(check, f"running {case.where}", fn, list(i["ids"]),
                                list(i["merges"]))
        except AssertionError as err:
            for pattern, hint in DECODE_HINTS:
                if pattern in str(err):
                    raise AssertionError(f"{err}\n  hint: {hint}") from None
            raise

    count = run_cases(check, _decode_cases(), learner, _decode_package,
                      mistakes=_decode_mistakes(), agree=_same_text, structure=_text_form,
                      details=_text_details)
    passed(check, count)


register(Spec(check="check_decode", cases=_decode_cases,
              reference=lambda case: _decode_math(**case.inputs), package=_decode_package,
              mistakes=_decode_mistakes, agree=_same_text))
