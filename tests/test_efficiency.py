"""transformer_lib.efficiency: FLOPs per token, peaks, attention kernels, saved activations."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from transformer_lib import GPT, GPTConfig, lm_loss
from transformer_lib import efficiency as ef

# --- FLOPs, peaks, kernels, memory ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(37, 16, 32, 2, 2, None), (50, 8, 64, 4, 3, 96)])
def test_flops_per_token_equals_counted_matmul_flops(shape):
    V, C, D, H, L, F = shape
    config = GPTConfig(V, C, D, H, L, d_ff=F)
    model = GPT(config)
    x = torch.randint(V, (3, C))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        lm_loss(model(x), x).backward()
    per_token = counter.get_total_flops() / x.numel()
    # the formula leaves out biases, LayerNorm, softmax and GELU: no matmuls, not counted either
    assert ef.flops_per_token(config) == pytest.approx(per_token, rel=1e-9)


def test_flops_per_token_shorter_windows_and_errors():
    config = GPTConfig(100, 64, 32, 2, 2)
    assert ef.flops_per_token(config, 32) < ef.flops_per_token(config)
    gpt2 = GPTConfig(50257, 1024, 768, 12, 12)
    assert ef.flops_per_token(gpt2) == pytest.approx(6 * 123.5e6 + 12 * 12 * 1024 * 768, rel=0.01)
    with pytest.raises(ValueError, match="seq_len"):
        ef.flops_per_token(config, 65)
    with pytest.raises(TypeError, match="GPTConfig"):
        ef.flops_per_token({"d_model": 32})


def test_peak_table_matches_names_most_specific_first():
    assert ef._peak_for_name("NVIDIA H200") == 989e12
    assert ef._peak_for_name("NVIDIA H100 PCIe") == 756e12
    assert ef._peak_for_name("NVIDIA H100 80GB HBM3") == 989e12
    assert ef._peak_for_name("NVIDIA L40S") == 362e12
    assert ef._peak_for_name("NVIDIA L4") == 121e12
    assert ef._peak_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert ef._peak_for_name("Some Future GPU") is None
    assert ef.peak_flops("cpu") is None


def test_measured_matmul_flops_is_positive():
    assert ef.measured_matmul_flops("cpu", size=128, repeats=3) > 1e6


def test_sdpa_kernels_used_and_saved_bytes():
    model = GPT(GPTConfig(20, 32, 32, 4, 2))
    x = torch.randint(20, (4, 32))
    fused = ef.sdpa_kernels_used(lambda: model(x))
    assert fused and all(name.startswith("_scaled_dot_product") for name in fused)
    with sdpa_kernel(SDPBackend.MATH):
        assert ef.sdpa_kernels_used(lambda: model(x)) == []
        math_bytes = ef.saved_activation_bytes(lambda: lm_loss(model(x), x))
    fp32_bytes = ef.saved_activation_bytes(lambda: lm_loss(model(x), x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_bytes = ef.saved_activation_bytes(lambda: lm_loss(model(x), x))
    assert bf16_bytes < fp32_bytes < math_bytes  # math attention keeps the (T, T) weights
    assert all(p.grad is not None for p in model.parameters())  # the loss was back-propagated


def test_matmul_and_attention_switches_and_restores():
    model = GPT(GPTConfig(20, 32, 32, 4, 2))
    x = torch.randint(20, (2, 32))
    before = torch.get_float32_matmul_precision()
    with ef.matmul_and_attention(tf32=True, fused_attention=False):
        assert torch.get_float32_matmul_precision() == "high"
        assert ef.sdpa_kernels_used(lambda: model(x)) == []  # the math kernel, forced
    assert torch.get_float32_matmul_precision() == before
    with ef.matmul_and_attention(tf32=False, fused_attention=True):
        assert torch.get_float32_matmul_precision() == "highest"
        assert ef.sdpa_kernels_used(lambda: model(x))
    assert torch.get_float32_matmul_precision() == before


# --- flash_attention against F.scaled_dot_product_attention --------------------------------------


def _attention_case(dtype, T, S, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, T, 8, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(2, 3, S, 8, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(2, 3, S, 6, generator=g, dtype=dtype).requires_grad_()
    mask = None
    if mask_kind == "padding":  # (B, 1, 1, S): the first sequence's last keys are padding
        mask = torch.ones(2, 1, 1, S, dtype=torch.bool)
        mask[0, ..., S - 5:] = False
    elif mask_kind == "random":  # (B, 1, T, S) with a query that may attend no key
        mask = torch.rand(2, 1, T, S, generator=g) > 0.3
        mask[1, 0, 2] = False
    grad = torch.randn(2, 3, T, 6, generator=g, dtype=dtype)
    return q, k, v, mask, grad


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("T, S", [(37, 37), (50, 23), (16, 70), (64, 64)])
@pytest.mark.parametrize("mask_kind", [None, "padding", "random"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_flash_attention_equals_sdpa(dtype, tol, T, S, mask_kind, is_causal):
    q, k, v, mask, grad = _attention_case(dtype, T, S, mask_kind)
    ours = ef.flash_attention(q, k, v, mask, is_causal=is_causal, block_size=16)
    combined = torch.ones(T, S, dtype=torch.bool).tril() if is_causal else None
    if mask is not None:
        combined = mask if combined is None else mask & combined
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=combined)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tol)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    theirs_grads = torch.autograd.grad(theirs, (q, k, v), grad)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


@pytest.mark.parametrize("is_causal", [False, True])
def test_flash_attention_fully_masked_rows_give_zeros(is_causal):
    q, k, v, mask, grad = _attention_case(torch.float64, 20, 20, "random")
    mask[0, 0, 7] = False  # a second empty row, in the other sequence
    out = ef.flash_attention(q, k, v, mask, is_causal=is_causal, block_size=8)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))
    assert out[1, :, 2].abs().max() == 0 and out[0, :, 7].abs().max() == 0
    assert dq[1, :, 2].abs().max() == 0 and dq[0, :, 7].abs().max() == 0
    everything_masked = torch.zeros(20, 20, dtype=torch.bool)
    out = ef.flash_attention(q, k, v, everything_masked)
    assert out.abs().max() == 0
    assert all(g.abs().max() == 0 for g in torch.autograd.grad(out.sum(), (q, k, v)))


@pytest.mark.parametrize("is_causal", [False, True])
def test_flash_attention_gradcheck(is_causal):
    q, k, v, mask, _ = _attention_case(torch.float64, 11, 9, "random", seed=1)
    q, k, v = (t.detach()[:1, :2].requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: ef.flash_attention(q, k, v, mask[1:], is_causal=is_causal, block_size=4),
        (q, k, v))


def test_flash_attention_block_sizes_agree_and_low_precision():
    q, k, v, mask, _ = _attention_case(torch.float64, 45, 45, "padding")
    reference = ef.flash_attention(q, k, v, mask, block_size=45)
    for block_size in (1, 7, 16, 64, 100):
        torch.testing.assert_close(ef.flash_attention(q, k, v, mask, block_size=block_size),
                                   reference, rtol=0, atol=1e-12)
    half = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    out = ef.flash_attention(*half, mask, is_causal=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ef.flash_attention(q, k, v, mask, is_causal=True),
                               rtol=0, atol=0.05)
    out.sum().backward()
    assert all(t.grad.dtype == torch.bfloat16 for t in half)


def test_flash_attention_saved_bytes_linear_in_length():
    def saved(fn, T):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, T, 16, generator=g).requires_grad_() for _ in range(3))
        return ef.saved_activation_bytes(lambda: fn(q, k, v).sum())

    def flash(q, k, v):
        return ef.flash_attention(q, k, v, is_causal=True, block_size=64)

    lengths = [128, 256, 512]
    flash_bytes = [saved(flash, T) for T in lengths]
    assert flash_bytes == [4 * 2 * T * (4 * 16 + 1) for T in lengths]  # Q, K, V, O and L only
    assert flash_bytes[2] / flash_bytes[1] == 2.0
    math_bytes = []
    with sdpa_kernel(SDPBackend.MATH):  # unfused: keeps the (T, T) weights
        for T in lengths:
            math_bytes.append(saved(torch.nn.functional.scaled_dot_product_attention, T))
    assert math_bytes[2] / math_bytes[1] > 3.5


def test_flash_attention_bad_arguments():
    q = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="leading dimensions"):
        ef.flash_attention(q, torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="Dh"):
        ef.flash_attention(q, torch.randn(2, 4, 5), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="dtype"):
        ef.flash_attention(q, q.double(), q)
    with pytest.raises(ValueError, match="bool"):
        ef.flash_attention(q, q, q, mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="broadcast"):
        ef.flash_attention(q, q, q, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="block_size"):
        ef.flash_attention(q, q, q, block_size=0)
    with pytest.raises(TypeError, match="is_causal"):
        ef.flash_attention(q, q, q, is_causal=1)


def test_kv_cache_bytes_per_token_matches_allocated_cache():
    from transformer_lib import KVCache

    assert ef.kv_cache_bytes_per_token(GPTConfig(32000, 4096, 4096, 32, 32), 2) == 512 * 2**10
    for kv in (None, 2, 1):
        config = GPTConfig(50, 16, 32, 4, 3, num_kv_heads=kv)
        cache = KVCache(GPT(config), batch_size=2)
        allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
        assert allocated == 2 * config.context_length * ef.kv_cache_bytes_per_token(config)
    with pytest.raises(TypeError, match="GPTConfig"):
        ef.kv_cache_bytes_per_token({"d_model": 32})
