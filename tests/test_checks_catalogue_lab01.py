"""Lab 1's checks against a catalogue of wrong implementations written as learners write them:
each to be rejected with the diagnosis it states (or, where marked ``GENERIC``, with the generic
message, for at most a tenth of them); correct implementations written differently, to be
accepted. They are registered in ``checks_catalogue`` and run by ``test_checks_catalogue.py``.

Every entry is a whole function, in the style of a learner's cell; none repeats one of
``tests/test_checks_lab01.py``.
"""

import math

import checks_catalogue as catalogue
import pytest
import torch
import torch.nn.functional as F
from torch import nn

# --- exercise 1: causal_mask ------------------------------------------------------------------


def causal_no_diagonal_from_triu(size, device=None):
    future = torch.ones(size, size, dtype=torch.bool, device=device).triu()
    return ~future  # hides the diagonal too


def causal_triu_k2(size, device=None):
    return ~torch.triu(torch.ones(size, size, dtype=torch.bool, device=device), diagonal=2)


def causal_arange_strict(size, device=None):
    i = torch.arange(size, device=device)
    return i[:, None] > i[None, :]


def causal_arange_wrong_way(size, device=None):
    i = torch.arange(size, device=device)
    return i[:, None] <= i[None, :]


def causal_int(size, device=None):
    return torch.tril(torch.ones(size, size, dtype=torch.int64, device=device))


def causal_additive(size, device=None):
    mask = torch.zeros(size, size, device=device)
    future = torch.ones(size, size, dtype=torch.bool, device=device).triu(1)
    return mask.masked_fill(future, float("-inf"))


def causal_no_device(size, device=None):
    return torch.tril(torch.ones(size, size)).bool()


def causal_tril_plus_one(size, device=None):
    return torch.ones(size, size, device=device).tril(diagonal=1) == 1


WRONG_CAUSAL = {
    "~triu(0) hides the diagonal": (causal_no_diagonal_from_triu, "diagonal is missing"),
    "~triu(diagonal=2)": (causal_triu_k2, "off by one"),
    "arange with >": (causal_arange_strict, "diagonal is missing"),
    "arange compared the wrong way": (causal_arange_wrong_way, "upper triangle"),
    "int64 mask": (causal_int, "pattern is right but the dtype is torch.int64"),
    "additive -inf mask": (causal_additive, "additive float mask"),
    "device not passed on": (causal_no_device, "requested device"),
    "tril(diagonal=1)": (causal_tril_plus_one, "off by one"),
}


def causal_triu_equals_zero(size, device=None):
    return torch.triu(torch.ones(size, size, device=device), diagonal=1) == 0


def causal_logical_not(size, device=None):
    return torch.ones(size, size, dtype=torch.bool, device=device).triu(1).logical_not()


def causal_full_true(size, device=None):
    return torch.full((size, size), True, device=device).tril()


def causal_loop(size, device=None):
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    for i in range(size):
        mask[i, : i + 1] = True
    return mask


CORRECT_CAUSAL = [causal_triu_equals_zero, causal_logical_not, causal_full_true, causal_loop]


# --- exercise 2: padding_mask -----------------------------------------------------------------


def padding_three_axes(tokens, pad_id):
    return (tokens != pad_id).unsqueeze(1)


def padding_query_axis(tokens, pad_id):
    return (tokens != pad_id).unsqueeze(1).unsqueeze(-1)


def padding_long(tokens, pad_id):
    return tokens.ne(pad_id).long()[:, None, None, :]


def padding_greater_than_zero(tokens, pad_id):
    return (tokens > 0)[:, None, None, :]


def padding_greater_than_pad(tokens, pad_id):
    return (tokens > pad_id).view(tokens.size(0), 1, 1, tokens.size(1))


def padding_square(tokens, pad_id):
    real = tokens != pad_id
    return (real[:, None, :] & real[:, :, None]).unsqueeze(1)  # (B, 1, S, S)


def padding_additive(tokens, pad_id):
    return torch.where(tokens == pad_id, float("-inf"), 0.0)[:, None, None, :]


def padding_from_lengths(tokens, pad_id):
    lengths = (tokens != pad_id).sum(dim=-1)
    positions = torch.arange(tokens.size(1))
    return (positions[None, :] < lengths[:, None])[:, None, None, :]


def padding_batch_last(tokens, pad_id):
    return (tokens == pad_id).logical_not()[None, None]


def padding_bool_cast(tokens, pad_id):
    return tokens.bool()[:, None, None, :]


