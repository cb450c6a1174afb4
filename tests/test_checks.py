"""transformer_lib.checks: a catalogue of wrong implementations, each rejected with the right
diagnosis; correct implementations written differently, accepted; the library's own, accepted."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    MultiHeadAttention,
    beam_search,
    causal_mask,
    checks,
    greedy_decode,
    length_penalty,
    padding_mask,
    scaled_dot_product_attention,
    sequence_log_prob,
    sublayer_connection,
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


@pytest.mark.parametrize("name", WRONG_ATTENTION)
def test_check_attention_diagnoses(name):
    fn, diagnosis = WRONG_ATTENTION[name]
    with pytest.raises(AssertionError, match="^check_attention: ") as info:
        checks.check_attention(fn)
    assert diagnosis in str(info.value), str(info.value)


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
    assert "case 3 of 7" in message


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


@pytest.mark.parametrize("fn", [scaled_dot_product_attention, attention_einsum, attention_by_hand])
def test_check_attention_accepts(fn, capsys):
    checks.check_attention(fn)
    assert capsys.readouterr().out == "check_attention: all 7 cases pass\n"


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
    "float 0/1": (lambda size, device=None: torch.ones(size, size).tril(), "dtype is torch.float32"),
    "additive": (lambda size, device=None: torch.full((size, size), -math.inf).triu(1),
                 "additive float mask"),
    "4-D": (lambda size, device=None: ones(size, device).tril()[None, None], "(size, size)"),
    "device ignored": (lambda size, device=None: ones(size).tril(), "requested device"),
}


@pytest.mark.parametrize("name", WRONG_CAUSAL)
def test_check_causal_mask_diagnoses(name):
    fn, diagnosis = WRONG_CAUSAL[name]
    with pytest.raises(AssertionError, match="^check_causal_mask: ") as info:
        checks.check_causal_mask(fn)
    assert diagnosis in str(info.value), str(info.value)


def causal_by_comparison(size, device=None):
    positions = torch.arange(size, device=device)
    return positions[:, None] >= positions[None, :]  # query i may see key j <= i


@pytest.mark.parametrize("fn", [causal_mask, causal_by_comparison])
def test_check_causal_mask_accepts(fn, capsys):
    checks.check_causal_mask(fn)
    assert capsys.readouterr().out == "check_causal_mask: all 5 cases pass\n"


WRONG_PADDING = {
    "inverted": (lambda tokens, pad_id: (tokens == pad_id)[:, None, None, :], "mask is inverted"),
    "pad id ignored": (lambda tokens, pad_id: (tokens != 0)[:, None, None, :], "pad_id is ignored"),
    "no broadcast axes": (lambda tokens, pad_id: tokens != pad_id, "(B, 1, 1, S) so it broadcasts"),
    "query axis": (lambda tokens, pad_id: (tokens != pad_id)[:, None, :, None], "key axis S is last"),
    "from lengths": (lambda tokens, pad_id: (torch.arange(tokens.size(1)) < (tokens != pad_id).sum(
        1, keepdim=True))[:, None, None, :], "padding is at the end"),
    "float": (lambda tokens, pad_id: (tokens != pad_id).float()[:, None, None, :], "bool tensors"),
}


@pytest.mark.parametrize("name", WRONG_PADDING)
def test_check_padding_mask_diagnoses(name):
    fn, diagnosis = WRONG_PADDING[name]
    with pytest.raises(AssertionError, match="^check_padding_mask: ") as info:
        checks.check_padding_mask(fn)
    assert diagnosis in str(info.value), str(info.value)


@pytest.mark.parametrize("fn", [
    padding_mask,
    lambda tokens, pad_id: tokens.ne(pad_id).unsqueeze(1).unsqueeze(2),
    lambda tokens, pad_id: (tokens != pad_id).view(tokens.size(0), 1, 1, tokens.size(1)),
])
def test_check_padding_mask_accepts(fn, capsys):
    checks.check_padding_mask(fn)
    assert capsys.readouterr().out == "check_padding_mask: all 4 cases pass\n"


# --- splitting and merging heads ----------------------------------------------------------------


def split_with(shape_order, permute=None):
    def split_heads(x, num_heads):
        B, T, D = x.shape
        sizes = {"B": B, "T": T, "H": num_heads, "Dh": D // num_heads}
        out = x.reshape(*(sizes[a] for a in shape_order))
        return out.permute(*permute) if permute else out
    return split_heads


WRONG_SPLIT = {
    "no transpose": (split_with(("B", "H", "T", "Dh")), "split without a transpose"),
    "heads axis after positions": (split_with(("B", "T", "H", "Dh")), "add .transpose(1, 2)"),
    "interleaved features": (split_with(("B", "T", "Dh", "H"), (0, 3, 1, 2)), "contiguous block"),
}


@pytest.mark.parametrize("name", WRONG_SPLIT)
def test_check_split_heads_diagnoses(name):
    fn, diagnosis = WRONG_SPLIT[name]
    with pytest.raises(AssertionError, match="^check_split_heads: ") as info:
        checks.check_split_heads(fn)
    assert diagnosis in str(info.value), str(info.value)


WRONG_MERGE = {
    "no transpose": (lambda x: x.reshape(x.size(0), x.size(2), -1), "without transposing back"),
    "view after transpose": (lambda x: x.transpose(1, 2).view(x.size(0), x.size(2), -1),
                             "hint: after a transpose the tensor's memory is no longer in order"),
    "no reshape": (lambda x: x.transpose(1, 2), "reshape it to (B, T, H * Dh)"),
}


@pytest.mark.parametrize("name", WRONG_MERGE)
def test_check_merge_heads_diagnoses(name):
    fn, diagnosis = WRONG_MERGE[name]
    with pytest.raises(AssertionError, match="^check_merge_heads: ") as info:
        checks.check_merge_heads(fn)
    assert diagnosis in str(info.value), str(info.value)


def test_split_and_merge_written_differently_are_accepted(capsys):
    checks.check_split_heads(lambda x, h: x.unflatten(-1, (h, -1)).transpose(1, 2))
    checks.check_split_heads(split_with(("B", "T", "H", "Dh"), (0, 2, 1, 3)))
    checks.check_merge_heads(lambda x: x.permute(0, 2, 1, 3).flatten(2))
    checks.check_merge_heads(lambda x: torch.cat(x.unbind(1), dim=-1))  # concatenate the heads
    assert capsys.readouterr().out == ("check_split_heads: all 4 cases pass\n" * 2
                                       + "check_merge_heads: all 4 cases pass\n" * 2)


# --- multi-head attention ----------------------------------------------------------------------


class LearnerMHA(nn.Module):
    """A correct multi-head attention in the learner's own words; subclasses add one mistake."""

    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, d_model // num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def split(self, x):
        B, L, D = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)

    def merge(self, heads):
        B, H, T, Dh = heads.shape
        return heads.transpose(1, 2).reshape(B, T, H * Dh)

    def attend(self, q, k, v, mask):
        p = self.dropout if self.training else 0.0
        return scaled_dot_product_attention(q, k, v, mask, p)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = self.split(self.q_proj(query))
        k = self.split(self.k_proj(key))
        v = self.split(self.v_proj(value))
        heads, weights = self.attend(q, k, v, mask)
        out = self.out_proj(self.merge(heads))
        return (out, weights) if need_weights else out


