"""transformer_lib.checks, lab 3 (encoder and decoder layers): a second catalogue of wrong
implementations, written as learners write them, each to be rejected with a diagnosis that names
the mistake made (or, for the few marked GENERIC, the check's message that it knows no mistake
that fits); and correct implementations written differently, each to be accepted. Several mistakes
show only in training mode (where dropout acts). They are registered in ``checks_catalogue`` and
run by ``test_checks_catalogue.py``; the tests here ask more of a verdict than its diagnosis."""

import math

import checks_catalogue as catalogue
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib import (
    FeedForward,
    MultiHeadAttention,
    causal_mask,
    checks,
    scaled_dot_product_attention,
    sublayer_connection,
)

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}

# --- exercise 1: the feed-forward network ------------------------------------------------------


class FFNBase(nn.Module):
    """What every learner writes in __init__; the wrong ones below differ in forward or here."""

    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)
        self.act = ACTIVATIONS[activation]


class FFNDropoutAtTheEnd(FFNBase):
    def forward(self, x):
        return self.dropout(self.linear2(self.act(self.linear1(x))))


class FFNDropoutNeverUsed(FFNBase):
    def forward(self, x):
        hidden = self.act(self.linear1(x))
        return self.linear2(hidden)


class FFNDropoutOnTheInput(FFNBase):
    def forward(self, x):
        x = self.dropout(x)
        x = self.linear1(x)
        x = self.act(x)
        return self.linear2(x)


class FFNDropoutWithoutItsRate(nn.Module):
    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout()
        self.activation = nn.GELU() if activation == "gelu" else nn.ReLU()

    def forward(self, x):
        return self.linear2(self.drop(self.activation(self.linear1(x))))


class FFNFixedRate(FFNBase):
    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__(d_model, d_ff, dropout, activation)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        return self.linear2(self.dropout(self.act(self.linear1(x))))


class FFNFunctionalDropoutAlwaysOn(FFNBase):
    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__(d_model, d_ff, dropout, activation)
        self.p = dropout

    def forward(self, x):
        return self.linear2(F.dropout(self.act(self.linear1(x)), self.p))


class FFNDropoutBeforeTheActivation(FFNBase):
    def forward(self, x):
        return self.linear2(self.act(self.dropout(self.linear1(x))))


class FFNWithItsOwnResidual(FFNBase):
    def forward(self, x):
        return x + self.linear2(self.dropout(self.act(self.linear1(x))))


class FFNTanhGelu(FFNBase):
    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__(d_model, d_ff, dropout, activation)
        self.act = nn.GELU(approximate="tanh") if activation == "gelu" else nn.ReLU()

    def forward(self, x):
        return self.linear2(self.dropout(self.act(self.linear1(x))))


class FFNActivationTwice(FFNBase):
    def forward(self, x):
        return self.act(self.linear2(self.dropout(self.act(self.linear1(x)))))


class FFNDropoutTwice(FFNBase):
    def forward(self, x):
        return self.dropout(self.linear2(self.dropout(self.act(self.linear1(x)))))


WRONG_FFN = {
    "dropout after linear2": (FFNDropoutAtTheEnd, "dropout is applied after linear2"),
    "dropout never used": (FFNDropoutNeverUsed, "in training mode no dropout acts"),
    "dropout on the input": (FFNDropoutOnTheInput, "dropout is applied to the input x"),
    "nn.Dropout() without the rate": (FFNDropoutWithoutItsRate, "dropout is applied with p=0.5"),
    "a fixed rate": (FFNFixedRate, "dropout is applied with p=0.1"),
    "F.dropout without training": (FFNFunctionalDropoutAlwaysOn,
                                   "changes from one call to the next in eval mode"),
    "dropout before the activation": (FFNDropoutBeforeTheActivation,
                                      "dropout is applied before the activation"),
    "a residual inside": (FFNWithItsOwnResidual, "adds its input x to its output"),
    "tanh GELU": (FFNTanhGelu, "tanh approximation"),
    "activation after both": (FFNActivationTwice, "the activation is applied after both"),
    "dropout twice": (FFNDropoutTwice, "dropout is applied twice"),
}


class FFNModules(nn.Module):
    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.activation = {"relu": nn.ReLU(), "gelu": nn.GELU()}[activation]
        self.dropout = nn.Dropout(p=dropout)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x):
        h = self.linear1(x)  # (..., D) -> (..., F)
        h = self.activation(h)
        h = self.dropout(h)
        return self.linear2(h)  # (..., F) -> (..., D)


