"""transformer_lib.decoder: DecoderLayer and Decoder, and from_torch for PyTorch's decoders.

Shapes; invariants (causality, padding has no influence, no NaN); clear errors; and equivalence
with nn.TransformerDecoderLayer / nn.TransformerDecoder over random configurations.
"""

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import transformer_lib
from transformer_lib import Decoder, DecoderLayer, causal_mask, from_torch, padding_mask

TOL = {torch.float32: {"atol": 2e-5, "rtol": 2e-5}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}


@pytest.fixture(autouse=True, scope="module")
def _reference_code_path():
    # PyTorch's fast path changes the outputs at padded positions; compare with the reference path
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(enabled)


def _randomize_(module: nn.Module) -> nn.Module:
    """Every parameter random, LayerNorm gains and biases included, so a mix-up shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def _lengths_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True at padding (PyTorch's key_padding_mask convention)."""
    return torch.arange(size) >= lengths[:, None]


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("T", "S"), [(1, 1), (5, 3), (3, 9)])
def test_shapes_and_dtypes(T, S, dtype):
    layer = DecoderLayer(16, 4, 32, dropout=0.0).to(dtype)
    decoder = Decoder(2, 16, 4, 32, dropout=0.0, norm_first=True).to(dtype)
    x, memory = torch.randn(2, T, 16, dtype=dtype), torch.randn(2, S, 16, dtype=dtype)
    for module in (layer, decoder):
        y = module(x, memory, causal_mask(T), torch.ones(2, 1, 1, S, dtype=torch.bool))
        assert y.shape == (2, T, 16) and y.dtype == dtype
    self_w, cross_w = layer.attention_weights(x, memory, causal_mask(T))
    assert self_w.shape == (2, 4, T, T) and cross_w.shape == (2, 4, T, S)
    per_layer = decoder.attention_weights(x, memory)
    assert len(per_layer) == 2 and all(w.shape == (2, 4, T, S) for _, w in per_layer)


def test_submodules_and_final_norm():
    layer = DecoderLayer(8, 2, 16, activation="gelu", norm_first=True, layer_norm_eps=1e-6,
                         bias=False)
    names = {name for name, _ in layer.named_children()}
    assert names == {"self_attn", "cross_attn", "ffn", "norm1", "norm2", "norm3", "dropout"}
    assert layer.ffn.activation == "gelu" and layer.norm3.eps == 1e-6 and layer.norm1.bias is None
    assert layer.ffn.linear1.bias is None and layer.cross_attn.q_proj.bias is None
    assert Decoder(2, 8, 2, 16).norm is None
    assert Decoder(2, 8, 2, 16, norm_first=True).norm is not None
    assert Decoder(2, 8, 2, 16, final_norm=True).norm is not None
    assert Decoder(2, 8, 2, 16, norm_first=True, final_norm=False).norm is None
    stack = Decoder(3, 8, 2, 16)
    weights = [layer.cross_attn.v_proj.weight for layer in stack.layers]
    assert (not torch.equal(weights[0], weights[1])
            and weights[0].data_ptr() != weights[1].data_ptr())


def test_attention_weights_match_the_masks_and_the_forward_pass():
    layer = DecoderLayer(16, 4, 32, dropout=0.0).eval()
    tgt = torch.tensor([[1, 5, 6, 7], [1, 8, 0, 0]])
    src = torch.tensor([[3, 4, 5], [9, 0, 0]])
    self_mask, memory_mask = causal_mask(4) & padding_mask(tgt, 0), padding_mask(src, 0)
    x, memory = torch.randn(2, 4, 16), torch.randn(2, 3, 16)
    self_w, cross_w = layer.attention_weights(x, memory, self_mask, memory_mask)
    assert (self_w.masked_select(~self_mask.expand_as(self_w)) == 0).all()
    assert (cross_w[1, ..., 1:] == 0).all()
    torch.testing.assert_close(self_w.sum(-1), torch.ones(2, 4, 4))
    torch.testing.assert_close(cross_w.sum(-1), torch.ones(2, 4, 4))
    # the weights are those of the forward pass: redo the layer by hand with them (post-LN)
    v = layer.self_attn.v_proj(x).view(2, 4, 4, 4).transpose(1, 2)  # (B, H, T, Dh)
    attended = layer.self_attn.out_proj((self_w @ v).transpose(1, 2).reshape(2, 4, 16))
    h = layer.norm1(x + attended)
    v = layer.cross_attn.v_proj(memory).view(2, 3, 4, 4).transpose(1, 2)  # (B, H, S, Dh)
    h = layer.norm2(h + layer.cross_attn.out_proj((cross_w @ v).transpose(1, 2).reshape(2, 4, 16)))
    torch.testing.assert_close(layer.norm3(h + layer.ffn(h)),
                               layer(x, memory, self_mask, memory_mask))


