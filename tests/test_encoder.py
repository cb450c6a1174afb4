"""Chapter 4's exports: FeedForward, sublayer_connection, EncoderLayer, Encoder; and from_torch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib import (
    Encoder,
    EncoderLayer,
    FeedForward,
    from_torch,
    padding_mask,
    sublayer_connection,
)

torch.backends.mha.set_fastpath_enabled(False)  # PyTorch's fast path zeroes padded outputs

TOL = {torch.float32: {"atol": 2e-5, "rtol": 2e-5}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}


def randomize_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def random_padding(B, S, generator=None):
    lengths = torch.randint(1, S + 1, (B,), generator=generator)
    return torch.arange(S) >= lengths[:, None]  # (B, S) True at padding, PyTorch's convention


def test_feed_forward_equation_and_gelu():
    for activation, act in (("relu", F.relu), ("gelu", F.gelu)):
        ffn = randomize_(FeedForward(8, 32, activation=activation))
        x = torch.randn(3, 4, 8)
        expected = act(x @ ffn.linear1.weight.T
                       + ffn.linear1.bias) @ ffn.linear2.weight.T + ffn.linear2.bias
        torch.testing.assert_close(ffn(x), expected)


def test_feed_forward_is_position_wise():
    ffn = FeedForward(8, 16)
    x = torch.randn(2, 6, 8)
    perm = torch.randperm(6)
    torch.testing.assert_close(ffn(x[:, perm]), ffn(x)[:, perm])


def test_sublayer_connection_orders():
    norm = randomize_(nn.LayerNorm(8))
    x = torch.randn(2, 3, 8)
    f = torch.tanh
    torch.testing.assert_close(sublayer_connection(x, f, norm, nn.Identity(), False),
                               norm(x + f(x)))
    torch.testing.assert_close(sublayer_connection(x, f, norm, nn.Identity(), True), x + f(norm(x)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_layer_matches_torch(dtype, norm_first, activation, batch_first):
    g = torch.Generator().manual_seed(hash((norm_first, activation, batch_first)) % 2**31)
    D, H = [(16, 2), (24, 4), (32, 8)][torch.randint(0, 3, (1,), generator=g).item()]
    theirs = nn.TransformerEncoderLayer(D, H, 3 * D, dropout=0.0, activation=activation,
                                        norm_first=norm_first, batch_first=batch_first,
                                        layer_norm_eps=1e-6)
    theirs = randomize_(theirs).to(dtype).eval()
    ours = from_torch(theirs)
    assert isinstance(ours, EncoderLayer) and not ours.training
    assert ours.norm1.eps == 1e-6 and ours.ffn.activation == activation
    x = torch.randn(4, 9, D, dtype=dtype)
    pad = random_padding(4, 9, g)
    expected = theirs(x if batch_first else x.transpose(0, 1), src_key_padding_mask=pad)
    expected = expected if batch_first else expected.transpose(0, 1)
    torch.testing.assert_close(ours(x, ~pad[:, None, None, :]), expected, **TOL[dtype])
    # an attention mask as well: causal self-attention inside the encoder layer
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    expected = theirs(x if batch_first else x.transpose(0, 1), src_mask=~causal)
    expected = expected if batch_first else expected.transpose(0, 1)
    torch.testing.assert_close(ours(x, causal), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("final_norm", [False, True])
def test_encoder_stack_matches_torch(dtype, norm_first, final_norm):
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation="gelu",
                                       norm_first=norm_first, batch_first=True)
    theirs = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(16) if final_norm else None,
                                   enable_nested_tensor=False)
    theirs = randomize_(theirs).to(dtype).eval()
    ours = from_torch(theirs)
    assert isinstance(ours, Encoder) and len(ours.layers) == 3
    assert (ours.norm is not None) == final_norm
    w = [layer.ffn.linear1.weight for layer in ours.layers]
    assert not torch.equal(w[0], w[1])  # the layers keep their different weights
    x = torch.randn(3, 7, 16, dtype=dtype)
    pad = random_padding(3, 7)
    torch.testing.assert_close(ours(x, ~pad[:, None, None, :]),
                               theirs(x, src_key_padding_mask=pad), **TOL[dtype])


def test_from_torch_copies_without_sharing_and_keeps_mode():
    theirs = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, batch_first=True)
    ours = from_torch(theirs)
    assert ours.training and ours.dropout.p == 0.2 and ours.self_attn.dropout == 0.2
    with torch.no_grad():
        theirs.linear1.weight.zero_()
    assert ours.ffn.linear1.weight.abs().sum() > 0


def test_from_torch_rejects_unsupported_activation():
    theirs = nn.TransformerEncoderLayer(8, 2, 16, activation=torch.tanh)
    with pytest.raises(ValueError, match="activations 'relu' and 'gelu'"):
        from_torch(theirs)


def test_encoder_layer_shapes_norms_and_invariants():
    layer = randomize_(EncoderLayer(32, 4, 64, dropout=0.0)).eval()
    tokens = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]])
    mask = padding_mask(tokens, 0)
    x = torch.randn(2, 5, 32)
    y = layer(x, mask)
    assert y.shape == x.shape and y.dtype == x.dtype
    x2 = x.clone()
    x2[1, 3:] = 50 * torch.randn(2, 32)
    torch.testing.assert_close(layer(x2, mask)[1, :3], y[1, :3])
    nothing = torch.zeros(2, 1, 1, 5, dtype=torch.bool)
    assert torch.isfinite(layer(x, nothing)).all()


def test_pre_ln_encoder_has_final_norm_by_default():
    assert Encoder(2, 16, 2, 32, norm_first=True).norm is not None
    assert Encoder(2, 16, 2, 32, norm_first=False).norm is None
    assert Encoder(2, 16, 2, 32, norm_first=False, final_norm=True).norm is not None


def test_dropout_only_in_training():
    layer = EncoderLayer(16, 2, 32, dropout=0.5)
    x = torch.randn(2, 4, 16)
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: FeedForward(8, 0), "d_ff must be a positive int"),
        (lambda: FeedForward(8, 16, activation="swish"),
         r"activation must be one of \['gelu', 'relu'\], got 'swish'"),
        (lambda: EncoderLayer(8, 2, 16, dropout=1.5), "dropout must be a probability"),
        (lambda: EncoderLayer(10, 3, 16), "d_model must be divisible by num_heads"),
        (lambda: EncoderLayer(8, 2, 16, activation="tanh"), "activation must be one of"),
        (lambda: Encoder(0, 8, 2, 16), "num_layers must be a positive int"),
        (lambda: EncoderLayer(8, 2, 16, layer_norm_eps=0.0),
         "layer_norm_eps must be a positive finite"),
        (lambda: EncoderLayer(8, 2, 16, layer_norm_eps=-1e-5), "layer_norm_eps must be a positive"),
        (lambda: Encoder(2, 8, 2, 16, layer_norm_eps=float("nan")),
         "layer_norm_eps must be a positive"),
        (lambda: EncoderLayer(8, 2, 16, layer_norm_eps="1e-5"),
         "layer_norm_eps must be a positive"),
    ],
)
def test_bad_constructor_arguments(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


def test_bad_forward_arguments():
    layer = EncoderLayer(8, 2, 16)
    with pytest.raises(ValueError, match=r"x must have shape \(B, S, D\) with D=d_model=8"):
        layer(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"x must have shape \(B, S, D\)"):
        layer(torch.randn(5, 8))
    with pytest.raises(ValueError, match="mask of shape"):
        layer(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="d_model=8"):
        FeedForward(8, 16)(torch.randn(2, 3, 4))


@pytest.mark.parametrize("norm_first", [False, True])
def test_is_causal_equals_an_explicit_causal_mask(norm_first):
    from transformer_lib import causal_mask

    torch.manual_seed(0)
    layer = EncoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first).double().eval()
    stack = Encoder(2, 16, 4, 32, dropout=0.0, norm_first=norm_first).double().eval()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    tol = {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(layer(x, is_causal=True), layer(x, causal_mask(7)), **tol)
    torch.testing.assert_close(stack(x, is_causal=True), stack(x, causal_mask(7)), **tol)
    # causal: changing the last position leaves the earlier ones alone
    changed = x.clone()
    changed[:, -1] += 1.0
    torch.testing.assert_close(stack(changed, is_causal=True)[:, :-1],
                               stack(x, is_causal=True)[:, :-1], **tol)
    with pytest.raises(ValueError, match="not both"):
        layer(x, causal_mask(7), is_causal=True)


def test_a_replacement_attention_gets_every_argument_of_the_package_signature():
    # the layers hand is_causal and cache to their attention always: a replacement (a lab's own
    # layer, behind an adapter) takes the package's signature, and an attention without those
    # arguments fails loudly instead of silently losing the causal mask
    seen = []

    class Adapter(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, query, key, value, mask=None, need_weights=False, is_causal=False,
                    cache=None):
            seen.append((is_causal, cache))
            return self.inner(query, key, value, mask=mask, need_weights=need_weights)

    class Plain(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, query, key, value, mask=None):
            return self.inner(query, key, value, mask=mask)

    encoder = Encoder(2, 16, 4, 32, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    expected = encoder(x)
    for layer in encoder.layers:
        layer.self_attn = Adapter(layer.self_attn)
    torch.testing.assert_close(encoder(x), expected)
    assert seen == [(False, None), (False, None)]
    for layer in encoder.layers:
        layer.self_attn = Plain(layer.self_attn.inner)
    with pytest.raises(TypeError, match="is_causal"):
        encoder(x)


# ---- one forward pass: attention weights and the cache go down through the layers


@pytest.mark.parametrize("norm_first", [False, True])
def test_need_weights_returns_the_output_and_the_weights_of_the_same_pass(norm_first):
    torch.manual_seed(0)
    layer = randomize_(EncoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first)).double().eval()
    stack = randomize_(Encoder(3, 16, 4, 32, dropout=0.0, norm_first=norm_first)).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    mask = ~random_padding(2, 6, torch.Generator().manual_seed(1))[:, None, None, :]
    out, weights = layer(x, mask, need_weights=True)
    torch.testing.assert_close(out, layer(x, mask), **TOL[torch.float64])
    # the weights are the self-attention's on the sub-layer's input (normalized first in pre-LN)
    y = layer.norm1(x) if norm_first else x
    expected = layer.self_attn(y, y, y, mask=mask, need_weights=True)[1]
    torch.testing.assert_close(weights, expected, rtol=0, atol=0)
    out, per_layer = stack(x, mask, need_weights=True)
    torch.testing.assert_close(out, stack(x, mask), **TOL[torch.float64])
    h = x
    for w, one in zip(per_layer, stack.layers, strict=True):
        torch.testing.assert_close(w, one(h, mask, need_weights=True)[1], **TOL[torch.float64])
        h = one(h, mask)
    causal_out, causal_w = layer(x, is_causal=True, need_weights=True)
    torch.testing.assert_close(causal_out, layer(x, is_causal=True), **TOL[torch.float64])
    assert (causal_w.triu(diagonal=1) == 0).all()


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_encoder_in_pieces_equals_one_causal_pass(norm_first):
    from transformer_lib import AttentionCache

    torch.manual_seed(0)
    stack = randomize_(Encoder(2, 16, 4, 32, dropout=0.0, norm_first=norm_first)).double().eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    full = stack(x, is_causal=True)
    caches = [AttentionCache() for _ in stack.layers]
    pieces = [stack(x[:, a:b], is_causal=True, cache=caches) for a, b in [(0, 3), (3, 4), (4, 7)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL[torch.float64])
    assert [c.length for c in caches] == [7, 7]
    with pytest.raises(ValueError, match="cache must hold one cache per layer, 2, got 1"):
        stack(x, is_causal=True, cache=caches[:1])


def test_attention_sublayer_passes_every_option_on():
    from transformer_lib import attention_sublayer

    seen = []

    class Recording(nn.Module):  # an attention with the package's arguments
        def forward(self, query, key, value, mask=None, need_weights=False, is_causal=False,
                    cache=None):
            seen.append((key is query, mask, need_weights, is_causal, cache))
            return (query, "w") if need_weights else query

    x, memory, weights, cache = torch.randn(1, 2, 4), torch.randn(1, 3, 4), [], object()
    assert attention_sublayer(Recording())(x) is x
    assert attention_sublayer(Recording(), is_causal=True, cache=cache)(x) is x
    assert attention_sublayer(Recording(), None, memory, weights=weights)(x) is x
    assert seen == [(True, None, False, False, None), (True, None, False, True, cache),
                    (False, None, True, False, None)]
    assert weights == ["w"]
