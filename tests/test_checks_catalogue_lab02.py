"""Lab 2's checks against a catalogue of wrong implementations written as learners write them:
each to be rejected with the diagnosis it states (or, where marked ``GENERIC``, with the generic
message, for at most a tenth of them); correct implementations written differently, to be
accepted. They are registered in ``checks_catalogue`` and run by ``test_checks_catalogue.py``.

Every entry is a whole function or class, in the style of a learner's cell; none repeats one of
``tests/test_checks_lab02.py``. The classes of multi-head attention are written out in full, as
a learner would, rather than as subclasses of one correct layer.
"""

import math

import checks_catalogue as catalogue
import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib import scaled_dot_product_attention

# --- exercise 1: split_heads ------------------------------------------------------------------


def split_reshape_heads_first(x, num_heads):
    return x.reshape(x.shape[0], num_heads, x.shape[1], -1)


def split_interleaved_two_transposes(x, num_heads):
    B, T, D = x.shape
    return x.view(B, T, D // num_heads, num_heads).transpose(1, 3).transpose(2, 3)


def split_transpose_first(x, num_heads):
    B, T, D = x.shape
    return x.transpose(1, 2).reshape(B, num_heads, T, D // num_heads)


def split_swapped_sizes(x, num_heads):
    B, T, D = x.shape
    head_dim = D // num_heads
    return x.view(B, T, head_dim, num_heads).transpose(1, 2)


def split_unflatten_only(x, num_heads):
    return x.unflatten(-1, (num_heads, -1))


def split_last_axes_swapped(x, num_heads):
    B, T, D = x.shape
    return x.view(B, T, num_heads, D // num_heads).permute(0, 2, 3, 1)


WRONG_SPLIT = {
    "reshape(B, H, T, -1)": (split_reshape_heads_first, "split without a transpose"),
    "view(B, T, Dh, H) and two transposes": (split_interleaved_two_transposes, "contiguous block"),
    "transpose before the reshape": (split_transpose_first, "transpose comes before the reshape"),
    "head size and heads swapped": (split_swapped_sizes, "num_heads and the head size are swapped"),
    "unflatten without transpose": (split_unflatten_only, "add .transpose(1, 2)"),
    "permute(0, 2, 3, 1)": (split_last_axes_swapped, "the last two axes are swapped"),
}


def split_chunks(x, num_heads):
    return torch.stack(x.chunk(num_heads, dim=-1), dim=1)


def split_permute(x, num_heads):
    B, T, D = x.shape
    return x.reshape(B, T, num_heads, D // num_heads).permute(0, 2, 1, 3)


def split_einops_style(x, num_heads):
    B, T, D = x.shape
    heads = x.view(B, T, num_heads, -1)
    return heads.swapaxes(1, 2)


CORRECT_SPLIT = [split_chunks, split_permute, split_einops_style]


# --- exercise 2: merge_heads ------------------------------------------------------------------


def merge_contiguous_view(x):
    return x.contiguous().view(x.size(0), x.size(2), -1)


def merge_interleaved(x):
    B, H, T, Dh = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * Dh)


def merge_transpose_last(x):
    B, H, T, Dh = x.shape
    return x.transpose(-2, -1).reshape(B, T, H * Dh)


def merge_sum(x):
    return x.sum(dim=1)


def merge_mean(x):
    return x.mean(1)


def merge_cat_positions(x):
    return torch.cat(x.unbind(1), dim=1)


WRONG_MERGE = {
    "contiguous().view without transpose": (merge_contiguous_view, "without transposing back"),
    "permute(0, 2, 3, 1)": (merge_interleaved, "interleaved"),
    "transpose(-2, -1)": (merge_transpose_last, "wrong axes are transposed"),
    "sum over the heads": (merge_sum, "the heads are reduced"),
    "mean over the heads": (merge_mean, "the heads are reduced"),
    "cat along the positions": (merge_cat_positions, "stacked along the positions"),
}


def merge_contiguous(x):
    B, H, T, Dh = x.shape
    return x.transpose(1, 2).contiguous().view(B, T, H * Dh)


def merge_cat_features(x):
    return torch.cat([x[:, h] for h in range(x.size(1))], dim=-1)


def merge_flatten(x):
    return x.swapaxes(1, 2).flatten(start_dim=2)


CORRECT_MERGE = [merge_contiguous, merge_cat_features, merge_flatten]


# --- exercise 3: MultiHeadAttention -----------------------------------------------------------


def split_heads(x, num_heads):
    B, T, D = x.shape
    return x.view(B, T, num_heads, D // num_heads).transpose(1, 2)


def merge_heads(x):
    B, H, T, Dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * Dh)


class ScaledTwice(nn.Module):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("num_heads must divide d_model")
        self.num_heads, self.dropout = num_heads, dropout
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads) / math.sqrt(self.head_dim)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        p = self.dropout if self.training else 0.0
        heads, weights = scaled_dot_product_attention(q, k, v, mask, p)
        out = self.out_proj(merge_heads(heads))
        return (out, weights) if need_weights else out


class OneProjection(nn.Module):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"{d_model} is not divisible by {num_heads}")
        self.h = num_heads
        self.p = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q, k, v = (split_heads(self.q_proj(x), self.h) for x in (query, key, value))
        heads, w = scaled_dot_product_attention(q, k, v, mask, self.p if self.training else 0.0)
        out = self.out_proj(merge_heads(heads))
        if need_weights:
            return out, w
        return out


class OutputBiasForgotten(nn.Module):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("d_model % num_heads != 0")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        heads, weights = scaled_dot_product_attention(
            q, k, v, mask, self.dropout if self.training else 0.0)
        out = merge_heads(heads) @ self.out_proj.weight.T  # the output projection
        return (out, weights) if need_weights else out


class MergedInterleaved(nn.Module):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("num_heads must divide d_model")
        self.d_model, self.num_heads, self.dropout = d_model, num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        B, T, _ = query.shape
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        heads, weights = scaled_dot_product_attention(q, k, v, mask,
                                                      self.dropout if self.training else 0.0)
        concat = heads.permute(0, 2, 3, 1).reshape(B, T, self.d_model)
        out = self.out_proj(concat)
        return (out, weights) if need_weights else out


class SoftmaxOverHeads(nn.Module):
    """Attention written out by hand, normalized over dim=1."""

    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("num_heads must divide d_model")
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.drop = nn.Dropout(dropout)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1)
        if mask is not None:
            weights = weights.masked_fill(~mask.any(-1, keepdim=True), 0.0)
        weights = self.drop(weights)
        out = self.out_proj(merge_heads(weights @ v))
        return (out, weights) if need_weights else out