class FFNFunctional(nn.Module):
    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.p, self.activation = dropout, activation

    def forward(self, x):
        h = getattr(F, self.activation)(self.linear1(x))
        h = F.dropout(h, p=self.p, training=self.training)
        return self.linear2(h)


class FFNDropoutBeforeReLUOnly(FFNBase):
    """Dropout before a ReLU is the same as after it (the kept entries are only scaled up);
    before a GELU it is not, so this one puts it after for GELU."""

    def forward(self, x):
        h = self.linear1(x)
        if self.act is F.relu:
            return self.linear2(F.relu(self.dropout(h)))
        return self.linear2(self.dropout(F.gelu(h)))


CORRECT_FFN = [FFNModules, FFNFunctional, FFNDropoutBeforeReLUOnly]


# --- exercise 2: the sub-layer connection ------------------------------------------------------


def sc_pre_ln_normalizes_the_sum(x, sublayer, norm, dropout, norm_first):
    inp = norm(x) if norm_first else x
    return norm(x + dropout(sublayer(inp)))


def sc_post_ln_residual_of_the_norm(x, sublayer, norm, dropout, norm_first):
    if norm_first:
        return x + dropout(sublayer(norm(x)))
    return norm(x) + dropout(sublayer(x))


def sc_dropout_on_the_sublayer_input(x, sublayer, norm, dropout, norm_first):
    if norm_first:
        return x + sublayer(dropout(norm(x)))
    return norm(x + sublayer(dropout(x)))


def sc_dropout_first(x, sublayer, norm, dropout, norm_first):
    x = dropout(x)
    if norm_first:
        return x + sublayer(norm(x))
    return norm(x + sublayer(x))


def sc_post_ln_norms_the_branch(x, sublayer, norm, dropout, norm_first):
    if not norm_first:
        return x + norm(dropout(sublayer(x)))
    return x + dropout(sublayer(norm(x)))


def sc_pre_ln_forgets_the_norm(x, sublayer, norm, dropout, norm_first):
    out = dropout(sublayer(x))
    return x + out if norm_first else norm(x + out)


def sc_own_dropout(x, sublayer, norm, dropout, norm_first):
    branch = sublayer(norm(x)) if norm_first else sublayer(x)
    branch = F.dropout(branch, p=0.1)
    return x + branch if norm_first else norm(x + branch)


def sc_normalizes_everything(x, sublayer, norm, dropout, norm_first):
    return norm(x + dropout(sublayer(norm(x))))


def sc_dropout_on_the_residual(x, sublayer, norm, dropout, norm_first):
    if norm_first:
        return dropout(x) + sublayer(norm(x))
    return norm(dropout(x) + sublayer(x))


def sc_residual_is_normalized(x, sublayer, norm, dropout, norm_first):
    h = norm(x)
    return h + dropout(sublayer(h if norm_first else x))


def sc_dropout_after_the_norm(x, sublayer, norm, dropout, norm_first):
    if norm_first:
        out = x + sublayer(norm(x))
    else:
        out = norm(x + sublayer(x))
    return dropout(out)


def sc_one_formula_from_the_norm(x, sublayer, norm, dropout, norm_first):
    y = norm(x)
    return y + dropout(sublayer(y))


WRONG_SUBLAYER = {
    "pre-LN normalizes the sum": (sc_pre_ln_normalizes_the_sum,
                                  "pre-LN has no norm after the residual sum"),
    "post-LN adds norm(x)": (sc_post_ln_residual_of_the_norm, "yours adds norm(x)"),
    "dropout on the sub-layer's input": (sc_dropout_on_the_sublayer_input,
                                         "dropout is applied to the sub-layer's input"),
    "dropout first": (sc_dropout_first, "dropout is applied to the sub-layer's input"),
    "post-LN normalizes the branch": (sc_post_ln_norms_the_branch,
                                      "not the sub-layer's output alone"),
    "pre-LN without norm": (sc_pre_ln_forgets_the_norm, "pre-LN normalizes the sub-layer's input"),
    "a dropout of its own": (sc_own_dropout, "dropout is applied with p=0.1"),
    "norm before and after": (sc_normalizes_everything, "input and sum are both normalized"),
    "dropout on the residual": (sc_dropout_on_the_residual,
                                "dropout is applied to the residual x"),
    "residual of the norm, both": (sc_residual_is_normalized,
                                   "the residual adds norm(x) where x itself belongs"),
    "dropout after the norm": (sc_dropout_after_the_norm,
                               "dropout is applied after the residual sum"),
    "norm(x) + sublayer(norm(x)) always": (sc_one_formula_from_the_norm,
                                           "yours computes norm(x) + dropout(sublayer(norm(x))) "
                                           "whatever norm_first says"),
}


