"""Checks for lab 4 (decoding): ``check_greedy_decode``, ``check_sequence_log_prob``,
``check_top_candidates``, ``check_beam_search``.

Hand-written (not generated from a chapter); the engine they share is ``engine.py``. Each check
describes its known mistakes as :class:`~transformer_lib.checks.engine.Mistake` s, computed by
this module's plain reference math with one switch turned (``_GreedyBug``, ``_LogProbBug``,
``_BeamBug``), and registers a :class:`~transformer_lib.checks.engine.Spec`. The decoders are
run on hand-made table models, whose answers are known (``tables.py``), and on small random
Transformers.
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
    Spec,
    call_learner,
    close,
    isolated,
    one_thread,
    passed,
    randn,
    register,
    run_cases,
    structure_problem,
)
from transformer_lib.checks.tables import (
    TableModel,
    chapter_table,
    eos_second_table,
    late_table,
    length_table,
    penalty_table,
    shorter_wins_table,
    squared_penalty_table,
    table_model,
    table_sources,
    three_sources_table,
)
from transformer_lib.decoding import beam_search, greedy_decode, length_penalty, sequence_log_prob
from transformer_lib.model import Transformer, TransformerConfig


def _random_transformer(seed: int, *, norm_first: bool, vocab: int = 9,
                        sharpen: float = 2.0, eos_bias: float = 1.5) -> nn.Module:
    """A small random :class:`Transformer` (its own initialization, from ``seed``) in eval
    mode. Its output projection is scaled up and given a random bias, so that its next-token
    distributions are peaked and EOS (id 2) is likely: sequences end after a few tokens or run
    to max_new_tokens, and the best ones differ from source to source. It never predicts PAD or BOS
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


# seeds of the random models, chosen so that their answers differ from source to source, some end
# with EOS and some run to max_new_tokens, and beam search, the source mask and the length penalty
# each change some answer
_POST_LN_SEED, _PRE_LN_SEED = 33, 48