class QueryNotProjected(nn.Module):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("num_heads must divide d_model")
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(query, self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        heads, weights = scaled_dot_product_attention(q, k, v, mask,
                                                      self.dropout if self.training else 0.0)
        out = self.out_proj(merge_heads(heads))
        return (out, weights) if need_weights else out


class MaskUnsqueezed(nn.Module):
    """Its own attention; gives the mask a head axis, which it already broadcasts over."""

    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("num_heads must divide d_model")
        self.num_heads, self.head_dim, self.dropout = num_heads, d_model // num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(self.head_dim)
        if mask is not None:
            mask = mask.unsqueeze(1)  # (B, 1, T, S) for the heads
            scores = scores.masked_fill(~mask, -1e9)
        weights = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        out = self.out_proj(merge_heads(weights @ v))
        return (out, weights) if need_weights else out


class WeightsSummedOverHeads(nn.Module):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("num_heads must divide d_model")
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        heads, weights = scaled_dot_product_attention(q, k, v, mask,
                                                      self.dropout if self.training else 0.0)
        out = self.out_proj(merge_heads(heads))
        if need_weights:
            return out, weights.sum(dim=1) / self.num_heads  # one map, as nn.MultiheadAttention
        return out


class NoDivisibilityCheck(nn.Module):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        heads, weights = scaled_dot_product_attention(q, k, v, mask,
                                                      self.dropout if self.training else 0.0)
        out = self.out_proj(merge_heads(heads))
        return (out, weights) if need_weights else out


class AssertDivisible(NoDivisibilityCheck):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        assert d_model % num_heads == 0, "d_model must be divisible by num_heads"
        super().__init__(d_model, num_heads, dropout, bias)


class NoDropoutAtAll(NoDivisibilityCheck):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        if d_model % num_heads:
            raise ValueError("num_heads must divide d_model")
        super().__init__(d_model, num_heads, dropout, bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        heads, weights = scaled_dot_product_attention(q, k, v, mask)
        out = self.out_proj(merge_heads(heads))
        return (out, weights) if need_weights else out


class DropoutOnOutput(nn.Module):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError("num_heads must divide d_model")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        heads, weights = scaled_dot_product_attention(q, k, v, mask)
        out = self.dropout(self.out_proj(merge_heads(heads)))
        return (out, weights) if need_weights else out


class DropoutOnConcat(DropoutOnOutput):
    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        heads, weights = scaled_dot_product_attention(q, k, v, mask)
        out = self.out_proj(self.dropout(merge_heads(heads)))
        return (out, weights) if need_weights else out


class ReturnsWeightsBeforeDropout(nn.Module):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError("num_heads must divide d_model")
        self.num_heads = num_heads
        self.attn_dropout = nn.Dropout(dropout)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        _, weights = scaled_dot_product_attention(q, k, v, mask)
        heads = self.attn_dropout(weights) @ v
        out = self.out_proj(merge_heads(heads))
        return (out, weights) if need_weights else out


class DropoutKeepProbability(ReturnsWeightsBeforeDropout):
    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__(d_model, num_heads, dropout, bias)
        self.attn_dropout = nn.Dropout(1 - dropout)  # probability to keep

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        _, weights = scaled_dot_product_attention(q, k, v, mask)
        if self.training:
            weights = self.attn_dropout(weights)
        out = self.out_proj(merge_heads(weights @ v))
        return (out, weights) if need_weights else out


class DropoutOnQueries(ReturnsWeightsBeforeDropout):
    def forward(self, query, key, value, mask=None, need_weights=False):
        q = self.attn_dropout(split_heads(self.q_proj(query), self.num_heads))
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        heads, weights = scaled_dot_product_attention(q, k, v, mask)
        out = self.out_proj(merge_heads(heads))
        return (out, weights) if need_weights else out


class DropoutOnValues(ReturnsWeightsBeforeDropout):
    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = self.attn_dropout(split_heads(self.v_proj(value), self.num_heads))
        heads, weights = scaled_dot_product_attention(q, k, v, mask)
        out = self.out_proj(merge_heads(heads))
        return (out, weights) if need_weights else out


class FastPathWithoutDropout(ReturnsWeightsBeforeDropout):
    """F.scaled_dot_product_attention when the weights are not needed, without its dropout_p."""

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        p = self.attn_dropout.p if self.training else 0.0
        if need_weights:
            heads, weights = scaled_dot_product_attention(q, k, v, mask, p)
            return self.out_proj(merge_heads(heads)), weights
        if mask is None:
            heads = F.scaled_dot_product_attention(q, k, v)
        else:
            has_key = mask.any(-1, keepdim=True)
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key)
            heads = heads.masked_fill(~has_key, 0.0)
        return self.out_proj(merge_heads(heads))


WRONG_MHA = {
    "q scaled, then scaled again": (ScaledTwice, "scaled twice"),
    "q_proj for keys and values too": (OneProjection, "one projection serves"),
    "out_proj's bias forgotten": (OutputBiasForgotten, "output projection's bias is missing"),
    "heads merged interleaved": (MergedInterleaved, "merged with their features interleaved"),
    "softmax over the heads": (SoftmaxOverHeads, "softmax runs over dim=1, the heads"),
    "query not projected": (QueryNotProjected, "queries are not projected"),
    "mask unsqueezed for the heads": (MaskUnsqueezed, "must match the size of tensor"),
    "weights averaged by hand": (WeightsSummedOverHeads, "not their average"),
    "no ValueError": (NoDivisibilityCheck, "must raise ValueError"),
    "assert instead of ValueError": (AssertDivisible, "raised AssertionError"),
    "dropout never applied": (NoDropoutAtAll, "in training mode no dropout is applied"),
    "dropout on the layer's output": (DropoutOnOutput, "dropout acts on the layer's output"),
    "dropout on the merged heads": (DropoutOnConcat, "dropout acts on the heads' outputs"),
    "weights returned before dropout": (ReturnsWeightsBeforeDropout,
                                        "the weights you return are those before dropout"),
    "nn.Dropout(1 - dropout)": (DropoutKeepProbability, "zeroes about 1 - p"),
    "dropout on the queries": (DropoutOnQueries, "still sum to 1 over the keys"),
    "dropout on the values": (DropoutOnValues, "dropout acts on the values"),
    "fast path without dropout": (FastPathWithoutDropout, "without need_weights in training mode"),
}


class FastAndReadablePaths(nn.Module):
    """Like the package: the fused kernel without need_weights, the readable path with it."""

    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} is not a multiple of num_heads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        p = self.dropout if self.training else 0.0
        if need_weights:
            heads, weights = scaled_dot_product_attention(q, k, v, mask, p)
            return self.out_proj(merge_heads(heads)), weights
        if mask is None:
            heads = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            has_key = mask.any(-1, keepdim=True)
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key, dropout_p=p)
            heads = heads.masked_fill(~has_key, 0.0)
        return self.out_proj(merge_heads(heads))