def sc_step_by_step(x, sublayer, norm, dropout, norm_first):
    inp = norm(x) if norm_first else x
    out = dropout(sublayer(inp))
    out = x + out
    return out if norm_first else norm(out)


def sc_functional_dropout(x, sublayer, norm, dropout, norm_first):
    branch = sublayer(norm(x) if norm_first else x)
    branch = F.dropout(branch, p=dropout.p, training=dropout.training)
    total = torch.add(x, branch)
    return total if norm_first else norm(total)


CORRECT_SUBLAYER = [sc_step_by_step, sc_functional_dropout]


# --- exercise 3: the encoder layer -------------------------------------------------------------


class LabFeedForward(nn.Module):
    """A learner's correct exercise-1 answer, which their layers use."""

    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class EncoderBase(nn.Module):
    """The lab's __init__, as the lab asks; the wrong ones below differ in forward or here."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.ffn = LabFeedForward(d_model, d_ff, dropout=dropout, activation=activation)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask=None):
        x = sublayer_connection(x, lambda y: self.self_attn(y, y, y, mask=mask), self.norm1,
                                self.dropout, self.norm_first)
        return sublayer_connection(x, self.ffn, self.norm2, self.dropout, self.norm_first)


class EncoderAttentionWithoutDropout(EncoderBase):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__(d_model, num_heads, d_ff, dropout, activation, norm_first, layer_norm_eps)
        self.self_attn = MultiHeadAttention(d_model, num_heads)


class EncoderFFNWithoutDropout(EncoderBase):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__(d_model, num_heads, d_ff, dropout, activation, norm_first, layer_norm_eps)
        self.ffn = LabFeedForward(d_model, d_ff, activation=activation)


class EncoderNothingPassedDown(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.ffn = LabFeedForward(d_model, d_ff, activation=activation)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask=None):
        if self.norm_first:
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn(h, h, h, mask))
            return x + self.dropout(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, mask)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class EncoderNoResidualDropout(EncoderBase):
    def forward(self, x, mask=None):
        def identity(t):
            return t

        x = sublayer_connection(x, lambda y: self.self_attn(y, y, y, mask=mask), self.norm1,
                                identity, self.norm_first)
        return sublayer_connection(x, self.ffn, self.norm2, identity, self.norm_first)


class EncoderDropoutOnTheInputs(EncoderBase):
    def forward(self, x, mask=None):
        if self.norm_first:
            h = self.dropout(self.norm1(x))
            x = x + self.self_attn(h, h, h, mask=mask)
            return x + self.ffn(self.dropout(self.norm2(x)))
        h = self.dropout(x)
        x = self.norm1(x + self.self_attn(h, h, h, mask=mask))
        return self.norm2(x + self.ffn(self.dropout(x)))


class EncoderFFNSeesTheInput(EncoderBase):
    def forward(self, x, mask=None):
        h = sublayer_connection(x, lambda y: self.self_attn(y, y, y, mask=mask), self.norm1,
                                self.dropout, self.norm_first)
        return sublayer_connection(h, lambda y: self.ffn(x), self.norm2, self.dropout,
                                   self.norm_first)


class EncoderPreLNFFNWithoutNorm(EncoderBase):
    def forward(self, x, mask=None):
        if not self.norm_first:
            return super().forward(x, mask)
        y = self.norm1(x)
        x = x + self.dropout(self.self_attn(y, y, y, mask=mask))
        x = x + self.dropout(self.ffn(x))
        return x


class EncoderResidualTwice(EncoderBase):
    def forward(self, x, mask=None):
        x = x + sublayer_connection(x, lambda y: self.self_attn(y, y, y, mask=mask), self.norm1,
                                    self.dropout, self.norm_first)
        return x + sublayer_connection(x, self.ffn, self.norm2, self.dropout, self.norm_first)


class EncoderOneNormForBoth(EncoderBase):
    def forward(self, x, mask=None):
        x = sublayer_connection(x, lambda y: self.self_attn(y, y, y, mask=mask), self.norm1,
                                self.dropout, self.norm_first)
        return sublayer_connection(x, self.ffn, self.norm1, self.dropout, self.norm_first)


class EncoderCausal(EncoderBase):
    def forward(self, x, mask=None):
        causal = torch.tril(torch.ones(x.size(1), x.size(1), dtype=torch.bool))
        mask = causal if mask is None else mask & causal
        return super().forward(x, mask)


class EncoderForgetsToAssign(EncoderBase):
    def forward(self, x, mask=None):
        sublayer_connection(x, lambda y: self.self_attn(y, y, y, mask=mask), self.norm1,
                            self.dropout, self.norm_first)
        return sublayer_connection(x, self.ffn, self.norm2, self.dropout, self.norm_first)


class EncoderPreLNNormalizesTheStream(EncoderBase):
    def forward(self, x, mask=None):
        if self.norm_first:
            x = self.norm1(x)
            x = x + self.dropout(self.self_attn(x, x, x, mask=mask))
            x = self.norm2(x)
            return x + self.dropout(self.ffn(x))
        return super().forward(x, mask)


class EncoderFixedDropout(EncoderBase):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__(d_model, num_heads, d_ff, dropout, activation, norm_first, layer_norm_eps)
        self.dropout = nn.Dropout(0.1)


class EncoderFFNOnTheAttentionOutput(EncoderBase):
    def forward(self, x, mask=None):
        y = self.norm1(x) if self.norm_first else x
        attended = self.self_attn(y, y, y, mask=mask)
        if self.norm_first:
            x = x + self.dropout(attended)
            return x + self.dropout(self.ffn(self.norm2(attended)))
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.dropout(self.ffn(attended)))


class EncoderPreLNNormalizesTheQueriesOnly(EncoderBase):
    def forward(self, x, mask=None):
        if not self.norm_first:
            return super().forward(x, mask)
        x = x + self.dropout(self.self_attn(self.norm1(x), x, x, mask=mask))
        return x + self.dropout(self.ffn(self.norm2(x)))


WRONG_ENCODER = {
    "attention without dropout": (EncoderAttentionWithoutDropout,
                                  "in training mode, the attention weights get no dropout"),
    "feed-forward without dropout": (EncoderFFNWithoutDropout,
                                     "in training mode, the feed-forward network applies no "
                                     "dropout"),
    "nothing passed down": (EncoderNothingPassedDown,
                            "the attention weights get no dropout (build self_attn with "
                            "MultiHeadAttention(d_model, num_heads, dropout=dropout)); the "
                            "feed-forward network applies no dropout"),
    "no dropout on the outputs": (EncoderNoResidualDropout,
                                  "no dropout acts on each sub-layer's output"),
    "dropout on the inputs": (EncoderDropoutOnTheInputs,
                              "dropout is applied to each sub-layer's input"),
    "feed-forward fed x": (EncoderFFNSeesTheInput, "the feed-forward network is fed the layer's "
                                                   "input x"),
    "pre-LN feed-forward without norm": (EncoderPreLNFFNWithoutNorm,
                                         "in the feed-forward sub-layer, pre-LN normalizes the "
                                         "sub-layer's input"),
    "residual twice": (EncoderResidualTwice, "the input x is added twice"),
    "one norm for both": (EncoderOneNormForBoth, "the same norm (norm1) is used for every"),
    "causal mask": (EncoderCausal, "adds a causal mask to the mask it is given"),
    "attention result thrown away": (EncoderForgetsToAssign,
                                     "the self-attention sub-layer's result is thrown away"),
    "pre-LN residual of the norm": (EncoderPreLNNormalizesTheStream,
                                    "in every sub-layer, pre-LN adds the input x itself, not "
                                    "norm(x)"),
    "a fixed dropout rate": (EncoderFixedDropout, "dropout is applied with p=0.1"),
    "feed-forward fed the attention's output": (EncoderFFNOnTheAttentionOutput,
                                                "the feed-forward network is fed the "
                                                "self-attention's output alone"),
    "pre-LN normalizes the queries only": (EncoderPreLNNormalizesTheQueriesOnly,
                                           "in pre-LN, the self-attention's keys and values are x "
                                           "itself"),
}


class EncoderTorchStyle(nn.Module):
    """Written the way PyTorch's nn.TransformerEncoderLayer is: one dropout module per place."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.ffn = FeedForward(d_model, d_ff, dropout=dropout, activation=activation)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm_first = norm_first

    def _sa_block(self, x, mask):
        return self.dropout1(self.self_attn(x, x, x, mask=mask))

    def _ff_block(self, x):
        return self.dropout2(self.ffn(x))

    def forward(self, x, mask=None):
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), mask)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, mask))
            x = self.norm2(x + self._ff_block(x))
        return x


