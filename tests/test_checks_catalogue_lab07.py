"""Lab 7's checks against a catalogue of wrong implementations written as learners write them:
each to be rejected with the diagnosis it states (or, where marked ``GENERIC``, with the generic
message, for at most a tenth of them); correct implementations written differently, to be
accepted. They are registered in ``checks_catalogue`` and run by ``test_checks_catalogue.py``.

Every entry is a whole function or class, in the style of a learner's cell; none repeats one of
``tests/test_checks_lab07.py``.
"""

import math

import checks_catalogue as catalogue
import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib import apply_rotary

# --- exercise 1: RMSNorm ------------------------------------------------------------------------


class _Gain(nn.Module):
    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))


class NormStdUnbiasedNoEps(_Gain):
    def forward(self, x):
        return x / x.std(dim=-1, keepdim=True) * self.weight


class NormFunctionalLayerNorm(_Gain):
    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], weight=self.weight, eps=self.eps)


class NormNormalize(_Gain):
    def forward(self, x):
        return F.normalize(x, dim=-1, eps=self.eps) * self.weight


class NormMeanAbs(_Gain):
    def forward(self, x):
        return x / (x.abs().mean(-1, keepdim=True) + self.eps) * self.weight


class NormWithoutRoot(_Gain):
    def forward(self, x):
        return x / (x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class NormOverFirstDim(_Gain):
    def forward(self, x):
        return x / torch.sqrt((x * x).mean(0, keepdim=True) + self.eps) * self.weight


class NormTimesRoot(_Gain):
    def forward(self, x):
        return x * torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class NormGainAdded(_Gain):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) + self.weight


class NormFixedEps(_Gain):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


class NormWrappingLayerNorm(nn.Module):
    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x):
        return self.norm(x)


class NormRootOfSum(_Gain):
    def forward(self, x):
        return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + self.eps) * self.weight


class NormKeepdimForgotten(_Gain):
    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1) + self.eps) * self.weight


WRONG_RMS = {
    "x.std(-1), unbiased, no eps": (NormStdUnbiasedNoEps, "you divide by the standard deviation"),
    "F.layer_norm": (NormFunctionalLayerNorm, "that is LayerNorm"),
    "F.normalize": (NormNormalize, "you divide by the vector's length"),
    "sqrt(sum(x ** 2))": (NormRootOfSum, "you divide by the vector's length"),
    "mean of absolute values": (NormMeanAbs, "averages their absolute values"),
    "no square root": (NormWithoutRoot, "the square root is missing"),
    "mean over dim 0": (NormOverFirstDim, "over the wrong dimension"),
    "times the root mean square": (NormTimesRoot, "you multiply by the root mean square"),
    "gain added": (NormGainAdded, "the gain is added"),
    "eps fixed at 1e-5": (NormFixedEps, "the eps the module was built with is not used"),
    "nn.LayerNorm inside": (NormWrappingLayerNorm, "not in the contract: norm.weight (8,)"),
    "keepdim forgotten": (NormKeepdimForgotten, "your code raised RuntimeError"),
}


class NormTorch(nn.RMSNorm):
    def __init__(self, d_model, eps=1e-6):
        super().__init__(d_model, eps=eps)


class NormFunctional(_Gain):
    def forward(self, x):
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)


class NormByLength(_Gain):
    def forward(self, x):
        D = x.size(-1)
        return x / torch.sqrt(x.norm(dim=-1, keepdim=True) ** 2 / D + self.eps) * self.weight


class NormOneOverSqrt(_Gain):
    def forward(self, x):
        scale = 1.0 / torch.sqrt(torch.mean(x ** 2, dim=-1, keepdim=True) + self.eps)
        return self.weight * (x * scale)


CORRECT_RMS = [NormTorch, NormFunctional, NormByLength, NormOneOverSqrt]

# --- exercise 2: SwiGLU -------------------------------------------------------------------------


class _Projections(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)


class GatedBothSilu(_Projections):
    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * F.silu(self.up_proj(x)))


class GatedSiluAfterProduct(_Projections):
    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x) * self.up_proj(x)))


class GatedReLU(_Projections):
    def forward(self, x):
        return self.down_proj(torch.relu(self.gate_proj(x)) * self.up_proj(x))


class GatedSum(_Projections):
    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) + self.up_proj(x))


class GatedBilinear(_Projections):
    def forward(self, x):
        return self.down_proj(self.gate_proj(x) * self.up_proj(x))


class GatedWithResidual(_Projections):
    def forward(self, x):
        return x + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GatedGeluTanh(_Projections):
    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GatedOnlyUpThroughSilu(_Projections):
    def forward(self, x):
        return self.down_proj(F.silu(self.up_proj(x)))


