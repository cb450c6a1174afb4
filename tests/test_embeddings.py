"""Chapter 3's exports: token embeddings, sinusoidal and learned positions, rotary embeddings."""

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_lib import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    apply_rotary,
    rotary_frequencies,
    scaled_dot_product_attention,
    sinusoidal_positional_encoding,
)

DTYPES = [torch.float32, torch.float64]


def rotation_matrix(m: float, d: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE's block-diagonal R_m, written out entry by entry (interleaved pairs)."""
    R = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d // 2):
        angle = m * base ** (-2 * i / d)
        R[2 * i, 2 * i], R[2 * i, 2 * i + 1] = math.cos(angle), -math.sin(angle)
        R[2 * i + 1, 2 * i], R[2 * i + 1, 2 * i + 1] = math.sin(angle), math.cos(angle)
    return R


def rotary_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE as complex multiplication: pair (x_2i, x_2i+1) -> (x_2i + i x_2i+1) e^(i m theta_i)."""
    theta = rotary_frequencies(x.size(-1), base, dtype=torch.float64)
    angle = positions.double()[..., None] * theta
    z = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
    return (torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle))
            .flatten(-2).to(x.dtype))


def rotary_half(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE in the GPT-NeoX / Hugging Face layout: feature i pairs with feature i + Dh/2."""
    T, Dh = x.shape[-2:]
    angle = torch.arange(T, dtype=x.dtype)[:, None] * rotary_frequencies(Dh, base, dtype=x.dtype)
    angle = torch.cat([angle, angle], dim=-1)
    x1, x2 = x[..., : Dh // 2], x[..., Dh // 2 :]
    return x * angle.cos() + torch.cat([-x2, x1], dim=-1) * angle.sin()


# ---- token embeddings -------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [True, False])
def test_token_embedding_shape_and_scale(scale):
    embed = TokenEmbedding(100, 64, scale=scale)
    tokens = torch.randint(0, 100, (3, 7))
    x = embed(tokens)
    assert x.shape == (3, 7, 64) and x.dtype == torch.float32
    factor = math.sqrt(64) if scale else 1.0
    torch.testing.assert_close(x, F.embedding(tokens, embed.weight) * factor)


def test_token_embedding_init_gives_unit_variance_after_scaling():
    embed = TokenEmbedding(4000, 256)
    assert abs(embed.weight.std().item() - 256 ** -0.5) < 0.02 * 256 ** -0.5
    x = embed(torch.arange(4000))
    assert abs(x.std().item() - 1.0) < 0.02
    assert abs(x.norm(dim=-1).mean().item() / math.sqrt(256) - 1.0) < 0.02


def test_token_embedding_padding_row_is_zero_and_gets_no_gradient():
    embed = TokenEmbedding(10, 8, padding_idx=0)
    tokens = torch.tensor([[0, 3, 0, 5]])
    out = embed(tokens)
    assert (out[0, 0] == 0).all() and (out[0, 2] == 0).all()
    out.sum().backward()
    assert (embed.weight.grad[0] == 0).all()
    assert (embed.weight.grad[3] != 0).all()


def test_token_embedding_weight_can_be_tied():
    embed = TokenEmbedding(50, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight = embed.weight
    assert head.weight is embed.embedding.weight
    assert sum(p.numel() for p in torch.nn.ModuleList([embed, head]).parameters()) == 50 * 16


@pytest.mark.parametrize("kwargs,name", [
    ({"vocab_size": 0, "d_model": 8}, "vocab_size"),
    ({"vocab_size": 10, "d_model": -1}, "d_model"),
    ({"vocab_size": 10.0, "d_model": 8}, "vocab_size"),
    ({"vocab_size": 10, "d_model": 8, "padding_idx": 10}, "padding_idx"),
])
def test_token_embedding_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TokenEmbedding(**kwargs)


def test_token_embedding_rejects_float_tokens():
    with pytest.raises(ValueError, match="tokens"):
        TokenEmbedding(10, 8)(torch.zeros(2, 3))


# ---- sinusoidal encodings ---------------------------------------------------------------------


@pytest.mark.parametrize("length,d_model,base", [(9, 6, 10000.0), (5, 2, 10000.0), (7, 12, 100.0)])
def test_sinusoidal_values_match_the_formula(length, d_model, base):
    pe = sinusoidal_positional_encoding(length, d_model, base=base, dtype=torch.float64)
    assert pe.shape == (length, d_model)
    for pos in range(length):
        for i in range(d_model // 2):
            angle = pos / base ** (2 * i / d_model)
            assert math.isclose(pe[pos, 2 * i], math.sin(angle), abs_tol=1e-12)
            assert math.isclose(pe[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, *DTYPES])
def test_sinusoidal_dtype_device_and_norm(dtype):
    pe = sinusoidal_positional_encoding(300, 64, device="cpu", dtype=dtype)
    assert pe.dtype == dtype and pe.device.type == "cpu"
    norms = pe.double().norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(32)), atol=0.05, rtol=0.01)
    assert pe.abs().max() <= 1
    assert sinusoidal_positional_encoding(0, 8).shape == (0, 8)
    assert sinusoidal_positional_encoding(3, 8).dtype == torch.get_default_dtype()


def test_sinusoidal_offset_is_a_rotation_and_dot_products_depend_on_distance():
    pe = sinusoidal_positional_encoding(200, 32, dtype=torch.float64)
    omega = 10000 ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    for k in [1, 7, 50]:
        c, s = torch.cos(omega * k), torch.sin(omega * k)
        M = torch.block_diag(*[torch.tensor([[ci, si], [-si, ci]]) for ci, si in zip(c, s)])
        torch.testing.assert_close(pe[k:], pe[:-k] @ M.T)
    dots = pe @ pe.T
    torch.testing.assert_close(dots[1:, 1:], dots[:-1, :-1])


@pytest.mark.parametrize("kwargs,name", [
    ({"length": 4, "d_model": 7}, "d_model"),
    ({"length": 4, "d_model": 0}, "d_model"),
    ({"length": -1, "d_model": 8}, "length"),
    ({"length": 4, "d_model": 8, "base": 1.0}, "base"),
    ({"length": 4, "d_model": 8, "dtype": torch.int64}, "dtype"),
])
def test_sinusoidal_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sinusoidal_positional_encoding(**kwargs)


def test_sinusoidal_module_adds_the_table_and_keeps_it_out_of_the_state_dict():
    module = SinusoidalPositionalEncoding(16, max_len=40)
    x = torch.randn(3, 25, 16)
    out = module(x)
    torch.testing.assert_close(out, x + sinusoidal_positional_encoding(25, 16))
    torch.testing.assert_close(module(x[:, 5:9], offset=5), out[:, 5:9])
    assert list(module.state_dict()) == [] and list(module.parameters()) == []
    assert "pe" in dict(module.named_buffers())
    assert module.to(torch.float64)(x.double()).dtype == torch.float64


def test_sinusoidal_module_max_len_error_names_the_length():
    module = SinusoidalPositionalEncoding(16, max_len=10)
    module(torch.randn(1, 10, 16))  # exactly max_len is fine
    with pytest.raises(ValueError, match=r"length 11 .*max_len=10"):
        module(torch.randn(1, 11, 16))
    with pytest.raises(ValueError, match="max_len"):
        module(torch.randn(1, 4, 16), offset=8)
    with pytest.raises(ValueError, match="d_model"):
        module(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="dropout"):
        SinusoidalPositionalEncoding(16, dropout=1.5)
    with pytest.raises(ValueError, match="max_len"):
        SinusoidalPositionalEncoding(16, max_len=0)


def test_sinusoidal_module_dropout_only_in_training():
    module = SinusoidalPositionalEncoding(16, max_len=10, dropout=0.5)
    x = torch.randn(4, 10, 16)
    assert (module(x) == 0).any()
    module.eval()
    torch.testing.assert_close(module(x), x + module.pe[:10])


# ---- learned positions ------------------------------------------------------------------------


def test_learned_positions_shape_gradient_and_limit():
    module = LearnedPositionalEmbedding(max_len=12, d_model=8)
    assert module.weight.shape == (12, 8) and module.weight.requires_grad
    assert abs(module.weight.std().item() - 0.02) < 0.01
    x = torch.randn(2, 5, 8)
    out = module(x)
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out, x + module.weight[:5])
    torch.testing.assert_close(module(x[:, 2:4], offset=2), out[:, 2:4])
    out.sum().backward()
    grad_rows = module.weight.grad.abs().sum(-1) > 0
    assert grad_rows[:5].all() and not grad_rows[5:].any()  # unseen positions learn nothing
    with pytest.raises(ValueError, match=r"length 13 .*max_len=12"):
        module(torch.randn(1, 13, 8))
    with pytest.raises(ValueError, match="max_len"):
        LearnedPositionalEmbedding(max_len=0, d_model=8)
    assert list(module.state_dict()) == ["embedding.weight"]


# ---- rotary embeddings ------------------------------------------------------------------------


def test_rotary_frequencies():
    theta = rotary_frequencies(8, base=100.0)
    assert theta.shape == (4,) and theta.dtype == torch.float32
    torch.testing.assert_close(theta, torch.tensor([100.0 ** (-2 * i / 8) for i in range(4)]))
    with pytest.raises(ValueError, match="head_dim"):
        rotary_frequencies(7)
    with pytest.raises(ValueError, match="base"):
        rotary_frequencies(8, base=0.5)
    with pytest.raises(ValueError, match="dtype"):
        rotary_frequencies(8, dtype=torch.int32)
    assert rotary_frequencies(8, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_matches_the_rotation_matrices(dtype):
    x = torch.randn(2, 3, 9, 10, dtype=dtype)  # (B, H, T, Dh)
    out = apply_rotary(x)
    assert out.shape == x.shape and out.dtype == dtype
    for m in range(9):
        expected = (x[:, :, m].double() @ rotation_matrix(m, 10).T).to(dtype)
        torch.testing.assert_close(out[:, :, m], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_equals_complex_multiplication(dtype):
    x = torch.randn(4, 17, 32, dtype=dtype)
    positions = torch.arange(17) * 3 + 5
    torch.testing.assert_close(apply_rotary(x, positions), rotary_complex(x, positions))


def test_rotary_position_zero_is_identity_and_norms_are_preserved():
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    out = apply_rotary(x)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(out.unflatten(-1, (8, 2)).norm(dim=-1),
                               x.unflatten(-1, (8, 2)).norm(dim=-1))  # every pair keeps its length


def test_rotary_scores_depend_only_on_relative_position():
    Dh, T = 32, 48
    q, k = torch.randn(Dh, dtype=torch.float64), torch.randn(Dh, dtype=torch.float64)
    positions = torch.arange(T)
    scores = apply_rotary(q.expand(T, Dh), positions) @ apply_rotary(k.expand(T, Dh), positions).T
    torch.testing.assert_close(scores[1:, 1:], scores[:-1, :-1])  # Toeplitz: a function of m - n
    for m, n in [(0, 0), (3, 10), (10, 3), (47, 0)]:
        torch.testing.assert_close(scores[m, n], q @ rotation_matrix(n - m, Dh) @ k)
    for shift in [1, 99, 4321, 123_456]:
        shifted = (apply_rotary(q.expand(T, Dh), positions + shift)
                   @ apply_rotary(k.expand(T, Dh), positions + shift).T)
        torch.testing.assert_close(shifted, scores)


def test_rotary_attention_is_translation_invariant_in_float32():
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 8)
    _, near = scaled_dot_product_attention(apply_rotary(q), apply_rotary(k), v)
    far_pos = torch.arange(16) + 2000
    _, far = scaled_dot_product_attention(apply_rotary(q, far_pos), apply_rotary(k, far_pos), v)
    torch.testing.assert_close(far, near, atol=1e-4, rtol=1e-4)


def test_rotary_half_layout_is_a_permutation_of_ours():
    Dh = 12
    order = torch.stack([torch.arange(Dh // 2), torch.arange(Dh // 2) + Dh // 2], -1).flatten()
    x = torch.randn(2, 3, 7, Dh, dtype=torch.float64)
    torch.testing.assert_close(rotary_half(x)[..., order], apply_rotary(x[..., order]))


def test_rotary_positions_broadcast_and_fractional():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)  # (B, H, T, Dh)
    per_batch = torch.tensor([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]])[:, None, :]  # (B, 1, T)
    out = apply_rotary(x, per_batch)
    torch.testing.assert_close(out[0], apply_rotary(x[0]))
    torch.testing.assert_close(out[1], apply_rotary(x[1], torch.arange(10, 15)))
    half = apply_rotary(x, torch.arange(5) / 2)
    torch.testing.assert_close(half[..., 2, :],
                               apply_rotary(x[..., 2:3, :], torch.tensor([1]))[..., 0, :])


def test_rotary_low_precision_keeps_dtype():
    x = torch.randn(2, 100, 16, dtype=torch.bfloat16)
    out = apply_rotary(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), apply_rotary(x.double()), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("call,name", [
    (lambda: apply_rotary(torch.randn(4, 7)), "x.size"),
    (lambda: apply_rotary(torch.randn(8)), "x must"),
    (lambda: apply_rotary(torch.ones(4, 8, dtype=torch.long)), "floating-point"),
    (lambda: apply_rotary(torch.randn(2, 4, 8), torch.arange(5)), "positions"),
    (lambda: apply_rotary(torch.randn(2, 4, 8), torch.ones(4, dtype=torch.bool)), "positions"),
    (lambda: apply_rotary(torch.randn(2, 4, 8), base=-3.0), "base"),
])
def test_rotary_rejects_bad_arguments(call, name):
    with pytest.raises(ValueError, match=name):
        call()
