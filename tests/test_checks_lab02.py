"""transformer_lib.checks, lab 2 (multi-head attention): a catalogue of wrong implementations,
each to be rejected with the right diagnosis; correct implementations written differently, and the
library's own, to be accepted. They are registered in ``checks_catalogue`` and run by
``test_checks_catalogue.py``; the tests here ask more of a verdict than its diagnosis."""

import math

import checks_catalogue as catalogue
import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib import (
    MultiHeadAttention,
    checks,
    scaled_dot_product_attention,
)

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

catalogue.wrong("check_split_heads", WRONG_SPLIT)


WRONG_MERGE = {
    "no transpose": (lambda x: x.reshape(x.size(0), x.size(2), -1), "without transposing back"),
    "view after transpose": (lambda x: x.transpose(1, 2).view(x.size(0), x.size(2), -1),
                             "hint: after a transpose the tensor's memory is no longer in order"),
    "no reshape": (lambda x: x.transpose(1, 2), "reshape it to (B, T, H * Dh)"),
}

catalogue.wrong("check_merge_heads", WRONG_MERGE)
catalogue.accepted("check_split_heads", {
    "unflatten(-1, (h, -1)).transpose(1, 2)": lambda x, h: x.unflatten(-1, (h, -1)).transpose(1, 2),
    "reshape(B, T, H, Dh).permute(0, 2, 1, 3)": split_with(("B", "T", "H", "Dh"), (0, 2, 1, 3)),
}, cases=4)
catalogue.accepted("check_merge_heads", {
    "permute(0, 2, 1, 3).flatten(2)": lambda x: x.permute(0, 2, 1, 3).flatten(2),
    "the heads concatenated": lambda x: torch.cat(x.unbind(1), dim=-1),
}, cases=4)


# --- multi-head attention ----------------------------------------------------------------------


class LearnerMHA(nn.Module):
    """A correct multi-head attention in the learner's own words; subclasses add one mistake."""

    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
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
        return scaled_dot_product_attention(q, k, v, mask,
                                            scale=1 / math.sqrt(q.size(1) * q.size(-1)))


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
    "fused parameter": (FusedParameter, "missing: q_proj.weight (24, 24)"),
    "bias=False ignored": (BiasAlways, "not in the contract: q_proj.bias (12,)"),
}

catalogue.wrong("check_multi_head_attention", WRONG_MHA)


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
            p = self.dropout if self.training else 0.0
            o, w = scaled_dot_product_attention(q[..., cols], k[..., cols], v[..., cols],
                                                head_mask, p)
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
        weights = F.dropout(weights, p=self.dropout, training=self.training)
        out = self.out_proj(torch.einsum("bhts,bshd->bthd", weights, v).reshape(B, T, D))
        return (out, weights) if need_weights else out


catalogue.accepted("check_multi_head_attention", [MultiHeadAttention, LearnerMHA, FusedQKV,
                                                  LoopOverHeads, EinsumLayout], cases=11)


def test_check_multi_head_attention_loads_every_parameter():
    """The learner's module gets random parameters, biases included, not its own init."""
    seen = []

    class Spy(LearnerMHA):
        def forward(self, *args, **kwargs):
            seen.append(self.q_proj.bias.clone() if self.q_proj.bias is not None else None)
            return super().forward(*args, **kwargs)

    checks.check_multi_head_attention(Spy)
    assert any(b is not None and b.abs().max() > 0.5 for b in seen)