class SplitWithoutTranspose(LearnerMHA):
    def split(self, x):
        B, L, D = x.shape
        return x.view(B, self.num_heads, L, self.head_dim)


class MergeWithoutTranspose(LearnerMHA):
    def merge(self, heads):
        B, H, T, Dh = heads.shape
        return heads.reshape(B, T, H * Dh)


class NoOutputProjection(LearnerMHA):
    def forward(self, query, key, value, mask=None, need_weights=False):
        q, k, v = (self.split(p(x)) for p, x in
                   ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
        heads, weights = self.attend(q, k, v, mask)
        return (self.merge(heads), weights) if need_weights else self.merge(heads)


class ScaleByModelWidth(LearnerMHA):
    def attend(self, q, k, v, mask):
        return scaled_dot_product_attention(q, k, v, mask, scale=1 / math.sqrt(q.size(1) * q.size(-1)))


class SelfAttentionOnly(LearnerMHA):
    def forward(self, query, key, value, mask=None, need_weights=False):
        return super().forward(query, query, query, mask, need_weights)


class KeysAndValuesSwapped(LearnerMHA):
    def forward(self, query, key, value, mask=None, need_weights=False):
        return super().forward(query, value, key, mask, need_weights)


class MaskIgnored(LearnerMHA):
    def attend(self, q, k, v, mask):
        return super().attend(q, k, v, None)


class TorchMaskConvention(LearnerMHA):
    def attend(self, q, k, v, mask):
        return super().attend(q, k, v, None if mask is None else ~mask)


class AveragedWeights(LearnerMHA):
    def forward(self, query, key, value, mask=None, need_weights=False):
        out, weights = super().forward(query, key, value, mask, need_weights=True)
        return (out, weights.mean(dim=1)) if need_weights else out


class DropoutInEval(LearnerMHA):
    def attend(self, q, k, v, mask):
        return scaled_dot_product_attention(q, k, v, mask, self.dropout)


class NoHeads(LearnerMHA):
    def split(self, x):
        return x.unsqueeze(1)  # (B, 1, L, D): one head of width D


class FusedParameter(LearnerMHA):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__(d_model, num_heads, dropout, bias)
        del self.q_proj, self.k_proj, self.v_proj
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)