class GatedFused(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


WRONG_SWIGLU = {
    "SiLU on both branches": (GatedBothSilu, "SiLU is applied to both branches"),
    "SiLU after the product": (GatedSiluAfterProduct, "SiLU is applied after the product"),
    "ReLU (ReGLU)": (GatedReLU, "the activation is ReLU"),
    "branches added": (GatedSum, "the two branches are added"),
    "no activation (bilinear)": (GatedBilinear, "the activation is missing"),
    "residual inside": (GatedWithResidual, "adds its input x to its output"),
    "tanh GELU": (GatedGeluTanh, "the activation is GELU"),
    "up branch alone, through SiLU": (GatedOnlyUpThroughSilu, "one of the two branches is missing"),
    "fused gate_up projection": (GatedFused, "missing: gate_proj.weight (12, 8)"),
}


class GatedSiluByHand(_Projections):
    def forward(self, x):
        gate = self.gate_proj(x)
        return self.down_proj(gate * torch.sigmoid(gate) * self.up_proj(x))


class GatedModules(_Projections):
    def __init__(self, d_model, d_ff):
        super().__init__(d_model, d_ff)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        return self.down_proj(self.dropout(self.act(self.gate_proj(x)) * self.up_proj(x)))


class GatedFunctionalLinear(_Projections):
    def forward(self, x):
        hidden = F.silu(F.linear(x, self.gate_proj.weight)) * F.linear(x, self.up_proj.weight)
        return hidden @ self.down_proj.weight.T


CORRECT_SWIGLU = [GatedSiluByHand, GatedModules, GatedFunctionalLinear]

# --- exercise 3: rotary positions ----------------------------------------------------------------


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def rotary_llama_halves(x, positions, base=10000.0):
    """Hugging Face's LLaMA layout: feature i with feature i + Dh/2."""
    Dh = x.size(-1)
    inv_freq = 1.0 / (base ** (torch.arange(0, Dh, 2).float() / Dh))
    freqs = positions.float()[:, None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, Dh)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def rotary_reads_halves(x, positions, base=10000.0):
    Dh = x.size(-1)
    angle = positions[:, None] * base ** (-torch.arange(0, Dh, 2) / Dh)
    a, b = x[..., :Dh // 2], x[..., Dh // 2:]
    pair = torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()], -1)
    return pair.flatten(-2)


def rotary_positions_plus_one(x, positions, base=10000.0):
    Dh = x.size(-1)
    angle = (positions + 1)[:, None] * base ** (-torch.arange(0, Dh, 2) / Dh)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()],
                       -1).flatten(-2)


def rotary_counts_from_one(x, positions, base=10000.0):
    T, Dh = x.shape[-2:]
    angle = torch.arange(1, T + 1)[:, None] * base ** (-torch.arange(0, Dh, 2) / Dh)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()],
                       -1).flatten(-2)


def rotary_growing_frequencies(x, positions, base=10000.0):
    Dh = x.size(-1)
    angle = positions[:, None] * base ** (torch.arange(0, Dh, 2) / Dh)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()],
                       -1).flatten(-2)


def rotary_base_fixed(x, positions, base=10000.0):
    Dh = x.size(-1)
    angle = positions[:, None] * 10000.0 ** (-torch.arange(0, Dh, 2) / Dh)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()],
                       -1).flatten(-2)


def rotary_complex_conjugate(x, positions, base=10000.0):
    Dh = x.size(-1)
    angle = positions[:, None] * base ** (-torch.arange(0, Dh, 2) / Dh)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], Dh // 2, 2).contiguous())
    rotated = z * torch.polar(torch.ones_like(angle), angle).conj()
    return torch.view_as_real(rotated).flatten(-2)


def rotary_not_flattened(x, positions, base=10000.0):
    Dh = x.size(-1)
    angle = positions[:, None] * base ** (-torch.arange(0, Dh, 2) / Dh)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()], -1)


WRONG_ROTARY = {
    "Hugging Face's rotate_half": (rotary_llama_halves, "you rotate halves"),
    "reads halves, writes pairs": (rotary_reads_halves, "you read halves"),
    "positions + 1": (rotary_positions_plus_one, "your positions are one too many"),
    "arange(1, T + 1)": (rotary_counts_from_one, "your positions are one too many"),
    "base ** (+2i / Dh)": (rotary_growing_frequencies, "the frequencies grow with i"),
    "base fixed at 10000": (rotary_base_fixed, "the base argument is not used"),
    "complex, conjugated": (rotary_complex_conjugate, "you rotate backwards"),
    "(..., T, Dh/2, 2) not flattened": (rotary_not_flattened,
                                        "the shape of the output is (6, 4, 2), expected (6, 8)"),
}