def _decoding_sources(g: torch.Generator, lengths: Sequence[int], S: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """Random source ids 3..10 with padding (id 0) after each length; and the padding mask."""
    S = S or max(lengths)
    src = torch.randint(3, 11, (len(lengths), S), generator=g)
    keep = torch.arange(S) < torch.tensor(lengths)[:, None]
    src = src.masked_fill(~keep, 0)
    return src, keep[:, None, None, :]


def _memo(output: Callable[[Case], Any]) -> Callable[[Case], Any]:
    """``output`` computed once per case (a diagnosis asks for a mistake's output again)."""
    seen: dict[int, tuple[Case, Any]] = {}

    @one_thread
    def cached(case: Case) -> Any:
        if id(case) not in seen:
            seen[id(case)] = (case, output(case))  # the case is kept, so its id stays its own
        return seen[id(case)][1]

    return cached


def _mistake(message: str | Callable[[Case], str], output: Callable[[Case], Any]) -> Mistake:
    return Mistake(message, _memo(output))


# --- decoded sequences: their form, their comparison, their diff, their symptoms ---


def _same_seqs(got: Any, want: Any) -> bool:
    """Two lists of 1-d tensors of token ids hold the same sequences (``want`` may be None: a
    mistake whose output could not be computed)."""
    if (not isinstance(got, (list, tuple)) or not isinstance(want, (list, tuple))
            or len(got) != len(want)):
        return False
    return all(isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
               and bool((a.long() == b.long()).all()) for a, b in zip(got, want))


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
            fix = (" (drop the extra axis: .squeeze(0) or .view(-1))" if seq.numel() in seq.shape
                   else "")
            return ("each sequence must be 1-d, (length,); "
                    f"sequence {i} has shape {tuple(seq.shape)}{fix}")
        if seq.is_floating_point() or seq.dtype == torch.bool:
            return (f"token ids are integers (torch.long); sequence {i} has dtype {seq.dtype} "
                    f"(are these scores or probabilities?)")
    return None


def _spelled(model: nn.Module, tokens: Sequence[int]) -> str:
    text = "[" + ", ".join(str(t) for t in tokens) + "]"
    return f"{text} ({model.spell(tokens)})" if isinstance(model, TableModel) else text


def _seq_log_prob(model: nn.Module, src: Tensor, tokens: Tensor, src_mask: Tensor | None,
                  b: int) -> float | None:
    """log p(tokens | source b) under the model (None if it cannot be scored)."""
    if tokens.numel() < 2:
        return None
    try:
        mask = (None if src_mask is None
                else src_mask.expand(src.size(0), 1, 1, src.size(1))[b:b + 1])
        return float(sequence_log_prob(model, src[b:b + 1], tokens[None].long(), mask))
    except Exception:
        return None


def _sequence_diff(got: Sequence[Tensor], want: Sequence[Tensor], case: Case,
                   log_probs: bool = False, limit: int = 3) -> str:
    """The sources whose sequences differ, yours above the expected ones (spelled out for a
    table model; with their log-probabilities for beam search)."""
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
    """What is visibly wrong with the sequences, whatever the code that made them: each message
    states what the sequences show, and what the contract asks instead."""
    i = case.inputs
    bos, eos, max_new_tokens, model = i["bos_id"], i["eos_id"], i["max_new_tokens"], i["model"]
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
    if any(len(s) > max_new_tokens + 1 for s in seqs):
        return (f"a sequence has more than max_new_tokens + 1 = {max_new_tokens + 1} ids: "
                f"max_new_tokens counts the tokens generated after BOS")
    wrong = [(s, w) for s, w in zip(seqs, wants) if s != w]
    if wrong and all(s == w[:-1] for s, w in wrong):
        if all(len(w) == max_new_tokens + 1 for _, w in wrong):
            return (f"your sequences stop one token early: each of them is the expected one "
                    f"without its last token, generated at step max_new_tokens = "
                    f"{max_new_tokens}. max_new_tokens counts the tokens generated after BOS: the "
                    f"loop runs for steps 1 to max_new_tokens")
        if all(w[-1] == eos for _, w in wrong):
            return ("your sequences leave out their final EOS: a finished sequence ends with "
                    "eos_id, included")
    b = _first_wrong(got, want)
    s, w = seqs[b], wants[b]
    if isinstance(model, TableModel):
        source = int(i["src"][b, 0])
        if not model.possible(source, s):
            if beam:
                return (f"the sequence for source {b} is one the model cannot produce for it (it "
                        f"has probability ~0): rows of different sources are mixed up. Source b "
                        f"owns rows b * k to b * k + k - 1: they read its memory, they are "
                        f"extended only by its own k * V candidates, and a candidate (beam, token) "
                        f"continues row b * k + beam")
            return (f"the sequence for source {b} is one the model cannot produce for it: each "
                    f"row of the batch must read its own source's memory, and each step "
                    f"appends the token predicted for that row")
    if beam and s[-1:] != [eos] and w[-1:] == [eos]:
        if len(s) == max_new_tokens + 1:
            return ("the sequence you return never finished although a finished one (ending with "
                    "EOS) is better: return the best finished hypothesis; live ones count as "
                    "finished only when max_new_tokens is reached")
        return "a finished hypothesis ends with eos_id, included; yours does not"
    if beam and i.get("beam_size") == 1:
        return ("with beam_size=1, beam search must give greedy decoding's answer (one live "
                "hypothesis, extended by its best token)")
    return None


def _decoding_args(case: Case) -> tuple[list[Any], dict[str, Any]]:
    i = case.inputs
    args = [i["model"], i["src"].clone(), i["max_new_tokens"], i["bos_id"], i["eos_id"]]
    kwargs = {name: i[name] for name in ("beam_size", "src_mask", "length_alpha")
              if i.get(name) is not None}
    return args, kwargs


def _run_decoder(check: str, fn: Callable[..., Any], cases: Sequence[Case],
                 reference: Callable[[Case], list[Tensor]], mistakes: Sequence[Mistake],
                 beam: bool) -> int:
    """The engine's :func:`run_cases` for a decoder: sequences are compared token for token,
    and a wrong answer is shown as sequences (with their log-probabilities for beam search)."""

    def learner(case: Case) -> Any:
        args, kwargs = _decoding_args(case)
        try:
            return call_learner(check, f"running {case.where}", fn, *args, **kwargs)
        except AssertionError as err:
            if "Sizes of tensors must match" not in str(err):
                raise
            raise AssertionError(f"{err}\n  hint: the tokens appended at a step are one per row, "
                                 f"shape (B,) (B * k in beam search): the argmax over the "
                                 f"vocabulary, dim=-1, of the last position's logits (rows, V); "
                                 f"print the shapes of what you concatenate") from None

    return run_cases(
        check, cases, learner, reference, mistakes=mistakes, agree=_same_seqs,
        structure=lambda got, want, case: _decoded_form(got, want),
        hints=lambda got, want, case: _sequence_symptoms(got, want, case, beam),
        details=lambda got, want, case: _sequence_diff(got, want, case, log_probs=beam))


# --- greedy decoding ---


@dataclass(frozen=True)
class _GreedyBug:
    """Switches for the mistakes the greedy decoding check knows (all off: the right answer)."""

    position: int = -1  # 0: the next token is read from the first position's logits
    finish: str = "trim"  # "untrimmed": finished rows go on and are not cut; "eos_fill": they
    # repeat EOS and are not cut; "never": no stopping at EOS; "first": every row stops at the
    # first EOS of the batch
    mask: str = "both"  # which calls get src_mask: "both", "none", "encode", "decode"
    normalize: str = ""  # "batch": a softmax over the batch before the argmax; "positions": a
    # (log-)softmax over the positions of the (B, t, V) logits
    newest_only: bool = False  # each step decodes only the newest token, not the whole prefix
    steps: int = 0  # max_new_tokens + steps steps


def _greedy_math(model: nn.Module, src: Tensor, max_new_tokens: int, bos_id: int, eos_id: int,
                 src_mask: Tensor | None = None, *, bug: _GreedyBug = _GreedyBug()) -> list[Tensor]:
    """Greedy decoding, written plainly, with switches for common mistakes."""
    encode_mask = src_mask if bug.mask in ("both", "encode") else None
    decode_mask = src_mask if bug.mask in ("both", "decode") else None
    memory = model.encode(src, encode_mask)
    B = src.size(0)
    tokens = torch.full((B, 1), bos_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_new_tokens + bug.steps):
        prefix = tokens[:, -1:] if bug.newest_only else tokens
        logits = model.decode(prefix, memory, decode_mask, causal_mask(prefix.size(1)))
        if bug.normalize == "positions":
            logits = F.log_softmax(logits, dim=1)
        last = logits[:, bug.position]  # (B, V)
        if bug.normalize == "batch":
            last = F.softmax(last, dim=0)
        next_token = last.argmax(dim=-1)
        if bug.finish in ("trim", "eos_fill"):
            next_token = next_token.masked_fill(done, eos_id)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == eos_id
        if bug.finish == "first" and done.any():
            break
        if bug.finish != "never" and done.all():
            break
    if bug.finish in ("trim", "first"):
        return [_cut_after_eos(row, eos_id) for row in tokens]
    return list(tokens)


def _cut_after_eos(row: Tensor, eos_id: int) -> Tensor:
    ends = (row[1:] == eos_id).nonzero()
    return row if len(ends) == 0 else row[: int(ends[0]) + 2]


def _greedy_with(bug: _GreedyBug) -> Callable[[Case], list[Tensor]]:
    def run(case: Case) -> list[Tensor]:
        args, kwargs = _decoding_args(case)
        return _greedy_math(*args, **kwargs, bug=bug)
    return run


def _greedy_reference(case: Case) -> list[Tensor]:
    return _greedy_with(_GreedyBug())(case)


def _greedy_package(case: Case) -> list[Tensor]:
    args, kwargs = _decoding_args(case)
    return greedy_decode(*args, **kwargs)


def _greedy_mistakes() -> list[Mistake]:
    def var(**switches: Any) -> Callable[[Case], list[Tensor]]:
        return _greedy_with(_GreedyBug(**switches))

    def no_bos(case: Case) -> list[Tensor]:
        return [s[1:] for s in _greedy_reference(case)]

    def no_eos(case: Case) -> list[Tensor]:
        eos = case.inputs["eos_id"]
        return [s[:-1] if s[-1] == eos and len(s) > 1 else s for s in _greedy_reference(case)]

    return [
        _mistake("your sequences go on after EOS: a sequence ends at its first EOS. In a batch, "
                 "keep going until every row has produced EOS, then cut each row after its first "
                 "EOS", var(finish="untrimmed")),
        _mistake("your sequences do not stop at EOS: stop generating once a row has produced EOS "
                 "(in a batch: once every row has), and cut each row after its first EOS",
                 var(finish="never")),
        _mistake("rows that finished early are padded with EOS: cut each row after its first EOS",
                 var(finish="eos_fill")),
        _mistake("the whole batch stops when its first row reaches EOS, so the other rows are cut "
                 "short: each source is decoded until its own EOS (stop when every row has "
                 "produced EOS, done.all(), not done.any())", var(finish="first")),
        _mistake("the next token is read from the first position's logits: the prediction for "
                 "the token after the prefix is at the last position, logits[:, -1]",
                 var(position=0)),
        _mistake("each step decodes only the newest token: model.decode has no memory of earlier "
                 "steps, so give it the whole prefix generated so far, tokens (B, t)",
                 var(newest_only=True)),
        _mistake("the softmax before the argmax runs over the batch (dim=0 of the (B, V) logits), "
                 "so each row's choice depends on the other rows: the argmax is over the "
                 "vocabulary, dim=-1, and needs no softmax at all", var(normalize="batch")),
        _mistake("the log_softmax runs over the positions (dim=1 of the (B, t, V) logits): "
                 "normalize over the vocabulary, dim=-1, or just take the argmax of "
                 "logits[:, -1]", var(normalize="positions")),
        _mistake("src_mask is ignored: pass it to model.encode and model.decode, so the padded "
                 "source positions are hidden", var(mask="none")),
        _mistake("src_mask is passed to model.encode but not to model.decode: the "
                 "cross-attention over the memory must hide the padded source positions too",
                 var(mask="encode")),
        _mistake("src_mask is passed to model.decode but not to model.encode: the encoder's "
                 "self-attention must hide the padded source positions too", var(mask="decode")),
        _mistake("your sequences leave out BOS: each one starts with bos_id, followed by the "
                 "generated tokens", no_bos),
        _mistake("your sequences leave out their final EOS: a finished sequence ends with eos_id",
                 no_eos),
        _mistake("max_new_tokens counts the tokens generated after BOS: generate at most "
                 "max_new_tokens of them, for at most max_new_tokens + 1 ids; yours makes one more",
                 var(steps=1)),
        _mistake("max_new_tokens counts the tokens generated after BOS: generate at most "
                 "max_new_tokens of them, for at most max_new_tokens + 1 ids; yours makes one "
                 "fewer",
                 var(steps=-1)),
    ]


def _case(name: str, model: nn.Module, src: Tensor, max_new_tokens: int,
          src_mask: Tensor | None = None, bos: int = 1, eos: int = 2, **more: Any) -> Case:
    return Case(name, {"model": model, "src": src, "max_new_tokens": max_new_tokens, "bos_id": bos,
                       "eos_id": eos, **more, "src_mask": src_mask})


def _greedy_cases(g: torch.Generator) -> list[Case]:
    chapter, three = chapter_table(), three_sources_table()
    other_ids = table_model("EOS pad BOS A B C", A={
        "BOS": {"A": 0.5, "B": 0.4, "EOS": 0.1},
        "BOS A": {"B": 0.36, "C": 0.34, "EOS": 0.3},
        "BOS A B": {"C": 0.7, "EOS": 0.3},
    })
    src_t, mask_t = _decoding_sources(g, [6, 4, 2])
    src_u, mask_u = _decoding_sources(g, [3, 5])
    src_v, mask_v = _decoding_sources(g, [2, 5, 4, 1])
    post_ln = _random_transformer(_POST_LN_SEED, norm_first=False)
    pre_ln = _random_transformer(_PRE_LN_SEED, norm_first=True)
    return [
        _case("a table model, 3 sources that finish at different steps (the last one never)",
              three, table_sources(three, "A", "D", "G"), 4),
        _case("a table model, one source", chapter, table_sources(chapter, "A"), 5),
        _case("a table model with bos_id=2, eos_id=0", other_ids, table_sources(other_ids, "A"), 5,
              bos=2, eos=0),
        _case("a random post-LN Transformer, 3 padded sources", post_ln, src_t, 6, mask_t),
        _case("a random pre-LN Transformer, 2 padded sources, max_new_tokens=1", pre_ln, src_u, 1,
              mask_u),
        _case("a random pre-LN Transformer, 4 padded sources", pre_ln, src_v, 5, mask_v),
    ]


@isolated
def check_greedy_decode(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(model, src, max_new_tokens, bos_id, eos_id, src_mask=None)``, greedy decoding,
    which returns one 1-d tensor of ids per source: ``bos_id``, the generated tokens, and ``eos_id``
    (or ``max_new_tokens`` tokens if EOS never came), as :func:`transformer_lib.greedy_decode`.

    The models: hand-made table models (batches whose sources finish at different steps or never;
    other BOS and EOS ids) and small random :class:`transformer_lib.Transformer` s with padded
    sources.
    """
    check = "check_greedy_decode"
    cases = _greedy_cases(torch.Generator().manual_seed(seed))
    count = _run_decoder(check, fn, cases, _greedy_package, _greedy_mistakes(), beam=False)
    passed(check, count)


register(Spec(check="check_greedy_decode",
              cases=lambda: _greedy_cases(torch.Generator().manual_seed(0)),
              reference=one_thread(_greedy_reference), package=one_thread(_greedy_package),
              mistakes=_greedy_mistakes, agree=_same_seqs))


# --- the log-probability of a sequence ---


@dataclass(frozen=True)
class _LogProbBug:
    """Switches for the mistakes the sequence log-probability check knows (all off: right)."""

    shift: str = "ok"  # which positions score which tokens (see _LOG_PROB_SHIFTS)
    normalize: str = "log_softmax"  # "none": raw logits; "softmax": probabilities
    dim: int = -1  # the axis of the log_softmax: 1 the positions, 0 the batch
    reduce: str = "sum"  # "mean", "prob" (exp of the sum), "negative" (minus the sum)
    mask: str = "both"  # which calls get src_mask: "both", "none", "encode", "decode"


# shift -> (decoder input, scored positions, scored tokens) as functions of tgt (B, T)
_LOG_PROB_SHIFTS: dict[str, tuple[Callable[[Tensor], Tensor], slice,
                                   Callable[[Tensor], Tensor]]] = {
    "ok": (lambda t: t[:, :-1], slice(None), lambda t: t[:, 1:]),
    "none": (lambda t: t, slice(None), lambda t: t),  # each position scores its own token
    "same": (lambda t: t[:, :-1], slice(None), lambda t: t[:, :-1]),
    "own": (lambda t: t, slice(1, None), lambda t: t[:, 1:]),  # positions 1.. score their own
    "backward": (lambda t: t[:, 1:], slice(None), lambda t: t[:, :-1]),  # shifted the other way
    "roll": (lambda t: t, slice(None), lambda t: t.roll(-1, dims=1)),  # the last one scores BOS
    "skip_first": (lambda t: t[:, :-1], slice(1, None), lambda t: t[:, 2:]),
    "no_last": (lambda t: t[:, :-2], slice(None), lambda t: t[:, 1:-1]),
}


def _sequence_log_prob_math(model: nn.Module, src: Tensor, tgt: Tensor,
                            src_mask: Tensor | None = None, *,
                            bug: _LogProbBug = _LogProbBug()) -> Tensor:
    """log p(tgt | src), written plainly, with switches for common mistakes."""
    encode_mask = src_mask if bug.mask in ("both", "encode") else None
    decode_mask = src_mask if bug.mask in ("both", "decode") else None
    memory = model.encode(src, encode_mask)
    inputs, positions, targets = _LOG_PROB_SHIFTS[bug.shift]
    tokens_in = inputs(tgt)
    logits = model.decode(tokens_in, memory, decode_mask, causal_mask(tokens_in.size(1))).float()
    if bug.normalize == "log_softmax":
        scores = F.log_softmax(logits, dim=bug.dim)
    elif bug.normalize == "softmax":
        scores = F.softmax(logits, dim=bug.dim)
    else:
        scores = logits
    picked = scores[:, positions].gather(-1, targets(tgt)[..., None]).squeeze(-1)  # (B, T')
    if bug.reduce == "mean":
        return picked.mean(dim=-1)
    if bug.reduce == "prob":
        return picked.sum(dim=-1).exp()
    if bug.reduce == "negative":
        return -picked.sum(dim=-1)
    return picked.sum(dim=-1)


def _log_prob_with(bug: _LogProbBug) -> Callable[[Case], Tensor]:
    return lambda case: _sequence_log_prob_math(**case.inputs, bug=bug)


def _log_prob_mistakes() -> list[Mistake]:
    def var(**switches: Any) -> Callable[[Case], Tensor]:
        return _log_prob_with(_LogProbBug(**switches))

    shift = ("the targets are not shifted: the logits at position t score the token that "
             "follows it, so decode tgt[:, :-1] and score the tokens tgt[:, 1:]")
    return [
        _mistake(shift, var(shift="none")),
        _mistake(shift, var(shift="same")),
        _mistake(shift, var(shift="own")),
        _mistake("the shift goes the wrong way: decode tgt[:, :-1] (BOS and the tokens before the "
                 "last) and score the tokens that follow, tgt[:, 1:]", var(shift="backward")),
        _mistake("torch.roll wraps around, so the last position scores BOS as if it followed EOS: "
                 "decode tgt[:, :-1] and score tgt[:, 1:], without the wrap-around",
                 var(shift="roll")),
        _mistake("the first token after BOS is not scored: every token after BOS counts, the "
                 "first one included", var(shift="skip_first")),
        _mistake("the last token (EOS) is not scored: every token after BOS counts, EOS included",
                 var(shift="no_last")),
        _mistake("the logits are summed as they are: turn them into log-probabilities first, "
                 "F.log_softmax(logits, dim=-1)", var(normalize="none")),
        _mistake("probabilities are summed: sum the log-probabilities (log_softmax), since "
                 "log p(y) = sum_t log p(y_t | y_<t, x)", var(normalize="softmax")),
        _mistake("the log_softmax runs over the positions: normalize over the vocabulary, dim=-1",
                 var(dim=1)),
        _mistake("the log_softmax runs over the batch (dim=0): normalize over the vocabulary, "
                 "dim=-1", var(dim=0)),
        _mistake("this is the mean over the tokens: the log-probability of a sequence is their "
                 "sum", var(reduce="mean")),
        _mistake("this is the probability p(y | x): return its logarithm, the sum of the tokens' "
                 "log-probabilities", var(reduce="prob")),
        _mistake("the sign is flipped: this is the negative log-likelihood (what cross_entropy "
                 "gives); the log-probability is its negative, a number <= 0",
                 var(reduce="negative")),
        _mistake("src_mask is ignored: pass it to model.encode and model.decode", var(mask="none")),
        _mistake("src_mask is passed to model.encode but not to model.decode: the "
                 "cross-attention must hide the padded source positions too", var(mask="encode")),
        _mistake("src_mask is passed to model.decode but not to model.encode: the encoder must "
                 "hide the padded source positions too", var(mask="decode")),
    ]


def _log_prob_cases(g: torch.Generator) -> list[Case]:
    chapter = chapter_table()
    a = chapter.ids
    table_tgt = torch.tensor([[a["BOS"], a["A"], a["B"], a["EOS"]],
                              [a["BOS"], a["A"], a["C"], a["EOS"]],
                              [a["BOS"], a["B"], a["C"], a["EOS"]]])
    src_t, mask_t = _decoding_sources(g, [5, 2, 4])
    src_u, _ = _decoding_sources(g, [3, 3])
    src_v, mask_v = _decoding_sources(g, [2, 4])

    def tgt(B: int, T: int, vocab: int = 9) -> Tensor:
        t = torch.randint(3, vocab, (B, T), generator=g)
        t[:, 0], t[:, -1] = 1, 2  # BOS ... EOS
        return t

    post_ln = _random_transformer(_POST_LN_SEED, norm_first=False)
    pre_ln = _random_transformer(_PRE_LN_SEED, norm_first=True)
    cases = [
        Case("a table model, p(BOS A B EOS) = 0.5 * 0.36 * 1 (nearly)",
             {"model": chapter, "src": torch.full((3, 1), a["A"]), "tgt": table_tgt}),
        Case("a random post-LN Transformer, padded sources",
             {"model": post_ln, "src": src_t, "tgt": tgt(3, 6), "src_mask": mask_t}),
        Case("a random pre-LN Transformer, no mask",
             {"model": pre_ln, "src": src_u, "tgt": tgt(2, 4)}),
        Case("a random pre-LN Transformer, padded sources",
             {"model": pre_ln, "src": src_v, "tgt": tgt(2, 5), "src_mask": mask_v}),
    ]
    for case in cases:
        case.positional = 3
    return cases


@isolated
def check_sequence_log_prob(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(model, src, tgt, src_mask=None) -> (B,)``, the log-probability
    :math:`\\log p(y \\mid x) = \\sum_t \\log p(y_t \\mid y_{<t}, x)` of each complete hypothesis
    ``tgt[b]`` (BOS first; every token after BOS is scored), as
    :func:`transformer_lib.sequence_log_prob`: a table model whose probabilities are known, and
    small random Transformers with and without padded sources."""
    check = "check_sequence_log_prob"
    cases = _log_prob_cases(torch.Generator().manual_seed(seed))

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
                      parts=("log-probabilities",), mistakes=_log_prob_mistakes(),
                      structure=structure)
    passed(check, count)


register(Spec(check="check_sequence_log_prob",
              cases=lambda: _log_prob_cases(torch.Generator().manual_seed(0)),
              reference=one_thread(_log_prob_with(_LogProbBug())),
              package=one_thread(lambda case: sequence_log_prob(**case.inputs)),
              mistakes=_log_prob_mistakes))


# --- one beam step: the best candidates of each source ---


def _top_candidates(log_probs: Tensor, next_log_probs: Tensor,
                    n: int) -> tuple[Tensor, Tensor, Tensor]:
    B, k, V = next_log_probs.shape
    scores = (log_probs[:, :, None] + next_log_probs).reshape(B, k * V)  # (B, k, V) -> (B, k * V)
    top, index = scores.topk(n, dim=-1)  # (B, n), best first
    return top, index // V, index % V


def _top_inputs(case: Case) -> tuple[Tensor, Tensor, int]:
    i = case.inputs
    return i["log_probs"], i["next_log_probs"], i["n"]


def _top_mistakes() -> list[Mistake]:
    def last_only(case: Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = _top_inputs(case)
        alive = torch.where(torch.isinf(lp), lp, torch.zeros_like(lp))  # -inf rows stay dead
        return _top_candidates(alive, nlp, n)

    def ranked_by_last(case: Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = _top_inputs(case)
        _, beams, tokens = last_only(case)
        return (lp.gather(1, beams) + nlp[torch.arange(nlp.size(0))[:, None], beams, tokens],
                beams, tokens)

    def whole_batch(case: Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = _top_inputs(case)
        B, k, V = nlp.shape
        top, index = (lp[:, :, None] + nlp).reshape(-1).topk(B * n)
        return top.view(B, n), (index // V % k).view(B, n), (index % V).view(B, n)

    def layout(case: Case, order: str, split: str) -> tuple[Tensor, Tensor, Tensor]:
        """The top n of one flattening of the candidates, split into beams and tokens one way."""
        lp, nlp, n = _top_inputs(case)
        B, k, V = nlp.shape
        scores = lp[:, :, None] + nlp  # (B, k, V)
        if order == "token_major":
            scores = scores.transpose(1, 2)  # (B, V, k)
        elif order == "batch_mixed":
            scores = scores.transpose(0, 1)  # (k, B, V): reshaping it mixes the sources
        top, index = scores.reshape(B, k * V).topk(n, dim=-1)
        splits = {"right": (index // V, index % V), "by_k": (index % k, index // k),
                  "div_k": (index // k, index % V), "flat_index": (index // V, index)}
        return (top, *splits[split])

    def smallest(case: Case) -> tuple[Tensor, Tensor, Tensor]:
        lp, nlp, n = _top_inputs(case)
        B, k, V = nlp.shape
        scores = (lp[:, :, None] + nlp).reshape(B, k * V)
        scores = scores.masked_fill(torch.isinf(scores), math.inf)
        top, index = scores.topk(n, dim=-1, largest=False)
        return top, index // V, index % V

    def worst_first(case: Case) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(part.flip(-1) for part in _top_candidates(*_top_inputs(case)))

    decomposition = ("the flat index of a candidate in the (B, k * V) scores is "
                     "beam * V + token: beam = index // V, token = index % V")
    return [
        _mistake("the candidates are ranked by the new token's log-probability alone: a "
                 "hypothesis's score is the sum over all its tokens, log_probs[:, :, None] + "
                 "next_log_probs", last_only),
        _mistake("the candidates are ranked by the new token's log-probability alone: rank them "
                 "by their total score, log_probs[:, :, None] + next_log_probs", ranked_by_last),
        _mistake("the top-k runs over the whole batch, so one source's candidates take another's "
                 "places: take the top n of each source's k * V candidates, scores.view(B, k * V)"
                 ".topk(n, dim=-1)", whole_batch),
        _mistake(decomposition, lambda c: layout(c, "beam_major", "by_k")),
        _mistake(decomposition, lambda c: layout(c, "beam_major", "div_k")),
        _mistake("the tokens are the flat indices into the k * V candidates: token = index % V "
                 "(and beam = index // V)", lambda c: layout(c, "beam_major", "flat_index")),
        _mistake("the candidates are flattened token-major, (B, V, k) -> (B, V * k), so the flat "
                 "index is token * k + beam: split it as beam = index % k, token = index // k, "
                 "or flatten (B, k, V) (index = beam * V + token)",
                 lambda c: layout(c, "token_major", "right")),
        _mistake("the reshape to (B, k * V) mixes the sources: the batch axis was moved before "
                 "the reshape, so a row holds candidates of several sources; reshape the (B, k, V) "
                 "scores directly", lambda c: layout(c, "batch_mixed", "right")),
        _mistake("these are the n worst candidates: topk returns the largest by default "
                 "(largest=True), best first", smallest),
        _mistake("the n best candidates, but worst first: return them best first, as topk does",
                 worst_first),
    ]


_TOP_DTYPE_REASONS = {
    "scores": "the scores are sums of log-probabilities: they keep the float dtype of the inputs "
              "(float64 inputs give float64 scores)",
    "beams": "beams are indices of hypotheses: int64 (torch.long), as topk's indices; index // V "
             "keeps that dtype, while / or torch.div without rounding_mode gives floats",
    "tokens": "tokens are token ids: int64 (torch.long), as topk's indices; index % V keeps that "
              "dtype",
}


def _top_cases(g: torch.Generator) -> list[Case]:
    def case(name: str, B: int, k: int, V: int, n: int, dead: int = 0,
             offsets: Sequence[float] | None = None, dtype: torch.dtype = torch.float32) -> Case:
        log_probs = -3.0 * torch.rand(B, k, generator=g)
        if offsets is not None:
            log_probs = log_probs + torch.tensor(offsets)[:, None]
        if dead:
            log_probs[:, k - dead:] = -math.inf
        next_log_probs = F.log_softmax(randn(g, B, k, V, std=2.0), dim=-1)
        return Case(name, {"log_probs": log_probs.to(dtype),
                           "next_log_probs": next_log_probs.to(dtype), "n": n}, positional=3)

    return [
        case("B=2 sources, k=3 hypotheses each, V=5, n=3", 2, 3, 5, 3),
        case("the first step: only hypothesis 0 is live, the others are -inf; n=2k=6", 2, 3, 6, 6,
             dead=2),
        case("3 sources with scores on different scales, k=2, V=4, n=4", 3, 2, 4, 4,
             offsets=[0.0, -6.0, -12.0]),
        case("one source, one hypothesis (greedy), V=7, n=2", 1, 1, 7, 2),
        case("k=4, V=3, n=8: the best candidates come from several hypotheses", 2, 4, 3, 8),
        case("float64 scores, B=2, k=2, V=5, n=4", 2, 2, 5, 4, dtype=torch.float64),
    ]


@isolated
def check_top_candidates(fn: Callable[..., Any], *, seed: int = 0) -> None:
    """Check ``fn(log_probs, next_log_probs, n) -> (scores, beams, tokens)``, one step of beam
    search: ``log_probs (B, k)`` scores the live hypotheses (``-inf``: no hypothesis),
    ``next_log_probs (B, k, V)`` their next-token log-probabilities; the result holds, for each
    source, its ``n`` best extensions, best first (each ``(B, n)``):
    ``scores[b, i] = log_probs[b, beams[b, i]] + next_log_probs[b, beams[b, i], tokens[b, i]]``.
    The scores keep the inputs' float dtype; beams and tokens are int64.
    """
    check = "check_top_candidates"
    cases = _top_cases(torch.Generator().manual_seed(seed))
    parts = ("scores", "beams", "tokens")

    def learner(case: Case) -> Any:
        args, kwargs = case.args()
        return call_learner(check, f"running {case.where}", fn, *args, **kwargs)

    def structure(got: Any, want: Any, case: Case) -> str | None:
        B, k, V = case.inputs["next_log_probs"].shape
        n = case.inputs["n"]
        if isinstance(got, (tuple, list)) and got and isinstance(got[0], Tensor):
            if got[0].shape in ((B, k, n), (B * k, n)) and k > 1:
                return (f"the scores have shape {tuple(got[0].shape)}: that is the top n of each "
                        f"hypothesis; flatten each source's candidates to (B, k * V) first, so the "
                        f"n best of a source can come from any of its hypotheses")
        problem = structure_problem(parts, got, want, dtype_reasons=_TOP_DTYPE_REASONS)
        if problem is None:
            scores, beams, tokens = got
            if close(beams, want[2]) and close(tokens, want[1]) and not close(beams, want[1]):
                return ("return (scores, beams, tokens) in this order: yours returns the tokens "
                        "where the beams go, and the beams where the tokens go")
            if (bool(((beams < 0) | (beams >= k)).any())
                    or bool(((tokens < 0) | (tokens >= V)).any())):
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
                if not bool(torch.isclose(candidates[b],
                                          torch.tensor(value, dtype=candidates.dtype),
                                          atol=1e-5).any()):
                    return (f"source {b} got a score that is not the total of any of its own "
                            f"candidates, log_probs[b, j] + next_log_probs[b, j, v]: return the "
                            f"totals of the candidates chosen, each source's own (the top n of "
                            f"its row of scores.view(B, k * V))")
        if close(scores, want[0]) and not (close(beams, want[1]) and close(tokens, want[2])):
            return ("the scores are right but not the beams or tokens they come from: with "
                    "index in [0, k * V), beam = index // V and token = index % V")
        if close(scores.sort(dim=-1, descending=True).values, want[0]):
            return "the right candidates, in the wrong order: return them best first"
        return None

    count = run_cases(check, cases, learner, lambda case: _top_candidates(**case.inputs),
                      parts=parts, mistakes=_top_mistakes(), structure=structure, hints=hints)
    passed(check, count)


register(Spec(check="check_top_candidates",
              cases=lambda: _top_cases(torch.Generator().manual_seed(0)),
              reference=lambda case: _top_candidates(**case.inputs),
              package=lambda case: _top_candidates(**case.inputs), mistakes=_top_mistakes))


# --- beam search ---


@dataclass(frozen=True)
class _BeamBug:
    """Switches for the mistakes the beam search check knows (all off: the right answer)."""

    all_live: bool = False  # all k start rows live at score 0: the beam fills with duplicates
    last_token: bool = False  # a hypothesis is scored by its last token's log-probability only
    raw_logits: bool = False  # the scores add up raw logits (no log_softmax)
    extend_finished: str = ""  # "untrimmed" / "trimmed": EOS is an ordinary token
    flat_topk: bool = False  # one top-k over the whole batch's B * k * V candidates
    no_reorder: bool = False  # row j keeps its own prefix and gets the token chosen for slot j
    beam_as_row: bool = False  # a candidate continues row `beam` (source 0's), not b * k + beam
    layout: str = "interleave"  # "tiled": memory and mask repeat(k) (row r reads source r % B);
    # "tiled_mask": the memory is interleaved but the mask tiled
    reorder_memory: bool = False  # memory and mask rows follow the chosen rows (a no-op if right)
    every_eos: bool = False  # every EOS among the top 2k is set aside, even below the k-th live
    top_k_only: bool = False  # only the top k candidates: the beam shrinks when some finish
    stop: str = "exact"  # "first": at the first finished; "k_finished"; "raw_bound" (the best live
    # log p, not divided); "bound_t" (divided by lp(t), the current length, not lp(max_new_tokens))
    pick: str = "best"  # "last_finished", "live" (the best live hypothesis of the last step),
    # "final_row" (row b * k of the beam when the loop ends), "finished_only"
    penalty: str = "ok"  # "ignored", "mean" (log p / |y|), "multiply", "with_bos" (|y| + 1),
    # "without_eos" (|y| - 1 for a hypothesis ending with EOS), "twice" (divided again when the
    # best is picked), "each_step" (the running score is divided by lp(t) at every step),
    # "finished_raw" (a hypothesis that ends with EOS is not divided; the live ones at
    # max_new_tokens are)
    ignore_mask: bool = False
    steps: int = 0  # the loop runs max_new_tokens + steps steps (the penalties: max_new_tokens)


def _beam_math(model: nn.Module, src: Tensor, max_new_tokens: int, bos_id: int, eos_id: int,
               beam_size: int = 4, src_mask: Tensor | None = None, length_alpha: float = 0.0,
               *, bug: _BeamBug = _BeamBug()) -> list[Tensor]:
    """Beam search, written plainly with Python lists, with switches for common mistakes."""
    B, k = src.size(0), beam_size
    alpha = 0.0 if bug.penalty == "ignored" else length_alpha

    def lp(length: int) -> float:
        return length_penalty(length, alpha)

    def finished_score(total: float, length: int) -> float:
        """The score of a hypothesis that ends with EOS after ``length`` generated tokens."""
        if bug.penalty == "mean":
            return total / length
        if bug.penalty == "multiply":
            return total * lp(length)
        if bug.penalty in ("each_step", "finished_raw"):
            return total  # divided already; not divided at all
        return total / lp(length + {"with_bos": 1, "without_eos": -1}.get(bug.penalty, 0))

    def live_score(total: float) -> float:
        """The score of a live hypothesis when max_new_tokens is reached."""
        if bug.penalty in ("without_eos", "finished_raw"):
            return total / lp(max_new_tokens)  # it has no EOS to leave out; it is divided
        return finished_score(total, max_new_tokens)

    def bound(best_live: float, t: int) -> float:
        """The best score a live hypothesis can still reach (the stopping rule)."""
        if bug.stop == "raw_bound":
            return best_live
        if bug.stop == "bound_t":
            return best_live / lp(t)
        if bug.penalty == "each_step":
            return best_live / lp(max_new_tokens)
        return live_score(best_live)

    mask = None if src_mask is None or bug.ignore_mask else src_mask.expand(B, 1, 1, src.size(1))
    memory = model.encode(src, mask)
    interleaved, tiled = torch.arange(B).repeat_interleave(k), torch.arange(B).repeat(k)
    memory = memory[tiled if bug.layout == "tiled" else interleaved]
    mask = None if mask is None else mask[interleaved if bug.layout == "interleave" else tiled]
    hyps = [[bos_id] for _ in range(B * k)]
    scores = [[0.0 if j == 0 or bug.all_live else -math.inf for j in range(k)] for _ in range(B)]
    finished: list[list[tuple[float, list[int], int]]] = [[] for _ in range(B)]  # score, ids, |y|
    active = [True] * B
    top_live: list[list[int] | None] = [None] * B
    for t in range(1, max_new_tokens + bug.steps + 1):
        logits = model.decode(torch.tensor(hyps), memory, mask, causal_mask(t))[:, -1].float()
        step = logits if bug.raw_logits else F.log_softmax(logits, dim=-1)  # (B * k, V)
        n = min((1 if bug.top_k_only else 2) * k, k * step.size(-1))
        per_source = []
        for b in range(B):
            candidates = []
            for j in range(k):
                if scores[b][j] == -math.inf:
                    continue
                for v, value in enumerate(step[b * k + j].tolist()):
                    total = value if bug.last_token else scores[b][j] + value
                    if bug.penalty == "each_step":
                        total /= lp(t)
                    candidates.append((total, b * k + j, v))
            per_source.append(sorted(candidates, key=lambda c: -c[0]))
        if bug.flat_topk:  # one ranking of the whole batch, cut into B pieces of n
            ranked = sorted((c for cs in per_source for c in cs), key=lambda c: -c[0])[: B * n]
            per_source = [ranked[b * n:(b + 1) * n] for b in range(B)]
        else:
            per_source = [cs[:n] for cs in per_source]
        new_hyps: list[list[int]] = []
        new_rows: list[int] = []  # the row each new row continues
        new_scores = [[-math.inf] * k for _ in range(B)]
        for b in range(B):
            chosen = 0
            for total, row, v in per_source[b]:
                if not active[b] or (chosen == k and not bug.every_eos):
                    break
                if bug.beam_as_row:
                    row -= b * k
                if v == eos_id and not bug.extend_finished:
                    finished[b].append((finished_score(total, t), hyps[row] + [v], t))
                    continue
                if chosen == k:
                    continue
                new_hyps.append(hyps[b * k + chosen if bug.no_reorder else row] + [v])
                new_rows.append(row)
                new_scores[b][chosen] = total
                chosen += 1
            while chosen < k:  # dead rows
                new_hyps.append(hyps[b * k] + [eos_id])
                new_rows.append(b * k)
                chosen += 1
            if not active[b]:
                continue
            live = max(new_scores[b])
            if live > -math.inf:
                top_live[b] = new_hyps[b * k + new_scores[b].index(live)]
            if not finished[b]:
                continue
            best = max(f[0] for f in finished[b])
            if bug.stop == "first" or (bug.stop == "k_finished" and len(finished[b]) >= k):
                active[b] = False
            elif bug.stop in ("exact", "raw_bound", "bound_t") and best >= bound(live, t):
                active[b] = False
        if not any(active):
            break
        hyps, scores = new_hyps, new_scores
        if bug.reorder_memory:
            memory, mask = memory[new_rows], None if mask is None else mask[new_rows]
    else:
        for b in range(B):
            if active[b] and bug.pick != "finished_only":
                finished[b] += [(live_score(s), hyps[b * k + j], max_new_tokens)
                                for j, s in enumerate(scores[b]) if s > -math.inf]
    out = []
    for b in range(B):
        if bug.pick == "live" and top_live[b] is not None:
            tokens = top_live[b]
        elif bug.pick == "final_row":
            tokens = hyps[b * k]
        elif bug.pick == "last_finished" and finished[b]:
            tokens = finished[b][-1][1]
        elif finished[b]:
            again = bug.penalty == "twice"  # divided by lp(|y|) once more when picking
            tokens = max(finished[b], key=lambda f: f[0] / lp(f[2]) if again else f[0])[1]
        else:
            tokens = hyps[b * k]
        if bug.extend_finished == "trimmed" and eos_id in tokens[1:]:
            tokens = tokens[: tokens.index(eos_id, 1) + 1]
        out.append(torch.tensor(tokens))
    return out


def _beam_with(bug: _BeamBug, **changed: Any) -> Callable[[Case], list[Tensor]]:
    """The beam search of a case's inputs (some of them ``changed``) with ``bug``."""
    def run(case: Case) -> list[Tensor]:
        args, kwargs = _decoding_args(Case(case.name, {**case.inputs, **changed}))
        return _beam_math(*args, **kwargs, bug=bug)
    return run


def _beam_reference(case: Case) -> list[Tensor]:
    return _beam_with(_BeamBug())(case)


def _beam_package(case: Case) -> list[Tensor]:
    args, kwargs = _decoding_args(case)
    return beam_search(*args, **kwargs)


def _beam_mistakes(penalty: bool = True) -> list[Mistake]:
    """The known mistakes of beam search; with ``penalty``, those of the length penalty too."""
    def var(**switches: Any) -> Callable[[Case], list[Tensor]]:
        return _beam_with(_BeamBug(**switches))

    def both(message: str, **switches: Any) -> list[Mistake]:
        """A mistake in code that reorders memory and src_mask with the hypotheses (as chapter
        6's cache must be), and in code that leaves them be."""
        return [_mistake(message, var(**switches)),
                _mistake(message, var(**switches, reorder_memory=True))]

    def greedy(case: Case) -> list[Tensor]:
        i = case.inputs
        return _greedy_math(i["model"], i["src"], i["max_new_tokens"], i["bos_id"], i["eos_id"],
                            i.get("src_mask"))

    def shorter(case: Case) -> list[Tensor]:
        return _beam_with(_BeamBug(), max_new_tokens=case.inputs["max_new_tokens"] - 1)(case)

    extended = ("finished hypotheses are extended: a hypothesis that emits EOS is finished; set it "
                "aside (with its score) and keep k live hypotheses in the beam")
    short = ("the search runs one step short: max_new_tokens counts the tokens generated after "
             "BOS, so the steps are t = 1 ... max_new_tokens (range(1, max_new_tokens + 1)), and a "
             "hypothesis may need all max_new_tokens of them")
    one_hypothesis = (
        "your answers are those of a beam of one hypothesis, greedy decoding's: either all k "
        "hypotheses start live (at the first step the beam then holds k copies of BOS, and fills "
        "with copies of one hypothesis; start each source with one live hypothesis: scores 0 for "
        "the first row and -inf for the other k - 1, log_probs[:, 1:] = -inf), or beam_size is "
        "not used")
    mistakes = [
        *[_mistake(one_hypothesis, output) for output in (
            var(all_live=True), _beam_with(_BeamBug(), beam_size=1), greedy)],
        _mistake("the hypotheses are ranked by the log-probability of their last token: a "
                 "hypothesis's score is the running sum over its tokens, log_probs[:, :, None] + "
                 "next_log_probs", var(last_token=True)),
        _mistake("the scores add up raw logits: turn each step's logits into log-probabilities "
                 "first, F.log_softmax(logits[:, -1], dim=-1); a logit is a log-probability only "
                 "up to a constant that differs from prefix to prefix", var(raw_logits=True)),
        _mistake(extended, var(extend_finished="trimmed")),
        _mistake(extended, var(extend_finished="untrimmed")),
        *both("the top-k runs over the whole batch, so the hypotheses of different sources are "
              "mixed: take each source's best candidates among its own k * V, "
              "scores.view(B, k * V).topk(..., dim=-1)", flat_topk=True),
        *both("a candidate's beam is its hypothesis's index within its source (0 ... k - 1): the "
              "row it continues is b * k + beam, not beam (which is a row of source 0)",
              beam_as_row=True),
        *both("the rows of memory do not line up with the hypotheses: row b * k + j belongs to "
              "source b, so expand memory (and src_mask) with repeat_interleave(k, dim=0); "
              "repeat(k, 1, 1) tiles the batch and gives row r the memory of source r % B",
              layout="tiled"),
        *both("src_mask is tiled with repeat while the memory uses repeat_interleave, so a row "
              "reads its own source's memory through another source's mask: expand src_mask "
              "with repeat_interleave(k, dim=0) too", layout="tiled_mask"),
        _mistake("the rows are not reordered after the selection: the new beam's row j must "
                 "continue the hypothesis its candidate came from, tokens = "
                 "torch.cat([tokens[rows], new_tokens[:, None]], dim=1), not the hypothesis that "
                 "was in row j", var(no_reorder=True)),
        _mistake("the search stops at the first hypothesis that finishes: a live hypothesis may "
                 "still beat it. Go on until the best finished score is at least the best live "
                 "log-probability (divided by lp(max_new_tokens)), or until max_new_tokens",
                 var(stop="first")),
        _mistake("the search stops when k hypotheses have finished, but a live one can still "
                 "beat them: go on until the best finished score is at least the best live "
                 "log-probability (divided by lp(max_new_tokens)), or until max_new_tokens",
                 var(stop="k_finished")),
        _mistake("you return the last hypothesis to finish: return the finished hypothesis with "
                 "the best score", var(pick="last_finished")),
        _mistake("you return a hypothesis of the beam, not the best finished one: hypotheses "
                 "that end with EOS are set aside as finished, and the answer is the best of them "
                 "(live hypotheses count only when max_new_tokens is reached)", var(pick="live")),
        _mistake("you return the first row of each source's final beam (row b * k): the answer "
                 "is the best finished hypothesis, among those set aside when they ended with EOS "
                 "(and, when max_new_tokens is reached, the live ones)", var(pick="final_row")),
        _mistake("when max_new_tokens is reached, the live hypotheses count as finished too "
                 "(scored with lp(max_new_tokens)): the best of them can beat every hypothesis "
                 "that ended with EOS", var(pick="finished_only")),
        _mistake("every EOS among the 2k candidates is set aside as finished, even one ranked "
                 "below the k-th live candidate: go through the candidates best first and stop "
                 "as soon as k live ones are chosen (with beam_size=1, beam search must give "
                 "greedy decoding's answer)", var(every_eos=True)),
        _mistake("finished hypotheses are scored by their mean log-probability, log p / |y|: the "
                 "score is log p / lp(|y|) with lp(|y|) = ((5 + |y|) / 6) ** length_alpha, which "
                 "is 1 when length_alpha=0 (no length normalization)", var(penalty="mean")),
        _mistake("your search finds answers that only a beam of more than beam_size hypotheses "
                 "finds (a beam of 4, the default, finds them): is beam_size used? Keep "
                 "beam_size live hypotheses per source", _beam_with(_BeamBug(), beam_size=4)),
        _mistake("src_mask is ignored: pass it to model.encode, and (one row per hypothesis, "
                 "repeat_interleave(k, dim=0)) to model.decode", var(ignore_mask=True)),
        _mistake(short, var(steps=-1)),
        _mistake(short, shorter),
        _mistake("the search runs one step too many: max_new_tokens counts the tokens generated "
                 "after BOS, so the steps are t = 1 ... max_new_tokens (range(1, max_new_tokens + "
                 "1))", var(steps=1)),
    ]
    if penalty:
        mistakes += [
            _mistake("only the top k candidates are considered, so the beam shrinks when some "
                     "of them end with EOS: go through the top 2k, so that k live hypotheses "
                     "remain after the finished are set aside", var(top_k_only=True)),
            _mistake("length_alpha is ignored: a finished hypothesis scores log p / lp(|y|), "
                     "lp(|y|) = length_penalty(|y|, length_alpha)", var(penalty="ignored")),
            _mistake("the length penalty multiplies the log-probability; divide by it: "
                     "log p / lp(|y|)", var(penalty="multiply")),
            _mistake("the length |y| counts BOS: it counts the generated tokens, EOS included (a "
                     "hypothesis that finishes at step t has |y| = t)", var(penalty="with_bos")),
            _mistake("the length |y| leaves out EOS: it counts the generated tokens, EOS included "
                     "(a hypothesis that finishes at step t has |y| = t)",
                     var(penalty="without_eos")),
            _mistake("the scores are divided by the length penalty twice (once when a hypothesis "
                     "finishes, again when the best is picked): divide log p by lp(|y|) once",
                     var(penalty="twice")),
            _mistake("the running scores are divided by the length penalty at every step, so "
                     "earlier tokens are divided again and again: keep the plain sum of "
                     "log-probabilities in the beam, and divide by lp(|y|) once, when a hypothesis "
                     "finishes (or at max_new_tokens)", var(penalty="each_step")),
            *[_mistake("the stopping rule underestimates what a live hypothesis can still reach: "
                       "it may grow to max_new_tokens tokens, and lp grows with the length, so its "
                       "best possible score is its log p / lp(max_new_tokens); stop when the best "
                       "finished score is at least best live log p / lp(max_new_tokens)",
                       var(stop=stop))
              for stop in ("raw_bound", "bound_t")],
            _mistake("the hypotheses that end with EOS are not divided by the length penalty: "
                     "score each finished hypothesis log p / lp(|y|), as the live ones at "
                     "max_new_tokens (log p / lp(max_new_tokens))", var(penalty="finished_raw")),
        ]
    return mistakes


def _beam_cases(g: torch.Generator, penalty: bool = True) -> list[Case]:
    chapter, three, late = chapter_table(), three_sources_table(), late_table()
    eos_second, lengths, penalties = eos_second_table(), length_table(), penalty_table()
    shorter, squared = shorter_wins_table(), squared_penalty_table()
    src_t, mask_t = _decoding_sources(g, [6, 4, 2])
    src_u, mask_u = _decoding_sources(g, [3, 5])
    post_ln = _random_transformer(_POST_LN_SEED, norm_first=False)
    pre_ln = _random_transformer(_PRE_LN_SEED, norm_first=True)

    def case(name: str, model: nn.Module, src: Tensor, max_new_tokens: int, beam_size: int,
             src_mask: Tensor | None = None, length_alpha: float | None = None) -> Case:
        more = {} if length_alpha is None else {"length_alpha": length_alpha}
        return _case(name, model, src, max_new_tokens, src_mask, beam_size=beam_size, **more)

    cases = [
        case("a table model, 3 sources with their own answers (the last one never ends)", three,
             table_sources(three, "A", "D", "G"), 4, 2),
        case("a table model where greedy decoding misses the most probable sequence", chapter,
             table_sources(chapter, "A"), 5, 2),
        case("a table model where hypotheses finish before the best one", late,
             table_sources(late, "A", "D", "J"), 5, 2),
        case("a table model, beam_size=1 (greedy decoding)", eos_second,
             table_sources(eos_second, "A"), 5, 1),
        case("a table model, answers of different lengths", lengths,
             table_sources(lengths, "A", "D"), 5, 2),
        case("a random post-LN Transformer, 3 padded sources", post_ln, src_t, 6, 3, mask_t),
        case("a random pre-LN Transformer, 2 padded sources, beam_size=1", pre_ln, src_u, 5, 1,
             mask_u),
        case("a random pre-LN Transformer, 2 padded sources, beam_size=4", pre_ln, src_u, 5, 4,
             mask_u),
    ]
    if penalty:
        cases += [
            case("a table model, length_alpha=1: the long answer wins", lengths,
                 table_sources(lengths, "A"), 5, 2, length_alpha=1.0),
            case("a table model, length_alpha=1: the stopping rule", lengths,
                 table_sources(lengths, "D"), 5, 2, length_alpha=1.0),
            case("a table model, length_alpha=1: what the length counts", penalties,
                 table_sources(penalties, "D", "G", "J"), 5, 2, length_alpha=1.0),
            case("a random post-LN Transformer, length_alpha=0.8", post_ln, src_t, 6, 3, mask_t,
                 length_alpha=0.8),
            case("a table model, length_alpha=1: the shorter answers still win", shorter,
                 table_sources(shorter, "A", "D"), 5, 2, length_alpha=1.0),
            case("a table model, length_alpha=2: short and long answers", squared,
                 table_sources(squared, "A", "D", "G", "J"), 5, 2, length_alpha=2.0),
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
    """Check ``fn(model, src, max_new_tokens, bos_id, eos_id, beam_size=4, src_mask=None)``, beam
    search, which returns for each source its best hypothesis as a 1-d tensor of ids
    (``bos_id`` ... ``eos_id``, or ``max_new_tokens`` tokens), as
    :func:`transformer_lib.beam_search`.

    The models: hand-made table models where greedy decoding misses the most probable
    sequence, batches whose sources need different answers (one never ends), hypotheses that
    finish before the best one, ``beam_size=1`` (which must be greedy decoding); and small
    random :class:`transformer_lib.Transformer` s with padded sources. If ``fn`` takes a
    ``length_alpha`` argument (the length penalty :func:`transformer_lib.length_penalty`), cases
    with ``length_alpha > 0`` run too: some where the longer answer must win, some where the
    shorter one must still win.
    """
    check = "check_beam_search"
    penalty = _takes_length_alpha(fn)
    cases = _beam_cases(torch.Generator().manual_seed(seed), penalty)
    count = _run_decoder(check, fn, cases, _beam_package, _beam_mistakes(penalty), beam=True)
    note = ("" if penalty
            else " (your function takes no length_alpha: the length penalty is not checked)")
    print(f"{check}: all {count} cases pass{note}")


register(Spec(check="check_beam_search",
              cases=lambda: _beam_cases(torch.Generator().manual_seed(0)),
              reference=one_thread(_beam_reference), package=one_thread(_beam_package),
              mistakes=_beam_mistakes,
              agree=_same_seqs))