class BiasAlways(LearnerMHA):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__(d_model, num_heads, dropout)


WRONG_MHA = {
    "split without transpose": (SplitWithoutTranspose, "split without a transpose"),
    "merge without transpose": (MergeWithoutTranspose, "merged without transposing back"),
    "no output projection": (NoOutputProjection, "output projection is missing"),
    "scale by sqrt(d_model)": (ScaleByModelWidth, "scaled by sqrt(d_model)"),
    "heads never split": (NoHeads, "heads are never split"),
    "self-attention only": (SelfAttentionOnly, "computed from the query"),
    "keys and values swapped": (KeysAndValuesSwapped, "keys and values are swapped"),
    "mask ignored": (MaskIgnored, "mask is ignored"),
    "PyTorch's mask convention": (TorchMaskConvention, "mask is inverted"),
    "weights averaged over heads": (AveragedWeights, "not their average"),
    "dropout in eval mode": (DropoutInEval, "dropout must act only in training mode"),
    "fused parameter": (FusedParameter, "missing: q_proj.weight (16, 16)"),
    "bias=False ignored": (BiasAlways, "not in the contract: q_proj.bias (12,)"),
}


@pytest.mark.parametrize("name", WRONG_MHA)
def test_check_multi_head_attention_diagnoses(name):
    cls, diagnosis = WRONG_MHA[name]
    with pytest.raises(AssertionError, match="^check_multi_head_attention: ") as info:
        checks.check_multi_head_attention(cls)
    assert diagnosis in str(info.value), str(info.value)


class FusedQKV(LearnerMHA):
    """One matmul for queries, keys and values in self-attention; still q_proj, k_proj, v_proj."""

    def forward(self, query, key, value, mask=None, need_weights=False):
        if query is key is value:
            weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            bias = (torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
                    if self.q_proj.bias is not None else None)
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        heads, weights = self.attend(self.split(q), self.split(k), self.split(v), mask)
        out = self.out_proj(self.merge(heads))
        return (out, weights) if need_weights else out


class LoopOverHeads(LearnerMHA):
    """Each head on its own slice of the projections, then concatenated."""

    def forward(self, query, key, value, mask=None, need_weights=False):
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        outs, weights = [], []
        for h in range(self.num_heads):
            cols = slice(h * self.head_dim, (h + 1) * self.head_dim)
            head_mask = None
            if mask is not None:
                head_mask = mask if mask.dim() < 4 else mask[:, h if mask.size(1) > 1 else 0]
            o, w = scaled_dot_product_attention(q[..., cols], k[..., cols], v[..., cols], head_mask)
            outs.append(o)
            weights.append(w)
        out = self.out_proj(torch.cat(outs, dim=-1))
        return (out, torch.stack(weights, dim=1)) if need_weights else out


class EinsumLayout(LearnerMHA):
    """Heads kept as (B, T, H, Dh) throughout, attention by einsum."""

    def forward(self, query, key, value, mask=None, need_weights=False):
        B, T, D = query.shape
        H, Dh = self.num_heads, self.head_dim
        q = self.q_proj(query).view(B, T, H, Dh)
        k = self.k_proj(key).view(B, -1, H, Dh)
        v = self.v_proj(value).view(B, -1, H, Dh)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(Dh)
        if mask is not None:
            scores = scores.masked_fill(~mask, -math.inf)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        out = self.out_proj(torch.einsum("bhts,bshd->bthd", weights, v).reshape(B, T, D))
        return (out, weights) if need_weights else out


@pytest.mark.parametrize("cls", [MultiHeadAttention, LearnerMHA, FusedQKV, LoopOverHeads,
                                 EinsumLayout])
def test_check_multi_head_attention_accepts(cls, capsys):
    checks.check_multi_head_attention(cls)
    assert capsys.readouterr().out == "check_multi_head_attention: all 8 cases pass\n"


def test_check_multi_head_attention_loads_every_parameter():
    """The learner's module gets random parameters, biases included, not its own init."""
    seen = []

    class Spy(LearnerMHA):
        def forward(self, *args, **kwargs):
            seen.append(self.q_proj.bias.clone() if self.q_proj.bias is not None else None)
            return super().forward(*args, **kwargs)

    checks.check_multi_head_attention(Spy)
    assert any(b is not None and b.abs().max() > 0.5 for b in seen)


# --- feed-forward and sub-layer connection ------------------------------------------------------


class FFNWithoutActivation(FeedForward):
    def forward(self, x):
        return self.linear2(self.linear1(x))


class FFNAlwaysReLU(FeedForward):
    def forward(self, x):
        return self.linear2(torch.relu(self.linear1(x)))