def test_dropout_only_in_training_mode():
    layer = DecoderLayer(16, 2, 32, dropout=0.5)
    x, memory = torch.randn(2, 4, 16), torch.randn(2, 3, 16)
    assert not torch.equal(layer(x, memory), layer(x, memory))
    layer.eval()
    assert torch.equal(layer(x, memory), layer(x, memory))


# --- invariants -------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True])
def test_changing_the_future_never_changes_earlier_outputs(norm_first):
    decoder = Decoder(2, 16, 4, 32, dropout=0.0, norm_first=norm_first).eval()
    T, S = 7, 5
    x, memory = torch.randn(3, T, 16), torch.randn(3, S, 16)
    y = decoder(x, memory, causal_mask(T))
    for k in range(T - 1):
        x_new = x.clone()
        x_new[:, k + 1:] = 10 * torch.randn(3, T - k - 1, 16)
        y_new = decoder(x_new, memory, causal_mask(T))
        torch.testing.assert_close(y_new[:, :k + 1], y[:, :k + 1], atol=1e-6, rtol=1e-6)
        assert (y_new[:, k + 1:] - y[:, k + 1:]).abs().max() > 1e-2  # the future itself does change


def test_causality_in_the_jacobian():
    layer = DecoderLayer(8, 2, 16, dropout=0.0).double().eval()
    T = 5
    x, memory = torch.randn(1, T, 8, dtype=torch.float64), torch.randn(1, 4, 8, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: layer(x, memory, causal_mask(T)), x)
    influence = jac[0, :, :, 0].norm(dim=(1, 3))  # (T, D, T, D) -> (T, T)
    past = causal_mask(T)
    assert (influence[~past] <= 1e-12).all() and (influence[past] > 1e-3).all()


@pytest.mark.parametrize("norm_first", [False, True])
def test_padding_has_no_influence(norm_first):
    decoder = Decoder(2, 16, 4, 32, dropout=0.0, norm_first=norm_first).eval()
    src = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 0, 0, 0]])
    tgt = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    self_mask, memory_mask = causal_mask(4) & padding_mask(tgt, 0), padding_mask(src, 0)
    x, memory = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    y = decoder(x, memory, self_mask, memory_mask)
    memory_new, x_new = memory.clone(), x.clone()
    memory_new[1, 2:] = 100 * torch.randn(3, 16)  # padded source positions
    x_new[1, 3] = 100 * torch.randn(16)  # the padded target position
    y_new = decoder(x_new, memory_new, self_mask, memory_mask)
    torch.testing.assert_close(y_new[0], y[0], atol=0, rtol=0)
    torch.testing.assert_close(y_new[1, :3], y[1, :3], atol=1e-6, rtol=1e-6)


