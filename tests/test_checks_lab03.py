"""transformer_lib.checks, lab 3 (encoder and decoder layers): a catalogue of wrong
implementations, each to be rejected with the right diagnosis; correct implementations written
differently, and the library's own, to be accepted. They are registered in ``checks_catalogue``
and run by ``test_checks_catalogue.py``."""

import checks_catalogue as catalogue
import torch
from torch import nn

from transformer_lib import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    MultiHeadAttention,
    sublayer_connection,
)

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


WRONG_FFN = {
    "no activation": (FFNWithoutActivation, "activation is missing"),
    "always ReLU": (FFNAlwaysReLU, "activation argument is ignored"),
    "nn.Sequential": (FFNSequential, "not in the contract: net.0.weight"),
}

catalogue.wrong("check_feed_forward", WRONG_FFN)
catalogue.accepted("check_feed_forward", [FeedForward], cases=6)


WRONG_SUBLAYER = {
    "placements swapped": (lambda x, f, norm, drop, nf: norm(x + drop(f(x))) if nf
                           else x + drop(f(norm(x))), "norm_first=False (post-LN"),
    "always post-LN": (lambda x, f, norm, drop, nf: norm(x + drop(f(x))),
                       "norm_first=True must give pre-LN"),
    "no residual": (lambda x, f, norm, drop, nf: drop(f(norm(x))) if nf else norm(drop(f(x))),
                    "residual connection is missing"),
    "residual from norm(x)": (lambda x, f, norm, drop, nf: (lambda n: n + drop(f(n)))(norm(x)) if nf
                              else norm(x + drop(f(x))), "adds the input x itself"),
    "dropout after the sum": (lambda x, f, norm, drop, nf: drop(x + f(norm(x))) if nf
                              else norm(drop(x + f(x))),
                              "dropout is applied after the residual sum"),
    "dropout forgotten": (lambda x, f, norm, drop, nf: x + f(norm(x)) if nf else norm(x + f(x)),
                          "dropout is not applied"),
}

catalogue.wrong("check_sublayer_connection", WRONG_SUBLAYER)


def written_out(x, sublayer, norm, dropout, norm_first):
    if norm_first:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


catalogue.accepted("check_sublayer_connection", [sublayer_connection, written_out], cases=4)


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
    "pre-LN with a norm after each sum": (EncoderPreLNWithExtraNorms,
                                          "no norm after each residual"),
}

catalogue.wrong("check_encoder_layer", WRONG_ENCODER)
catalogue.accepted("check_encoder_layer", [EncoderLayer, LearnerEncoderLayer], cases=11)


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
            x = (x + self.dropout(block(norm(x))) if self.norm_first
                 else norm(x + self.dropout(block(x))))
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
    "memory normalized in pre-LN": (DecoderNormsMemory,
                                    "memory goes into the cross-attention as it is"),
    "cross-attention first": (DecoderCrossFirst,
                              "wrong order: self-attention, then cross-attention"),
}

catalogue.wrong("check_decoder_layer", WRONG_DECODER)
catalogue.accepted("check_decoder_layer", [DecoderLayer, LearnerDecoderLayer], cases=11)