class FFNSequential(nn.Module):
    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("cls, diagnosis", [
    (FFNWithoutActivation, "activation is missing"),
    (FFNAlwaysReLU, "activation argument is ignored"),
    (FFNSequential, "not in the contract: net.0.weight"),
])
def test_check_feed_forward_diagnoses(cls, diagnosis):
    with pytest.raises(AssertionError, match="^check_feed_forward: ") as info:
        checks.check_feed_forward(cls)
    assert diagnosis in str(info.value), str(info.value)


def test_check_feed_forward_accepts(capsys):
    checks.check_feed_forward(FeedForward)
    assert capsys.readouterr().out == "check_feed_forward: all 3 cases pass\n"


WRONG_SUBLAYER = {
    "placements swapped": (lambda x, f, norm, drop, nf: norm(x + drop(f(x))) if nf
                           else x + drop(f(norm(x))), "norm_first=False (post-LN"),
    "always post-LN": (lambda x, f, norm, drop, nf: norm(x + drop(f(x))), "norm_first=True must give pre-LN"),
    "no residual": (lambda x, f, norm, drop, nf: drop(f(norm(x))) if nf else norm(drop(f(x))),
                    "residual connection is missing"),
    "residual from norm(x)": (lambda x, f, norm, drop, nf: (lambda n: n + drop(f(n)))(norm(x)) if nf
                              else norm(x + drop(f(x))), "adds the input x itself"),
    "dropout after the sum": (lambda x, f, norm, drop, nf: drop(x + f(norm(x))) if nf
                              else norm(drop(x + f(x))), "dropout is applied after the residual sum"),
    "dropout forgotten": (lambda x, f, norm, drop, nf: x + f(norm(x)) if nf else norm(x + f(x)),
                          "dropout is not applied"),
}


@pytest.mark.parametrize("name", WRONG_SUBLAYER)
def test_check_sublayer_connection_diagnoses(name):
    fn, diagnosis = WRONG_SUBLAYER[name]
    with pytest.raises(AssertionError, match="^check_sublayer_connection: ") as info:
        checks.check_sublayer_connection(fn)
    assert diagnosis in str(info.value), str(info.value)


def test_check_sublayer_connection_accepts(capsys):
    checks.check_sublayer_connection(sublayer_connection)

    def written_out(x, sublayer, norm, dropout, norm_first):
        if norm_first:
            return x + dropout(sublayer(norm(x)))
        return norm(x + dropout(sublayer(x)))

    checks.check_sublayer_connection(written_out)
    assert capsys.readouterr().out == "check_sublayer_connection: all 4 cases pass\n" * 2


# --- encoder layer --------------------------------------------------------------------------------


class LearnerEncoderLayer(EncoderLayer):
    """A correct encoder layer written out; subclasses add one mistake."""

    def attention_block(self, x, mask):
        return self.dropout(self.self_attn(x, x, x, mask=mask))

    def ffn_block(self, x):
        return self.dropout(self.ffn(x))

    def forward(self, x, mask=None):
        if self.norm_first:
            x = x + self.attention_block(self.norm1(x), mask)
            return x + self.ffn_block(self.norm2(x))
        x = self.norm1(x + self.attention_block(x, mask))
        return self.norm2(x + self.ffn_block(x))


class EncoderAlwaysPostLN(LearnerEncoderLayer):
    def forward(self, x, mask=None):
        x = self.norm1(x + self.attention_block(x, mask))
        return self.norm2(x + self.ffn_block(x))


class EncoderNoAttentionResidual(LearnerEncoderLayer):
    def forward(self, x, mask=None):
        if self.norm_first:
            x = self.attention_block(self.norm1(x), mask)
            return x + self.ffn_block(self.norm2(x))
        x = self.norm1(self.attention_block(x, mask))
        return self.norm2(x + self.ffn_block(x))


class EncoderMaskIgnored(LearnerEncoderLayer):
    def attention_block(self, x, mask):
        return super().attention_block(x, None)


class EncoderNormsSwapped(LearnerEncoderLayer):
    def forward(self, x, mask=None):
        self.norm1, self.norm2 = self.norm2, self.norm1
        try:
            return super().forward(x, mask)
        finally:
            self.norm1, self.norm2 = self.norm2, self.norm1


