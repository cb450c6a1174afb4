"""Checks for lab 4 (decoding): ``check_greedy_decode``, ``check_sequence_log_prob``,
``check_top_candidates``, ``check_beam_search``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
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
    close,
    diagnose,
    isolated,
    passed,
    randn,
    run_cases,
    structure_problem,
)
from transformer_lib.decoding import beam_search, greedy_decode, length_penalty, sequence_log_prob
from transformer_lib.model import Transformer, TransformerConfig

_TABLE_FLOOR = -20.0  # the logit of a token a table model never produces (probability ~1e-9)


def _jitter(*numbers: int) -> float:
    """A fixed pseudo-random number in [0, 1) for a tuple of ints (the same on every machine)."""
    h = 17
    for n in numbers:
        h = (h * 1000003 + n + 11) % 2_147_483_647
    return (h * 2654435761 % 2**32) / 2**32


class _TableModel(nn.Module):
    """A hand-made encoder-decoder whose next-token probabilities come from a table.

    ``tables[s]`` holds the probabilities for the sources whose first token is ``s``: it maps a
    prefix, written as names (``"BOS A"``), to ``{name: probability}``; the key ``"*"`` is the
    default for prefixes it does not list, otherwise such a prefix ends with EOS (probability
    ~0.998; the rest goes to ``pad``). After an EOS the model predicts no token in particular (a
    model trained on sequences that stop at EOS has no reason to). Each probability is nudged by
    a fixed factor in [1, 1.002), so that no two candidates tie anywhere (ties would make the
    right answer depend on how a sort breaks them); tokens a prefix does not list get logits near
    ``_TABLE_FLOOR``, each a slightly different one.

    ``encode`` returns a memory of shape ``(B, 1, 1)`` holding each row's source id, so a row
    that reads another source's memory predicts that source's tokens.
    """

    def __init__(self, names: Sequence[str], tables: dict[str, dict[str, dict[str, float]]]) -> None:
        super().__init__()
        self.names = list(names)
        self.ids = {name: i for i, name in enumerate(self.names)}
        self.bos_id, self.eos_id = self.ids["BOS"], self.ids["EOS"]
        self.tables = {self.ids[s]: table for s, table in tables.items()}
        self.floor = _TABLE_FLOOR - 0.0731 * torch.arange(len(self.names), dtype=torch.float32)
        self.cache: dict[tuple[int, tuple[int, ...]], Tensor] = {}

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        return src[:, :1, None].float()  # (B, S) -> (B, 1, 1): which source each row reads

    def distribution(self, source: int, prefix: tuple[int, ...]) -> dict[int, float] | None:
        """``{token: probability}`` after ``prefix`` (None after EOS: no token in particular)."""
        if self.eos_id in prefix[1:]:
            return None
        table = self.tables.get(source, {})
        text = " ".join(self.names[i] if 0 <= i < len(self.names) else "?" for i in prefix)
        if text in table or "*" in table:
            probs = {self.ids[name]: p for name, p in table.get(text, table.get("*")).items()}
        else:
            rest = 0.001 * (1.0 + _jitter(source, *prefix, -1))
            probs = {self.eos_id: 1.0 - rest, self.ids.get("pad", 0): rest}
        probs = {v: p * (1.0 + 0.002 * _jitter(source, *prefix, v)) for v, p in probs.items()}
        total = sum(probs.values())
        return {v: p / total for v, p in probs.items()}

    def next_logits(self, source: int, prefix: tuple[int, ...]) -> Tensor:
        key = (source, prefix)
        if key not in self.cache:
            probs = self.distribution(source, prefix)
            if probs is None:
                logits = -0.1 * torch.tensor([_jitter(source, *prefix, v) for v in range(len(self.names))])
            else:
                logits = self.floor.clone()
                for v, p in probs.items():
                    logits[v] = math.log(p)
            self.cache[key] = logits
        return self.cache[key]

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor | None = None,
               tgt_mask: Tensor | None = None) -> Tensor:
        N, T = tgt.shape
        if memory.size(0) != N:
            raise ValueError(f"model.decode got {N} prefix{'' if N == 1 else 'es'} (rows of tgt) "
                             f"but memory for {memory.size(0)} rows: each row of tgt needs its own "
                             f"row of memory (one per source; in beam search, one per hypothesis)")
        rows = []
        for n in range(N):
            source, prefix = int(memory[n, 0, 0]), tuple(tgt[n].tolist())
            rows.append(torch.stack([self.next_logits(source, prefix[: t + 1]) for t in range(T)]))
        return torch.stack(rows) if rows else torch.zeros(0, T, len(self.names))  # (N, T, V)

    def possible(self, source: int, tokens: Sequence[int]) -> bool:
        """Can the model produce ``tokens`` (up to the first EOS) for this source?"""
        for t in range(1, len(tokens)):
            probs = self.distribution(source, tuple(tokens[:t]))
            if probs is None:
                break
            if tokens[t] not in probs:
                return False
        return True

    def spell(self, tokens: Sequence[int]) -> str:
        return " ".join(self.names[i] if 0 <= i < len(self.names) else str(i) for i in tokens)


def _table_model(names: str, **tables: dict[str, dict[str, float]]) -> _TableModel:
    return _TableModel(names.split(), tables)


def _random_transformer(seed: int, *, norm_first: bool, vocab: int = 9,
                        sharpen: float = 2.0, eos_bias: float = 1.5) -> nn.Module:
    """A small random :class:`Transformer` (its own initialization, from ``seed``) in eval
    mode. Its output projection is scaled up and given a random bias, so that its next-token
    distributions are peaked and EOS (id 2) is likely: sequences end after a few tokens or run
    to max_len, and the best ones differ from source to source. It never predicts PAD or BOS
    (ids 0 and 1), as a trained model would not."""
    config = TransformerConfig(src_vocab_size=11, tgt_vocab_size=vocab, d_model=16, num_heads=2,
                               num_encoder_layers=2, num_decoder_layers=2, d_ff=32, dropout=0.0,
                               norm_first=norm_first, max_len=32, pad_id=0, tie_output=False)
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        model.out_proj.weight.mul_(sharpen)
        model.out_proj.bias.copy_(0.3 * torch.randn(vocab))
        model.out_proj.bias[2] += eos_bias
        model.out_proj.bias[:2] = -8.0
    return model


def _seqs(out: Any) -> list[Tensor]:
    return [seq.long() for seq in out]


def _same_seqs(got: Any, want: Sequence[Tensor]) -> bool:
    if not isinstance(got, (list, tuple)) or len(got) != len(want):
        return False
    return all(isinstance(a, Tensor) and a.shape == b.shape and bool((a.long() == b).all())
               for a, b in zip(got, want))


def _decoded_form(got: Any, want: Sequence[Tensor]) -> str | None:
    """The form of a decoder's output: a list of 1-d integer tensors, one per source."""
    B = len(want)
    if isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], (list, tuple)):
        return ("return only the list of sequences (yours returned a pair, sequences and "
                "something else)")
    if isinstance(got, Tensor):
        return (f"return a list with one 1-d tensor of token ids per source (the sequences can "
                f"have different lengths); yours returned one tensor of shape {tuple(got.shape)}")
    if not isinstance(got, (list, tuple)):
        return (f"return a list with one 1-d tensor of token ids per source; yours returned a "
                f"{type(got).__name__}")
    if len(got) != B:
        hint = (" (is the whole batch decoded as one sequence? Each source has its own)"
                if len(got) < B else "")
        return (f"return one sequence per source: the batch has {B} sources, yours returned "
                f"{len(got)} sequence{'' if len(got) == 1 else 's'}{hint}")
    for i, seq in enumerate(got):
        if not isinstance(seq, Tensor):
            fix = " (torch.tensor(ids))" if isinstance(seq, (list, tuple)) else ""
            return (f"each sequence must be a 1-d torch.Tensor of token ids; sequence {i} is a "
                    f"{type(seq).__name__}{fix}")
        if seq.dim() != 1:
            fix = " (drop the extra axis: .squeeze(0) or .view(-1))" if seq.numel() in seq.shape else ""
            return f"each sequence must be 1-d, (length,); sequence {i} has shape {tuple(seq.shape)}{fix}"
        if seq.is_floating_point() or seq.dtype == torch.bool:
            return (f"token ids are integers (torch.long); sequence {i} has dtype {seq.dtype} "
                    f"(are these scores or probabilities?)")
    return None


