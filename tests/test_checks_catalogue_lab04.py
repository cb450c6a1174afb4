"""transformer_lib.checks, lab 4 (decoding): a second catalogue of wrong implementations, written
as learners write them, each to be rejected with a diagnosis that names the mistake made (or, for
the few marked GENERIC, the check's message that it knows no mistake that fits); and correct
implementations written differently, each to be accepted. They are registered in
``checks_catalogue`` and run by ``test_checks_catalogue.py``."""

import heapq
import math

import checks_catalogue as catalogue
import torch
import torch.nn.functional as F
from checks_catalogue import GENERIC

from transformer_lib import causal_mask, length_penalty

# --- exercise 1: greedy decoding ------------------------------------------------------------------


def greedy_no_padding_no_cut(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    ys = torch.full((src.size(0), 1), bos_id, dtype=torch.long)
    finished = torch.zeros(src.size(0), dtype=torch.bool)
    for _ in range(max_new_tokens):
        out = model.decode(ys, memory, src_mask, causal_mask(ys.size(1)))
        nxt = out[:, -1, :].argmax(dim=-1)
        ys = torch.cat([ys, nxt.unsqueeze(1)], dim=1)  # finished rows keep getting tokens
        finished = finished | (nxt == eos_id)
        if finished.all():
            break
    return [row for row in ys]


def greedy_softmax_over_batch(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.full((src.shape[0], 1), bos_id)
    done = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model.decode(tokens, memory, src_mask, causal_mask(tokens.shape[1]))
        probs = torch.softmax(logits[:, -1, :], dim=0)
        next_token = probs.argmax(dim=-1)
        next_token[done] = eos_id
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == eos_id
        if done.all():
            break
    result = []
    for row in tokens.tolist():
        if eos_id in row[1:]:
            row = row[: row.index(eos_id, 1) + 1]
        result.append(torch.tensor(row))
    return result


def greedy_log_softmax_over_positions(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    B = src.size(0)
    tokens = torch.full((B, 1), bos_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_new_tokens):
        log_probs = F.log_softmax(model.decode(tokens, memory, src_mask), dim=1)  # (B, t, V)
        next_token = log_probs[:, -1].argmax(-1)
        next_token = torch.where(done, torch.full_like(next_token, eos_id), next_token)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done = done | (next_token == eos_id)
        if bool(done.all()):
            break
    out = []
    for row in tokens:
        ends = (row == eos_id).nonzero().flatten().tolist()
        ends = [e for e in ends if e > 0]
        out.append(row[: ends[0] + 1] if ends else row)
    return out


def greedy_feeds_only_the_last_token(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    B = src.size(0)
    generated = torch.full((B, 1), bos_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    current = generated
    for _ in range(max_new_tokens):
        logits = model.decode(current, memory, src_mask)  # the model "remembers" the rest?
        next_token = logits[:, -1].argmax(-1).masked_fill(done, eos_id)
        generated = torch.cat([generated, next_token[:, None]], dim=1)
        current = next_token[:, None]
        done |= next_token == eos_id
        if done.all():
            break
    outputs = []
    for row in generated:
        stop = (row[1:] == eos_id).nonzero()
        outputs.append(row if len(stop) == 0 else row[: int(stop[0]) + 2])
    return outputs


def greedy_mask_only_for_the_encoder(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    B = src.size(0)
    tokens = torch.full((B, 1), bos_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model.decode(tokens, memory, tgt_mask=causal_mask(tokens.size(1)))
        next_token = logits[:, -1].argmax(dim=-1).masked_fill(done, eos_id)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == eos_id
        if done.all():
            break
    return [row[: int((row[1:] == eos_id).nonzero()[0]) + 2] if (row[1:] == eos_id).any() else row
            for row in tokens]


def greedy_without_the_mask(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src)
    seqs = torch.full((len(src), 1), bos_id)
    alive = torch.ones(len(src), dtype=torch.bool)
    step = 0
    while step < max_new_tokens and alive.any():
        nxt = model.decode(seqs, memory)[:, -1].argmax(-1)
        nxt = torch.where(alive, nxt, torch.full_like(nxt, eos_id))
        seqs = torch.cat((seqs, nxt.view(-1, 1)), 1)
        alive &= nxt != eos_id
        step += 1
    result = []
    for s in seqs.tolist():
        cut = s.index(eos_id, 1) + 1 if eos_id in s[1:] else len(s)
        result.append(torch.tensor(s[:cut]))
    return result


def greedy_first_position(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.full((src.size(0), 1), bos_id, dtype=torch.long)
    done = torch.zeros(src.size(0), dtype=torch.bool)
    for _ in range(max_new_tokens):
        scores = model.decode(tokens, memory, src_mask, causal_mask(tokens.size(1)))
        next_token = torch.max(scores[:, 0, :], dim=1).indices
        next_token[done] = eos_id
        tokens = torch.cat([tokens, next_token.unsqueeze(-1)], dim=-1)
        done |= next_token == eos_id
        if done.all():
            break
    return [r[: (r[1:] == eos_id).nonzero()[0].item() + 2] if (r[1:] == eos_id).any() else r
            for r in tokens]


def greedy_one_step_short(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.full((src.size(0), 1), bos_id, dtype=torch.long)
    done = torch.zeros(src.size(0), dtype=torch.bool)
    for _ in range(max_new_tokens - 1):  # BOS is already one of the max_new_tokens tokens
        logits = model.decode(tokens, memory, src_mask, causal_mask(tokens.size(1)))
        next_token = logits[:, -1].argmax(-1).masked_fill(done, eos_id)
        tokens = torch.cat([tokens, next_token[:, None]], 1)
        done |= next_token == eos_id
        if done.all():
            break
    out = []
    for row in tokens:
        ends = (row[1:] == eos_id).nonzero()
        out.append(row if len(ends) == 0 else row[: int(ends[0]) + 2])
    return out


def greedy_pads_with_zeros(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.full((src.size(0), 1), bos_id, dtype=torch.long)
    done = torch.zeros(src.size(0), dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model.decode(tokens, memory, src_mask, causal_mask(tokens.size(1)))
        next_token = logits[:, -1].argmax(-1)
        next_token[done] = 0  # pad the rows that have finished
        tokens = torch.cat([tokens, next_token[:, None]], 1)
        done |= next_token == eos_id
        if done.all():
            break
    return list(tokens)


def greedy_argmax_over_the_batch(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.full((src.size(0), 1), bos_id, dtype=torch.long)
    for _ in range(max_new_tokens):
        logits = model.decode(tokens, memory, src_mask, causal_mask(tokens.size(1)))
        next_token = logits[:, -1].argmax(dim=0)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if (next_token == eos_id).all():
            break
    return list(tokens)


WRONG_GREEDY = {
    "finished rows keep appending, never cut": (greedy_no_padding_no_cut,
                                                "your sequences go on after EOS"),
    "softmax over the batch": (greedy_softmax_over_batch,
                               "the softmax before the argmax runs over the batch"),
    "log_softmax over the positions": (greedy_log_softmax_over_positions,
                                       "the log_softmax runs over the positions"),
    "only the last token decoded": (greedy_feeds_only_the_last_token,
                                    "each step decodes only the newest token"),
    "mask only for the encoder": (greedy_mask_only_for_the_encoder,
                                  "src_mask is passed to model.encode but not to model.decode"),
    "no mask at all": (greedy_without_the_mask, "src_mask is ignored"),
    "scores[:, 0]": (greedy_first_position,
                     "the next token is read from the first position's logits"),
    "one step short": (greedy_one_step_short, "yours makes one fewer"),
    "finished rows padded with 0, not cut": (greedy_pads_with_zeros,
                                             "your sequences go on after EOS"),
    "argmax over the batch": (greedy_argmax_over_the_batch,
                              "the argmax over the vocabulary, dim=-1"),
}


def greedy_per_source_while_loop(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    answers = []
    for b in range(src.size(0)):
        mask = None if src_mask is None else src_mask[b:b + 1]
        memory = model.encode(src[b:b + 1], mask)
        ids = [bos_id]
        while True:
            logits = model.decode(torch.tensor([ids]), memory, mask, causal_mask(len(ids)))
            ids.append(logits[0, -1].argmax().item())
            if ids[-1] == eos_id or len(ids) == max_new_tokens + 1:
                break
        answers.append(torch.tensor(ids))
    return answers


def greedy_log_probs_and_list_cut(model, src, max_new_tokens, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.full((src.size(0), 1), bos_id, dtype=torch.long)
    for _ in range(max_new_tokens):
        log_probs = F.log_softmax(model.decode(tokens, memory, src_mask)[:, -1], dim=-1)
        tokens = torch.cat([tokens, log_probs.argmax(-1, keepdim=True)], dim=1)
        if ((tokens[:, 1:] == eos_id).any(dim=1)).all():  # every row has an EOS somewhere
            break
    rows = []
    for row in tokens.tolist():
        if eos_id in row[1:]:
            row = row[: row.index(eos_id, 1) + 1]  # whatever came after EOS is dropped
        rows.append(torch.tensor(row))
    return rows


CORRECT_GREEDY = [greedy_per_source_while_loop, greedy_log_probs_and_list_cut]

# --- exercise 2: the log-probability of a sequence ------------------------------------------------


def log_prob_cross_entropy_without_minus(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    logits = model.decode(tgt[:, :-1], memory, src_mask, causal_mask(tgt.size(1) - 1))
    nll = F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], reduction="none")  # (B, T - 1)
    return nll.sum(dim=1)


def log_prob_rolled_targets(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    logits = model.decode(tgt, memory, src_mask, causal_mask(tgt.size(1)))
    targets = torch.roll(tgt, shifts=-1, dims=1)  # the next token at every position
    log_probs = logits.log_softmax(-1)
    return log_probs.gather(2, targets.unsqueeze(2)).squeeze(2).sum(1)


def log_prob_shifted_backwards(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    logits = model.decode(tgt[:, 1:], memory, src_mask, causal_mask(tgt.size(1) - 1))
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, tgt[:, :-1].unsqueeze(-1)).sum(dim=(1, 2))


def log_prob_log_softmax_over_batch(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    logits = model.decode(tgt[:, :-1], memory, src_mask, causal_mask(tgt.shape[1] - 1))
    log_probs = torch.log_softmax(logits, 0)
    picked = torch.gather(log_probs, 2, tgt[:, 1:, None])[..., 0]
    return picked.sum(-1)


def log_prob_mask_only_for_the_decoder(model, src, tgt, src_mask=None):
    memory = model.encode(src)
    logits = model.decode(tgt[:, :-1], memory, src_mask)
    log_probs = F.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, tgt[:, 1:, None]).squeeze(-1).sum(-1)


def log_prob_loop_from_two(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    logits = model.decode(tgt[:, :-1], memory, src_mask)
    log_probs = F.log_softmax(logits, dim=-1)
    total = torch.zeros(tgt.size(0))
    for t in range(2, tgt.size(1)):  # the token after BOS is given
        total += log_probs[torch.arange(tgt.size(0)), t - 1, tgt[:, t]]
    return total


def log_prob_summed_over_the_vocabulary(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    log_probs = F.log_softmax(model.decode(tgt[:, :-1], memory, src_mask), dim=-1)
    return log_probs.sum(dim=(1, 2))  # every log-probability of every position


def log_prob_mean_cross_entropy(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    logits = model.decode(tgt[:, :-1], memory, src_mask)
    losses = F.cross_entropy(logits.permute(0, 2, 1), tgt[:, 1:], reduction="none")
    return -losses.mean(dim=1)


def log_prob_inputs_as_targets(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    inputs = tgt[:, :-1]
    log_probs = F.log_softmax(model.decode(inputs, memory, src_mask), dim=-1)
    return log_probs.gather(-1, inputs[..., None]).squeeze(-1).sum(-1)


def log_prob_product_of_probabilities(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    probs = torch.softmax(model.decode(tgt[:, :-1], memory, src_mask), dim=-1)
    return probs.gather(-1, tgt[:, 1:, None]).squeeze(-1).prod(dim=-1)


WRONG_LOG_PROB = {
    "cross_entropy without the minus": (log_prob_cross_entropy_without_minus,
                                        "the sign is flipped"),
    "torch.roll targets": (log_prob_rolled_targets, "torch.roll wraps around"),
    "shifted backwards": (log_prob_shifted_backwards, "the shift goes the wrong way"),
    "log_softmax over the batch": (log_prob_log_softmax_over_batch,
                                   "the log_softmax runs over the batch"),
    "mask only for the decoder": (log_prob_mask_only_for_the_decoder,
                                  "src_mask is passed to model.decode but not to model.encode"),
    "loop from t=2": (log_prob_loop_from_two, "the first token after BOS is not scored"),
    "summed over the vocabulary": (log_prob_summed_over_the_vocabulary, GENERIC),
    "mean cross-entropy": (log_prob_mean_cross_entropy, "this is the mean over the tokens"),
    "the inputs as targets": (log_prob_inputs_as_targets, "the targets are not shifted"),
    "product of probabilities": (log_prob_product_of_probabilities,
                                 "this is the probability p(y | x)"),
}


def log_prob_flat_cross_entropy(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    logits = model.decode(tgt[:, :-1], memory, src_mask)
    B, T, V = logits.shape
    nll = F.cross_entropy(logits.reshape(B * T, V), tgt[:, 1:].reshape(B * T), reduction="none")
    return -nll.view(B, T).sum(dim=1)


def log_prob_one_hot(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    logits = model.decode(tgt[:, :-1], memory, src_mask)
    one_hot = F.one_hot(tgt[:, 1:], logits.size(-1)).to(logits.dtype)
    return (one_hot * F.log_softmax(logits, dim=-1)).sum(dim=(1, 2))


def log_prob_logsumexp(model, src, tgt, src_mask=None):
    memory = model.encode(src, src_mask)
    logits = model.decode(tgt[:, :-1], memory, src_mask)
    chosen = logits.gather(-1, tgt[:, 1:, None]).squeeze(-1)
    return (chosen - logits.logsumexp(dim=-1)).sum(dim=-1)


CORRECT_LOG_PROB = [log_prob_flat_cross_entropy, log_prob_one_hot, log_prob_logsumexp]

# --- exercise 3: the best candidates --------------------------------------------------------------


def top_token_major(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    scores = log_probs.unsqueeze(-1) + next_log_probs
    flat = scores.permute(0, 2, 1).reshape(B, -1)  # (B, V, k) -> (B, V * k)
    values, index = flat.topk(n)
    return values, index // V, index % V


def top_transposed_batch(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    scores = (log_probs[..., None] + next_log_probs).transpose(0, 1)  # beams first
    values, index = scores.reshape(B, k * V).topk(n, dim=1)
    return values, index // V, index % V


def top_float_beams(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    values, index = (log_probs[:, :, None] + next_log_probs).view(B, -1).topk(n, dim=-1)
    beams = torch.div(index, V, rounding_mode="floor").float()
    return values, beams, index - beams.long() * V


def top_true_division(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    values, index = (log_probs[:, :, None] + next_log_probs).view(B, -1).topk(n, dim=-1)
    return values, (index / V).floor(), index % V


def top_scores_in_float32(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    scores = torch.zeros(B, n)
    beams = torch.zeros(B, n, dtype=torch.long)
    tokens = torch.zeros(B, n, dtype=torch.long)
    for b in range(B):
        flat = (log_probs[b, :, None] + next_log_probs[b]).flatten()
        best = flat.topk(n)
        scores[b] = best.values
        beams[b] = best.indices // V
        tokens[b] = best.indices % V
    return scores, beams, tokens


def top_ascending_sort(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    flat = (log_probs[:, :, None] + next_log_probs).reshape(B, k * V)
    values, index = flat.sort(dim=-1)
    values, index = values[:, -n:], index[:, -n:]  # the n largest
    return values, index // V, index % V


def top_per_hypothesis(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    scores = (log_probs[:, :, None] + next_log_probs).view(B * k, V)
    values, tokens = scores.topk(n, dim=-1)
    beams = torch.arange(B * k)[:, None].expand(-1, n) % k
    return values, beams, tokens


def top_new_tokens_only(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    values, index = next_log_probs.reshape(B, -1).topk(n, dim=-1)
    beams, tokens = index // V, index % V
    return log_probs.gather(1, beams) + values, beams, tokens


def top_divmod_by_k(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    values, index = (log_probs[:, :, None] + next_log_probs).reshape(B, -1).topk(n)
    beams, tokens = index // k, index % k
    return values, beams, tokens


def top_tokens_then_beams(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    values, index = (log_probs[:, :, None] + next_log_probs).view(B, -1).topk(n)
    token, beam = index % V, index // V
    return values, token, beam


def top_scores_of_the_new_token(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    totals = log_probs[:, :, None] + next_log_probs
    _, index = totals.view(B, -1).topk(n)
    return next_log_probs.view(B, -1).gather(1, index), index // V, index % V  # the step's score


WRONG_TOP = {
    "flattened token-major": (top_token_major, "the candidates are flattened token-major"),
    "batch axis moved before the reshape": (top_transposed_batch,
                                            "the reshape to (B, k * V) mixes the sources"),
    "beams as floats": (top_float_beams, "the dtype of the beams is torch.float32, "
                                         "expected torch.int64 (beams are indices of hypotheses"),
    "true division": (top_true_division, "index // V keeps that dtype, while / or torch.div"),
    "scores in float32": (top_scores_in_float32, "the dtype of the scores is torch.float32, "
                                                 "expected torch.float64 (the scores are sums of "
                                                 "log-probabilities"),
    "ascending sort": (top_ascending_sort, "the n best candidates, but worst first"),
    "topk of each row of (B * k, V)": (top_per_hypothesis, "that is the top n of each hypothesis"),
    "ranked by the new token": (top_new_tokens_only,
                                "ranked by the new token's log-probability alone"),
    "divmod by k": (top_divmod_by_k, "beams must be in [0, k)"),
    "tokens and beams swapped": (top_tokens_then_beams,
                                 "yours returns the tokens where the beams go"),
    "the new token's log-probability as the score": (top_scores_of_the_new_token,
                                                     "is not the total of any of its "
                                                     "own candidates"),
}


def top_unravel(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    values, index = (log_probs.unsqueeze(2) + next_log_probs).flatten(1).topk(n, dim=1)
    beams, tokens = torch.unravel_index(index, (k, V))
    return values, beams, tokens


def top_descending_sort(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    values, index = (log_probs[:, :, None]
                     + next_log_probs).reshape(B, -1).sort(dim=1, descending=True)
    index = index[:, :n]
    return values[:, :n], torch.div(index, V, rounding_mode="floor"), torch.remainder(index, V)


def top_heapq(log_probs, next_log_probs, n):
    B, k, V = next_log_probs.shape
    totals = (log_probs[:, :, None] + next_log_probs).tolist()
    rows = [heapq.nlargest(n, ((totals[b][j][v], j, v) for j in range(k) for v in range(V)))
            for b in range(B)]
    scores = torch.tensor([[s for s, _, _ in row] for row in rows], dtype=log_probs.dtype)
    beams = torch.tensor([[j for _, j, _ in row] for row in rows])
    tokens = torch.tensor([[v for _, _, v in row] for row in rows])
    return scores, beams, tokens


CORRECT_TOP = [top_unravel, top_descending_sort, top_heapq]

# --- exercise 4: beam search ----------------------------------------------------------------------


def beam_like_the_lab(*, raw_logits=False, tiled_mask=False, steps=0, length_without_eos=False,
                      divide_again=False, normalize_each_step=False, row_without_offset=False,
                      return_first_row=False, eos_is_a_token=False, reorder=True,
                      bound_at_current_length=False, finished_not_divided=False):
    """The lab's beam search, typed in by a learner, with the learner's one mistake."""

    def beam_search(model, src, max_new_tokens, bos_id, eos_id, beam_size=4, src_mask=None,
                    length_alpha=0.0):
        B, k = src.size(0), beam_size
        memory = model.encode(src, src_mask).repeat_interleave(k, dim=0)
        if src_mask is not None:
            src_mask = src_mask.expand(B, 1, 1, src.size(1))
            src_mask = (src_mask.repeat(k, 1, 1, 1) if tiled_mask
                        else src_mask.repeat_interleave(k, dim=0))
        tokens = torch.full((B * k, 1), bos_id, dtype=torch.long)
        log_probs = torch.full((B, k), -math.inf)
        log_probs[:, 0] = 0.0
        finished = [[] for _ in range(B)]
        done = [False] * B
        for t in range(1, max_new_tokens + steps + 1):
            logits = model.decode(tokens, memory, src_mask, causal_mask(t))
            last = logits[:, -1] if raw_logits else F.log_softmax(logits[:, -1], dim=-1)
            next_log_probs = last.view(B, k, -1)
            V = next_log_probs.size(-1)
            n = min(2 * k, k * V)
            flat = (log_probs[:, :, None] + next_log_probs).view(B, k * V)
            scores, index = flat.topk(n, dim=-1)
            if normalize_each_step:
                scores = scores / length_penalty(t, length_alpha)
            beams, words = index // V, index % V
            rows, new_words = [], []
            new_log_probs = torch.full((B, k), -math.inf)
            for b in range(B):
                live = 0
                for score, beam, word in zip(scores[b].tolist(), beams[b].tolist(),
                                             words[b].tolist()):
                    if done[b] or live == k or score == -math.inf:
                        break
                    row = beam if row_without_offset else b * k + beam
                    if word == eos_id and not eos_is_a_token:
                        ended = torch.cat([tokens[row], tokens.new_tensor([eos_id])])
                        if normalize_each_step or finished_not_divided:
                            finished[b].append((score, ended))
                        else:
                            size = len(tokens[row]) - 1 if length_without_eos else t
                            finished[b].append((score / length_penalty(size, length_alpha), ended))
                        continue
                    rows.append(row)
                    new_words.append(word)
                    new_log_probs[b, live] = score
                    live += 1
                while live < k:
                    rows.append(b * k)
                    new_words.append(eos_id)
                    live += 1
                if not done[b] and finished[b]:
                    best_finished = max(s for s, _ in finished[b])
                    best_live = new_log_probs[b].max().item()
                    horizon = t if bound_at_current_length else max_new_tokens
                    done[b] = best_finished >= best_live / length_penalty(horizon, length_alpha)
            if all(done):
                break
            rows = torch.tensor(rows)
            previous = tokens[rows] if reorder else tokens
            tokens = torch.cat([previous, torch.tensor(new_words)[:, None]], dim=1)
            memory = memory[rows]
            src_mask = None if src_mask is None else src_mask[rows]
            log_probs = new_log_probs
        else:
            for b in range(B):
                for j in range(k):
                    if not done[b] and log_probs[b, j] > -math.inf:
                        score = log_probs[b, j].item()
                        if not normalize_each_step:
                            score /= length_penalty(max_new_tokens, length_alpha)
                        finished[b].append((score, tokens[b * k + j]))
        if return_first_row:
            return [tokens[b * k] for b in range(B)]
        if divide_again:  # "normalize the scores by the length" when picking
            return [max(hyps, key=lambda h: h[0] / length_penalty(len(h[1]) - 1, length_alpha))[1]
                    for hyps in finished]
        return [max(hyps, key=lambda h: h[0])[1] for hyps in finished]

    return beam_search


def beam_finished_stay_in_the_beam(model, src, max_new_tokens, bos_id, eos_id, beam_size=4,
                                       src_mask=None, length_alpha=0.0):
    """Each source on its own; finished hypotheses stay in the beam, and the answer is its top."""
    answers = []
    for b in range(src.size(0)):
        mask = (None if src_mask is None
                else src_mask.expand(src.size(0), 1, 1, src.size(1))[b:b + 1])
        memory = model.encode(src[b:b + 1], mask)
        beam = [(0.0, [bos_id])]
        for _ in range(max_new_tokens):
            growing = [(s, h) for s, h in beam if h[-1] != eos_id]
            if not growing:
                break
            ids = torch.tensor([h for _, h in growing])
            logits = model.decode(ids, memory.expand(len(growing), -1, -1), mask)
            step = F.log_softmax(logits[:, -1], -1)
            candidates = [(s + step[i, v].item(), h + [v]) for i, (s, h) in enumerate(growing)
                          for v in range(step.size(-1))]
            candidates += [(s, h) for s, h in beam if h[-1] == eos_id]  # finished ones stay
            beam = sorted(candidates, key=lambda c: -c[0])[:beam_size]
        answers.append(torch.tensor(beam[0][1]))
    return answers


WRONG_BEAM = {
    "raw logits": (beam_like_the_lab(raw_logits=True), "the scores add up raw logits"),
    "mask repeat, memory repeat_interleave": (beam_like_the_lab(tiled_mask=True),
                                              "src_mask is tiled with repeat while the memory uses "
                                              "repeat_interleave"),
    "one step short": (beam_like_the_lab(steps=-1), "the search runs one step short"),
    "one step too many": (beam_like_the_lab(steps=1), "the search runs one step too many"),
    "|y| without EOS": (beam_like_the_lab(length_without_eos=True),
                        "the length |y| leaves out EOS"),
    "penalty divided twice": (beam_like_the_lab(divide_again=True),
                              "divided by the length penalty twice"),
    "normalized at every step": (beam_like_the_lab(normalize_each_step=True),
                                 "divided by the length penalty at every step"),
    "row = beam": (beam_like_the_lab(row_without_offset=True),
                   "the row it continues is b * k + beam"),
    "hypotheses not reordered": (beam_like_the_lab(reorder=False), "the rows are not reordered"),
    "stopping bound at the current length": (beam_like_the_lab(bound_at_current_length=True),
                                             "the stopping rule underestimates"),
    "finished hypotheses not divided": (beam_like_the_lab(finished_not_divided=True),
                                        "the hypotheses that end with EOS are not divided"),
    "first row of the final beam": (beam_like_the_lab(return_first_row=True),
                                    "you return the first row of each source's final beam"),
    "EOS is an ordinary token": (beam_like_the_lab(eos_is_a_token=True),
                                 "finished hypotheses are extended"),
    "finished kept in the beam, length_alpha unused": (beam_finished_stay_in_the_beam,
                                                        "length_alpha is ignored"),
}


def beam_per_source_heap(model, src, max_new_tokens, bos_id, eos_id, beam_size=4, src_mask=None,
                         length_alpha=0.0):
    """One source at a time; heapq picks the candidates."""
    results = []
    for b in range(src.size(0)):
        mask = (None if src_mask is None
                else src_mask.expand(src.size(0), 1, 1, src.size(1))[b:b + 1])
        memory = model.encode(src[b:b + 1], mask)
        live, done = [(0.0, [bos_id])], []
        for t in range(1, max_new_tokens + 1):
            batch = torch.tensor([ids for _, ids in live])
            logits = model.decode(batch, memory.expand(len(live), -1, -1), mask, causal_mask(t))
            step = logits[:, -1].log_softmax(-1).tolist()
            candidates = heapq.nlargest(2 * beam_size, ((lp + step[i][v], i, v)
                                                         for i, (lp, _) in enumerate(live)
                                                         for v in range(len(step[i]))))
            new_live = []
            for score, i, v in candidates:
                if len(new_live) == beam_size:
                    break
                ids = live[i][1] + [v]
                if v == eos_id:
                    done.append((score / length_penalty(t, length_alpha), ids))
                else:
                    new_live.append((score, ids))
            live = new_live
            if (done and max(s for s, _ in done)
                    >= live[0][0] / length_penalty(max_new_tokens, length_alpha)):
                break
        else:
            done += [(lp / length_penalty(max_new_tokens, length_alpha), ids) for lp, ids in live]
        results.append(torch.tensor(max(done, key=lambda d: d[0])[1]))
    return results


def beam_batched_to_the_end(model, src, max_new_tokens, bos_id, eos_id, beam_size=4, src_mask=None,
                            length_alpha=0.0):
    """All sources in one batch, no early stop: finished hypotheses collected per source."""
    B, k = src.size(0), beam_size
    mask = None if src_mask is None else src_mask.expand(B, 1, 1, src.size(1))
    memory = model.encode(src, mask)
    beams = [[(0.0, [bos_id])] for _ in range(B)]
    finished = [[] for _ in range(B)]
    for t in range(1, max_new_tokens + 1):
        owners = [b for b in range(B) for _ in beams[b]]
        if not owners:
            break
        ids = torch.tensor([h for b in range(B) for _, h in beams[b]])
        rows = torch.tensor(owners)
        logits = model.decode(ids, memory[rows], None if mask is None else mask[rows])
        step = F.log_softmax(logits[:, -1], dim=-1)
        offset = 0
        for b in range(B):
            candidates = []
            for i, (s, h) in enumerate(beams[b]):
                for v, value in enumerate(step[offset + i].tolist()):
                    candidates.append((s + value, h + [v]))
            offset += len(beams[b])
            candidates.sort(key=lambda c: c[0], reverse=True)
            beams[b] = []
            for s, h in candidates[: 2 * k]:
                if len(beams[b]) == k:
                    break
                if h[-1] == eos_id:
                    finished[b].append((s / length_penalty(t, length_alpha), h))
                else:
                    beams[b].append((s, h))
    for b in range(B):
        finished[b] += [(s / length_penalty(max_new_tokens, length_alpha), h) for s, h in beams[b]]
    return [torch.tensor(max(f, key=lambda pair: pair[0])[1]) for f in finished]


CORRECT_BEAM = {  # named: beam_like_the_lab() is a function called beam_search
    "beam_like_the_lab()": beam_like_the_lab(),
    "beam_per_source_heap": beam_per_source_heap,
    "beam_batched_to_the_end": beam_batched_to_the_end,
}

# --- the entries, run by test_checks_catalogue.py ----------------------------------------------

catalogue.wrong("check_greedy_decode", WRONG_GREEDY)
catalogue.accepted("check_greedy_decode", CORRECT_GREEDY, cases=6)
catalogue.wrong("check_sequence_log_prob", WRONG_LOG_PROB)
catalogue.accepted("check_sequence_log_prob", CORRECT_LOG_PROB, cases=4)
catalogue.wrong("check_top_candidates", WRONG_TOP)
catalogue.accepted("check_top_candidates", CORRECT_TOP, cases=6)
catalogue.wrong("check_beam_search", WRONG_BEAM)
catalogue.accepted("check_beam_search", CORRECT_BEAM, cases=14)


def test_the_catalogue_is_large():
    assert len(WRONG_GREEDY) + len(WRONG_LOG_PROB) + len(WRONG_TOP) + len(WRONG_BEAM) >= 30
