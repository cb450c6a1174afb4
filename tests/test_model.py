"""Chapter 6's model: TransformerConfig, Transformer, EncoderDecoder (and
from_torch(nn.Transformer))."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib import (
    EncoderDecoder,
    Transformer,
    TransformerConfig,
    causal_mask,
    from_torch,
    padding_mask,
)
from transformer_lib.outcomes import expect

torch.backends.mha.set_fastpath_enabled(False)


def small_config(**overrides):
    base = dict(src_vocab_size=30, tgt_vocab_size=40, d_model=32, num_heads=4,
                num_encoder_layers=2, num_decoder_layers=2, d_ff=64, dropout=0.0, max_len=64)
    return TransformerConfig(**{**base, **overrides})


def randomize_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def test_config_defaults_are_the_base_model():
    c = TransformerConfig(src_vocab_size=37000, tgt_vocab_size=37000)
    assert ((c.d_model, c.num_heads, c.num_encoder_layers, c.d_ff, c.dropout)
            == (512, 8, 6, 2048, 0.1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.d_model = 256


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (dict(d_model=30, num_heads=4), "d_model must be divisible by num_heads"),
        (dict(num_heads=0), "num_heads must be a positive int"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(activation="tanh"), "activation must be one of"),
        (dict(positions="rope"), "positions must be 'sinusoidal' or 'learned'"),
        (dict(share_embeddings=True), "share_embeddings needs one vocabulary"),
        (dict(pad_id=35), "pad_id must be None or an id of both vocabularies"),
        (dict(d_model=27, num_heads=3), "d_model must be even for sinusoidal positions"),
    ],
)
def test_config_rejects_inconsistent_settings(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        small_config(**overrides)


def test_shapes_and_tied_output():
    model = Transformer(small_config()).eval()
    src, tgt = torch.randint(0, 30, (3, 7)), torch.randint(0, 40, (3, 5))
    memory = model.encode(src)
    assert memory.shape == (3, 7, 32)
    assert model.decode(tgt, memory).shape == (3, 5, 40)
    assert model(src, tgt).shape == (3, 5, 40)
    assert model.out_proj.weight is model.tgt_embed.weight
    untied = Transformer(small_config(tie_output=False))
    assert untied.out_proj.weight is not untied.tgt_embed.weight


def test_shared_embeddings_are_one_module():
    model = Transformer(small_config(tgt_vocab_size=30, share_embeddings=True))
    assert model.src_embed is model.tgt_embed
    n_shared = sum(p.numel() for p in model.parameters())
    n_separate = sum(p.numel() for p in Transformer(small_config(tgt_vocab_size=30)).parameters())
    assert n_separate - n_shared == 30 * 32


def test_decode_is_causal_by_default_and_mask_replaces_it():
    model = Transformer(small_config()).eval()
    src, tgt = torch.randint(0, 30, (2, 6)), torch.randint(0, 40, (2, 8))
    memory = model.encode(src)
    out = model.decode(tgt, memory)
    changed = tgt.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 40
    torch.testing.assert_close(model.decode(changed, memory)[:, :5], out[:, :5])
    full = torch.ones(8, 8, dtype=torch.bool)  # an explicit mask replaces the causal default
    assert not torch.allclose(model.decode(changed, memory, tgt_mask=full)[:, :5], out[:, :5])


def test_source_padding_has_no_influence():
    model = Transformer(small_config(pad_id=0)).eval()
    src = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    tgt = torch.randint(1, 40, (2, 4))
    mask = padding_mask(src, 0)
    out = model(src, tgt, src_mask=mask)
    other = src.clone()
    other[0, 4:] = torch.tensor([21, 22])  # different tokens at the padded positions
    torch.testing.assert_close(model(other, tgt, src_mask=mask)[0], out[0])


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_initial_loss_is_near_uniform(positions, norm_first):
    torch.manual_seed(0)
    model = Transformer(small_config(positions=positions, norm_first=norm_first,
                                     tgt_vocab_size=200)).eval()
    logits = model(torch.randint(0, 30, (8, 10)), torch.randint(0, 200, (8, 12)))
    loss = F.cross_entropy(logits.flatten(0, 1), torch.randint(0, 200, (96,)))
    assert abs(loss.item() - math.log(200)) < 1.0


def test_initialization():
    model = Transformer(small_config())
    layer = model.encoder.layers[0]
    bound = math.sqrt(6 / (32 + 32))  # xavier uniform for a (32, 32) matrix
    assert layer.self_attn.q_proj.weight.abs().max() <= bound
    assert (layer.self_attn.q_proj.bias == 0).all() and (model.out_proj.bias == 0).all()
    assert (layer.norm1.weight == 1).all()
    std = model.src_embed.weight.std().item()
    assert abs(std - 32 ** -0.5) < 0.03


def test_ids_out_of_vocabulary_and_bad_shapes():
    model = Transformer(small_config())
    with pytest.raises(ValueError,
                       match=r"src contains the id 30, outside the vocabulary \[0, 30\)"):
        model.encode(torch.tensor([[1, 30]]))
    with pytest.raises(ValueError, match=r"tgt contains the id -1"):
        model.decode(torch.tensor([[-1, 2]]), torch.zeros(1, 2, 32))
    with pytest.raises(ValueError,
                       match=r"src must be a \(B, length\) tensor of integer token ids"):
        model.encode(torch.rand(2, 3))
    with pytest.raises(ValueError, match="exceeds max_len=64"):
        model.encode(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(TypeError, match="config must be a TransformerConfig"):
        Transformer({"src_vocab_size": 3})


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = Transformer(small_config())
    src, tgt = torch.randint(0, 30, (4, 6)), torch.randint(0, 40, (4, 7))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    expect("tiny Transformer: loss after 150 steps on one batch", loss, at_most=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_decoder_matches_nn_transformer(dtype, norm_first):
    theirs = nn.Transformer(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
                            dim_feedforward=32, dropout=0.0, norm_first=norm_first,
                            activation="gelu", batch_first=False)
    theirs = randomize_(theirs).to(dtype).eval()
    ours = from_torch(theirs)
    assert isinstance(ours, EncoderDecoder) and ours.encoder.norm is not None
    src, tgt = torch.randn(3, 7, 16, dtype=dtype), torch.randn(3, 5, 16, dtype=dtype)
    pad = torch.tensor([[False] * 7, [False] * 3 + [True] * 4, [False] * 6 + [True]])
    expected = theirs(src.transpose(0, 1), tgt.transpose(0, 1), tgt_mask=~causal_mask(5),
                      src_key_padding_mask=pad, memory_key_padding_mask=pad).transpose(0, 1)
    keep = ~pad[:, None, None, :]
    got = ours(src, tgt, src_mask=keep, tgt_mask=causal_mask(5), memory_mask=keep)
    tol = {"atol": 2e-5, "rtol": 2e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}
    torch.testing.assert_close(got, expected, **tol)


def test_decode_returns_the_weights_of_its_own_pass():
    model = Transformer(small_config(pad_id=0, norm_first=True)).eval()
    src = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    tgt = torch.tensor([[1, 9, 9, 2, 5], [1, 3, 2, 0, 0]])
    src_mask = padding_mask(src, 0)
    tgt_mask = causal_mask(5) & padding_mask(tgt, 0)
    memory = model.encode(src, src_mask)
    logits, weights = model.decode(tgt, memory, src_mask, tgt_mask, need_weights=True)
    torch.testing.assert_close(logits, model.decode(tgt, memory, src_mask, tgt_mask))
    # the decoder's weights for the embedded target, as Decoder.attention_weights gives them
    y = model.tgt_positions(model.tgt_embed(tgt))
    expected = model.decoder.attention_weights(y, memory, tgt_mask, src_mask)
    assert len(weights) == 2
    for pair, expected_pair in zip(weights, expected, strict=True):
        for got, want in zip(pair, expected_pair, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (weights[1][1][1, :, :, 2:] == 0).all()  # no cross-attention to the source's padding


def test_no_module_imports_a_private_name_of_another():
    import ast
    from pathlib import Path

    import transformer_lib

    crossings = []
    for path in Path(transformer_lib.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.ImportFrom)
                    and (node.module or "").startswith("transformer_lib")):
                crossings += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_")]
    assert crossings == []