WRONG_PADDING = {
    "(B, 1, S)": (padding_three_axes, "(B, 1, S)"),
    "(B, 1, S, 1)": (padding_query_axis, "key axis S is last"),
    "long": (padding_long, "pattern is right but the dtype is torch.int64"),
    "tokens > 0": (padding_greater_than_zero, "pad_id is ignored"),
    "tokens > pad_id": (padding_greater_than_pad, "tokens above pad_id"),
    "(B, 1, S, S) hides queries too": (padding_square, "hides padded queries as well"),
    "additive": (padding_additive, "additive float mask"),
    "positions < lengths": (padding_from_lengths, "padding is at the end"),
    "(1, 1, B, S)": (padding_batch_last, "the batch axis comes first"),
    "tokens.bool()": (padding_bool_cast, "pad_id is ignored"),
}


def padding_ne_reshape(tokens, pad_id):
    B, S = tokens.shape
    return torch.ne(tokens, pad_id).reshape(B, 1, 1, S)


def padding_not_equal(tokens, pad_id):
    return ~(tokens == pad_id)[:, None, None, :]


def padding_difference(tokens, pad_id):
    return (tokens - pad_id).bool()[:, None, None, :]


def padding_expand(tokens, pad_id):
    return (tokens != pad_id).unsqueeze(-2).unsqueeze(-2)


CORRECT_PADDING = [padding_ne_reshape, padding_not_equal, padding_difference, padding_expand]


# --- exercise 3: scaled_dot_product_attention --------------------------------------------------


def _weights(query, key, mask):
    """A right softmax(QK^T / sqrt(d_k)) with the mask, as the learners below start."""
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return weights


def attention_scaled_twice(query, key, value, mask=None, dropout_p=0.0):
    d_k = query.size(-1)
    scores = query @ key.transpose(-2, -1) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e9)
    scores = scores / math.sqrt(d_k)  # "don't forget the scale"
    weights = F.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights * mask.any(-1, keepdim=True)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ value, weights


def attention_power_precedence(query, key, value, mask=None, dropout_p=0.0):
    d_k = query.shape[-1]
    scores = torch.matmul(query, key.transpose(-1, -2)) / d_k ** 1 / 2
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(-1)
    if mask is not None:
        weights = weights.masked_fill(~mask.any(-1, keepdim=True), 0)
    weights = F.dropout(weights, p=dropout_p) if dropout_p else weights
    return weights @ value, weights


def attention_power_precedence_scale(query, key, value, mask=None, dropout_p=0.0):
    d_k = key.size(-1)
    scale = d_k ** 1/2
    scores = query @ key.transpose(-2, -1) / scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1))
    return weights @ value, weights


def attention_fill_zero(query, key, value, mask=None, dropout_p=0.0):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(mask == 0, 0)  # hide the masked keys
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return weights @ value, weights


def attention_multiply_mask(query, key, value, mask=None, dropout_p=0.0):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores * mask
    weights = torch.softmax(scores, dim=-1)
    return weights @ value, weights


def attention_add_mask(query, key, value, mask=None, dropout_p=0.0):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores + mask  # an attention mask is added to the scores
    weights = torch.softmax(scores, dim=-1)
    return weights @ value, weights


def attention_softmax_no_dim(query, key, value, mask=None, dropout_p=0.0):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e30)
    weights = F.softmax(scores)
    if mask is not None:
        weights = weights * mask.any(dim=-1, keepdim=True)
    return weights @ value, weights


def attention_scale_after_softmax(query, key, value, mask=None, dropout_p=0.0):
    scores = query @ key.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0) / math.sqrt(query.size(-1))
    return weights @ value, weights


def attention_additive_mask_uniform(query, key, value, mask=None, dropout_p=0.0):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores + (~mask) * -1e9
    weights = torch.softmax(scores, dim=-1)
    weights = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return weights @ value, weights


def attention_returns_weights_before_dropout(query, key, value, mask=None, dropout_p=0.0):
    weights = _weights(query, key, mask)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ value, weights


def attention_dropout_on_output(query, key, value, mask=None, dropout_p=0.0):
    weights = _weights(query, key, mask)
    output = weights @ value
    if dropout_p > 0:
        output = F.dropout(output, p=dropout_p)
    return output, weights


def attention_dropout_keep_probability(query, key, value, mask=None, dropout_p=0.0):
    weights = _weights(query, key, mask)
    if dropout_p > 0:
        keep = 1 - dropout_p
        weights = F.dropout(weights, p=keep)  # keep the weights with probability 1 - p
    return weights @ value, weights


def attention_dropout_on_scores(query, key, value, mask=None, dropout_p=0.0):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if dropout_p > 0:
        scores = F.dropout(scores, dropout_p)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return weights @ value, weights


