"""transformer_lib.checks, lab 1 (attention and masks): a catalogue of wrong implementations, each
to be rejected with the right diagnosis; correct implementations written differently, and the
library's own, to be accepted. They are registered in ``checks_catalogue`` and run by
``test_checks_catalogue.py``; the tests here ask more of a verdict than its diagnosis."""

import math

import checks_catalogue as catalogue
import pytest
import torch
import torch.nn.functional as F

from transformer_lib import (
    causal_mask,
    checks,
    padding_mask,
    scaled_dot_product_attention,
)

# --- wrong attention functions ------------------------------------------------------------------


def attention_with(*, scale=None, dim=-1, fill=None, invert=False, zero_empty=True, values="value",
                   order="ow", mask_after=False):
    """A learner-style attention, with one mistake switched on."""

    def attention(query, key, value, mask=None, dropout_p=0.0):
        d_k = query.size(-1)
        factor = {None: 1 / math.sqrt(d_k), "none": 1.0, "d_k": 1 / d_k,
                  "d_v": 1 / math.sqrt(value.size(-1))}[scale]
        scores = query @ key.transpose(-2, -1) * factor
        if mask is not None and not mask_after:
            hide = mask if invert else ~mask
            scores = scores.masked_fill(hide, fill if fill is not None else -1e30)
        weights = torch.softmax(scores, dim=dim)
        if mask is not None and mask_after:
            weights = weights * mask
        if mask is not None and zero_empty:
            weights = weights * mask.any(dim=-1, keepdim=True)
        out = weights @ (value if values == "value" else key)
        return (out, weights) if order == "ow" else (weights, out)

    return attention


def attention_mask_ignored(query, key, value, mask=None, dropout_p=0.0):
    return attention_with()(query, key, value)


def attention_dropout_ignored(query, key, value, mask=None, dropout_p=0.0):
    return attention_with()(query, key, value, mask)


def attention_dropout_not_rescaled(query, key, value, mask=None, dropout_p=0.0):
    out, weights = attention_with()(query, key, value, mask)
    if dropout_p > 0:
        weights = weights * (torch.rand_like(weights) >= dropout_p)
    return weights @ value, weights


def attention_transposed_scores(query, key, value, mask=None, dropout_p=0.0):
    scores = key @ query.transpose(-2, -1) / math.sqrt(query.size(-1))
    weights = torch.softmax(scores, dim=-1)
    return weights @ value, weights


def attention_returns_scores(query, key, value, mask=None, dropout_p=0.0):
    out, _ = scaled_dot_product_attention(query, key, value, mask)
    return out, query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))


def attention_returns_unmasked_weights(query, key, value, mask=None, dropout_p=0.0):
    out, _ = scaled_dot_product_attention(query, key, value, mask)
    return out, scaled_dot_product_attention(query, key, value)[1]


def attention_that_crashes(query, key, value, mask=None, dropout_p=0.0):
    batch, length, width = query.shape  # fails on 4-D inputs
    return attention_with()(query, key, value, mask, dropout_p)


def attention_stub(query, key, value, mask=None, dropout_p=0.0):
    raise NotImplementedError("Exercise 1 (Scaled dot-product attention): write your code here")


WRONG_ATTENTION = {
    "no scale": (attention_with(scale="none"), "not scaled"),
    "divide by d_k": (attention_with(scale="d_k"), "divided by d_k; divide them by sqrt(d_k)"),
    "scale with d_v": (attention_with(scale="d_v"), "values' width d_v"),
    "softmax over queries": (attention_with(dim=-2), "softmax runs over the queries"),
    "softmax over dim 1": (attention_with(dim=1), "dim=1"),
    "mask ignored": (attention_mask_ignored, "mask is ignored"),
    "mask inverted": (attention_with(invert=True, fill=float("-inf"), zero_empty=False),
                      "mask is inverted"),
    "-inf gives NaN": (attention_with(fill=float("-inf"), zero_empty=False), "gives NaN"),
    "-1e9 gives a uniform row": (attention_with(fill=-1e9, zero_empty=False), "uniform average"),
    "mask after softmax": (attention_with(mask_after=True, zero_empty=False),
                           "mask is applied after the softmax"),
    "weights and output swapped": (attention_with(order="wo"), "in this order"),
    "averages the keys": (attention_with(values="key"), "averages the keys"),
    "scores transposed": (attention_transposed_scores, "key @ query^T"),
    "returns the scores as weights": (attention_returns_scores, "do not sum to 1 over the keys"),
    "returns unmasked weights": (attention_returns_unmasked_weights,
                                 "weights are not zero on masked keys"),
    "dropout ignored": (attention_dropout_ignored, "dropout_p is ignored"),
    "dropout not rescaled": (attention_dropout_not_rescaled, "not rescaled"),
}

catalogue.wrong("check_attention", WRONG_ATTENTION)


