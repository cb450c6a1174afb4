"""transformer_lib.interop.from_torch: PyTorch's reference modules -> ours, same numbers."""

import itertools

import pytest
import torch
from torch import nn

import transformer_lib
from transformer_lib import MultiHeadAttention, causal_mask, from_torch

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}
GRID = list(itertools.product([True, False], [True, False], [torch.float32, torch.float64]))


@pytest.mark.parametrize(("bias", "batch_first", "dtype"), GRID)
def test_multihead_attention_same_outputs_and_weights(bias, batch_first, dtype):
    D, H, B, T, S = 24, 4, 3, 5, 8
    theirs_mod = nn.MultiheadAttention(D, H, bias=bias, batch_first=batch_first, dtype=dtype).eval()
    ours_mod = from_torch(theirs_mod)
    assert type(ours_mod) is MultiHeadAttention
    assert (ours_mod.d_model, ours_mod.num_heads, ours_mod.head_dim) == (D, H, D // H)
    query = torch.randn(B, T, D, dtype=dtype)
    memory = torch.randn(B, S, D, dtype=dtype)
    lengths = torch.tensor([S, 3, 1])
    pad = torch.arange(S) >= lengths[:, None]  # (B, S): PyTorch's key_padding_mask, True = padding
    per_head = torch.rand(B, H, T, S) < 0.5
    per_head[..., 0] = True  # no empty rows: PyTorch gives NaN there
    ours_mask = ~pad[:, None, None, :] & per_head  # ours: True = may attend
    inputs = (query, memory, memory) if batch_first else (query.transpose(0, 1),
                                                          memory.transpose(0, 1),
                                                          memory.transpose(0, 1))
    theirs, their_weights = theirs_mod(*inputs, key_padding_mask=pad,
                                       attn_mask=~per_head.reshape(B * H, T, S),
                                       average_attn_weights=False)
    if not batch_first:
        theirs = theirs.transpose(0, 1)  # (T, B, D) -> (B, T, D)
    torch.testing.assert_close(ours_mod(query, memory, memory, mask=ours_mask), theirs,
                               **TOL[dtype])
    out, weights = ours_mod(query, memory, memory, mask=ours_mask, need_weights=True)
    torch.testing.assert_close(out, theirs, **TOL[dtype])
    torch.testing.assert_close(weights, their_weights, **TOL[dtype])


def test_self_attention_with_causal_mask():
    theirs_mod = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    ours_mod = from_torch(theirs_mod)
    x = torch.randn(2, 6, 16)
    theirs, _ = theirs_mod(x, x, x, attn_mask=~causal_mask(6), need_weights=False)
    torch.testing.assert_close(ours_mod(x, x, x, mask=causal_mask(6)), theirs, **TOL[torch.float32])


def test_weights_are_copied_and_layout_is_q_k_v():
    theirs_mod = nn.MultiheadAttention(8, 2)
    ours_mod = from_torch(theirs_mod)
    w = theirs_mod.in_proj_weight
    torch.testing.assert_close(ours_mod.q_proj.weight, w[:8], rtol=0, atol=0)
    torch.testing.assert_close(ours_mod.k_proj.weight, w[8:16], rtol=0, atol=0)
    torch.testing.assert_close(ours_mod.v_proj.weight, w[16:], rtol=0, atol=0)
    torch.testing.assert_close(ours_mod.v_proj.bias, theirs_mod.in_proj_bias[16:], rtol=0, atol=0)
    torch.testing.assert_close(ours_mod.out_proj.weight, theirs_mod.out_proj.weight, rtol=0, atol=0)
    with torch.no_grad():
        ours_mod.q_proj.weight.zero_()  # a copy: the PyTorch module is untouched
    assert theirs_mod.in_proj_weight[:8].abs().sum() > 0
    assert all(p.requires_grad for p in ours_mod.parameters())


def test_keeps_mode_dropout_and_bias_setting():
    theirs_mod = nn.MultiheadAttention(8, 4, dropout=0.25, bias=False)
    ours_mod = from_torch(theirs_mod)
    assert ours_mod.training and ours_mod.dropout == 0.25
    assert all(getattr(ours_mod, n).bias is None
               for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
    assert not from_torch(theirs_mod.eval()).training


def test_keeps_dtype():
    ours_mod = from_torch(nn.MultiheadAttention(8, 2, dtype=torch.float64))
    assert all(p.dtype == torch.float64 for p in ours_mod.parameters())


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"kdim": 6}, r"kdim == vdim == embed_dim.*kdim=6"),
        ({"vdim": 10}, r"kdim == vdim == embed_dim.*vdim=10"),
        ({"add_bias_kv": True}, r"add_bias_kv=True"),
        ({"add_zero_attn": True}, r"add_zero_attn=True"),
    ],
)
def test_unsupported_settings_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        from_torch(nn.MultiheadAttention(8, 2, **kwargs))