def test_fully_masked_rows_give_no_nan_forward_or_backward():
    decoder = Decoder(2, 16, 4, 32, dropout=0.0, norm_first=True)
    x = torch.randn(2, 4, 16, requires_grad=True)
    memory = torch.randn(2, 3, 16, requires_grad=True)
    # batch 1: all padding
    no_source = torch.tensor([True, False]).view(2, 1, 1, 1).expand(2, 1, 1, 3)
    no_target = torch.zeros(4, 4, dtype=torch.bool)  # no query may attend to anything
    for self_mask in (causal_mask(4), no_target):
        y = decoder(x, memory, self_mask, no_source)
        assert torch.isfinite(y).all()
        y.sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(memory.grad).all()
        assert memory.grad[1].abs().max() == 0  # a fully padded source gets no gradient
        x.grad = memory.grad = None
    weights = decoder.attention_weights(x, memory, no_target, no_source)
    assert all(torch.isfinite(w).all() for pair in weights for w in pair)
    assert (weights[0][0] == 0).all() and (weights[0][1][1] == 0).all()


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"activation": "swish"}, r"activation must be one of \['gelu', 'relu'\], got 'swish'"),
        ({"d_model": 10, "num_heads": 3}, r"d_model must be divisible by num_heads"),
        ({"d_ff": 0}, r"d_ff must be a positive int"),
        ({"num_heads": 2.0}, r"num_heads must be a positive int"),
        ({"dropout": 1.5}, r"dropout must be a probability"),
        ({"layer_norm_eps": 0}, r"layer_norm_eps must be a positive finite number, got 0"),
        ({"layer_norm_eps": -1.0}, r"layer_norm_eps must be a positive finite number, got -1.0"),
        ({"layer_norm_eps": float("inf")}, r"layer_norm_eps must be a positive finite number"),
    ],
)
def test_bad_constructor_arguments(kwargs, pattern):
    args = {"d_model": 8, "num_heads": 2, "d_ff": 16} | kwargs
    with pytest.raises(ValueError, match=pattern):
        DecoderLayer(**args)
    with pytest.raises(ValueError, match=pattern):
        Decoder(2, **args)


def test_bad_num_layers():
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        Decoder(0, 8, 2, 16)


@pytest.mark.parametrize(
    ("x_shape", "memory_shape", "masks", "error", "pattern"),
    [
        ((2, 4, 8), (2, 3, 6), {}, ValueError,
         r"memory must have shape \(B, S, D\) with D = d_model = 8"),
        ((2, 4, 8), (3, 8), {}, ValueError, r"memory must have shape \(B, S, D\)"),
        ((2, 4, 6), (2, 3, 8), {}, ValueError,
         r"x must have shape \(B, T, D\) with D = d_model = 8"),
        ((4, 8), (2, 3, 8), {}, ValueError, r"x must have shape \(B, T, D\)"),
        ((2, 4, 8), (1, 3, 8), {}, ValueError, r"memory must have x's batch size B = 2"),
        ((2, 4, 8), (2, 3, 8), {"self_mask": torch.ones(3, 3, dtype=torch.bool)}, ValueError,
         r"self_mask of shape \(3, 3\) does not broadcast to \(B, H, T, T\) = \(2, 2, 4, 4\)"),
        ((2, 4, 8), (2, 3, 8), {"memory_mask": torch.ones(2, 1, 1, 4, dtype=torch.bool)},
         ValueError, r"memory_mask of shape \(2, 1, 1, 4\) does not broadcast to "
         r"\(B, H, T, S\) = \(2, 2, 4, 3\)"),
        ((2, 4, 8), (2, 3, 8), {"memory_mask": torch.ones(1, 3)}, ValueError,
         r"memory_mask must be a bool tensor \(True = may attend\), got dtype torch.float32"),
        ((2, 4, 8), (2, 3, 8), {"self_mask": [[True]]}, TypeError,
         r"self_mask must be a bool torch.Tensor"),
    ],
)
def test_bad_inputs_name_the_argument(x_shape, memory_shape, masks, error, pattern):
    layer, decoder = DecoderLayer(8, 2, 16), Decoder(2, 8, 2, 16)
    x, memory = torch.randn(*x_shape), torch.randn(*memory_shape)
    for module in (layer, decoder):
        with pytest.raises(error, match=pattern):
            module(x, memory, **masks)
    with pytest.raises(error, match=pattern):
        layer.attention_weights(x, memory, **masks)


def test_memory_of_another_dtype_or_type():
    layer = DecoderLayer(8, 2, 16)
    with pytest.raises(ValueError,
                       match=r"memory must have x's dtype torch.float32, got torch.float64"):
        layer(torch.randn(1, 2, 8), torch.randn(1, 3, 8, dtype=torch.float64))
    with pytest.raises(TypeError,
                       match=r"memory must be a torch.Tensor of shape \(B, S, D\), got list"):
        layer(torch.randn(1, 2, 8), [[0.0] * 8])


