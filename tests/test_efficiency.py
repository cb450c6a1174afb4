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
