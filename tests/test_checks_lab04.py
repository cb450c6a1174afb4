"""transformer_lib.checks, lab 4 (decoding): a catalogue of wrong implementations, each to be
rejected with the right diagnosis; correct implementations written differently, and the library's
own, to be accepted. They are registered in ``checks_catalogue`` and run by
``test_checks_catalogue.py``; the tests here ask more of a verdict than its diagnosis."""

import math

import checks_catalogue as catalogue
import pytest
import torch
import torch.nn.functional as F

from transformer_lib import (
    beam_search,
    causal_mask,
    checks,
    greedy_decode,
    length_penalty,
    sequence_log_prob,
)

# --- decoding (lab 04): greedy decoding ----------------------------------------------------------


def greedy_with(*, stop="all", trim=True, fill_eos=True, position=-1, use_mask=True, bos=True,
                eos=True, steps=0):
    """A learner-style batched greedy decoder, with one mistake switched on."""

    def greedy_decode(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
        mask = src_mask if use_mask else None
        memory = model.encode(src, mask)
        tokens = torch.full((src.size(0), 1), bos_id, dtype=torch.long)
        done = torch.zeros(src.size(0), dtype=torch.bool)
        for _ in range(max_new_tokens + steps):
            logits = model.decode(tokens, memory, mask, causal_mask(tokens.size(1)))
            next_token = logits[:, position].argmax(dim=-1)
            if fill_eos:
                next_token = next_token.masked_fill(done, eos_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            done |= next_token == eos_id
            if (stop == "all" and done.all()) or (stop == "any" and done.any()):
                break
        out = []
        for row in tokens.tolist():
            if trim and eos_id in row[1:]:
                row = row[: row.index(eos_id, 1) + 1]
            if not eos and row[-1] == eos_id:
                row = row[:-1]
            out.append(torch.tensor(row if bos else row[1:]))
        return out

    return greedy_decode


def greedy_one_row_at_a_time(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    """Correct, written with Python lists: each source on its own."""
    out = []
    for b in range(src.size(0)):
        mask = None if src_mask is None else src_mask[b:b + 1]
        memory = model.encode(src[b:b + 1], mask)
        ids = [bos_id]
        while len(ids) <= max_new_tokens and (len(ids) == 1 or ids[-1] != eos_id):
            logits = model.decode(torch.tensor([ids]), memory, mask)  # decode's default: causal
            ids.append(int(logits[0, -1].argmax()))
        out.append(torch.tensor(ids))
    return out


def greedy_single_source_only(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.tensor([[bos_id]])
    for _ in range(max_new_tokens):
        next_token = model.decode(tokens, memory, src_mask)[:, -1].argmax(dim=-1)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if next_token.item() == eos_id:  # fine for one source; a batch has B of them
            break
    return [tokens[0]]


def greedy_item_per_batch(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.full((src.size(0), 1), bos_id)
    for _ in range(max_new_tokens):
        next_token = model.decode(tokens, memory, src_mask)[:, -1].argmax(dim=-1)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if next_token.item() == eos_id:
            break
    return list(tokens)


def greedy_returns_a_tensor(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    return torch.nn.utils.rnn.pad_sequence(greedy_decode(model, src, max_new_tokens, bos_id, eos_id,
                                                         src_mask),
                                           batch_first=True, padding_value=eos_id)


def greedy_stub(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    raise NotImplementedError("Exercise 1 (Greedy decoding): write your code here")


WRONG_GREEDY = {
    "never stops at EOS": (greedy_with(stop="never", trim=False, fill_eos=False),
                           "do not stop at EOS"),
    "rows not cut after EOS": (greedy_with(trim=False, fill_eos=False), "go on after EOS"),
    "rows padded with EOS": (greedy_with(trim=False), "padded with EOS"),
    "batch stops at the first EOS": (greedy_with(stop="any"),
                                     "stops when its first row reaches EOS"),
    "first position's logits": (greedy_with(position=0), "first position's logits"),
    "src_mask ignored": (greedy_with(use_mask=False), "src_mask is ignored"),
    "no BOS": (greedy_with(bos=False), "leave out BOS"),
    "no EOS": (greedy_with(eos=False), "leave out their final EOS"),
    "one step too many": (greedy_with(steps=1), "yours makes one more"),
    "one source only": (greedy_single_source_only, "each row of tgt needs its own row of memory"),
    "one EOS test for the batch": (greedy_item_per_batch, "the batch has several sources"),
    "a padded tensor": (greedy_returns_a_tensor, "return a list with one 1-d tensor"),
}

catalogue.wrong("check_greedy_decode", WRONG_GREEDY)


def test_check_greedy_decode_shows_the_sequences():
    with pytest.raises(AssertionError) as info:
        checks.check_greedy_decode(greedy_with(bos=False))
    message = str(info.value)
    assert "case 1 of 6 (a table model, 3 sources that finish at different steps" in message
    assert ("source 1: yours    [6, 7, 8, 2] (D E F EOS)\n"
            "            expected [1, 6, 7, 8, 2] (BOS D E F EOS)" in message)


def test_check_greedy_decode_stub():
    with pytest.raises(NotImplementedError,
                       match="Exercise 1 \\(Greedy decoding\\) is not done yet"):
        checks.check_greedy_decode(greedy_stub)


catalogue.accepted("check_greedy_decode", {
    "greedy_decode": greedy_decode,
    "greedy_with()": greedy_with(),
    "greedy_one_row_at_a_time": greedy_one_row_at_a_time,
}, cases=6)


# --- decoding (lab 04): the log-probability of a sequence ----------------------------------------


def log_prob_with(*, shift=True, normalize="log_softmax", reduce="sum", use_mask=True, dim=-1,
                  skip_first=False):
    def sequence_log_prob(model, src, tgt, src_mask=None):
        mask = src_mask if use_mask else None
        memory = model.encode(src, mask)
        inputs, targets = (tgt[:, :-1], tgt[:, 1:]) if shift else (tgt, tgt)
        logits = model.decode(inputs, memory, mask, causal_mask(inputs.size(1)))
        scores = {"log_softmax": F.log_softmax(logits, dim=dim), "none": logits,
                  "softmax": F.softmax(logits, dim=-1)}[normalize]
        picked = scores.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T - 1)
        if skip_first:
            picked = picked[:, 1:]
        return {"sum": picked.sum(-1), "mean": picked.mean(-1), "none": picked,
                "exp": picked.sum(-1).exp()}[reduce]
    return sequence_log_prob


def log_prob_full_decode(model, src, tgt, src_mask=None):
    """Correct: decode the whole target and drop the last position's prediction."""
    logits = model.decode(tgt, model.encode(src, src_mask), src_mask)[:, :-1]
    probs = torch.softmax(logits, dim=-1)
    return torch.log(probs.gather(2, tgt[:, 1:, None])).sum(dim=(1, 2))


def log_prob_per_token(model, src, tgt, src_mask=None):
    """Correct: one token at a time, as decoding would see them."""
    memory = model.encode(src, src_mask)
    total = torch.zeros(tgt.size(0))
    for t in range(1, tgt.size(1)):
        logits = model.decode(tgt[:, :t], memory, src_mask)[:, -1]  # (B, V)
        total += F.log_softmax(logits, dim=-1)[torch.arange(tgt.size(0)), tgt[:, t]]
    return total


WRONG_LOG_PROB = {
    "not shifted": (log_prob_with(shift=False), "the targets are not shifted"),
    "raw logits": (log_prob_with(normalize="none"), "logits are summed as they are"),
    "probabilities summed": (log_prob_with(normalize="softmax"), "probabilities are summed"),
    "log_softmax over positions": (log_prob_with(dim=1), "log_softmax runs over the positions"),
    "mean": (log_prob_with(reduce="mean"), "the mean over the tokens"),
    "probability": (log_prob_with(reduce="exp"), "this is the probability p(y | x)"),
    "one number per token": (log_prob_with(reduce="none"), "sum over the positions"),
    "first token skipped": (log_prob_with(skip_first=True),
                            "the first token after BOS is not scored"),
    "src_mask ignored": (log_prob_with(use_mask=False), "src_mask is ignored"),
}

catalogue.wrong("check_sequence_log_prob", WRONG_LOG_PROB)
catalogue.accepted("check_sequence_log_prob", {
    "sequence_log_prob": sequence_log_prob,
    "log_prob_with()": log_prob_with(),
    "log_prob_full_decode": log_prob_full_decode,
    "log_prob_per_token": log_prob_per_token,
}, cases=4)


# --- decoding (lab 04): one beam step ------------------------------------------------------------


def top_with(*, total=True, per_source=True, split="right", largest=True, per_beam=False):
    def top_candidates(log_probs, next_log_probs, n):
        B, k, V = next_log_probs.shape
        scores = log_probs[:, :, None] + next_log_probs if total else \
            next_log_probs.masked_fill(torch.isinf(log_probs)[:, :, None], -math.inf)
        if per_beam:
            top, index = scores.topk(n, dim=-1)
            return top, index // V, index % V
        if not per_source:
            top, index = scores.reshape(-1).topk(B * n)
            return top.view(B, n), (index // V % k).view(B, n), (index % V).view(B, n)
        top, index = scores.reshape(B, k * V).topk(n, dim=-1, largest=largest)
        if split == "by_k":
            return top, index % k, index // k
        if split == "flat":
            return top, index // V, index
        return top, index // V, index % V
    return top_candidates


def top_vocab_major(log_probs, next_log_probs, n):
    """Correct: the candidates laid out token-major, (B, V, k), split accordingly."""
    B, k, V = next_log_probs.shape
    scores = (log_probs[:, None, :] + next_log_probs.transpose(1, 2)).reshape(B, V * k)
    top, index = scores.topk(n, dim=-1)
    return top, index % k, index // k


def top_by_sorting(log_probs, next_log_probs, n):
    """Correct: Python lists and sorted(); the scores keep the inputs' dtype."""
    B, k, V = next_log_probs.shape
    scores, beams, tokens = [], [], []
    for b in range(B):
        candidates = sorted(((log_probs[b, j] + next_log_probs[b, j, v]).item(), j, v)
                            for j in range(k) for v in range(V))[::-1][:n]
        scores.append([c[0] for c in candidates])
        beams.append([c[1] for c in candidates])
        tokens.append([c[2] for c in candidates])
    return torch.tensor(scores, dtype=log_probs.dtype), torch.tensor(beams), torch.tensor(tokens)


WRONG_TOP = {
    "last token only": (top_with(total=False), "ranked by the new token's log-probability alone"),
    "top-k over the batch": (top_with(per_source=False), "runs over the whole batch"),
    "beam and token split by k": (top_with(split="by_k"), "beam = index // V, token = index % V"),
    "flat index as the token": (top_with(split="flat"), "tokens in [0, V)"),
    "top n of each hypothesis": (top_with(per_beam=True), "that is the top n of each hypothesis"),
    "the worst candidates": (top_with(largest=False), "n worst candidates"),
}

catalogue.wrong("check_top_candidates", WRONG_TOP)
catalogue.accepted("check_top_candidates", {
    "top_with()": top_with(),
    "top_vocab_major": top_vocab_major,
    "top_by_sorting": top_by_sorting,
}, cases=6)


# --- decoding (lab 04): beam search --------------------------------------------------------------


def beam_with(*, start="one", score="total", eos="aside", topk="source", memory="interleave",
              reorder=True, stop="exact", pick="best", penalty="ok", use_mask=True, every_eos=False,
              candidates=2, keep_eos=True):
    """A learner-style batched beam search (with length_alpha), with one mistake switched on."""

    def lp(length, alpha):
        if penalty == "ignored":
            alpha = 0.0
        if penalty == "mean":
            return float(length)
        return length_penalty(length + (penalty == "with_bos"), alpha)

    def penalized(log_prob, length, alpha):
        if penalty == "multiply":
            return log_prob * length_penalty(length, alpha)
        return log_prob / lp(length, alpha)

    def beam_search(model, src, max_new_tokens, bos_id, eos_id, beam_size=4, src_mask=None,
                    length_alpha=0.0):
        B, S, k = src.size(0), src.size(1), beam_size
        mask = src_mask.expand(B, 1, 1, S) if src_mask is not None and use_mask else None
        memory_ = model.encode(src, mask)
        expand = (lambda x: x.repeat_interleave(k, dim=0)) if memory == "interleave" else \
            (lambda x: x.repeat(k, *[1] * (x.dim() - 1)))
        memory_, mask = expand(memory_), None if mask is None else expand(mask)
        tokens = torch.full((B * k, 1), bos_id)
        log_probs = torch.zeros(B, k)
        if start == "one":
            log_probs[:, 1:] = -math.inf
        finished = [[] for _ in range(B)]
        done = [False] * B
        last_live = [None] * B
        for t in range(1, max_new_tokens + 1):
            logits = model.decode(tokens, memory_, mask, causal_mask(t))
            next_log_probs = F.log_softmax(logits[:, -1], dim=-1).view(B, k, -1)
            V = next_log_probs.size(-1)
            if score == "total":
                scores = log_probs[:, :, None] + next_log_probs
            else:
                scores = next_log_probs.masked_fill(torch.isinf(log_probs)[:, :, None], -math.inf)
            n = min(candidates * k, k * V)
            if topk == "source":
                top, index = scores.view(B, k * V).topk(n, dim=-1)
                rows_of = torch.arange(B)[:, None] * k + index // V
            else:  # one ranking for the whole batch, cut into B pieces
                top, index = scores.view(-1).topk(B * n)
                top, index = top.view(B, n), index.view(B, n)
                rows_of = index // V
            words = index % V
            rows, new_words = [], []
            new_log_probs = torch.full((B, k), -math.inf)
            for b in range(B):
                live = 0
                for value, row, word in zip(top[b].tolist(), rows_of[b].tolist(),
                                            words[b].tolist()):
                    if done[b] or value == -math.inf or (live == k and not every_eos):
                        break
                    if word == eos_id and eos == "aside":
                        ended = tokens[row].tolist() + ([eos_id] if keep_eos else [])
                        finished[b].append((penalized(value, t, length_alpha), ended))
                        continue
                    if live == k:
                        continue
                    rows.append(row)
                    new_words.append(word)
                    new_log_probs[b, live] = value
                    live += 1
                while live < k:
                    rows.append(b * k)
                    new_words.append(eos_id)
                    live += 1
                if done[b]:
                    continue
                best_live = new_log_probs[b].max().item()
                if best_live > -math.inf:
                    j = int(new_log_probs[b].argmax())
                    last_live[b] = tokens[rows[b * k + j]].tolist() + [new_words[b * k + j]]
                if not finished[b]:
                    continue
                best = max(f[0] for f in finished[b])
                if stop == "first" or (stop == "k" and len(finished[b]) >= k) or \
                        (stop == "raw" and best >= best_live) or \
                        (stop == "exact"
                         and best >= penalized(best_live, max_new_tokens, length_alpha)):
                    done[b] = True
            if all(done):
                break
            rows = torch.tensor(rows)
            previous = tokens[rows] if reorder else tokens
            tokens = torch.cat([previous, torch.tensor(new_words)[:, None]], dim=1)
            log_probs = new_log_probs
        else:
            for b in range(B):
                if not done[b] and pick != "finished":
                    for j in range(k):
                        if log_probs[b, j] > -math.inf:
                            finished[b].append((penalized(log_probs[b, j].item(), max_new_tokens,
                                                          length_alpha),
                                                tokens[b * k + j].tolist()))
        out = []
        for b in range(B):
            if pick == "live" and last_live[b] is not None:
                ids = last_live[b]
            elif pick == "last" and finished[b]:
                ids = finished[b][-1][1]
            elif finished[b]:
                ids = max(finished[b], key=lambda f: f[0])[1]
            else:
                ids = tokens[b * k].tolist()
            if eos == "trimmed" and eos_id in ids[1:]:
                ids = ids[: ids.index(eos_id, 1) + 1]
            out.append(torch.tensor(ids))
        return out

    return beam_search


def beam_search_per_source(model, src, max_new_tokens, bos_id, eos_id, beam_size=4, src_mask=None,
                           length_alpha=0.0):
    """Correct, unbatched: one source at a time, hypotheses as (score, ids) pairs."""
    answers = []
    for b in range(src.size(0)):
        mask = (None if src_mask is None
                else src_mask.expand(src.size(0), 1, 1, src.size(1))[b:b + 1])
        memory = model.encode(src[b:b + 1], mask)
        beam, finished = [(0.0, [bos_id])], []
        for t in range(1, max_new_tokens + 1):
            ids = torch.tensor([h for _, h in beam])
            logits = model.decode(ids, memory.expand(len(beam), -1, -1), mask)
            step = F.log_softmax(logits[:, -1], dim=-1)
            candidates = sorted(((s + step[i, v].item(), h + [v]) for i, (s, h) in enumerate(beam)
                                 for v in range(step.size(-1))), key=lambda c: -c[0])
            beam = []
            for s, h in candidates:
                if len(beam) == beam_size:
                    break
                if h[-1] == eos_id:
                    finished.append((s / length_penalty(t, length_alpha), h))
                else:
                    beam.append((s, h))
            if finished and max(f[0] for f in finished) >= \
                    beam[0][0] / length_penalty(max_new_tokens, length_alpha):
                break
        else:
            finished += [(s / length_penalty(max_new_tokens, length_alpha), h) for s, h in beam]
        answers.append(torch.tensor(max(finished, key=lambda f: f[0])[1]))
    return answers


def beam_search_contract_only(model, src, max_new_tokens, bos_id, eos_id, beam_size=4,
                              src_mask=None):
    return beam_search(model, src, max_new_tokens, bos_id, eos_id, beam_size, src_mask)


def beam_search_without_early_stop(model, src, max_new_tokens, bos_id, eos_id, beam_size=4,
                                   src_mask=None, length_alpha=0.0):
    """Correct: run to max_new_tokens (the stopping rule only saves work)."""
    return beam_with(stop="never")(model, src, max_new_tokens, bos_id, eos_id, beam_size, src_mask,
                                   length_alpha)


def beam_stub(model, src, max_new_tokens, bos_id, eos_id, beam_size=4, src_mask=None,
              length_alpha=0.0):
    raise NotImplementedError("Exercise 4 (Beam search): write your code here")


WRONG_BEAM = {
    "all k beams start live": (beam_with(start="all"), "all k hypotheses start live"),
    "ranked by the last token": (beam_with(score="last"), "log-probability of their last token"),
    "finished hypotheses extended": (beam_with(eos="extend"), "finished hypotheses are extended"),
    "finished extended, then cut": (beam_with(eos="trimmed"), "finished hypotheses are extended"),
    "top-k over the whole batch": (beam_with(topk="batch"), "the top-k runs over the whole batch"),
    "memory tiled, not interleaved": (beam_with(memory="tile"),
                                      "the rows of memory do not line up"),
    "rows not reordered": (beam_with(reorder=False), "the rows are not reordered"),
    "stops at the first finished": (beam_with(stop="first"), "stops at the first hypothesis"),
    "stops after k finished": (beam_with(stop="k"), "stops when k hypotheses have finished"),
    "returns the last finished": (beam_with(pick="last"), "the last hypothesis to finish"),
    "returns the top of the beam": (beam_with(pick="live"), "you return a hypothesis of the beam"),
    "live hypotheses never count": (beam_with(pick="finished"),
                                    "the live hypotheses count as finished"),
    "every EOS set aside": (beam_with(every_eos=True),
                            "every EOS among the 2k candidates is set aside"),
    "mean log-probability": (beam_with(penalty="mean"), "mean log-probability"),
    "src_mask ignored": (beam_with(use_mask=False), "src_mask is ignored"),
    "EOS left out": (beam_with(keep_eos=False), "leave out their final EOS"),
    "length_alpha ignored": (beam_with(penalty="ignored"), "length_alpha is ignored"),
    "penalty multiplies": (beam_with(penalty="multiply"), "multiplies the log-probability"),
    "length counts BOS": (beam_with(penalty="with_bos"), "the length |y| counts BOS"),
    "stopping rule without the penalty": (beam_with(stop="raw"),
                                          "the stopping rule underestimates"),
    "top k candidates only": (beam_with(candidates=1), "the beam shrinks"),
}

catalogue.wrong("check_beam_search", WRONG_BEAM)


def test_check_beam_search_shows_the_sequences_and_their_log_probs():
    with pytest.raises(AssertionError) as info:
        checks.check_beam_search(beam_with(start="all"))
    message = str(info.value)
    assert "case 1 of 14 (a table model, 3 sources with their own answers" in message
    assert "source 0: yours    [1, 3, 3, 2] (BOS A A EOS)  log p = -2.041" in message
    assert "expected [1, 4, 5, 2] (BOS B C EOS)  log p = -1.397" in message


catalogue.accepted("check_beam_search", {
    "beam_search": beam_search,
    "beam_with()": beam_with(),
    "beam_search_per_source": beam_search_per_source,
    "beam_search_without_early_stop": beam_search_without_early_stop,
}, cases=14)


def test_check_beam_search_without_length_alpha(capsys):
    checks.check_beam_search(beam_search_contract_only)
    out = capsys.readouterr().out
    assert out.startswith("check_beam_search: all 8 cases pass (your function takes no "
                          "length_alpha")
    with pytest.raises(AssertionError, match="all k hypotheses start live"):
        checks.check_beam_search(lambda model, src, n, bos_id, eos_id, beam_size=4,
                                 src_mask=None: beam_with(start="all")(
                                     model, src, n, bos_id, eos_id, beam_size, src_mask))


def test_check_beam_search_stub():
    with pytest.raises(NotImplementedError, match="Exercise 4 \\(Beam search\\) is not done yet"):
        checks.check_beam_search(beam_stub)


def test_decoding_checks_leave_the_callers_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    checks.check_beam_search(beam_search)
    checks.check_greedy_decode(greedy_decode)
    torch.testing.assert_close(torch.rand(3), expected)