class LabTwoAttention(nn.Module):
    """A learner's lab-2 MultiHeadAttention, pasted in: dropout on the weights through the
    readable scaled_dot_product_attention (F.dropout), not the fused kernel."""

    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, d_model // num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key, value, mask=None, need_weights=False):
        B, T, D = query.shape
        S = key.size(1)
        H, Dh = self.num_heads, self.head_dim
        q = self.q_proj(query).view(B, T, H, Dh).transpose(1, 2)
        k = self.k_proj(key).view(B, S, H, Dh).transpose(1, 2)
        v = self.v_proj(value).view(B, S, H, Dh).transpose(1, 2)
        dropout_p = self.dropout if self.training else 0.0
        heads, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p)
        out = self.out_proj(heads.transpose(1, 2).reshape(B, T, D))
        return (out, weights) if need_weights else out


class FunctionalFeedForward(nn.Module):
    def __init__(self, d_model, d_ff, dropout=0.0, activation="relu"):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.p, self.activation = dropout, activation

    def forward(self, x):
        h = ACTIVATIONS[self.activation](self.linear1(x))
        return self.linear2(F.dropout(h, self.p, self.training))


class EncoderWithOwnParts(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__()
        self.norm_first, self.p = norm_first, dropout
        self.self_attn = LabTwoAttention(d_model, num_heads, dropout)
        self.ffn = FunctionalFeedForward(d_model, d_ff, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def drop(self, t):
        return F.dropout(t, self.p, training=self.training)

    def forward(self, x, mask=None):
        for norm, block in ((self.norm1, lambda y: self.self_attn(y, y, y, mask)),
                            (self.norm2, self.ffn)):
            if self.norm_first:
                x = x + self.drop(block(norm(x)))
            else:
                x = norm(x + self.drop(block(x)))
        return x


CORRECT_ENCODER = [EncoderBase, EncoderTorchStyle, EncoderWithOwnParts]


# --- exercise 4: the decoder layer -------------------------------------------------------------


class DecoderBase(nn.Module):
    """The lab's __init__ and forward; the wrong ones below differ in forward or here."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.ffn = LabFeedForward(d_model, d_ff, dropout=dropout, activation=activation)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def sc(self, x, sublayer, norm):
        return sublayer_connection(x, sublayer, norm, self.dropout, self.norm_first)

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.sc(x, lambda y: self.self_attn(y, y, y, mask=self_mask), self.norm1)
        x = self.sc(x, lambda y: self.cross_attn(y, memory, memory, mask=memory_mask), self.norm2)
        return self.sc(x, self.ffn, self.norm3)


class DecoderOwnCausalMask(DecoderBase):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        T = x.shape[1]
        mask = causal_mask(T)
        x = self.sc(x, lambda y: self.self_attn(y, y, y, mask=mask), self.norm1)
        x = self.sc(x, lambda y: self.cross_attn(y, memory, memory, mask=memory_mask), self.norm2)
        return self.sc(x, self.ffn, self.norm3)


class DecoderPreLNCrossWithoutNorm(DecoderBase):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        if not self.norm_first:
            return super().forward(x, memory, self_mask, memory_mask)
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, h, mask=self_mask))
        x = x + self.dropout(self.cross_attn(x, memory, memory, mask=memory_mask))
        h = self.norm3(x)
        return x + self.dropout(self.ffn(h))


class DecoderCrossOverX(DecoderBase):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.sc(x, lambda y: self.self_attn(y, y, y, mask=self_mask), self.norm1)
        x = self.sc(x, lambda y: self.cross_attn(y, x, x), self.norm2)
        return self.sc(x, self.ffn, self.norm3)


class DecoderSelfAttnTwice(DecoderBase):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.sc(x, lambda y: self.self_attn(y, y, y, mask=self_mask), self.norm1)
        x = self.sc(x, lambda y: self.self_attn(y, memory, memory, mask=memory_mask), self.norm2)
        return self.sc(x, self.ffn, self.norm3)


class DecoderCrossWithoutDropout(DecoderBase):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__(d_model, num_heads, d_ff, dropout, activation, norm_first, layer_norm_eps)
        self.cross_attn = MultiHeadAttention(d_model, num_heads)


class DecoderNorm2Twice(DecoderBase):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.sc(x, lambda y: self.self_attn(y, y, y, mask=self_mask), self.norm1)
        x = self.sc(x, lambda y: self.cross_attn(y, memory, memory, mask=memory_mask), self.norm2)
        return self.sc(x, self.ffn, self.norm2)


class DecoderForgetsCrossResult(DecoderBase):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.sc(x, lambda y: self.self_attn(y, y, y, mask=self_mask), self.norm1)
        self.sc(x, lambda y: self.cross_attn(y, memory, memory, mask=memory_mask), self.norm2)
        return self.sc(x, self.ffn, self.norm3)


class DecoderNormalizesMemory(DecoderBase):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        memory = self.norm2(memory)
        return super().forward(x, memory, self_mask, memory_mask)


class DecoderPreLNFinalNorm(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.ffn = FeedForward(d_model, d_ff, dropout=dropout, activation=activation)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        drop = self.dropout
        if self.norm_first:
            y = self.norm1(x)
            x = x + drop(self.self_attn(y, y, y, self_mask))
            y = self.norm2(x)
            x = x + drop(self.cross_attn(y, memory, memory, memory_mask))
            return self.norm3(x + drop(self.ffn(self.norm3(x))))
        x = self.norm1(x + drop(self.self_attn(x, x, x, self_mask)))
        x = self.norm2(x + drop(self.cross_attn(x, memory, memory, memory_mask)))
        return self.norm3(x + drop(self.ffn(x)))


class DecoderNorms2And3Swapped(DecoderBase):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.sc(x, lambda y: self.self_attn(y, y, y, mask=self_mask), self.norm1)
        x = self.sc(x, lambda y: self.cross_attn(y, memory, memory, mask=memory_mask), self.norm3)
        return self.sc(x, self.ffn, self.norm2)


class DecoderNoDropoutOnFFNOutput(DecoderBase):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.sc(x, lambda y: self.self_attn(y, y, y, mask=self_mask), self.norm1)
        x = self.sc(x, lambda y: self.cross_attn(y, memory, memory, mask=memory_mask), self.norm2)
        if self.norm_first:
            return x + self.ffn(self.norm3(x))
        return self.norm3(x + self.ffn(x))


WRONG_DECODER = {
    "own causal mask": (DecoderOwnCausalMask, "builds its own causal mask and ignores self_mask"),
    "pre-LN cross-attention without norm": (DecoderPreLNCrossWithoutNorm,
                                            "in the cross-attention sub-layer, pre-LN normalizes "
                                            "the sub-layer's input"),
    "cross-attention over x": (DecoderCrossOverX, "the cross-attention does not look at memory"),
    "self_attn for the cross-attention": (DecoderSelfAttnTwice,
                                          "the cross-attention sub-layer calls self.self_attn"),
    "cross-attention without dropout": (DecoderCrossWithoutDropout,
                                        "in training mode, the cross-attention weights get no "
                                        "dropout"),
    "norm2 twice": (DecoderNorm2Twice, "norm2 is used for both cross-attention and feed-forward"),
    "cross-attention result thrown away": (DecoderForgetsCrossResult,
                                           "the cross-attention sub-layer's result is thrown away"),
    "memory normalized": (DecoderNormalizesMemory,
                          "memory is normalized before the cross-attention"),
    "pre-LN final norm": (DecoderPreLNFinalNorm,
                          "in the feed-forward sub-layer, pre-LN has no norm after the residual "
                          "sum"),
    "norm2 and norm3 swapped": (DecoderNorms2And3Swapped, "the norms are used in the wrong order"),
    "no dropout on the feed-forward output": (DecoderNoDropoutOnFFNOutput,
                                              "no dropout acts on the feed-forward sub-layer's "
                                              "output"),
}


class DecoderTorchStyle(nn.Module):
    """Written the way PyTorch's nn.TransformerDecoderLayer is: one dropout module per place."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.ffn = LabFeedForward(d_model, d_ff, dropout, activation)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model, eps=layer_norm_eps)
                                              for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))
        self.norm_first = norm_first

    def _sa_block(self, x, mask):
        return self.dropout1(self.self_attn(x, x, x, mask=mask))

    def _mha_block(self, x, mem, mask):
        return self.dropout2(self.cross_attn(x, mem, mem, mask=mask))

    def _ff_block(self, x):
        return self.dropout3(self.ffn(x))

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), self_mask)
            x = x + self._mha_block(self.norm2(x), memory, memory_mask)
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(x + self._sa_block(x, self_mask))
            x = self.norm2(x + self._mha_block(x, memory, memory_mask))
            x = self.norm3(x + self._ff_block(x))
        return x