# --- equivalence with PyTorch -----------------------------------------------------------------


def _random_config(seed: int) -> dict:
    rng = random.Random(seed)
    num_heads = rng.choice([1, 2, 4])
    d_model = num_heads * rng.choice([2, 4, 8])
    return {
        "d_model": d_model,
        "num_heads": num_heads,
        "d_ff": rng.choice([d_model, 2 * d_model, 3 * d_model + 1]),
        "norm_first": seed % 2 == 1,  # both placements, in both dtypes
        "activation": ["relu", "gelu"][(seed // 2) % 2],
        "dtype": [torch.float32, torch.float64][(seed // 4) % 2],
        "bias": rng.random() < 0.75,
        "batch_first": rng.random() < 0.5,
        "layer_norm_eps": rng.choice([1e-5, 1e-6]),
        "num_layers": rng.choice([1, 2, 3]),
        "final_norm": rng.random() < 0.5,
        "B": rng.randint(1, 4),
        "T": rng.randint(1, 7),
        "S": rng.randint(1, 7),
    }


def _their_layer(cfg: dict) -> nn.TransformerDecoderLayer:
    return nn.TransformerDecoderLayer(
        cfg["d_model"], cfg["num_heads"], cfg["d_ff"], dropout=0.0, activation=cfg["activation"],
        layer_norm_eps=cfg["layer_norm_eps"], batch_first=cfg["batch_first"],
        norm_first=cfg["norm_first"], bias=cfg["bias"], dtype=cfg["dtype"])


def _compare(ours: nn.Module, theirs: nn.Module, cfg: dict, causal: bool = True) -> None:
    B, T, S, D, dtype = cfg["B"], cfg["T"], cfg["S"], cfg["d_model"], cfg["dtype"]
    x, memory = torch.randn(B, T, D, dtype=dtype), torch.randn(B, S, D, dtype=dtype)
    # at least one real token in every sequence: PyTorch gives NaN for a query with no key
    tgt_padding = _lengths_mask(torch.randint(1, T + 1, (B,)), T)
    src_padding = _lengths_mask(torch.randint(1, S + 1, (B,)), S)
    their_masks = {"tgt_key_padding_mask": tgt_padding, "memory_key_padding_mask": src_padding}
    self_mask = ~tgt_padding[:, None, None, :]
    if causal:
        their_masks |= {"tgt_mask": ~causal_mask(T), "tgt_is_causal": True}
        self_mask = causal_mask(T) & self_mask
    if cfg["batch_first"]:
        expected = theirs(x, memory, **their_masks)
    else:
        expected = theirs(x.transpose(0, 1), memory.transpose(0, 1), **their_masks).transpose(0, 1)
    got = ours(x, memory, self_mask=self_mask, memory_mask=~src_padding[:, None, None, :])
    torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("seed", range(16))
def test_decoder_layer_matches_pytorch(seed):
    torch.manual_seed(seed)
    cfg = _random_config(seed)
    theirs = _randomize_(_their_layer(cfg)).eval()
    ours = from_torch(theirs)
    assert type(ours) is DecoderLayer and not ours.training
    assert all(p.dtype == cfg["dtype"] for p in ours.parameters())
    _compare(ours, theirs, cfg, causal=seed % 3 != 0)


@pytest.mark.parametrize("seed", range(16))
def test_decoder_matches_pytorch(seed):
    torch.manual_seed(100 + seed)
    cfg = _random_config(100 + seed)
    norm = nn.LayerNorm(cfg["d_model"], eps=1e-4, bias=cfg["bias"], dtype=cfg["dtype"])
    theirs = nn.TransformerDecoder(_their_layer(cfg), cfg["num_layers"],
                                   norm=norm if cfg["final_norm"] else None)
    theirs = _randomize_(theirs).eval()  # every layer gets its own random weights
    ours = from_torch(theirs)
    assert type(ours) is Decoder and len(ours.layers) == cfg["num_layers"]
    assert (ours.norm is None) == (not cfg["final_norm"])
    if cfg["final_norm"]:
        assert ours.norm.eps == 1e-4
    _compare(ours, theirs, cfg, causal=seed % 3 != 0)


def test_gradients_match_pytorch():
    theirs = _randomize_(nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                                    dtype=torch.float64)).eval()
    ours = from_torch(theirs)
    x, memory = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 4, 8, dtype=torch.float64)
    ours(x, memory, causal_mask(5)).square().sum().backward()
    theirs(x, memory, tgt_mask=~causal_mask(5), tgt_is_causal=True).square().sum().backward()
    torch.testing.assert_close(ours.cross_attn.k_proj.weight.grad,
                               theirs.multihead_attn.in_proj_weight.grad[8:16],
                               **TOL[torch.float64])
    torch.testing.assert_close(ours.norm3.weight.grad, theirs.norm3.weight.grad,
                               **TOL[torch.float64])


# --- from_torch details -----------------------------------------------------------------------


def test_from_torch_copies_weights_into_the_right_places():
    theirs = nn.TransformerDecoderLayer(8, 2, 16)
    ours = from_torch(theirs)
    w = theirs.multihead_attn.in_proj_weight
    assert torch.equal(ours.cross_attn.q_proj.weight, w[:8])
    assert torch.equal(ours.cross_attn.k_proj.weight, w[8:16])
    assert torch.equal(ours.cross_attn.v_proj.weight, w[16:])
    assert torch.equal(ours.self_attn.v_proj.weight, theirs.self_attn.in_proj_weight[16:])
    assert torch.equal(ours.ffn.linear2.weight, theirs.linear2.weight)
    with torch.no_grad():
        ours.norm3.weight.zero_()  # a copy: the PyTorch module is untouched
        ours.cross_attn.q_proj.weight.zero_()
    assert (theirs.norm3.weight == 1).all() and theirs.multihead_attn.in_proj_weight.abs().sum() > 0


def test_from_torch_keeps_settings_and_mode():
    theirs = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.2, activation=F.gelu,
                                        layer_norm_eps=1e-3, norm_first=True, bias=False)
    ours = from_torch(theirs)
    assert ours.training and ours.norm_first and ours.ffn.activation == "gelu"
    assert ours.dropout.p == ours.ffn.dropout.p == 0.2
    assert ours.self_attn.dropout == ours.cross_attn.dropout == 0.2
    assert all(getattr(ours, f"norm{i}").eps == 1e-3 for i in (1, 2, 3))
    assert (ours.ffn.linear1.bias is None and ours.norm2.bias is None
            and ours.cross_attn.out_proj.bias is None)
    assert not from_torch(theirs.eval()).training
    assert (from_torch(nn.TransformerDecoderLayer(8, 2, 16, activation=nn.GELU())).ffn.activation
            == "gelu")
    assert (from_torch(nn.TransformerDecoderLayer(8, 2, 16, activation=nn.ReLU())).ffn.activation
            == "relu")


def test_from_torch_decoder_with_and_without_norm():
    layer = nn.TransformerDecoderLayer(8, 2, 16)
    assert from_torch(nn.TransformerDecoder(layer, 2)).norm is None
    ours = from_torch(nn.TransformerDecoder(layer, 3, norm=nn.LayerNorm(8)).double())
    assert ours.norm is not None and all(p.dtype == torch.float64 for p in ours.parameters())
    assert transformer_lib.Decoder is type(ours)


@pytest.mark.parametrize("activation", [F.silu, nn.GELU(approximate="tanh"), lambda t: t])
def test_from_torch_rejects_other_activations(activation):
    with pytest.raises(ValueError, match="activation"):
        from_torch(nn.TransformerDecoderLayer(8, 2, 16, activation=activation))


def test_from_torch_rejects_settings_we_do_not_have():
    theirs = nn.TransformerDecoderLayer(8, 2, 16)
    theirs.dropout2.p = 0.3
    with pytest.raises(ValueError, match="same dropout after every sub-layer"):
        from_torch(theirs)
    stack = nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16), 2, norm=nn.RMSNorm(8))
    with pytest.raises(ValueError, match="norm only as nn.LayerNorm.*RMSNorm"):
        from_torch(stack)


