"""transformer_lib.checks, lab 7 (modern decoder blocks): wrong implementations, each to be rejected
with the right diagnosis; correct implementations written differently, and the library's own, to
be accepted. They are registered in ``checks_catalogue`` and run by ``test_checks_catalogue.py``;
the tests here ask more of a verdict than its diagnosis (the diff it shows, the case it names, the
contract's names, the friendly stub message)."""

import math

import checks_catalogue as catalogue
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib import MultiHeadAttention, RMSNorm, SwiGLUFeedForward, apply_rotary, checks

# --- exercise 1: RMSNorm ------------------------------------------------------------------------


class RMSNormBase(nn.Module):
    """A learner's RMSNorm, whose forward the wrong ones replace."""

    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSNormByStd(RMSNormBase):
    def forward(self, x):
        return x / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps) * self.weight


class RMSNormLikeLayerNorm(RMSNormBase):
    def forward(self, x):
        centered = x - x.mean(-1, keepdim=True)
        variance = centered.pow(2).mean(-1, keepdim=True)
        return centered / torch.sqrt(variance + self.eps) * self.weight


class RMSNormEpsOutside(RMSNormBase):
    def forward(self, x):
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * self.weight


class RMSNormWithoutGain(RMSNormBase):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class RMSNormOverEverything(RMSNormBase):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean() + self.eps) * self.weight


class RMSNormWithoutEps(RMSNormBase):
    def forward(self, x):
        return x / x.pow(2).mean(-1, keepdim=True).sqrt() * self.weight


class RMSNormWithBias(RMSNormBase):
    def __init__(self, d_model, eps=1e-6):
        super().__init__(d_model, eps)
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        return super().forward(x) + self.bias


class RMSNormStub(nn.Module):
    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        raise NotImplementedError("Exercise 1 (RMSNorm): write your code here")


WRONG_RMS = {
    "divides by the std": (RMSNormByStd, "you divide by the standard deviation"),
    "subtracts the mean": (RMSNormLikeLayerNorm, "that is LayerNorm"),
    "eps outside the root": (RMSNormEpsOutside, "eps is added outside the square root"),
    "no gain": (RMSNormWithoutGain, "the gain is missing"),
    "mean over the whole tensor": (RMSNormOverEverything, "over the wrong dimension"),
    "no eps": (RMSNormWithoutEps, "the eps the module was built with is not used"),
    "a bias": (RMSNormWithBias, "not in the contract: bias (8,)"),
}

catalogue.wrong("check_rms_norm", WRONG_RMS)
catalogue.accepted("check_rms_norm", [RMSNorm, RMSNormBase], cases=5)


def test_check_rms_norm_shows_the_case_and_the_numbers():
    with pytest.raises(AssertionError) as info:
        checks.check_rms_norm(RMSNormByStd)
    message = str(info.value)
    assert "in case 1 of 5 ((B, T, D) input, vectors with nonzero means: x (2, 4, 8); built with " \
           "d_model=8, eps=1e-06)" in message
    assert "output: largest difference" in message and "yours    [" in message


def test_check_rms_norm_names_the_contract_when_a_parameter_is_missing():
    class NoWeight(nn.Module):
        def __init__(self, d_model, eps=1e-6):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(d_model))

    with pytest.raises(AssertionError) as info:
        checks.check_rms_norm(NoWeight)
    message = str(info.value)
    assert "missing: weight (8,)" in message and "not in the contract: gain (8,)" in message

# --- exercise 2: SwiGLU -------------------------------------------------------------------------


class SwiGLUBase(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SwiGLUGateOnUp(SwiGLUBase):
    def forward(self, x):
        return self.down_proj(self.gate_proj(x) * F.silu(self.up_proj(x)))


class SwiGLUWithGELU(SwiGLUBase):
    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x)) * self.up_proj(x))


class SwiGLUWithSigmoid(SwiGLUBase):
    def forward(self, x):
        return self.down_proj(torch.sigmoid(self.gate_proj(x)) * self.up_proj(x))


class SwiGLUWithoutUp(SwiGLUBase):
    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)))


class SwiGLUWithBiases(SwiGLUBase):
    def __init__(self, d_model, d_ff):
        super().__init__(d_model, d_ff)
        self.gate_proj = nn.Linear(d_model, d_ff)
        self.up_proj = nn.Linear(d_model, d_ff)
        self.down_proj = nn.Linear(d_ff, d_model)