class DecoderWithOwnParts(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5):
        super().__init__()
        self.norm_first, self.p = norm_first, dropout
        self.self_attn = LabTwoAttention(d_model, num_heads, dropout)
        self.cross_attn = LabTwoAttention(d_model, num_heads, dropout)
        self.ffn = FunctionalFeedForward(d_model, d_ff, dropout, activation)
        for i in (1, 2, 3):
            setattr(self, f"norm{i}", nn.LayerNorm(d_model, eps=layer_norm_eps))

    def connect(self, x, block, norm):
        if self.norm_first:
            return x + F.dropout(block(norm(x)), self.p, self.training)
        return norm(x + F.dropout(block(x), self.p, self.training))

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.connect(x, lambda y: self.self_attn(y, y, y, self_mask), self.norm1)
        x = self.connect(x, lambda y: self.cross_attn(y, memory, memory, memory_mask), self.norm2)
        return self.connect(x, self.ffn, self.norm3)


CORRECT_DECODER = [DecoderBase, DecoderTorchStyle, DecoderWithOwnParts]


# --- the entries, run by test_checks_catalogue.py ----------------------------------------------

catalogue.wrong("check_feed_forward", WRONG_FFN)
catalogue.accepted("check_feed_forward", CORRECT_FFN, cases=6)
catalogue.wrong("check_sublayer_connection", WRONG_SUBLAYER)
catalogue.accepted("check_sublayer_connection", CORRECT_SUBLAYER, cases=4)
catalogue.wrong("check_encoder_layer", WRONG_ENCODER)
catalogue.accepted("check_encoder_layer", CORRECT_ENCODER, cases=11)
catalogue.wrong("check_decoder_layer", WRONG_DECODER)
catalogue.accepted("check_decoder_layer", CORRECT_DECODER, cases=11)