def _spelled(model: nn.Module, tokens: Sequence[int]) -> str:
    text = "[" + ", ".join(str(t) for t in tokens) + "]"
    return f"{text} ({model.spell(tokens)})" if isinstance(model, _TableModel) else text


def _seq_log_prob(model: nn.Module, src: Tensor, tokens: Tensor, src_mask: Tensor | None,
                  b: int) -> float | None:
    """log p(tokens | source b) under the model (None if it cannot be scored)."""
    if tokens.numel() < 2:
        return None
    try:
        mask = None if src_mask is None else src_mask.expand(src.size(0), 1, 1, src.size(1))[b:b + 1]
        return float(sequence_log_prob(model, src[b:b + 1], tokens[None].long(), mask))
    except Exception:
        return None


def _sequence_diff(got: Sequence[Tensor], want: Sequence[Tensor], case: Case,
                   log_probs: bool = False, limit: int = 3) -> str:
    i = case.inputs
    lines = []
    for b, (a, w) in enumerate(zip(got, want)):
        if a.shape == w.shape and bool((a.long() == w).all()):
            continue
        if len(lines) == 2 * limit:
            lines.append("  ...")
            break
        yours, expected = _spelled(i["model"], a.tolist()), _spelled(i["model"], w.tolist())
        if log_probs:
            lp_a = _seq_log_prob(i["model"], i["src"], a, i.get("src_mask"), b)
            lp_w = _seq_log_prob(i["model"], i["src"], w, i.get("src_mask"), b)
            if lp_a is not None and lp_w is not None:
                yours += f"  log p = {lp_a:.3f}"
                expected += f"  log p = {lp_w:.3f}"
        lines += [f"  source {b}: yours    {yours}", f"            expected {expected}"]
    return "\n".join(lines)


def _first_wrong(got: Sequence[Tensor], want: Sequence[Tensor]) -> int:
    for b, (a, w) in enumerate(zip(got, want)):
        if a.shape != w.shape or not bool((a.long() == w).all()):
            return b
    return -1


def _sequence_symptoms(got: Sequence[Tensor], want: Sequence[Tensor], case: Case,
                       beam: bool) -> str | None:
    """What is visibly wrong with the sequences, whatever the code that made them."""
    i = case.inputs
    bos, eos, max_len, model = i["bos_id"], i["eos_id"], i["max_len"], i["model"]
    seqs = [a.long().tolist() for a in got]
    wants = [w.tolist() for w in want]
    if any(s[:1] != [bos] for s in seqs):
        if all(s == w[1:] for s, w in zip(seqs, wants)):
            return ("your sequences leave out BOS: each one starts with bos_id, followed by the "
                    "generated tokens")
        return f"every sequence starts with bos_id={bos}; one of yours does not"
    if any(eos in s[1:-1] for s in seqs):
        if beam:
            return ("a hypothesis goes on after EOS: a hypothesis that emits EOS is finished; set "
                    "it aside (with its score) and never extend it")
        return ("your sequences go on after EOS: a sequence ends at its first EOS. Stop when "
                "every row has produced EOS, and cut each row after its first EOS (rows finish "
                "at different steps)")
    if any(len(s) > max_len + 1 for s in seqs):
        return (f"a sequence has more than max_len + 1 = {max_len + 1} ids: max_len counts the "
                f"tokens generated after BOS")
    ended = [(s, w) for s, w in zip(seqs, wants) if w[-1] == eos and len(w) > 1 and s != w]
    if ended and all(s == w[:-1] for s, w in ended):
        return ("your sequences leave out their final EOS: a finished sequence ends with "
                "eos_id, included")
    b = _first_wrong(got, want)
    s, w = seqs[b], wants[b]
    if isinstance(model, _TableModel):
        source = int(i["src"][b, 0])
        if not model.possible(source, s):
            if beam:
                return (f"the sequence for source {b} is one the model cannot produce for it "
                        f"(it has probability ~0): it mixes up rows. Either the top-k ran over "
                        f"the whole batch instead of over each source's k * V candidates "
                        f"(scores.view(B, k * V)), or the rows were not reordered after the "
                        f"selection: the new beam's row j continues the prefix it was chosen "
                        f"from (tokens[rows]), and each row reads its own source's memory")
            return (f"the sequence for source {b} is one the model cannot produce for it: each "
                    f"row of the batch must read its own source's memory, and each step "
                    f"appends the token predicted for that row")
    if beam and s[-1:] != [eos] and w[-1:] == [eos]:
        if len(s) == max_len + 1:
            return ("the sequence you return never finished although a finished one (ending with "
                    "EOS) is better: return the best finished hypothesis; live ones count as "
                    "finished only when max_len is reached")
        return "a finished hypothesis ends with eos_id, included; yours does not"
    if beam and i.get("beam_size") == 1:
        return ("with beam_size=1, beam search must give greedy decoding's answer (one live "
                "hypothesis, extended by its best token)")
    return None