def test_kdim_equal_to_embed_dim_is_fine():
    # kdim and vdim spelled out but equal to embed_dim: PyTorch keeps one packed in_proj_weight
    theirs_mod = nn.MultiheadAttention(8, 2, kdim=8, vdim=8, batch_first=True).eval()
    ours_mod = from_torch(theirs_mod)
    assert type(ours_mod) is MultiHeadAttention
    assert (ours_mod.d_model, ours_mod.num_heads) == (8, 2)
    query, memory = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    theirs, _ = theirs_mod(query, memory, memory, need_weights=False)
    torch.testing.assert_close(ours_mod(query, memory, memory), theirs, **TOL[torch.float32])


def test_inconsistent_biases_raise_value_error():
    theirs_mod = nn.MultiheadAttention(8, 2)
    theirs_mod.out_proj.bias = None
    with pytest.raises(ValueError, match="both present or both absent"):
        from_torch(theirs_mod)


@pytest.mark.parametrize("module", [nn.Linear(4, 4), nn.LSTM(4, 4), MultiHeadAttention(8, 2)])
def test_unsupported_types_raise_type_error(module):
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    with pytest.raises(TypeError, match=rf"from_torch cannot convert {name}; supported types: "
                                        r".*nn\.MultiheadAttention"):
        from_torch(module)


def test_exported_at_top_level():
    from transformer_lib import interop

    assert transformer_lib.from_torch is interop.from_torch
    assert "from_torch" in transformer_lib.__all__


# --- float64 conversions are exact, every setting is copied (or refused clearly) ------------


def test_float64_transformer_conversion_is_exact():
    # every weight, the stacks' final norms included, is copied without a trip through float32
    torch.manual_seed(0)
    theirs = nn.Transformer(16, 4, 2, 2, 32, dropout=0.0, batch_first=True,
                            dtype=torch.float64).eval()
    for p in theirs.parameters():  # LayerNorm gains and biases away from 1 and 0
        p.data.normal_()
    ours = from_torch(theirs)
    for (name, a), (_, b) in zip(sorted(theirs.state_dict().items()),
                                 sorted(from_torch(theirs).state_dict().items())):
        assert a.dtype == b.dtype == torch.float64, name
    src, tgt = (torch.randn(2, 5, 16, dtype=torch.float64),
                torch.randn(2, 4, 16, dtype=torch.float64))
    torch.testing.assert_close(ours(src, tgt), theirs(src, tgt), rtol=1e-13, atol=1e-13)
    for name in ("weight", "bias"):
        assert torch.equal(getattr(ours.encoder.norm, name), getattr(theirs.encoder.norm, name))
        assert torch.equal(getattr(ours.decoder.norm, name), getattr(theirs.decoder.norm, name))


def test_each_norms_eps_is_copied():
    layer = nn.TransformerEncoderLayer(8, 2, 16, layer_norm_eps=1e-3, batch_first=True)
    layer.norm2.eps = 1e-2
    stack = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8, eps=0.5),
                                  enable_nested_tensor=False)
    ours = from_torch(stack)
    assert [(lay.norm1.eps, lay.norm2.eps) for lay in ours.layers] == [(1e-3, 1e-2)] * 2
    assert ours.norm.eps == 0.5
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ours.eval()(x), stack.eval()(x))


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_a_final_norm_that_is_not_a_layer_norm_is_a_value_error(stack):
    if stack == "encoder":
        module = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 1,
                                       norm=nn.RMSNorm(8), enable_nested_tensor=False)
    else:
        module = nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16), 1, norm=nn.RMSNorm(8))
    with pytest.raises(ValueError, match=rf"nn.Transformer{stack.title()}'s norm only as "
                                         r"nn.LayerNorm \(or None\), got RMSNorm"):
        from_torch(module)