def test_the_catalogue_is_large():
    assert len(WRONG_FFN) + len(WRONG_SUBLAYER) + len(WRONG_ENCODER) + len(WRONG_DECODER) >= 30



def test_the_checks_leave_dropout_as_they_found_it():
    """The checks make dropout drop a fixed pattern while they run, and only then."""
    before = (F.dropout, torch.dropout, F.scaled_dot_product_attention)
    checks.check_encoder_layer(EncoderBase)
    with pytest.raises(AssertionError):
        checks.check_decoder_layer(DecoderCrossWithoutDropout)
    assert (F.dropout, torch.dropout, F.scaled_dot_product_attention) == before
    x = torch.ones(1000)
    assert not torch.equal(F.dropout(x, 0.5), F.dropout(x, 0.5))
    assert math.isclose(float(F.dropout(x, 0.0).sum()), 1000.0)


class FFNBernoulliDropout(FFNBase):
    """Dropout by hand: right in distribution, but not through nn.Dropout or F.dropout."""

    def forward(self, x):
        h = self.act(self.linear1(x))
        if self.training and self.dropout.p > 0:
            keep = torch.rand_like(h) >= self.dropout.p
            h = h * keep / (1 - self.dropout.p)
        return self.linear2(h)


def test_a_dropout_the_check_cannot_follow_is_reported_as_such():
    with pytest.raises(AssertionError, match="^check_feed_forward: ") as info:
        checks.check_feed_forward(FFNBernoulliDropout)
    message = str(info.value)
    assert "changes from one call to the next" in message, message
    assert "in training mode" in message and catalogue.GENERIC not in message, message