class SwiGLUStub(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        raise NotImplementedError("Exercise 2 (SwiGLU): write your code here")


WRONG_SWIGLU = {
    "SiLU on the up branch": (SwiGLUGateOnUp, "SiLU is on the up branch"),
    "GELU": (SwiGLUWithGELU, "the activation is GELU"),
    "sigmoid (GLU)": (SwiGLUWithSigmoid, "as in the original GLU"),
    "no up branch": (SwiGLUWithoutUp, "one of the two branches is missing"),
    "biases": (SwiGLUWithBiases, "not in the contract: gate_proj.bias"),
}

catalogue.wrong("check_swiglu", WRONG_SWIGLU)
catalogue.accepted("check_swiglu", [SwiGLUFeedForward, SwiGLUBase], cases=4)

# --- exercise 3: rotary positions ----------------------------------------------------------------


def rotary_with(*, halves=False, sign=1.0, ignore_positions=False, exponent=2):
    """A learner-style rotary function with one mistake switched on."""

    def apply_rotary(x, positions, base=10000.0):
        T, Dh = x.shape[-2:]
        if ignore_positions:
            positions = torch.arange(T)
        theta = base ** (-exponent * torch.arange(Dh // 2) / Dh)
        angle = positions[:, None] * theta
        cos, sin = angle.cos(), sign * angle.sin()
        if halves:
            a, b = x[..., :Dh // 2], x[..., Dh // 2:]
            return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    return apply_rotary


def rotary_written_as_halves(x, positions, base=10000.0):
    Dh = x.size(-1)
    angle = positions[:, None] * base ** (-torch.arange(0, Dh, 2) / Dh)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.cat([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()], -1)


def rotary_stub(x, positions, base=10000.0):
    raise NotImplementedError("Exercise 3 (Rotary positions): write your code here")


WRONG_ROTARY = {
    "halves": (rotary_with(halves=True), "you rotate halves, feature i with feature i + Dh/2"),
    "pairs written back as halves": (rotary_written_as_halves, "written back as two halves"),
    "backwards": (rotary_with(sign=-1.0), "you rotate backwards"),
    "positions ignored": (rotary_with(ignore_positions=True), "the positions argument is not used"),
    "base ** (-i / Dh)": (rotary_with(exponent=1), "the frequencies are base ** (-i / Dh)"),
}

catalogue.wrong("check_rotary", WRONG_ROTARY)
catalogue.accepted("check_rotary", {"apply_rotary": apply_rotary, "learner style": rotary_with()},
                   cases=6)


def test_check_rotary_shows_the_positions_case():
    with pytest.raises(AssertionError) as info:
        checks.check_rotary(rotary_with(ignore_positions=True))
    message = str(info.value)
    assert "in case 3 of 6 (positions 7 .. 12, as after 7 cached tokens" in message

# --- exercise 4: grouped-query attention ---------------------------------------------------------


def gqa_with(*, tile=False, first=False, causal=True, scale_by_model=False):
    """A learner-style grouped-query attention with one mistake switched on."""

    def grouped_query_attention(q, k, v, is_causal=False):
        H, KV = q.size(1), k.size(1)
        if first:
            k, v = k[:, :1].expand(-1, H, -1, -1), v[:, :1].expand(-1, H, -1, -1)
        elif tile:
            k, v = k.repeat(1, H // KV, 1, 1), v.repeat(1, H // KV, 1, 1)
        else:
            k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        width = H * q.size(-1) if scale_by_model else q.size(-1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(width)
        if is_causal and causal:
            T, S = scores.shape[-2:]
            scores = scores.masked_fill(torch.ones(T, S).tril() == 0, float("-inf"))
        return scores.softmax(-1) @ v

    return grouped_query_attention


def gqa_reducing_the_queries(q, k, v, is_causal=False):
    B, H, T, Dh = q.shape
    KV = k.size(1)
    q = q.view(B, KV, H // KV, T, Dh).mean(2)  # one query per key/value head
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def gqa_fused(q, k, v, is_causal=False):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)


def gqa_stub(q, k, v, is_causal=False):
    raise NotImplementedError("Exercise 4 (Grouped-query attention): write your code here")


WRONG_GQA = {
    "repeat (tiled heads)": (gqa_with(tile=True), "the key/value heads are tiled"),
    "first key/value head only": (gqa_with(first=True), "every query head uses the first"),
    "no causal mask": (gqa_with(causal=False), "the causal mask is missing"),
    "scaled by sqrt(H * Dh)": (gqa_with(scale_by_model=True), "scaled by sqrt(H * Dh)"),
    "queries averaged per group": (gqa_reducing_the_queries, "one head per key/value head"),
}

catalogue.wrong("check_grouped_query_attention", WRONG_GQA)
catalogue.accepted("check_grouped_query_attention",
                   {"F.scaled_dot_product_attention(enable_gqa=True)": gqa_fused,
                    "learner style": gqa_with()}, cases=6)


def test_check_grouped_query_attention_shows_the_heads():
    with pytest.raises(AssertionError) as info:
        checks.check_grouped_query_attention(gqa_with(tile=True))
    message = str(info.value)
    assert "in case 1 of 6 (groups of 2: 4 query heads, 2 key/value heads: q (2, 4, 5, 8), " \
           "k (2, 2, 5, 8), v (2, 2, 5, 8), is_causal=False)" in message
    assert "output: largest difference" in message

# --- exercise 5: the attention layer -------------------------------------------------------------


class PackageAttention(MultiHeadAttention):
    """The package's layer with the exercise's signature."""

    def __init__(self, d_model, num_heads, num_kv_heads, rope_base=10000.0):
        super().__init__(d_model, num_heads, bias=False, num_kv_heads=num_kv_heads,
                         rope_base=rope_base)

    def forward(self, x):
        return super().forward(x, x, x, is_causal=True)


class AttentionBase(nn.Module):
    """A learner's layer, with switches for its mistakes."""

    rotate = "qk"
    rotate_first = False
    causal = True
    tile = False

    def __init__(self, d_model, num_heads, num_kv_heads, rope_base=10000.0):
        super().__init__()
        self.H, self.KV, self.Dh, self.base = (num_heads, num_kv_heads, d_model // num_heads,
                                               rope_base)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, num_kv_heads * self.Dh, bias=False)
        self.v_proj = nn.Linear(d_model, num_kv_heads * self.Dh, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        B, T, D = x.shape
        positions = torch.arange(T)
        projected = {"q": self.q_proj(x), "k": self.k_proj(x), "v": self.v_proj(x)}
        if self.rotate_first:
            projected = {r: apply_rotary(t, positions, self.base) if r in self.rotate else t
                         for r, t in projected.items()}
        heads = {r: t.view(B, T, -1, self.Dh).transpose(1, 2) for r, t in projected.items()}
        if not self.rotate_first:
            heads = {r: apply_rotary(t, positions, self.base) if r in self.rotate else t
                     for r, t in heads.items()}
        q, k, v = heads["q"], heads["k"], heads["v"]
        if self.tile:
            k, v = k.repeat(1, self.H // self.KV, 1, 1), v.repeat(1, self.H // self.KV, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                             enable_gqa=not self.tile)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class AttentionRotatingValues(AttentionBase):
    rotate = "qkv"


class AttentionRotatingBeforeSplit(AttentionBase):
    rotate_first = True


class AttentionWithoutMask(AttentionBase):
    causal = False


class AttentionTiled(AttentionBase):
    tile = True


class AttentionFullWidthKeys(AttentionBase):
    def __init__(self, d_model, num_heads, num_kv_heads, rope_base=10000.0):
        super().__init__(d_model, num_heads, num_kv_heads, rope_base)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)


class AttentionStub(nn.Module):
    def __init__(self, d_model, num_heads, num_kv_heads, rope_base=10000.0):
        super().__init__()
        raise NotImplementedError("Exercise 5 (Rotary grouped-query attention): write your code "
                                  "here")


WRONG_ATTENTION = {
    "values rotated": (AttentionRotatingValues, "the values are rotated too"),
    "rotated before the split": (AttentionRotatingBeforeSplit, "you rotate before splitting"),
    "no causal mask": (AttentionWithoutMask, "the causal mask is missing"),
    "tiled heads": (AttentionTiled, "the key/value heads are tiled"),
    "k_proj and v_proj of width d_model": (AttentionFullWidthKeys,
                                           "wrong shape: k_proj.weight: yours (32, 32), "
                                           "expected (16, 32)"),
}

catalogue.wrong("check_modern_attention", WRONG_ATTENTION)
catalogue.accepted("check_modern_attention", [PackageAttention, AttentionBase], cases=4)

# --- every exercise ------------------------------------------------------------------------------


@pytest.mark.parametrize("check, stub, exercise", [
    ("check_rms_norm", RMSNormStub, "Exercise 1 (RMSNorm)"),
    ("check_swiglu", SwiGLUStub, "Exercise 2 (SwiGLU)"),
    ("check_rotary", rotary_stub, "Exercise 3 (Rotary positions)"),
    ("check_grouped_query_attention", gqa_stub, "Exercise 4 (Grouped-query attention)"),
    ("check_modern_attention", AttentionStub,
     "Exercise 5 (Rotary grouped-query attention)"),
])
def test_a_stub_gives_the_friendly_not_implemented_message(check, stub, exercise):
    with pytest.raises(NotImplementedError) as info:
        getattr(checks, check)(stub)
    assert str(info.value).startswith(f"{check}: {exercise} is not done yet.")


def test_the_checks_leave_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_rms_norm(RMSNorm)
    checks.check_rotary(apply_rotary)
    assert torch.equal(torch.rand(3), expected)
