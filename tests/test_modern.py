"""Chapter 11's modern decoder: RMSNorm and SwiGLU against PyTorch, grouped-query and rotary
attention against F.scaled_dot_product_attention, the GPT switches (defaults unchanged, cached
equal to uncached generation with every switch on, the KV cache's size), and from_hf against
Hugging Face's LlamaForCausalLM."""

import pytest
import torch
import torch.nn.functional as F

from transformer_lib import (
    GPT,
    GPTConfig,
    KVCache,
    MultiHeadAttention,
    apply_rotary,
    from_hf,
    split_heads,
)
from transformer_lib.modern import RMSNorm, SwiGLUFeedForward

MODERN = dict(norm="rmsnorm", activation="swiglu", positions="rope", bias=False)


@pytest.mark.parametrize("seed", range(10))
def test_rms_norm_equals_pytorch_in_float64(seed):
    g = torch.Generator().manual_seed(seed)
    D = int(torch.randint(1, 50, (1,), generator=g))
    eps = [1e-6, 1e-5, 1e-3][seed % 3]
    x = torch.randn(2, 3, D, dtype=torch.float64, generator=g) * (1 + 10 * seed)
    ours, theirs = RMSNorm(D, eps).double(), torch.nn.RMSNorm(D, eps=eps).double()
    with torch.no_grad():
        ours.weight.copy_(torch.randn(D, dtype=torch.float64, generator=g))
        theirs.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_rms_norm_half_precision_and_errors():
    x = torch.randn(4, 16)
    out = RMSNorm(16)(x.bfloat16())
    torch.testing.assert_close(out.float(), RMSNorm(16)(x), atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="eps must be a number in"):
        RMSNorm(8, eps=0)
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="x must have 8 features"):
        RMSNorm(8)(torch.randn(2, 7))


def test_swiglu_is_the_gated_formula_with_the_parameters_of_a_4d_network():
    ffn = SwiGLUFeedForward(24, 64).double()
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    gate, up, down = ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight
    torch.testing.assert_close(ffn(x), (F.silu(x @ gate.T) * (x @ up.T)) @ down.T)
    assert sum(p.numel() for p in SwiGLUFeedForward(48, 128).parameters()) == 2 * 48 * 192
    assert GPTConfig(10, 8, 48, 4, 1, activation="swiglu").d_ff == 128
    with pytest.raises(ValueError, match="x must have d_model=24"):
        ffn(torch.randn(2, 23, dtype=torch.float64))


@pytest.mark.parametrize("H, KV", [(8, 8), (8, 4), (8, 2), (8, 1), (6, 3)])
def test_grouped_query_attention_equals_sdpa_with_enable_gqa(H, KV):
    D = 8 * H
    attention = MultiHeadAttention(D, H, num_kv_heads=KV).double()
    x = torch.randn(2, 7, D, dtype=torch.float64)
    q = split_heads(attention.q_proj(x), H)
    k, v = split_heads(attention.k_proj(x), KV), split_heads(attention.v_proj(x), KV)
    heads = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    expected = attention.out_proj(heads.transpose(1, 2).reshape(2, 7, D))
    torch.testing.assert_close(attention(x, x, x, is_causal=True), expected)
    out, weights = attention(x, x, x, is_causal=True, need_weights=True)
    torch.testing.assert_close(out, expected)
    assert weights.shape == (2, H, 7, 7)
    assert attention.k_proj.out_features == KV * 8


def test_attention_option_errors():
    with pytest.raises(ValueError, match="num_kv_heads must divide num_heads=8, got 3"):
        MultiHeadAttention(32, 8, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_kv_heads must be a positive int"):
        MultiHeadAttention(32, 8, num_kv_heads=0)
    with pytest.raises(ValueError, match="rope_base must be None or a number > 1"):
        MultiHeadAttention(32, 8, rope_base=1.0)


def test_rotary_attention_rotates_queries_and_keys_by_position():
    attention = MultiHeadAttention(32, 4, rope_base=500.0).double()
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    q, k, v = (split_heads(p(x), 4) for p in (attention.q_proj, attention.k_proj,
                                              attention.v_proj))
    heads = F.scaled_dot_product_attention(apply_rotary(q, base=500.0),
                                           apply_rotary(k, base=500.0), v, is_causal=True)
    torch.testing.assert_close(attention(x, x, x, is_causal=True),
                               attention.out_proj(heads.transpose(1, 2).reshape(2, 6, 32)))


def test_default_gpt_is_chapter_8s():
    model = GPT(GPTConfig(50, 16, 32, 4, 2))
    names = {name for name, _ in model.named_parameters()}
    assert "positions.embedding.weight" in names and "blocks.layers.0.ffn.linear1.weight" in names
    assert not any("gate_proj" in n for n in names)
    assert model.embed_dropout is None and model.config.d_ff == 128


@pytest.mark.parametrize("kv", [None, 2, 1])
def test_cached_generation_equals_uncached_with_every_switch_on(kv):
    torch.manual_seed(0)
    config = GPTConfig(60, 24, 32, 4, 2, num_kv_heads=kv, **MODERN)
    model = GPT(config).eval()
    prompt = torch.randint(0, 60, (3, 4))
    assert torch.equal(model.generate(prompt, 40, temperature=0, use_cache=True),
                       model.generate(prompt, 40, temperature=0, use_cache=False))
    a, b = (model.generate(prompt, 15, top_p=0.9, use_cache=flag,
                           generator=torch.Generator().manual_seed(2)) for flag in (True, False))
    assert torch.equal(a, b)
    cache = KVCache(model, batch_size=3)
    heads = kv or 4
    assert cache.keys[0].shape == (3, heads, 24, 8)


@pytest.mark.parametrize("changes, message", [
    (dict(norm="batchnorm"), "norm must be 'layernorm' or 'rmsnorm'"),
    (dict(activation="relu"), "activation must be 'gelu' or 'swiglu'"),
    (dict(positions="alibi"), "positions must be 'learned' or 'rope'"),
    (dict(num_kv_heads=3), "num_kv_heads must be None or a positive int that divides"),
    (dict(rope_theta=1.0), "rope_theta must be > 1"),
])
def test_gpt_config_errors_name_the_switch(changes, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(50, 16, 32, 4, 2, **changes)


@pytest.mark.parametrize("kv, tied, theta", [(4, True, 10000.0), (2, False, 500000.0),
                                             (1, True, 10000.0), (4, False, 10000.0)])
def test_from_hf_llama_gives_the_same_logits(kv, tied, theta):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(kv)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=120, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=kv, max_position_embeddings=48,
        tie_word_embeddings=tied, rms_norm_eps=1e-5, rope_theta=theta)).eval()
    ours = from_hf(llama)
    assert isinstance(ours, GPT) and not ours.training
    assert ours.config.num_kv_heads == kv and ours.config.tie_output == tied
    idx = torch.randint(0, 120, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), llama(idx).logits, atol=1e-4, rtol=0)
    with pytest.raises(TypeError, match="from_hf cannot convert"):
        from_hf(torch.nn.Linear(2, 2))


def test_from_hf_llama_refuses_what_ours_cannot_compute():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      attention_bias=True)
    with pytest.raises(ValueError, match="attention_bias=True is not supported"):
        from_hf(transformers.LlamaForCausalLM(config))