def test_check_attention_shows_a_diff():
    with pytest.raises(AssertionError) as info:
        checks.check_attention(attention_with(scale="none"))
    message = str(info.value)
    assert "case 1 of 7" in message and "largest difference" in message
    assert "yours" in message and "expected" in message


def test_learner_exception_is_reported_as_such():
    with pytest.raises(AssertionError) as info:
        checks.check_attention(attention_that_crashes)
    message = str(info.value)
    assert "your code raised ValueError: too many values to unpack" in message
    assert "batch, length, width = query.shape" in message  # the learner's own line
    assert "case 4 of 7" in message


def test_stub_gives_the_friendly_not_implemented_message():
    with pytest.raises(NotImplementedError) as info:
        checks.check_attention(attention_stub)
    message = str(info.value)
    assert "Exercise 1 (Scaled dot-product attention) is not done yet" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_other_not_implemented_error_is_reported():
    def half_done(query, key, value, mask=None, dropout_p=0.0):
        raise NotImplementedError("masks")

    with pytest.raises(NotImplementedError, match="some part of it is not written yet"):
        checks.check_attention(half_done)


# --- correct attention written differently -----------------------------------------------------


def attention_einsum(query, key, value, mask=None, dropout_p=0.0):
    scores = torch.einsum("...td,...sd->...ts", query, key) / query.size(-1) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key: 0/0 -> 0
    weights = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return torch.einsum("...ts,...sv->...tv", weights, value), weights


def attention_by_hand(query, key, value, mask=None, dropout_p=0.0):
    scores = query @ key.mT / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(-1e9))
    scores = scores - scores.amax(dim=-1, keepdim=True)
    weights = scores.exp() / scores.exp().sum(dim=-1, keepdim=True)
    if mask is not None:
        weights = torch.where(mask.any(-1, keepdim=True), weights, torch.zeros(()))
    if dropout_p:
        keep = torch.rand_like(weights) >= dropout_p
        weights = weights * keep / (1 - dropout_p)
    return weights @ value, weights


catalogue.accepted("check_attention", [scaled_dot_product_attention, attention_einsum,
                                       attention_by_hand], cases=7)


def test_checks_leave_the_callers_state_alone():
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_attention(scaled_dot_product_attention)
    torch.testing.assert_close(torch.rand(3), expected)  # the same random stream
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()


# --- masks ---------------------------------------------------------------------------------------


def ones(size, device=None):
    return torch.ones(size, size, dtype=torch.bool, device=device)


WRONG_CAUSAL = {
    "inverted": (lambda size, device=None: ones(size, device).triu(1), "mask is inverted"),
    "upper triangle": (lambda size, device=None: ones(size, device).triu(), "upper triangle"),
    "no diagonal": (lambda size, device=None: ones(size, device).tril(-1), "diagonal is missing"),
    "float 0/1": (lambda size, device=None: torch.ones(size, size).tril(),
                  "dtype is torch.float32"),
    "additive": (lambda size, device=None: torch.full((size, size), -math.inf).triu(1),
                 "additive float mask"),
    "4-D": (lambda size, device=None: ones(size, device).tril()[None, None], "(size, size)"),
    "device ignored": (lambda size, device=None: ones(size).tril(), "requested device"),
}

catalogue.wrong("check_causal_mask", WRONG_CAUSAL)


def causal_by_comparison(size, device=None):
    positions = torch.arange(size, device=device)
    return positions[:, None] >= positions[None, :]  # query i may see key j <= i


catalogue.accepted("check_causal_mask", [causal_mask, causal_by_comparison], cases=5)


WRONG_PADDING = {
    "inverted": (lambda tokens, pad_id: (tokens == pad_id)[:, None, None, :], "mask is inverted"),
    "pad id ignored": (lambda tokens, pad_id: (tokens != 0)[:, None, None, :], "pad_id is ignored"),
    "no broadcast axes": (lambda tokens, pad_id: tokens != pad_id, "(B, 1, 1, S) so it broadcasts"),
    "query axis": (lambda tokens, pad_id: (tokens != pad_id)[:, None, :, None],
                   "key axis S is last"),
    "from lengths": (lambda tokens, pad_id: (torch.arange(tokens.size(1)) < (tokens != pad_id).sum(
        1, keepdim=True))[:, None, None, :], "padding is at the end"),
    "float": (lambda tokens, pad_id: (tokens != pad_id).float()[:, None, None, :], "bool tensors"),
}

catalogue.wrong("check_padding_mask", WRONG_PADDING)
catalogue.accepted("check_padding_mask", {
    "padding_mask": padding_mask,
    "ne(pad_id).unsqueeze(1).unsqueeze(2)":
        lambda tokens, pad_id: tokens.ne(pad_id).unsqueeze(1).unsqueeze(2),
    "view(B, 1, 1, S)":
        lambda tokens, pad_id: (tokens != pad_id).view(tokens.size(0), 1, 1, tokens.size(1)),
}, cases=4)