def _run_decoding(check: str, cases: Sequence[Case], learner: Callable[[Case], Any],
                  reference: Callable[[Case], Any], variants: Sequence[tuple[Any, Callable[[Case], Any]]],
                  symptoms: Callable[[Sequence[Tensor], Sequence[Tensor], Case], str | None],
                  log_probs: bool = False) -> int:
    """Run every case; at the first wrong answer, raise an AssertionError with a diagnosis.

    A known mistake is named if its output matches the learner's on every case: the ones before
    the failure, the failing one, and the later ones (run now, to tell apart mistakes that give
    the same wrong answer here); failing that, on the cases up to the failure.
    """
    seen: list[tuple[Case, Any]] = []
    for number, case in enumerate(cases, 1):
        case.where = f"case {number} of {len(cases)} ({case.describe()})"
        got = learner(case)
        want = reference(case)
        problem = _decoded_form(got, want)
        if problem is None and _same_seqs(got, want):
            seen.append((case, got))
            continue
        details = ""
        if problem is None:
            seen.append((case, got))
            later = []
            for other_number, other in enumerate(cases[number:], number + 1):
                other.where = f"case {other_number} of {len(cases)} ({other.describe()})"
                try:
                    out = learner(other)
                except (AssertionError, NotImplementedError):
                    continue
                if _decoded_form(out, reference(other)) is None:
                    later.append((other, out))
            case.where = f"case {number} of {len(cases)} ({case.describe()})"
            problem = (_first_match(variants, seen + later) or _first_match(variants, seen)
                       or symptoms(got, want, case) or
                       "your sequences differ from the reference's, and they match none of the "
                       "common mistakes this check knows; compare your code with the steps above")
            details = "\n" + _sequence_diff(got, want, case, log_probs)
        raise AssertionError(f"{check}: {problem}\n  in {case.where}{details}")
    return len(cases)


def _first_match(variants: Sequence[tuple[Any, Callable[[Case], Any]]],
                 outputs: list[tuple[Case, Any]]) -> str | None:
    """The mistake whose output is the learner's on every case given."""
    return diagnose([Mistake(*v) for v in variants], outputs, outputs[0][0], _agree_seqs)


def _agree_seqs(got: Any, mistaken: Any) -> bool:
    return mistaken is not None and _same_seqs(mistaken, _seqs(got))


def _quiet(variant: Callable[[Case], Any], case: Case) -> Any:
    try:
        return variant(case)
    except Exception:
        return None


def _decoding_args(case: Case) -> tuple[list[Any], dict[str, Any]]:
    i = case.inputs
    args = [i["model"], i["src"].clone(), i["max_len"], i["bos_id"], i["eos_id"]]
    kwargs = {name: i[name] for name in ("beam_size", "src_mask", "length_alpha")
              if i.get(name) is not None}
    return args, kwargs


# --- greedy decoding ---


def _greedy_math(model: nn.Module, src: Tensor, max_len: int, bos_id: int, eos_id: int,
                 src_mask: Tensor | None = None, *, position: int = -1, finish: str = "trim",
                 ignore_mask: bool = False) -> list[Tensor]:
    """Greedy decoding with switches for common mistakes (defaults: the right answer).

    ``finish``: "trim" (right), "untrimmed" (finished rows go on, not cut), "eos_fill" (finished
    rows repeat EOS, not cut), "never" (no stopping at EOS at all), "first" (every row stops when
    the first one finishes).
    """
    if ignore_mask:
        src_mask = None
    memory = model.encode(src, src_mask)
    B = src.size(0)
    tokens = torch.full((B, 1), bos_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_len):
        logits = model.decode(tokens, memory, src_mask, causal_mask(tokens.size(1)))
        next_token = logits[:, position].argmax(dim=-1)
        if finish in ("trim", "eos_fill"):
            next_token = next_token.masked_fill(done, eos_id)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == eos_id
        if finish == "first" and done.any():
            break
        if finish != "never" and done.all():
            break
    if finish in ("trim", "first"):
        return [_cut_after_eos(row, eos_id) for row in tokens]
    return list(tokens)


def _cut_after_eos(row: Tensor, eos_id: int) -> Tensor:
    ends = (row[1:] == eos_id).nonzero()
    return row if len(ends) == 0 else row[: int(ends[0]) + 2]


def _greedy_variants() -> list[tuple[Any, Callable[[Case], Any]]]:
    def var(**options: Any) -> Callable[[Case], Any]:
        def run(case: Case) -> list[Tensor]:
            i = case.inputs
            return _greedy_math(i["model"], i["src"], i["max_len"], i["bos_id"], i["eos_id"],
                                i.get("src_mask"), **options)
        return run

    def right(case: Case) -> list[Tensor]:
        return var()(case)

    return [
        ("your sequences go on after EOS: a sequence ends at its first EOS. In a batch, keep "
         "going until every row has produced EOS, then cut each row after its first EOS",
         var(finish="untrimmed")),
        ("your sequences do not stop at EOS: stop generating once a row has produced EOS (in a "
         "batch: once every row has), and cut each row after its first EOS", var(finish="never")),
        ("rows that finished early are padded with EOS: cut each row after its first EOS",
         var(finish="eos_fill")),
        ("the whole batch stops when its first row reaches EOS, so the other rows are cut short: "
         "each source is decoded until its own EOS (stop when every row has produced EOS, "
         "done.all(), not done.any())", var(finish="first")),
        ("the next token is read from the first position's logits: the prediction for the token "
         "after the prefix is at the last position, logits[:, -1]", var(position=0)),
        ("src_mask is ignored: pass it to model.encode and model.decode, so the padded source "
         "positions are hidden", var(ignore_mask=True)),
        ("your sequences leave out BOS: each one starts with bos_id, followed by the generated "
         "tokens", lambda c: [s[1:] for s in right(c)]),
        ("your sequences leave out their final EOS: a finished sequence ends with eos_id",
         lambda c: [s[:-1] if s[-1] == c.inputs["eos_id"] and len(s) > 1 else s for s in right(c)]),
        ("max_len counts the tokens generated after BOS: generate at most max_len of them, "
         "for at most max_len + 1 ids; yours makes one more",
         lambda c: var()(Case(c.name, {**c.inputs, "max_len": c.inputs["max_len"] + 1}))),
        ("max_len counts the tokens generated after BOS: generate at most max_len of them, "
         "for at most max_len + 1 ids; yours makes one fewer",
         lambda c: var()(Case(c.name, {**c.inputs, "max_len": c.inputs["max_len"] - 1}))),
    ]


# seeds of the random models, chosen so that their answers differ from source to source, some end
# with EOS and some run to max_len, and beam search, the source mask and the length penalty each
# change some answer
_POST_LN_SEED, _PRE_LN_SEED = 33, 48