class DropoutModuleByHand(nn.Module):
    """Attention by hand, with an nn.Dropout on the weights."""

    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError("num_heads must divide d_model")
        self.h, self.dh = num_heads, d_model // num_heads
        self.attn_drop = nn.Dropout(dropout)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q = split_heads(self.q_proj(query), self.h)
        k = split_heads(self.k_proj(key), self.h)
        v = split_heads(self.v_proj(value), self.h)
        scores = q @ k.transpose(-2, -1) * self.dh ** -0.5
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        weights = self.attn_drop(scores.softmax(dim=-1).nan_to_num(0.0))
        out = self.out_proj(merge_heads(weights @ v))
        return (out, weights) if need_weights else out


class HeadByHeadWithDropout(nn.Module):
    """A loop over the heads, each with its own F.dropout call."""

    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("num_heads must divide d_model")
        self.num_heads, self.head_dim, self.p = num_heads, d_model // num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if mask is not None:
            mask = mask.expand(query.size(0), self.num_heads, query.size(1), key.size(1))
        outs, all_weights = [], []
        for h in range(self.num_heads):
            cols = slice(h * self.head_dim, (h + 1) * self.head_dim)
            scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores.masked_fill(~mask[:, h], -1e9)
            w = torch.softmax(scores, dim=-1)
            if mask is not None:
                w = w * mask[:, h].any(-1, keepdim=True)
            w = F.dropout(w, self.p, training=self.training)
            outs.append(w @ v[..., cols])
            all_weights.append(w)
        out = self.out_proj(torch.cat(outs, dim=-1))
        return (out, torch.stack(all_weights, dim=1)) if need_weights else out


CORRECT_MHA = [FastAndReadablePaths, DropoutModuleByHand, HeadByHeadWithDropout]


# --- the entries, run by test_checks_catalogue.py ----------------------------------------------

catalogue.wrong("check_split_heads", WRONG_SPLIT)
catalogue.accepted("check_split_heads", CORRECT_SPLIT, cases=4)
catalogue.wrong("check_merge_heads", WRONG_MERGE)
catalogue.accepted("check_merge_heads", CORRECT_MERGE, cases=4)
catalogue.wrong("check_multi_head_attention", WRONG_MHA)
catalogue.accepted("check_multi_head_attention", CORRECT_MHA, cases=11)