class EncoderPlainLayerNorm(LearnerEncoderLayer):
    """Builds its norms with the default eps, whatever layer_norm_eps says."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__(d_model, num_heads, d_ff, dropout, activation, norm_first)


class EncoderSequentialFFN(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        x = self.norm1(x + self.self_attn(x, x, x, mask))
        return self.norm2(x + self.ffn(x))


class EncoderPreLNWithExtraNorms(LearnerEncoderLayer):
    def forward(self, x, mask=None):
        if not self.norm_first:
            return super().forward(x, mask)
        x = self.norm1(x + self.attention_block(self.norm1(x), mask))
        return self.norm2(x + self.ffn_block(self.norm2(x)))


WRONG_ENCODER = {
    "norm_first ignored": (EncoderAlwaysPostLN, "norm_first=True must give pre-LN"),
    "no residual around attention": (EncoderNoAttentionResidual,
                                     "residual connection around self-attention is missing"),
    "mask ignored": (EncoderMaskIgnored, "mask is ignored"),
    "norms swapped": (EncoderNormsSwapped, "norms are swapped"),
    "layer_norm_eps ignored": (EncoderPlainLayerNorm, "layer_norm_eps is ignored"),
    "feed-forward as nn.Sequential": (EncoderSequentialFFN, "missing: ffn.linear1.weight"),
    "pre-LN with a norm after each sum": (EncoderPreLNWithExtraNorms, "no norm after each residual"),
}


@pytest.mark.parametrize("name", WRONG_ENCODER)
def test_check_encoder_layer_diagnoses(name):
    cls, diagnosis = WRONG_ENCODER[name]
    with pytest.raises(AssertionError, match="^check_encoder_layer: ") as info:
        checks.check_encoder_layer(cls)
    assert diagnosis in str(info.value), str(info.value)


@pytest.mark.parametrize("cls", [EncoderLayer, LearnerEncoderLayer])
def test_check_encoder_layer_accepts(cls, capsys):
    checks.check_encoder_layer(cls)
    assert capsys.readouterr().out == "check_encoder_layer: all 7 cases pass\n"


# --- decoder layer --------------------------------------------------------------------------------


class LearnerDecoderLayer(DecoderLayer):
    """A correct decoder layer written out; subclasses add one mistake."""

    def self_block(self, x, mask):
        return self.self_attn(x, x, x, mask=mask)

    def cross_block(self, x, memory, mask):
        return self.cross_attn(x, memory, memory, mask=mask)

    def sublayers(self, memory, self_mask, memory_mask):
        return [lambda y: self.self_block(y, self_mask),
                lambda y: self.cross_block(y, memory, memory_mask),
                self.ffn]

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        sublayers = self.sublayers(memory, self_mask, memory_mask)
        for block, norm in zip(sublayers, [self.norm1, self.norm2, self.norm3]):
            x = x + self.dropout(block(norm(x))) if self.norm_first else norm(x + self.dropout(block(x)))
        return x


class DecoderCausalMaskIgnored(LearnerDecoderLayer):
    def self_block(self, x, mask):
        return super().self_block(x, None)


class DecoderMemoryMaskIgnored(LearnerDecoderLayer):
    def cross_block(self, x, memory, mask):
        return super().cross_block(x, memory, None)


class DecoderCausalInCross(LearnerDecoderLayer):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return super().forward(x, memory, self_mask, self_mask)


class DecoderIgnoresMemory(LearnerDecoderLayer):
    def cross_block(self, x, memory, mask):
        return self.cross_attn(x, x, x)


class DecoderAlwaysPreLN(LearnerDecoderLayer):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = x + self.self_block(self.norm1(x), self_mask)
        x = x + self.cross_block(self.norm2(x), memory, memory_mask)
        return x + self.ffn(self.norm3(x))


class DecoderNormsMemory(LearnerDecoderLayer):
    def cross_block(self, x, memory, mask):
        if self.norm_first:
            memory = self.norm2(memory)
        return super().cross_block(x, memory, mask)


class DecoderCrossFirst(LearnerDecoderLayer):
    def sublayers(self, memory, self_mask, memory_mask):
        attend, cross, ffn = super().sublayers(memory, self_mask, memory_mask)
        return [cross, attend, ffn]


WRONG_DECODER = {
    "causal mask ignored": (DecoderCausalMaskIgnored, "self-attention mask is ignored"),
    "memory mask ignored": (DecoderMemoryMaskIgnored, "memory mask is ignored"),
    "causal mask in cross-attention": (DecoderCausalInCross, "applied to the cross-attention too"),
    "memory ignored": (DecoderIgnoresMemory, "does not look at memory"),
    "norm_first ignored": (DecoderAlwaysPreLN, "norm_first=False (post-LN"),
    "memory normalized in pre-LN": (DecoderNormsMemory, "memory goes into the cross-attention as it is"),
    "cross-attention first": (DecoderCrossFirst, "wrong order: self-attention, then cross-attention"),
}


@pytest.mark.parametrize("name", WRONG_DECODER)
def test_check_decoder_layer_diagnoses(name):
    cls, diagnosis = WRONG_DECODER[name]
    with pytest.raises(AssertionError, match="^check_decoder_layer: ") as info:
        checks.check_decoder_layer(cls)
    assert diagnosis in str(info.value), str(info.value)


@pytest.mark.parametrize("cls", [DecoderLayer, LearnerDecoderLayer])
def test_check_decoder_layer_accepts(cls, capsys):
    checks.check_decoder_layer(cls)
    assert capsys.readouterr().out == "check_decoder_layer: all 7 cases pass\n"


def test_the_catalogue_is_large():
    wrong = (len(WRONG_ATTENTION) + len(WRONG_CAUSAL) + len(WRONG_PADDING) + len(WRONG_SPLIT)
             + len(WRONG_MERGE) + len(WRONG_MHA) + 3 + len(WRONG_SUBLAYER) + len(WRONG_ENCODER)
             + len(WRONG_DECODER) + len(WRONG_GREEDY) + len(WRONG_LOG_PROB) + len(WRONG_TOP)
             + len(WRONG_BEAM))
    assert wrong >= 20


# --- decoding (lab 04): greedy decoding ----------------------------------------------------------


def greedy_with(*, stop="all", trim=True, fill_eos=True, position=-1, use_mask=True, bos=True,
                eos=True, steps=0):
    """A learner-style batched greedy decoder, with one mistake switched on."""

    def greedy_decode(model, src, max_len, bos_id, eos_id, src_mask=None):
        mask = src_mask if use_mask else None
        memory = model.encode(src, mask)
        tokens = torch.full((src.size(0), 1), bos_id, dtype=torch.long)
        done = torch.zeros(src.size(0), dtype=torch.bool)
        for _ in range(max_len + steps):
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


def greedy_one_row_at_a_time(model, src, max_len, bos_id, eos_id, src_mask=None):
    """Correct, written with Python lists: each source on its own."""
    out = []
    for b in range(src.size(0)):
        mask = None if src_mask is None else src_mask[b:b + 1]
        memory = model.encode(src[b:b + 1], mask)
        ids = [bos_id]
        while len(ids) <= max_len and (len(ids) == 1 or ids[-1] != eos_id):
            logits = model.decode(torch.tensor([ids]), memory, mask)  # decode's default: causal
            ids.append(int(logits[0, -1].argmax()))
        out.append(torch.tensor(ids))
    return out


def greedy_single_source_only(model, src, max_len, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.tensor([[bos_id]])
    for _ in range(max_len):
        next_token = model.decode(tokens, memory, src_mask)[:, -1].argmax(dim=-1)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if next_token.item() == eos_id:  # fine for one source; a batch has B of them
            break
    return [tokens[0]]


def greedy_item_per_batch(model, src, max_len, bos_id, eos_id, src_mask=None):
    memory = model.encode(src, src_mask)
    tokens = torch.full((src.size(0), 1), bos_id)
    for _ in range(max_len):
        next_token = model.decode(tokens, memory, src_mask)[:, -1].argmax(dim=-1)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if next_token.item() == eos_id:
            break
    return list(tokens)


def greedy_returns_a_tensor(model, src, max_len, bos_id, eos_id, src_mask=None):
    return torch.nn.utils.rnn.pad_sequence(greedy_decode(model, src, max_len, bos_id, eos_id, src_mask),
                                           batch_first=True, padding_value=eos_id)


def greedy_stub(model, src, max_len, bos_id, eos_id, src_mask=None):
    raise NotImplementedError("Exercise 1 (Greedy decoding): write your code here")


WRONG_GREEDY = {
    "never stops at EOS": (greedy_with(stop="never", trim=False, fill_eos=False), "do not stop at EOS"),
    "rows not cut after EOS": (greedy_with(trim=False, fill_eos=False), "go on after EOS"),
    "rows padded with EOS": (greedy_with(trim=False), "padded with EOS"),
    "batch stops at the first EOS": (greedy_with(stop="any"), "stops when its first row reaches EOS"),
    "first position's logits": (greedy_with(position=0), "first position's logits"),
    "src_mask ignored": (greedy_with(use_mask=False), "src_mask is ignored"),
    "no BOS": (greedy_with(bos=False), "leave out BOS"),
    "no EOS": (greedy_with(eos=False), "leave out their final EOS"),
    "one step too many": (greedy_with(steps=1), "yours makes one more"),
    "one source only": (greedy_single_source_only, "each row of tgt needs its own row of memory"),
    "one EOS test for the batch": (greedy_item_per_batch, "the batch has several sources"),
    "a padded tensor": (greedy_returns_a_tensor, "return a list with one 1-d tensor"),
}


@pytest.mark.parametrize("name", WRONG_GREEDY)
def test_check_greedy_decode_diagnoses(name):
    fn, diagnosis = WRONG_GREEDY[name]
    with pytest.raises(AssertionError, match="^check_greedy_decode: ") as info:
        checks.check_greedy_decode(fn)
    assert diagnosis in str(info.value), str(info.value)


def test_check_greedy_decode_shows_the_sequences():
    with pytest.raises(AssertionError) as info:
        checks.check_greedy_decode(greedy_with(bos=False))
    message = str(info.value)
    assert "case 1 of 5 (a table model, one source" in message
    assert "source 0: yours    [3, 4, 2] (A B EOS)\n            expected [1, 3, 4, 2] (BOS A B EOS)" \
        in message


def test_check_greedy_decode_stub():
    with pytest.raises(NotImplementedError, match="Exercise 1 \\(Greedy decoding\\) is not done yet"):
        checks.check_greedy_decode(greedy_stub)


@pytest.mark.parametrize("fn", [greedy_decode, greedy_with(), greedy_one_row_at_a_time])
def test_check_greedy_decode_accepts(fn, capsys):
    checks.check_greedy_decode(fn)
    assert capsys.readouterr().out == "check_greedy_decode: all 5 cases pass\n"


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
    "first token skipped": (log_prob_with(skip_first=True), "the first token after BOS is not scored"),
    "src_mask ignored": (log_prob_with(use_mask=False), "src_mask is ignored"),
}


@pytest.mark.parametrize("name", WRONG_LOG_PROB)
def test_check_sequence_log_prob_diagnoses(name):
    fn, diagnosis = WRONG_LOG_PROB[name]
    with pytest.raises(AssertionError, match="^check_sequence_log_prob: ") as info:
        checks.check_sequence_log_prob(fn)
    assert diagnosis in str(info.value), str(info.value)


@pytest.mark.parametrize("fn", [sequence_log_prob, log_prob_with(), log_prob_full_decode,
                                log_prob_per_token])
def test_check_sequence_log_prob_accepts(fn, capsys):
    checks.check_sequence_log_prob(fn)
    assert capsys.readouterr().out == "check_sequence_log_prob: all 3 cases pass\n"


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
    """Correct: Python lists and sorted()."""
    B, k, V = next_log_probs.shape
    scores, beams, tokens = [], [], []
    for b in range(B):
        candidates = sorted(((log_probs[b, j] + next_log_probs[b, j, v]).item(), j, v)
                            for j in range(k) for v in range(V))[::-1][:n]
        scores.append([c[0] for c in candidates])
        beams.append([c[1] for c in candidates])
        tokens.append([c[2] for c in candidates])
    return torch.tensor(scores), torch.tensor(beams), torch.tensor(tokens)


WRONG_TOP = {
    "last token only": (top_with(total=False), "ranked by the new token's log-probability alone"),
    "top-k over the batch": (top_with(per_source=False), "runs over the whole batch"),
    "beam and token split by k": (top_with(split="by_k"), "beam = index // V, token = index % V"),
    "flat index as the token": (top_with(split="flat"), "tokens in [0, V)"),
    "top n of each hypothesis": (top_with(per_beam=True), "that is the top n of each hypothesis"),
    "the worst candidates": (top_with(largest=False), "n worst candidates"),
}


@pytest.mark.parametrize("name", WRONG_TOP)
def test_check_top_candidates_diagnoses(name):
    fn, diagnosis = WRONG_TOP[name]
    with pytest.raises(AssertionError, match="^check_top_candidates: ") as info:
        checks.check_top_candidates(fn)
    assert diagnosis in str(info.value), str(info.value)


@pytest.mark.parametrize("fn", [top_with(), top_vocab_major, top_by_sorting])
def test_check_top_candidates_accepts(fn, capsys):
    checks.check_top_candidates(fn)
    assert capsys.readouterr().out == "check_top_candidates: all 5 cases pass\n"


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

    def beam_search(model, src, max_len, bos_id, eos_id, beam_size=4, src_mask=None,
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
        for t in range(1, max_len + 1):
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
                for value, row, word in zip(top[b].tolist(), rows_of[b].tolist(), words[b].tolist()):
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
                        (stop == "exact" and best >= penalized(best_live, max_len, length_alpha)):
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
                            finished[b].append((penalized(log_probs[b, j].item(), max_len, length_alpha),
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


def beam_search_per_source(model, src, max_len, bos_id, eos_id, beam_size=4, src_mask=None,
                           length_alpha=0.0):
    """Correct, unbatched: one source at a time, hypotheses as (score, ids) pairs."""
    answers = []
    for b in range(src.size(0)):
        mask = None if src_mask is None else src_mask.expand(src.size(0), 1, 1, src.size(1))[b:b + 1]
        memory = model.encode(src[b:b + 1], mask)
        beam, finished = [(0.0, [bos_id])], []
        for t in range(1, max_len + 1):
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
                    beam[0][0] / length_penalty(max_len, length_alpha):
                break
        else:
            finished += [(s / length_penalty(max_len, length_alpha), h) for s, h in beam]
        answers.append(torch.tensor(max(finished, key=lambda f: f[0])[1]))
    return answers


def beam_search_contract_only(model, src, max_len, bos_id, eos_id, beam_size=4, src_mask=None):
    return beam_search(model, src, max_len, bos_id, eos_id, beam_size, src_mask)


def beam_search_without_early_stop(model, src, max_len, bos_id, eos_id, beam_size=4, src_mask=None,
                                   length_alpha=0.0):
    """Correct: run to max_len (the stopping rule only saves work)."""
    return beam_with(stop="never")(model, src, max_len, bos_id, eos_id, beam_size, src_mask,
                                   length_alpha)


def beam_stub(model, src, max_len, bos_id, eos_id, beam_size=4, src_mask=None, length_alpha=0.0):
    raise NotImplementedError("Exercise 4 (Beam search): write your code here")


WRONG_BEAM = {
    "all k beams start live": (beam_with(start="all"), "all k hypotheses start live"),
    "ranked by the last token": (beam_with(score="last"), "log-probability of their last token"),
    "finished hypotheses extended": (beam_with(eos="extend"), "finished hypotheses are extended"),
    "finished extended, then cut": (beam_with(eos="trimmed"), "finished hypotheses are extended"),
    "top-k over the whole batch": (beam_with(topk="batch"), "the model cannot produce for it"),
    "memory tiled, not interleaved": (beam_with(memory="tile"), "the rows of memory do not line up"),
    "rows not reordered": (beam_with(reorder=False), "the rows are not reordered"),
    "stops at the first finished": (beam_with(stop="first"), "stops at the first hypothesis"),
    "stops after k finished": (beam_with(stop="k"), "stops when k hypotheses have finished"),
    "returns the last finished": (beam_with(pick="last"), "the last hypothesis to finish"),
    "returns the top of the beam": (beam_with(pick="live"), "you return a hypothesis of the beam"),
    "live hypotheses never count": (beam_with(pick="finished"), "the live hypotheses count as finished"),
    "every EOS set aside": (beam_with(every_eos=True), "beam_size=1 beam search must be greedy"),
    "mean log-probability": (beam_with(penalty="mean"), "mean log-probability"),
    "src_mask ignored": (beam_with(use_mask=False), "src_mask is ignored"),
    "EOS left out": (beam_with(keep_eos=False), "leave out their final EOS"),
    "length_alpha ignored": (beam_with(penalty="ignored"), "length_alpha is ignored"),
    "penalty multiplies": (beam_with(penalty="multiply"), "multiplies the log-probability"),
    "length counts BOS": (beam_with(penalty="with_bos"), "the length |y| counts BOS"),
    "stopping rule without the penalty": (beam_with(stop="raw"), "the stopping rule ignores the length penalty"),
    "top k candidates only": (beam_with(candidates=1), "the beam shrinks"),
}


@pytest.mark.parametrize("name", WRONG_BEAM)
def test_check_beam_search_diagnoses(name):
    fn, diagnosis = WRONG_BEAM[name]
    with pytest.raises(AssertionError, match="^check_beam_search: ") as info:
        checks.check_beam_search(fn)
    assert diagnosis in str(info.value), str(info.value)


def test_check_beam_search_shows_the_sequences_and_their_log_probs():
    with pytest.raises(AssertionError) as info:
        checks.check_beam_search(beam_with(start="all"))
    message = str(info.value)
    assert "case 1 of 12 (a table model where greedy decoding misses" in message
    assert "source 0: yours    [1, 3, 4, 2] (BOS A B EOS)  log p = -1.717" in message
    assert "expected [1, 4, 2] (BOS B EOS)  log p = -1.010" in message


@pytest.mark.parametrize("fn", [beam_search, beam_with(), beam_search_per_source,
                                beam_search_without_early_stop])
def test_check_beam_search_accepts(fn, capsys):
    checks.check_beam_search(fn)
    assert capsys.readouterr().out == "check_beam_search: all 12 cases pass\n"


def test_check_beam_search_without_length_alpha(capsys):
    checks.check_beam_search(beam_search_contract_only)
    out = capsys.readouterr().out
    assert out.startswith("check_beam_search: all 8 cases pass (your function takes no length_alpha")
    with pytest.raises(AssertionError, match="all k hypotheses start live"):
        checks.check_beam_search(lambda model, src, max_len, bos_id, eos_id, beam_size=4,
                                 src_mask=None: beam_with(start="all")(
                                     model, src, max_len, bos_id, eos_id, beam_size, src_mask))


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