def attention_fused_output_plain_weights(query, key, value, mask=None, dropout_p=0.0):
    weights = _weights(query, key, mask)
    if dropout_p == 0:
        return weights @ value, weights
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p)
    return output, weights


def attention_dropout_bernoulli_unscaled(query, key, value, mask=None, dropout_p=0.0):
    weights = _weights(query, key, mask)
    if dropout_p > 0:
        keep = torch.bernoulli(torch.full_like(weights, 1 - dropout_p))
        weights = weights * keep
    return weights @ value, weights


def attention_dropout_always(query, key, value, mask=None, dropout_p=0.0):
    weights = F.dropout(_weights(query, key, mask), p=0.1)
    return weights @ value, weights


def attention_dropout_on_values(query, key, value, mask=None, dropout_p=0.0):
    weights = _weights(query, key, mask)
    return weights @ F.dropout(value, p=dropout_p), weights


WRONG_ATTENTION = {
    "scaled twice": (attention_scaled_twice, "divided by d_k; divide them by sqrt(d_k)"),
    "scores / d_k ** 1 / 2": (attention_power_precedence, "divided by 2 * d_k"),
    "scale = d_k ** 1/2": (attention_power_precedence_scale, "d_k ** 1/2 means (d_k ** 1) / 2"),
    "masked_fill with 0": (attention_fill_zero, "scores are set to 0"),
    "scores * mask": (attention_multiply_mask, "scores are set to 0"),
    "scores + mask": (attention_add_mask, "the mask is added to the scores"),
    "F.softmax without dim": (attention_softmax_no_dim, "the softmax has no dim="),
    "scale after the softmax": (attention_scale_after_softmax,
                                "after the softmax, so they no longer"),
    "additive -1e9, no zero rows": (attention_additive_mask_uniform, "uniform average"),
    "weights before dropout returned": (attention_returns_weights_before_dropout,
                                        "the weights returned are those before it"),
    "dropout on the output": (attention_dropout_on_output, "dropout is applied to the output"),
    "dropout p is the keep probability": (attention_dropout_keep_probability,
                                          "not of keeping it"),
    "dropout on the scores": (attention_dropout_on_scores, "still sum to 1 over the keys"),
    "fused output, weights without dropout": (attention_fused_output_plain_weights,
                                              "the weights returned are those before it"),
    "bernoulli keep mask, not rescaled": (attention_dropout_bernoulli_unscaled, "not rescaled"),
    "dropout always on": (attention_dropout_always, "although dropout_p=0.0"),
    "dropout on the values": (attention_dropout_on_values, "dropout is applied to the values"),
}


def attention_nan_to_num(query, key, value, mask=None, dropout_p=0.0):
    scores = torch.matmul(query, key.transpose(-2, -1)) * query.size(-1) ** -0.5
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = torch.where(torch.isnan(weights), torch.zeros_like(weights), weights)
    if dropout_p > 0:
        weights = torch.dropout(weights, dropout_p, train=True)
    return torch.matmul(weights, value), weights


def attention_dropout_module(query, key, value, mask=None, dropout_p=0.0):
    weights = _weights(query, key, mask)
    weights = nn.Dropout(p=dropout_p)(weights)
    return weights @ value, weights


def attention_multiply_after(query, key, value, mask=None, dropout_p=0.0):
    scores = query @ key.mT / math.sqrt(key.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e9)
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights * mask  # also zeroes the rows with no visible key
    if dropout_p > 0:
        keep = torch.rand(weights.shape) >= dropout_p
        weights = torch.where(keep, weights / (1 - dropout_p), torch.zeros_like(weights))
    return weights @ value, weights


def attention_float64_inside(query, key, value, mask=None, dropout_p=0.0):
    scores = (query.double() @ key.double().transpose(-2, -1)) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(query.dtype)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return weights @ value, weights


CORRECT_ATTENTION = [attention_nan_to_num, attention_dropout_module, attention_multiply_after,
                     attention_float64_inside]


# --- the entries, run by test_checks_catalogue.py ----------------------------------------------

catalogue.wrong("check_causal_mask", WRONG_CAUSAL)
catalogue.accepted("check_causal_mask", CORRECT_CAUSAL, cases=5)
catalogue.wrong("check_padding_mask", WRONG_PADDING)
catalogue.accepted("check_padding_mask", CORRECT_PADDING, cases=4)
catalogue.wrong("check_attention", WRONG_ATTENTION,  # F.softmax without dim= warns
                marks=[pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")])
catalogue.accepted("check_attention", CORRECT_ATTENTION, cases=7)