def rotary_complex(x, positions, base=10000.0):
    Dh = x.size(-1)
    angle = positions[:, None] * base ** (-torch.arange(0, Dh, 2) / Dh)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], Dh // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).flatten(-2)


def rotary_matrices(x, positions, base=10000.0):
    Dh = x.size(-1)
    angle = positions[:, None] * base ** (-torch.arange(0, Dh, 2) / Dh)  # (T, Dh/2)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    pairs = x.unflatten(-1, (Dh // 2, 2))  # (..., T, Dh/2, 2)
    return torch.einsum("tpij,...tpj->...tpi", rotation, pairs).flatten(-2)


def rotary_every_two(x, positions, base=10000.0):
    """GPT-J's layout, interleaved, with cos and sin repeated for both features of a pair."""
    Dh = x.size(-1)
    angle = positions.float()[:, None] / base ** (torch.arange(0, Dh, 2).float() / Dh)
    cos, sin = angle.cos().repeat_interleave(2, -1), angle.sin().repeat_interleave(2, -1)
    turned = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return x * cos + turned * sin


def rotary_with_loop(x, positions, base=10000.0):
    out = torch.empty_like(x)
    Dh = x.size(-1)
    for i in range(Dh // 2):
        angle = positions * base ** (-2 * i / Dh)  # (T,)
        c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        a, b = x[..., 2 * i:2 * i + 1], x[..., 2 * i + 1:2 * i + 2]
        out[..., 2 * i:2 * i + 1] = a * c - b * s
        out[..., 2 * i + 1:2 * i + 2] = a * s + b * c
    return out


CORRECT_ROTARY = [rotary_complex, rotary_matrices, rotary_every_two, rotary_with_loop]

# --- exercise 4: grouped-query attention ---------------------------------------------------------


def _causal(scores):
    T, S = scores.shape[-2:]
    return scores.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), float("-inf"))


def gqa_expand_tiled(q, k, v, is_causal=False):
    B, KV, S, Dh = k.shape
    g = q.size(1) // KV
    k = k[:, None].expand(B, g, KV, S, Dh).reshape(B, g * KV, S, Dh)  # [k0, k1, k0, k1]
    v = v[:, None].expand(B, g, KV, S, Dh).reshape(B, g * KV, S, Dh)
    scores = q @ k.transpose(-2, -1) / math.sqrt(Dh)
    return (_causal(scores) if is_causal else scores).softmax(-1) @ v


def gqa_heads_modulo(q, k, v, is_causal=False):
    KV = k.size(1)
    heads = []
    for h in range(q.size(1)):
        heads.append(F.scaled_dot_product_attention(q[:, h], k[:, h % KV], v[:, h % KV],
                                                    is_causal=is_causal))
    return torch.stack(heads, dim=1)


def gqa_upper_triangle(q, k, v, is_causal=False):
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if is_causal:
        T, S = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool).triu(), float("-inf"))
    return scores.softmax(-1) @ v


def gqa_unscaled(q, k, v, is_causal=False):
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scores = q @ k.transpose(-2, -1)
    return (_causal(scores) if is_causal else scores).softmax(-1) @ v


def gqa_softmax_over_queries(q, k, v, is_causal=False):
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    return (_causal(scores) if is_causal else scores).softmax(-2) @ v


def gqa_scaled_twice(q, k, v, is_causal=False):
    g = q.size(1) // k.size(1)
    q = q / math.sqrt(q.size(-1))
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                          is_causal=is_causal)


WRONG_GQA = {
    "expand on a new first axis": (gqa_expand_tiled, "the key/value heads are tiled"),
    "head h uses h % KV": (gqa_heads_modulo, "the key/value heads are tiled"),
    "triu mask": (gqa_upper_triangle, "the causal mask is the wrong triangle"),
    "no scale": (gqa_unscaled, "the scores are not scaled"),
    "softmax over the queries": (gqa_softmax_over_queries, "the softmax runs over the queries"),
    "scaled twice": (gqa_scaled_twice, "the scores are scaled twice"),
}