def _decoding_sources(g: torch.Generator, lengths: Sequence[int], S: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """Random source ids 3..10 with padding (id 0) after each length; and the padding mask."""
    S = S or max(lengths)
    src = torch.randint(3, 11, (len(lengths), S), generator=g)
    keep = torch.arange(S) < torch.tensor(lengths)[:, None]
    src = src.masked_fill(~keep, 0)
    return src, keep[:, None, None, :]


def _greedy_cases(g: torch.Generator) -> list[Case]:
    chapter, three = _chapter_table(), _three_sources_table()
    other_ids = _table_model("EOS pad BOS A B C", A={
        "BOS": {"A": 0.5, "B": 0.4, "EOS": 0.1},
        "BOS A": {"B": 0.36, "C": 0.34, "EOS": 0.3},
        "BOS A B": {"C": 0.7, "EOS": 0.3},
    })
    src_t, mask_t = _decoding_sources(g, [6, 4, 2])
    src_u, mask_u = _decoding_sources(g, [3, 5])

    def case(name: str, model: nn.Module, src: Tensor, max_len: int, src_mask: Tensor | None = None,
             bos: int = 1, eos: int = 2) -> Case:
        return Case(name, {"model": model, "src": src, "max_len": max_len, "bos_id": bos,
                            "eos_id": eos, "src_mask": src_mask})

    def sources(model: _TableModel, *names: str) -> Tensor:
        return torch.tensor([[model.ids[n], 0] for n in names])

    return [
        case("a table model, one source", chapter, sources(chapter, "A"), 5),
        case("a table model, 3 sources that finish at different steps (the last one never)",
             three, sources(three, "A", "D", "G"), 4),
        case("a table model with bos_id=2, eos_id=0", other_ids, sources(other_ids, "A"), 5,
             bos=2, eos=0),
        case("a random post-LN Transformer, 3 padded sources", _random_transformer(
            _POST_LN_SEED, norm_first=False), src_t, 6, mask_t),
        case("a random pre-LN Transformer, 2 padded sources, max_len=1", _random_transformer(
            _PRE_LN_SEED, norm_first=True), src_u, 1, mask_u),
    ]


@isolated
def check_greedy_decode(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(model, src, max_len, bos_id, eos_id, src_mask=None)``, greedy decoding, which
    returns one 1-d tensor of ids per source: ``bos_id``, the generated tokens, and ``eos_id``
    (or ``max_len`` tokens if EOS never came), as :func:`transformer_lib.greedy_decode`.

    The models: hand-made table models (batches whose sources finish at different steps or never;
    other BOS and EOS ids) and small random :class:`transformer_lib.Transformer` s with padded
    sources.
    """
    check = "check_greedy_decode"
    g = torch.Generator().manual_seed(seed)
    cases = _greedy_cases(g)

    def learner(case: Case) -> Any:
        args, kwargs = _decoding_args(case)
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    def reference(case: Case) -> list[Tensor]:
        args, kwargs = _decoding_args(case)
        return greedy_decode(*args, **kwargs, use_cache=False)

    count = _run_decoding(check, cases, learner, reference, _greedy_variants(),
                          lambda got, want, case: _sequence_symptoms(got, want, case, beam=False))
    passed(check, count)


# --- the log-probability of a sequence ---


def _sequence_log_prob_math(model: nn.Module, src: Tensor, tgt: Tensor,
                            src_mask: Tensor | None = None, *, shift: str = "ok",
                            normalize: str = "log_softmax", reduce: str = "sum",
                            ignore_mask: bool = False, softmax_dim: int = -1) -> Tensor:
    """log p(tgt | src) with switches for common mistakes (defaults: the right answer)."""
    if ignore_mask:
        src_mask = None
    memory = model.encode(src, src_mask)
    T = tgt.size(1)
    inputs, targets = {"ok": (tgt[:, :-1], tgt[:, 1:]), "none": (tgt, tgt),
                       "same": (tgt[:, :-1], tgt[:, :-1]), "skip_first": (tgt[:, :-1], tgt[:, 1:]),
                       "no_last": (tgt[:, :-2], tgt[:, 1:-1])}[shift]
    logits = model.decode(inputs, memory, src_mask, causal_mask(inputs.size(1))).float()
    scores = {"log_softmax": lambda x: F.log_softmax(x, dim=softmax_dim),
              "none": lambda x: x,
              "softmax": lambda x: F.softmax(x, dim=-1)}[normalize](logits)
    picked = scores.gather(-1, targets[..., None]).squeeze(-1)  # (B, T')
    if shift == "skip_first":
        picked = picked[:, 1:]
    del T
    if reduce == "mean":
        return picked.mean(dim=-1)
    if reduce == "prob":
        return picked.sum(dim=-1).exp()
    return picked.sum(dim=-1)


def _sequence_log_prob_variants() -> list[tuple[Any, Callable[[Case], Any]]]:
    def var(**options: Any) -> Callable[[Case], Any]:
        return lambda case: _sequence_log_prob_math(**case.inputs, **options)

    shift = ("the targets are not shifted: the logits at position t score the token that "
             "follows it, so decode tgt[:, :-1] and score the tokens tgt[:, 1:]")
    return [
        (shift, var(shift="none")),
        (shift, var(shift="same")),
        ("the first token after BOS is not scored: every token after BOS counts, the first "
         "one included", var(shift="skip_first")),
        ("the last token (EOS) is not scored: every token after BOS counts, EOS included",
         var(shift="no_last")),
        ("the logits are summed as they are: turn them into log-probabilities first, "
         "F.log_softmax(logits, dim=-1)", var(normalize="none")),
        ("probabilities are summed: sum the log-probabilities (log_softmax), since "
         "log p(y) = sum_t log p(y_t | y_<t, x)", var(normalize="softmax")),
        ("the log_softmax runs over the positions: normalize over the vocabulary, dim=-1",
         var(softmax_dim=1)),
        ("this is the mean over the tokens: the log-probability of a sequence is their sum",
         var(reduce="mean")),
        ("this is the probability p(y | x): return its logarithm, the sum of the tokens' "
         "log-probabilities", var(reduce="prob")),
        ("src_mask is ignored: pass it to model.encode and model.decode", var(ignore_mask=True)),
    ]


@isolated
def check_sequence_log_prob(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(model, src, tgt, src_mask=None) -> (B,)``, the log-probability
    :math:`\\log p(y \\mid x) = \\sum_t \\log p(y_t \\mid y_{<t}, x)` of each complete hypothesis
    ``tgt[b]`` (BOS first; every token after BOS is scored), as
    :func:`transformer_lib.sequence_log_prob`: a table model whose probabilities are known, and
    small random Transformers with padded sources."""
    check = "check_sequence_log_prob"
    g = torch.Generator().manual_seed(seed)
    chapter = _chapter_table()
    a = chapter.ids
    table_tgt = torch.tensor([[a["BOS"], a["A"], a["B"], a["EOS"]],
                              [a["BOS"], a["A"], a["C"], a["EOS"]],
                              [a["BOS"], a["B"], a["C"], a["EOS"]]])
    src_t, mask_t = _decoding_sources(g, [5, 2, 4])
    src_u, _ = _decoding_sources(g, [3, 3])

    def tgt(B: int, T: int, vocab: int = 9) -> Tensor:
        t = torch.randint(3, vocab, (B, T), generator=g)
        t[:, 0], t[:, -1] = 1, 2  # BOS ... EOS
        return t

    cases = [
        Case("a table model, p(BOS A B EOS) = 0.5 * 0.36 * 1 (nearly)",
              {"model": chapter, "src": torch.full((3, 1), a["A"]), "tgt": table_tgt}),
        Case("a random post-LN Transformer, padded sources",
              {"model": _random_transformer(_POST_LN_SEED, norm_first=False), "src": src_t, "tgt": tgt(3, 6),
               "src_mask": mask_t}),
        Case("a random pre-LN Transformer, no mask",
              {"model": _random_transformer(_PRE_LN_SEED, norm_first=True), "src": src_u, "tgt": tgt(2, 4)}),
    ]
    for case in cases:
        case.positional = 3

    def learner(case: Case) -> Any:
        args, kwargs = case.args()
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    def structure(got: Any, want: Tensor, case: Case) -> str | None:
        B, T = case.inputs["tgt"].shape
        if isinstance(got, Tensor) and got.shape in ((B, T - 1), (B, T)):
            return (f"yours has shape {tuple(got.shape)}, one number per token: sum over the "
                    f"positions to get one log-probability per sequence, (B,) = ({B},)")
        if isinstance(got, Tensor) and got.shape in ((B, 1), (1, B)):
            return f"return shape (B,) = ({B},); yours is {tuple(got.shape)}"
        return structure_problem(("log-probabilities",), got, want)

    count = run_cases(check, cases, learner, lambda case: sequence_log_prob(**case.inputs),
                 parts=("log-probabilities",), mistakes=[Mistake(*v) for v in _sequence_log_prob_variants()],
                 structure=structure)
    passed(check, count)


# --- one beam step: the best candidates of each source ---


def _top_candidates(log_probs: Tensor, next_log_probs: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    B, k, V = next_log_probs.shape
    scores = (log_probs[:, :, None] + next_log_probs).reshape(B, k * V)  # (B, k, V) -> (B, k * V)
    top, index = scores.topk(n, dim=-1)  # (B, n), best first
    return top, index // V, index % V


def _top_candidates_variants() -> list[tuple[Any, Callable[[Case], Any]]]:
    def inputs(case: Case) -> tuple[Tensor, Tensor, int]:
        i = case.inputs
        return i["log_probs"], i["next_log_probs"], i["n"]

    def last_only(case: Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        B, k, V = nlp.shape
        alive = torch.where(torch.isinf(lp), lp, torch.zeros_like(lp))  # -inf rows stay dead
        return _top_candidates(alive, nlp, n)

    def ranked_by_last(case: Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        _, beams, tokens = last_only(case)
        return lp.gather(1, beams) + nlp[torch.arange(nlp.size(0))[:, None], beams, tokens], beams, tokens

    def flat(case: Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        B, k, V = nlp.shape
        top, index = (lp[:, :, None] + nlp).reshape(-1).topk(B * n)
        return top.view(B, n), (index // V % k).view(B, n), (index % V).view(B, n)

    def decompose(case: Case, how: str) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        B, k, V = nlp.shape
        top, index = (lp[:, :, None] + nlp).reshape(B, k * V).topk(n, dim=-1)
        if how == "by_k":
            return top, index % k, index // k
        if how == "flat_index":
            return top, index // V, index
        return top, index // k, index % V

    def smallest(case: Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = inputs(case)
        B, k, V = nlp.shape
        scores = (lp[:, :, None] + nlp).reshape(B, k * V)
        scores = scores.masked_fill(torch.isinf(scores), math.inf)
        top, index = scores.topk(n, dim=-1, largest=False)
        return top, index // V, index % V

    decomposition = ("the flat index of a candidate in the (B, k * V) scores is "
                     "beam * V + token: beam = index // V, token = index % V")
    return [
        ("the candidates are ranked by the new token's log-probability alone: a hypothesis's "
         "score is the sum over all its tokens, log_probs[:, :, None] + next_log_probs",
         last_only),
        ("the candidates are ranked by the new token's log-probability alone: rank them by their "
         "total score, log_probs[:, :, None] + next_log_probs", ranked_by_last),
        ("the top-k runs over the whole batch, so one source's candidates take another's "
         "places: take the top n of each source's k * V candidates, scores.view(B, k * V)"
         ".topk(n, dim=-1)", flat),
        (decomposition, lambda c: decompose(c, "by_k")),
        (decomposition, lambda c: decompose(c, "div_k")),
        ("the tokens are the flat indices into the k * V candidates: token = index % V "
         "(and beam = index // V)", lambda c: decompose(c, "flat_index")),
        ("these are the n worst candidates: topk returns the largest by default "
         "(largest=True), best first", smallest),
    ]


@isolated
def check_top_candidates(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(log_probs, next_log_probs, n) -> (scores, beams, tokens)``, one step of beam
    search: ``log_probs (B, k)`` scores the live hypotheses (``-inf``: no hypothesis),
    ``next_log_probs (B, k, V)`` their next-token log-probabilities; the result holds, for each
    source, its ``n`` best extensions, best first (each ``(B, n)``):
    ``scores[b, i] = log_probs[b, beams[b, i]] + next_log_probs[b, beams[b, i], tokens[b, i]]``.
    """
    check = "check_top_candidates"
    g = torch.Generator().manual_seed(seed)

    def case(name: str, B: int, k: int, V: int, n: int, dead: int = 0,
             offsets: Sequence[float] | None = None) -> Case:
        log_probs = -3.0 * torch.rand(B, k, generator=g)
        if offsets is not None:
            log_probs = log_probs + torch.tensor(offsets)[:, None]
        if dead:
            log_probs[:, k - dead:] = -math.inf
        next_log_probs = F.log_softmax(randn(g, B, k, V, std=2.0), dim=-1)
        return Case(name, {"log_probs": log_probs, "next_log_probs": next_log_probs, "n": n},
                     positional=3)

    cases = [
        case("B=2 sources, k=3 hypotheses each, V=5, n=3", 2, 3, 5, 3),
        case("the first step: only hypothesis 0 is live, the others are -inf; n=2k=6", 2, 3, 6, 6,
             dead=2),
        case("3 sources with scores on different scales, k=2, V=4, n=4", 3, 2, 4, 4,
             offsets=[0.0, -6.0, -12.0]),
        case("one source, one hypothesis (greedy), V=7, n=2", 1, 1, 7, 2),
        case("k=4, V=3, n=8: the best candidates come from several hypotheses", 2, 4, 3, 8),
    ]
    parts = ("scores", "beams", "tokens")

    def learner(case: Case) -> Any:
        args, kwargs = case.args()
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    def reference(case: Case) -> Any:
        return _top_candidates(**case.inputs)

    def structure(got: Any, want: Any, case: Case) -> str | None:
        B, k, V = case.inputs["next_log_probs"].shape
        n = case.inputs["n"]
        if isinstance(got, (tuple, list)) and got and isinstance(got[0], Tensor):
            if got[0].shape == (B, k, n):
                return (f"the scores have shape (B, k, n) = {(B, k, n)}: that is the top n of each "
                        f"hypothesis; flatten each source's candidates to (B, k * V) first, so the "
                        f"n best of a source can come from any of its hypotheses")
        problem = structure_problem(parts, got, want)
        if problem is None:
            scores, beams, tokens = got
            if bool(((beams < 0) | (beams >= k)).any()) or bool(((tokens < 0) | (tokens >= V)).any()):
                return (f"beams must be in [0, k) = [0, {k}) and tokens in [0, V) = [0, {V}): "
                        f"split the flat index into beam = index // V and token = index % V")
        return problem

    def hints(got: Any, want: Any, case: Case) -> str | None:
        scores, beams, tokens = got
        lp, nlp = case.inputs["log_probs"], case.inputs["next_log_probs"]
        B, k, V = nlp.shape
        candidates = (lp[:, :, None] + nlp).reshape(B, k * V)
        for b in range(B):
            for value in scores[b].tolist():
                if not bool(torch.isclose(candidates[b], torch.tensor(value), atol=1e-5).any()):
                    return (f"source {b} got a score that is none of its own candidates': the "
                            f"top n must be taken per source, over scores.view(B, k * V)")
        if close(scores, want[0]) and not (close(beams, want[1]) and close(tokens, want[2])):
            return ("the scores are right but not the beams or tokens they come from: with "
                    "index in [0, k * V), beam = index // V and token = index % V")
        chosen = lp[:, :, None] + nlp
        if close(scores.sort(dim=-1, descending=True).values, want[0]):
            return "the right candidates, in the wrong order: return them best first"
        del chosen
        return None

    count = run_cases(check, cases, learner, reference, parts=parts,
                 mistakes=[Mistake(*v) for v in _top_candidates_variants()], structure=structure, hints=hints)
    passed(check, count)


# --- beam search ---


@dataclass
class _BeamBug:
    """Switches for the mistakes the beam search check knows (all off: the right answer)."""

    all_live: bool = False  # all k start rows live at score 0: the beam fills with duplicates
    last_token: bool = False  # a hypothesis is scored by its last token's log-probability only
    extend_finished: str = ""  # "untrimmed" / "trimmed": EOS is an ordinary token
    flat_topk: bool = False  # one top-k over the whole batch's B * k * V candidates
    no_reorder: bool = False  # row j keeps its own prefix and gets the token chosen for slot j
    tiled_memory: bool = False  # row r reads source r % B's memory (repeat, not repeat_interleave)
    every_eos: bool = False  # every EOS among the top 2k is set aside, even below the k-th live
    top_k_only: bool = False  # only the top k candidates: the beam shrinks when some finish
    stop: str = "exact"  # "first": at the first finished; "k_finished"; "raw_bound"
    pick: str = "best"  # "last_finished", "live" (the top live row), "finished_only"
    penalty: str = "ok"  # "ignored", "mean" (log p / |y|), "with_bos" (|y| + 1), "multiply"
    ignore_mask: bool = False


def _beam_math(model: nn.Module, src: Tensor, max_len: int, bos_id: int, eos_id: int,
               beam_size: int = 4, src_mask: Tensor | None = None, length_alpha: float = 0.0,
               bug: _BeamBug | None = None) -> list[Tensor]:
    """Beam search, written plainly with Python lists, with switches for common mistakes."""
    bug = bug or _BeamBug()
    B, k = src.size(0), beam_size
    alpha = 0.0 if bug.penalty == "ignored" else (length_alpha or 0.0)

    def score(log_prob: float, length: int) -> float:
        if bug.penalty == "mean":
            return log_prob / length
        if bug.penalty == "multiply":
            return log_prob * length_penalty(length, alpha)
        return log_prob / length_penalty(length + (bug.penalty == "with_bos"), alpha)

    mask = None if src_mask is None or bug.ignore_mask else src_mask.expand(B, 1, 1, src.size(1))
    memory = model.encode(src, mask)
    rows = torch.arange(B).repeat(k) if bug.tiled_memory else torch.arange(B).repeat_interleave(k)
    memory, mask = memory[rows], None if mask is None else mask[rows]
    hyps = [[bos_id] for _ in range(B * k)]
    scores = [[0.0 if j == 0 or bug.all_live else -math.inf for j in range(k)] for _ in range(B)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    active = [True] * B
    top_live: list[list[int] | None] = [None] * B
    for t in range(1, max_len + 1):
        logits = model.decode(torch.tensor(hyps), memory, mask, causal_mask(t))
        step = F.log_softmax(logits[:, -1].float(), dim=-1)  # (B * k, V)
        per_source = []
        for b in range(B):
            candidates = []
            for j in range(k):
                if scores[b][j] == -math.inf:
                    continue
                row = b * k + j
                values = step[row].tolist()
                for v, value in enumerate(values):
                    candidates.append((value if bug.last_token else scores[b][j] + value, row, v))
            candidates.sort(key=lambda c: -c[0])
            per_source.append(candidates[: (k if bug.top_k_only else 2 * k)])
        if bug.flat_topk:  # slots filled in the order of one ranking of the whole batch
            merged = sorted((c for b in range(B) if active[b] for c in per_source[b]),
                            key=lambda c: -c[0])[: 2 * B * k]
            per_source = [[] for _ in range(B)]
            for n, c in enumerate(merged):
                per_source[min(n // (2 * k), B - 1)].append(c)
        new_hyps: list[list[int]] = []
        new_scores = [[-math.inf] * k for _ in range(B)]
        for b in range(B):
            chosen = 0
            for total, row, v in per_source[b]:
                if not active[b] or (chosen == k and not bug.every_eos):
                    break
                prefix = hyps[b * k + chosen] if bug.no_reorder and chosen < k else hyps[row]
                if v == eos_id and not bug.extend_finished:
                    finished[b].append((score(total, t), hyps[row] + [v]))
                    continue
                if chosen == k:
                    continue
                new_hyps.append(prefix + [v])
                new_scores[b][chosen] = total
                chosen += 1
            while chosen < k:
                new_hyps.append(hyps[b * k] + [eos_id])
                chosen += 1
            if not active[b]:
                continue
            live = max(new_scores[b])
            if live > -math.inf:
                top_live[b] = new_hyps[b * k + new_scores[b].index(live)]
            if not finished[b]:
                continue
            best = max(s for s, _ in finished[b])
            if bug.stop == "first" or (bug.stop == "k_finished" and len(finished[b]) >= k):
                active[b] = False
            elif bug.stop == "raw_bound" and best >= live:
                active[b] = False
            elif bug.stop == "exact" and best >= score(live, max_len):
                active[b] = False
        hyps, scores = new_hyps, new_scores
        if not any(active):
            break
    else:
        for b in range(B):
            if active[b] and bug.pick != "finished_only":
                finished[b] += [(score(s, max_len), hyps[b * k + j]) for j, s in enumerate(scores[b])
                                if s > -math.inf]
    out = []
    for b in range(B):
        if bug.pick == "live" and top_live[b] is not None:
            tokens = top_live[b]
        elif bug.pick == "last_finished" and finished[b]:
            tokens = finished[b][-1][1]
        elif finished[b]:
            tokens = max(finished[b], key=lambda f: f[0])[1]
        else:
            tokens = hyps[b * k]
        if bug.extend_finished == "trimmed" and eos_id in tokens[1:]:
            tokens = tokens[: tokens.index(eos_id, 1) + 1]
        out.append(torch.tensor(tokens))
    return out


_BEAM_VARIANTS: list[tuple[str, _BeamBug]] = [
    ("all k hypotheses start live: at the first step the beam holds k copies of BOS, so it fills "
     "with k copies of one hypothesis and your answer is greedy decoding's. Start each source with "
     "one live hypothesis: scores 0 for the first row and -inf for the other k - 1 "
     "(log_probs[:, 1:] = -inf); or is beam_size ignored?", _BeamBug(all_live=True)),
    ("the hypotheses are ranked by the log-probability of their last token: a hypothesis's score "
     "is the running sum over its tokens, log_probs[:, :, None] + next_log_probs",
     _BeamBug(last_token=True)),
    ("finished hypotheses are extended: a hypothesis that emits EOS is finished; set it aside "
     "(with its score) and keep k live hypotheses in the beam", _BeamBug(extend_finished="trimmed")),
    ("finished hypotheses are extended: a hypothesis that emits EOS is finished; set it aside "
     "(with its score) and keep k live hypotheses in the beam",
     _BeamBug(extend_finished="untrimmed")),
    ("the top-k runs over the whole batch, so the hypotheses of different sources are mixed: take "
     "each source's best candidates among its own k * V, scores.view(B, k * V).topk(..., dim=-1)",
     _BeamBug(flat_topk=True)),
    ("the rows of memory do not line up with the hypotheses: row b * k + j belongs to source b, so "
     "expand memory (and src_mask) with repeat_interleave(k, dim=0); repeat(k, 1, 1) tiles the "
     "batch and gives row r the memory of source r % B", _BeamBug(tiled_memory=True)),
    ("the rows are not reordered after the selection: the new beam's row j must continue the "
     "hypothesis its candidate came from, tokens = torch.cat([tokens[rows], new_tokens[:, None]], "
     "dim=1), not the hypothesis that was in row j", _BeamBug(no_reorder=True)),
    ("the search stops at the first hypothesis that finishes: a live hypothesis may still beat "
     "it. Go on until the best finished score is at least the best live log-probability (divided "
     "by lp(max_len)), or until max_len", _BeamBug(stop="first")),
    ("the search stops when k hypotheses have finished, but a live one can still beat them: go on "
     "until the best finished score is at least the best live log-probability (divided by "
     "lp(max_len)), or until max_len", _BeamBug(stop="k_finished")),
    ("you return the last hypothesis to finish: return the finished hypothesis with the best "
     "score", _BeamBug(pick="last_finished")),
    ("you return a hypothesis of the beam, not the best finished one: hypotheses that end with "
     "EOS are set aside as finished, and the answer is the best of them (live hypotheses count "
     "only when max_len is reached)", _BeamBug(pick="live")),
    ("when max_len is reached, the live hypotheses count as finished too (scored with "
     "lp(max_len)): the best of them can beat every hypothesis that ended with EOS",
     _BeamBug(pick="finished_only")),
    ("with beam_size=1 beam search must be greedy decoding: an EOS candidate ranked below the "
     "k-th live one is not set aside. Go through the candidates best first and stop as soon as "
     "k live ones are chosen", _BeamBug(every_eos=True)),
    ("finished hypotheses are scored by their mean log-probability, log p / |y|: the score is "
     "log p / lp(|y|) with lp(|y|) = ((5 + |y|) / 6) ** length_alpha, which is 1 when "
     "length_alpha=0 (no length normalization)", _BeamBug(penalty="mean")),
    ("src_mask is ignored: pass it to model.encode, and (one row per hypothesis, "
     "repeat_interleave(k, dim=0)) to model.decode", _BeamBug(ignore_mask=True)),
]

_PENALTY_VARIANTS: list[tuple[str, _BeamBug]] = [
    ("length_alpha is ignored: a finished hypothesis scores log p / lp(|y|), "
     "lp(|y|) = length_penalty(|y|, length_alpha)", _BeamBug(penalty="ignored")),
    ("the length penalty multiplies the log-probability; divide by it: log p / lp(|y|)",
     _BeamBug(penalty="multiply")),
    ("the length |y| counts BOS: it counts the generated tokens, EOS included (a hypothesis that "
     "finishes at step t has |y| = t)", _BeamBug(penalty="with_bos")),
    ("the stopping rule ignores the length penalty: a live hypothesis may still reach "
     "log p / lp(max_len), which is larger than its log p; stop when the best finished score "
     "is at least best live log p / lp(max_len)", _BeamBug(stop="raw_bound")),
    ("only the top k candidates are considered, so the beam shrinks when some of them end with "
     "EOS: go through the top 2k, so that k live hypotheses remain after the finished are set "
     "aside", _BeamBug(top_k_only=True)),
]


_TABLE_NAMES = "pad BOS EOS A B C D E F G H I J K L"


def _chapter_table() -> _TableModel:
    """Chapter 6's example: greedy decoding finds A B EOS (p = 0.18), beam search B EOS (0.364)."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.5, "B": 0.4, "EOS": 0.1},
        "BOS A": {"B": 0.36, "C": 0.34, "EOS": 0.3},
        "BOS B": {"B": 0.05, "C": 0.04, "EOS": 0.91},
    })


def _three_sources_table() -> _TableModel:
    """Three sources with their own tokens and answers of different lengths; G never ends."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.5, "B": 0.45, "EOS": 0.05},
        "BOS A": {"A": 0.26, "B": 0.25, "C": 0.25, "EOS": 0.24},
        "BOS B": {"C": 0.55, "A": 0.44, "EOS": 0.01},
    }, D={
        "BOS": {"D": 0.6, "E": 0.25, "EOS": 0.15},
        "BOS D": {"E": 0.5, "F": 0.3, "EOS": 0.2},
        "BOS D E": {"F": 0.9, "EOS": 0.1},
        "BOS D F": {"E": 0.6, "EOS": 0.4},
    }, G={
        "*": {"G": 0.8, "EOS": 0.15, "H": 0.05},
    })


def _late_table() -> _TableModel:
    """Hypotheses finish early, but a live one beats them later: the stopping rule matters."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.4, "EOS": 0.31, "B": 0.29},
        "BOS A": {"C": 0.9, "EOS": 0.1},
        "BOS B": {"EOS": 0.9, "C": 0.1},
    }, D={
        "BOS": {"D": 0.5, "E": 0.4, "EOS": 0.1},
        "BOS D": {"EOS": 0.45, "F": 0.55},
        "BOS E": {"EOS": 0.8, "F": 0.2},
        "BOS D F": {"E": 0.8, "EOS": 0.2},
    })


def _eos_second_table() -> _TableModel:
    """EOS is the second-best first token, and greedy decoding's path ends below it."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.5, "EOS": 0.4, "B": 0.1},
        "BOS A": {"B": 0.36, "C": 0.34, "EOS": 0.3},
    })


def _length_table() -> _TableModel:
    """A short and a long answer: the short one is more probable, the long one wins with the
    length penalty (alpha = 1); source D's short answer finishes while the long one's prefix is
    less probable, so the stopping rule must allow for the penalty."""
    return _table_model(_TABLE_NAMES, A={
        "BOS": {"A": 0.79, "B": 0.21},
        "BOS A": {"C": 0.57, "EOS": 0.43},
        "BOS A C": {"C": 0.99, "EOS": 0.01},
        "BOS A C C": {"EOS": 0.67, "B": 0.33},
        "BOS B": {"EOS": 0.6, "C": 0.4},
    }, D={
        "BOS": {"D": 0.66, "E": 0.34},
        "BOS D": {"EOS": 0.515, "F": 0.485},
        "BOS D F": {"F": 0.97, "EOS": 0.03},
        "BOS E": {"EOS": 0.3, "F": 0.7},
    })


def _penalty_table() -> _TableModel:
    """Three sources for length_alpha=1. D: the long answer is a little more probable than the
    short one, and wins unless the penalty multiplies the log-probability. G: the long answer
    wins only if |y| leaves BOS out. J: the winner ranks below an EOS candidate at the first step
    (it survives only if k live hypotheses are kept besides the finished ones)."""
    return _table_model(_TABLE_NAMES, D={
        "BOS": {"D": 0.7, "EOS": 0.3},
        "BOS D": {"E": 0.68, "F": 0.32},
        "BOS D E": {"F": 0.8, "EOS": 0.2},
        "BOS D E F": {"EOS": 0.84, "E": 0.16},
    }, G={
        "BOS": {"G": 0.6, "EOS": 0.4},
        "BOS G": {"H": 0.55, "I": 0.45},
        "BOS G H": {"EOS": 0.912, "I": 0.088},
    }, J={
        "BOS": {"J": 0.5, "EOS": 0.3, "K": 0.2},
        "BOS J": {"J": 0.28, "K": 0.27, "L": 0.25, "EOS": 0.2},
        "BOS K": {"K": 0.99, "EOS": 0.01},
        "BOS K K": {"K": 0.99, "EOS": 0.01},
        "BOS K K K": {"EOS": 0.99, "K": 0.01},
    })


def _beam_cases(g: torch.Generator, penalty: bool) -> list[Case]:
    def case(name: str, model: nn.Module, src: Tensor, max_len: int, beam_size: int,
             src_mask: Tensor | None = None, length_alpha: float | None = None) -> Case:
        inputs = {"model": model, "src": src, "max_len": max_len, "bos_id": 1, "eos_id": 2,
                  "beam_size": beam_size, "src_mask": src_mask}
        if length_alpha is not None:
            inputs["length_alpha"] = length_alpha
        return Case(name, inputs)

    def sources(model: _TableModel, *names: str) -> Tensor:
        return torch.tensor([[model.ids[n], 0] for n in names])

    chapter, three, late = _chapter_table(), _three_sources_table(), _late_table()
    eos_second, lengths, penalties = _eos_second_table(), _length_table(), _penalty_table()
    src_t, mask_t = _decoding_sources(g, [6, 4, 2])
    src_u, mask_u = _decoding_sources(g, [3, 5])
    post_ln = _random_transformer(_POST_LN_SEED, norm_first=False)
    pre_ln = _random_transformer(_PRE_LN_SEED, norm_first=True)
    cases = [
        case("a table model where greedy decoding misses the most probable sequence", chapter,
             sources(chapter, "A"), 5, 2),
        case("a table model, 3 sources with their own answers (the last one never ends)", three,
             sources(three, "A", "D", "G"), 4, 2),
        case("a table model where hypotheses finish before the best one", late,
             sources(late, "A", "D"), 5, 2),
        case("a table model, beam_size=1 (greedy decoding)", eos_second,
             sources(eos_second, "A"), 5, 1),
        case("a table model, answers of different lengths", lengths, sources(lengths, "A", "D"),
             5, 2),
        case("a random post-LN Transformer, 3 padded sources", post_ln, src_t, 6, 3, mask_t),
        case("a random pre-LN Transformer, 2 padded sources, beam_size=1", pre_ln, src_u, 5, 1,
             mask_u),
        case("a random pre-LN Transformer, 2 padded sources, beam_size=4", pre_ln, src_u, 5, 4,
             mask_u),
    ]
    if penalty:
        cases += [
            case("a table model, length_alpha=1: the long answer wins", lengths,
                 sources(lengths, "A"), 5, 2, length_alpha=1.0),
            case("a table model, length_alpha=1: the stopping rule", lengths,
                 sources(lengths, "D"), 5, 2, length_alpha=1.0),
            case("a table model, length_alpha=1: what the length counts", penalties,
                 sources(penalties, "D", "G", "J"), 5, 2, length_alpha=1.0),
            case("a random post-LN Transformer, length_alpha=0.8", post_ln, src_t, 6, 3, mask_t,
                 length_alpha=0.8),
        ]
    return cases


def _takes_length_alpha(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "length_alpha" or p.kind is inspect.Parameter.VAR_KEYWORD
               for p in parameters)


@isolated
def check_beam_search(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(model, src, max_len, bos_id, eos_id, beam_size=4, src_mask=None)``, beam
    search, which returns for each source its best hypothesis as a 1-d tensor of ids
    (``bos_id`` ... ``eos_id``, or ``max_len`` tokens), as :func:`transformer_lib.beam_search`.

    The models: hand-made table models where greedy decoding misses the most probable
    sequence, batches whose sources need different answers (one never ends), hypotheses that
    finish before the best one, ``beam_size=1`` (which must be greedy decoding); and small
    random :class:`transformer_lib.Transformer` s with padded sources. If ``fn`` takes a
    ``length_alpha`` argument (the length penalty :func:`transformer_lib.length_penalty`), cases
    with ``length_alpha > 0`` run too.
    """
    check = "check_beam_search"
    g = torch.Generator().manual_seed(seed)
    penalty = _takes_length_alpha(fn)
    cases = _beam_cases(g, penalty)

    def learner(case: Case) -> Any:
        args, kwargs = _decoding_args(case)
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    def reference(case: Case) -> list[Tensor]:
        args, kwargs = _decoding_args(case)
        return beam_search(*args, **kwargs, use_cache=False)

    def var(bug: _BeamBug) -> Callable[[Case], Any]:
        def run(case: Case) -> list[Tensor]:
            args, kwargs = _decoding_args(case)
            return _beam_math(*args, **kwargs, bug=bug)
        return run

    variants = [(d, var(bug)) for d, bug in _BEAM_VARIANTS + (_PENALTY_VARIANTS if penalty else [])]
    count = _run_decoding(check, cases, learner, reference, variants,
                          lambda got, want, case: _sequence_symptoms(got, want, case, beam=True),
                          log_probs=True)
    note = "" if penalty else " (your function takes no length_alpha: the length penalty is not checked)"
    print(f"{check}: all {count} cases pass{note}")