# --- one forward pass: attention weights and the cache go down through the layers -------------


def _weights_by_hand(layer, x, memory, self_mask, memory_mask):
    """Both attentions' weights, each attention called by hand on its sub-layer's input."""
    y = layer.norm1(x) if layer.norm_first else x
    attended, self_w = layer.self_attn(y, y, y, mask=self_mask, need_weights=True)
    h = x + attended if layer.norm_first else layer.norm1(x + attended)
    y = layer.norm2(h) if layer.norm_first else h
    return self_w, layer.cross_attn(y, memory, memory, mask=memory_mask, need_weights=True)[1]


@pytest.mark.parametrize("norm_first", [False, True])
def test_need_weights_gives_the_output_and_the_weights_of_one_pass(norm_first):
    torch.manual_seed(0)
    layer = _randomize_(DecoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first)).double().eval()
    decoder = _randomize_(Decoder(3, 16, 4, 32, dropout=0.0, norm_first=norm_first)).double().eval()
    tgt, src = torch.tensor([[1, 5, 6, 7], [1, 8, 0, 0]]), torch.tensor([[3, 4, 5], [9, 0, 0]])
    self_mask, memory_mask = causal_mask(4) & padding_mask(tgt, 0), padding_mask(src, 0)
    x, memory = (torch.randn(2, 4, 16, dtype=torch.float64),
                 torch.randn(2, 3, 16, dtype=torch.float64))
    out, (self_w, cross_w) = layer(x, memory, self_mask, memory_mask, need_weights=True)
    torch.testing.assert_close(out, layer(x, memory, self_mask, memory_mask), **TOL[torch.float64])
    for got, expected in zip((self_w, cross_w),
                             _weights_by_hand(layer, x, memory, self_mask, memory_mask)):
        # what attention_weights gave before
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for got, expected in zip(layer.attention_weights(x, memory, self_mask, memory_mask),
                             (self_w, cross_w)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    out, per_layer = decoder(x, memory, self_mask, memory_mask, need_weights=True)
    torch.testing.assert_close(out, decoder(x, memory, self_mask, memory_mask),
                               **TOL[torch.float64])
    assert (len(per_layer) == 3
            and decoder.attention_weights(x, memory, self_mask, memory_mask)[2][1].shape
            == (2, 4, 4, 3))
    h = x
    for pair, one in zip(per_layer, decoder.layers, strict=True):
        for got, expected in zip(pair, _weights_by_hand(one, h, memory, self_mask, memory_mask)):
            torch.testing.assert_close(got, expected, **TOL[torch.float64])
        h = one(h, memory, self_mask, memory_mask)


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoder_in_pieces_equals_one_pass(norm_first):
    from transformer_lib import LayerCache

    torch.manual_seed(0)
    decoder = _randomize_(Decoder(2, 16, 4, 32, dropout=0.0, norm_first=norm_first)).double().eval()
    x, memory = (torch.randn(2, 6, 16, dtype=torch.float64),
                 torch.randn(2, 5, 16, dtype=torch.float64))
    memory_mask = padding_mask(torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 0, 0]]), 0)
    full, full_weights = decoder(x, memory, causal_mask(6), memory_mask, need_weights=True)
    caches, pieces = [LayerCache() for _ in decoder.layers], []
    for a, b in [(0, 2), (2, 3), (3, 6)]:  # new positions a .. b - 1 see the cached 0 .. a - 1
        out, weights = decoder(x[:, a:b], memory, causal_mask(b)[a:], memory_mask, cache=caches,
                               need_weights=True)
        pieces.append(out)
        for (self_w, cross_w), (full_self, full_cross) in zip(weights, full_weights):
            torch.testing.assert_close(self_w, full_self[:, :, a:b, :b], **TOL[torch.float64])
            torch.testing.assert_close(cross_w, full_cross[:, :, a:b], **TOL[torch.float64])
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL[torch.float64])
    assert [(c.self_attn.length, c.cross_attn.length) for c in caches] == [(6, 5), (6, 5)]
    with pytest.raises(ValueError, match=r"self_mask of shape \(1, 3\) does not broadcast to "
                                         r"\(B, H, T, cached \+ T\) = \(2, 4, 1, 7\)"):
        decoder(x[:, :1], memory, causal_mask(3)[2:], memory_mask, cache=caches)