def gqa_grouped_views(q, k, v, is_causal=False):
    """No copies: the query heads viewed as (KV, group), each group against its key/value head."""
    B, H, T, Dh = q.shape
    KV = k.size(1)
    q = q.view(B, KV, H // KV, T, Dh)
    scores = q @ k[:, :, None].transpose(-2, -1) / math.sqrt(Dh)  # (B, KV, g, T, S)
    if is_causal:
        scores = _causal(scores)
    return (scores.softmax(-1) @ v[:, :, None]).reshape(B, H, T, Dh)


def gqa_loop_over_heads(q, k, v, is_causal=False):
    g = q.size(1) // k.size(1)
    heads = []
    for h in range(q.size(1)):
        scores = q[:, h] @ k[:, h // g].transpose(-2, -1) / q.size(-1) ** 0.5
        heads.append((_causal(scores) if is_causal else scores).softmax(-1) @ v[:, h // g])
    return torch.stack(heads, dim=1)


def gqa_einsum(q, k, v, is_causal=False):
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.size(-1))
    weights = (_causal(scores) if is_causal else scores).softmax(-1)
    return torch.einsum("bhts,bhsd->bhtd", weights, v)


def gqa_sdpa_after_repeat(q, k, v, is_causal=False):
    g = q.size(1) // k.size(1)
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                          is_causal=is_causal)


CORRECT_GQA = [gqa_grouped_views, gqa_loop_over_heads, gqa_einsum, gqa_sdpa_after_repeat]

# --- exercise 5: the attention layer -------------------------------------------------------------


class _Layer(nn.Module):
    def __init__(self, d_model, num_heads, num_kv_heads, rope_base=10000.0):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.rope_base = num_heads, num_kv_heads, rope_base
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def heads(self, x):
        B, T, _ = x.shape
        Dh = self.head_dim
        q = self.q_proj(x).view(B, T, self.num_heads, Dh).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, Dh).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, Dh).transpose(1, 2)
        return q, k, v, torch.arange(T)

    def attend(self, q, k, v, is_causal=True, scale=None):
        g = self.num_heads // self.num_kv_heads
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1),
                                             v.repeat_interleave(g, 1), is_causal=is_causal,
                                             scale=scale)
        B, H, T, Dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H * Dh))


class LayerRotatingQueriesOnly(_Layer):
    def forward(self, x):
        q, k, v, positions = self.heads(x)
        return self.attend(apply_rotary(q, positions, self.rope_base), k, v)


class LayerRotatingKeysOnly(_Layer):
    def forward(self, x):
        q, k, v, positions = self.heads(x)
        return self.attend(q, apply_rotary(k, positions, self.rope_base), v)


class LayerWithoutRotation(_Layer):
    def forward(self, x):
        q, k, v, _ = self.heads(x)
        return self.attend(q, k, v)


class LayerDefaultBase(_Layer):
    def forward(self, x):
        q, k, v, positions = self.heads(x)
        return self.attend(apply_rotary(q, positions), apply_rotary(k, positions), v)


class LayerScaledByModel(_Layer):
    def forward(self, x):
        q, k, v, positions = self.heads(x)
        q, k = (apply_rotary(t, positions, self.rope_base) for t in (q, k))
        return self.attend(q, k, v, scale=1 / math.sqrt(x.size(-1)))


WRONG_LAYER = {
    "queries rotated, keys not": (LayerRotatingQueriesOnly, "only the queries are rotated"),
    "keys rotated, queries not": (LayerRotatingKeysOnly, "only the keys are rotated"),
    "no rotation": (LayerWithoutRotation, "the rotary positions are missing"),
    "rope_base not passed": (LayerDefaultBase, "rope_base is not used"),
    "scaled by sqrt(d_model)": (LayerScaledByModel, "the scores are scaled by sqrt(d_model)"),
}


class LayerRotatingAfterRepeat(_Layer):
    def forward(self, x):
        q, k, v, positions = self.heads(x)
        g = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        q, k = (apply_rotary(t, positions, self.rope_base) for t in (q, k))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        B, H, T, Dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H * Dh))


class LayerWithExplicitMask(_Layer):
    def forward(self, x):
        q, k, v, positions = self.heads(x)
        q, k = (apply_rotary(t, positions, self.rope_base) for t in (q, k))
        T = x.size(1)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        B, H, _, Dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H * Dh))


CORRECT_LAYER = [LayerRotatingAfterRepeat, LayerWithExplicitMask]

catalogue.wrong("check_rms_norm", WRONG_RMS)
catalogue.accepted("check_rms_norm", CORRECT_RMS, cases=5)
catalogue.wrong("check_swiglu", WRONG_SWIGLU)
catalogue.accepted("check_swiglu", CORRECT_SWIGLU, cases=4)
catalogue.wrong("check_rotary", WRONG_ROTARY)
catalogue.accepted("check_rotary", CORRECT_ROTARY, cases=6)
catalogue.wrong("check_grouped_query_attention", WRONG_GQA)
catalogue.accepted("check_grouped_query_attention", CORRECT_GQA, cases=6)
catalogue.wrong("check_modern_attention", WRONG_LAYER)
catalogue.accepted("check_modern_attention", CORRECT_LAYER, cases=4)
