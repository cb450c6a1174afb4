"""Chapter 8's export: GPTConfig, GPT, lm_loss, sampling, the KV cache, and the data helpers."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import transformer_lib
from transformer_lib import (
    GPT,
    CharTokenizer,
    EncoderLayer,
    GPTConfig,
    KVCache,
    causal_mask,
    forward_with_cache,
    lm_loss,
    next_token_probs,
    python_source_files,
    sample_next_token,
)
from transformer_lib import gpt as gpt_module
from transformer_lib.outcomes import expect

SMALL = dict(vocab_size=23, context_length=16, d_model=24, num_heads=4, num_layers=2)


def small_model(dtype=torch.float64, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**(SMALL | overrides))).to(dtype).eval()


def random_ids(*shape, vocab=SMALL["vocab_size"], seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# ---- the configuration

def test_config_defaults_and_frozen():
    config = GPTConfig(**SMALL)
    assert config.d_ff == 4 * 24 and config.dropout == 0.0 and config.tie_output
    assert GPTConfig(**SMALL, d_ff=50).d_ff == 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 32
    assert GPTConfig(**dataclasses.asdict(config)) == config


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"vocab_size": 0}, "vocab_size must be a positive int"),
        ({"context_length": 2.0}, "context_length must be a positive int"),
        ({"d_model": 30}, "d_model must be divisible by num_heads, got d_model=30 and num_heads=4"),
        ({"num_heads": True}, "num_heads must be a positive int"),
        ({"num_layers": -1}, "num_layers must be a positive int"),
        ({"d_ff": 0}, "d_ff must be a positive int"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps must be > 0"),
    ],
)
def test_config_validation(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        GPTConfig(**(SMALL | overrides))


def test_model_needs_a_config():
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        GPT(SMALL)


# ---- the model

def test_forward_shape_and_blocks_are_causal_encoder_layers():
    model = small_model(torch.float32)
    idx = random_ids(3, 11)
    assert model(idx).shape == (3, 11, 23) and model(idx).dtype == torch.float32
    assert len(model.blocks.layers) == 2 and model.blocks.norm is not None
    for layer in model.blocks.layers:
        assert isinstance(layer, EncoderLayer) and layer.norm_first
        assert layer.ffn.activation == "gelu" and layer.ffn.linear1.out_features == 96


def test_forward_is_the_sum_of_its_parts():
    model = small_model()
    idx = random_ids(2, 9)
    h = model.embed.weight[idx] + model.positions.weight[:9]  # unscaled embedding + positions
    for layer in model.blocks.layers:
        h = layer(h, causal_mask(9))
    expected = model.blocks.norm(h) @ model.embed.weight.T
    torch.testing.assert_close(model(idx), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cut", [0, 1, 7, 14])
def test_causality_future_tokens_never_change_earlier_logits(cut):
    model = small_model()
    idx = random_ids(2, 16)
    changed = idx.clone()
    changed[:, cut + 1:] = (idx[:, cut + 1:] + 1) % SMALL["vocab_size"]  # every later token changes
    torch.testing.assert_close(model(changed)[:, :cut + 1], model(idx)[:, :cut + 1],
                               rtol=1e-12, atol=1e-12)


def test_causality_with_dropout_in_training_mode():
    model = small_model(dropout=0.2)
    model.train()
    idx = random_ids(2, 16)
    changed = idx.clone()
    changed[:, 8:] = random_ids(2, 8, seed=4)
    torch.manual_seed(5)
    a = model(idx)
    torch.manual_seed(5)
    b = model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])


def test_too_long_or_bad_input_raises():
    model = small_model()
    with pytest.raises(ValueError,
                       match=r"T=17 tokens, more than the model can see: 16 = context_length"):
        model(random_ids(1, 17))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(B, T\) tensor"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids outside the vocabulary \[0, 23\)"):
        model(torch.tensor([[0, 23]]))
    with pytest.raises(TypeError, match="tensor of token ids"):
        model([[1, 2]])


def test_output_projection_is_tied_to_the_embedding():
    model = small_model()
    assert model.out_proj.weight is model.embed.weight and model.out_proj.bias is None
    names = [name for name, _ in model.named_parameters()]
    assert "out_proj.weight" not in names  # one parameter, registered once
    lm_loss(model(random_ids(2, 8)), random_ids(2, 8, seed=2)).backward()
    assert model.embed.weight.grad is not None
    untied = small_model(tie_output=False)
    assert untied.out_proj.weight is not untied.embed.weight
    extra = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in model.parameters())
    assert extra == 23 * 24


def test_gpt2_initialization():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, context_length=256, d_model=256, num_heads=4,
                          num_layers=8))
    residual_std = 0.02 / math.sqrt(2 * 8)
    for layer in model.blocks.layers:
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                       layer.ffn.linear1):
            assert abs(linear.weight.std().item() - 0.02) < 1e-3
            assert (linear.bias == 0).all()
        for linear in (layer.self_attn.out_proj, layer.ffn.linear2):
            assert abs(linear.weight.std().item() - residual_std) < 3e-4
            assert (linear.bias == 0).all()
        assert (layer.norm1.weight == 1).all() and (layer.norm1.bias == 0).all()
    for table in (model.embed.weight, model.positions.weight):
        assert abs(table.std().item() - 0.02) < 1e-3 and abs(table.mean().item()) < 1e-3
    # the untrained model's predictions are nearly uniform: loss close to ln V
    idx = random_ids(4, 65, vocab=512)
    loss = lm_loss(model(idx[:, :-1]), idx[:, 1:])
    assert abs(loss.item() - math.log(512)) < 0.05


def test_lm_loss_is_the_shifted_cross_entropy():
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    expected = F.cross_entropy(logits.reshape(10, 7), targets.reshape(10))
    torch.testing.assert_close(lm_loss(logits, targets), expected)
    targets[0, 0] = -100
    torch.testing.assert_close(lm_loss(logits, targets),
                               F.cross_entropy(logits.reshape(10, 7), targets.reshape(10)))
    with pytest.raises(ValueError, match=r"logits must be \(B, T, V\) and targets \(B, T\)"):
        lm_loss(logits, targets[:, :4])


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context_length=16, d_model=32, num_heads=4, num_layers=2))
    data = random_ids(4, 17, vocab=20)
    x, y = data[:, :-1], data[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = lm_loss(model(x), y).item()
    for _ in range(150):
        loss = lm_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    expect("tiny GPT: loss before training", first, at_least=2.5)
    expect("tiny GPT: loss after 150 steps on one batch", loss, at_most=0.05)
    model.eval()
    # it has memorized the batch: greedy decoding from the first token reproduces each row
    # (the first token alone can be ambiguous, so start from the first two)
    assert torch.equal(model.generate(data[:, :2], 15, temperature=0), data)


# ---- sampling

PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])


def support(**kwargs):
    return (next_token_probs(PROBS.log(), **kwargs)[0] > 0).nonzero().flatten().tolist()


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [(0.01, [0]), (0.49, [0]), (0.51, [0, 1]), (0.79, [0, 1]), (0.81, [0, 1, 2]),
     (0.94, [0, 1, 2]), (0.96, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, expected):
    assert support(top_p=top_p) == expected
    probs = next_token_probs(PROBS.log(), top_p=top_p)[0]
    kept = PROBS[0, expected]
    torch.testing.assert_close(probs[expected], kept / kept.sum())


def test_top_p_follows_the_order_of_probabilities_not_of_ids():
    logits = torch.tensor([[0.05, 0.15, 0.5, 0.3]]).log()
    assert (next_token_probs(logits, top_p=0.7)[0] > 0).nonzero().flatten().tolist() == [2, 3]


def test_top_p_samples_stay_in_the_nucleus():
    g = torch.Generator().manual_seed(0)
    draws = sample_next_token(PROBS.log().expand(5000, 4), top_p=0.79, generator=g)
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 0.5 / 0.8) < 0.03


def test_top_k_and_temperature():
    assert (support(top_k=1) == [0] and support(top_k=3) == [0, 1, 2]
            and support(top_k=10) == [0, 1, 2, 3])
    assert support(temperature=0) == [0]
    torch.testing.assert_close(next_token_probs(PROBS.log(), temperature=0),
                               torch.tensor([[1.0, 0, 0, 0]]))
    sharp = next_token_probs(PROBS.log(), temperature=0.5)[0]
    torch.testing.assert_close(sharp,
                               PROBS[0] ** 2 / (PROBS[0] ** 2).sum())  # p^(1/T), renormalized
    logits = torch.randn(6, 11)
    assert torch.equal(sample_next_token(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, top_k=1), logits.argmax(-1))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"temperature": -0.1}, "temperature must be a number >= 0"),
     ({"top_k": 0}, "top_k must be None or a positive int"),
     ({"top_k": 2.0}, "top_k must be None or a positive int"),
     ({"top_p": 0.0}, r"top_p must be None or a probability in \(0, 1\]"),
     ({"top_p": 1.5}, r"top_p must be None or a probability in \(0, 1\]")],
)
def test_bad_sampling_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        next_token_probs(torch.zeros(1, 4), **kwargs)
    with pytest.raises(ValueError, match=pattern):
        small_model().generate(random_ids(1, 3), 2, **kwargs)


# ---- generation and the KV cache

def test_forward_with_cache_in_pieces_equals_forward():
    model = small_model()
    idx = random_ids(3, 16)
    cache = KVCache(model, batch_size=3)
    pieces = [forward_with_cache(model, idx[:, a:b], cache)
              for a, b in [(0, 5), (5, 6), (6, 7), (7, 16)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(idx), rtol=1e-10, atol=1e-10)
    assert cache.length == 16
    with pytest.raises(ValueError,
                       match="more than the model can see: 0 = context_length 16 - 16 cached"):
        forward_with_cache(model, idx[:, :1], cache)
    with pytest.raises(ValueError, match="batch_size=2"):
        forward_with_cache(model, idx[:, :1], KVCache(model, batch_size=2))


@pytest.mark.parametrize("new_tokens", [0, 1, 5, 12, 13, 20, 40])
@pytest.mark.parametrize("prompt_length", [1, 4])
def test_cached_generation_equals_uncached_greedy(prompt_length, new_tokens):
    # context 16: 16 - prompt_length new tokens fill the window, more slide it
    model = small_model()
    prompt = random_ids(3, prompt_length)
    cached = model.generate(prompt, new_tokens, temperature=0)
    uncached = model.generate(prompt, new_tokens, temperature=0, use_cache=False)
    assert cached.shape == (3, prompt_length + new_tokens)
    assert torch.equal(cached[:, :prompt_length], prompt)
    assert torch.equal(cached, uncached)


def test_greedy_generation_is_the_argmax_loop():
    model = small_model()
    idx = random_ids(2, 3)
    expected = idx
    for _ in range(25):  # crosses the 16-token window
        next_token = model(expected[:, -16:])[:, -1].argmax(-1)
        expected = torch.cat([expected, next_token[:, None]], dim=1)
    assert torch.equal(model.generate(idx, 25, temperature=0), expected)
    assert torch.equal(model.generate(idx, 25, top_k=1), expected)  # top_k=1 is greedy
    assert torch.equal(model.generate(idx, 25, temperature=0.0, top_p=0.5), expected)


def test_prompt_longer_than_the_context_is_cropped():
    model = small_model()
    idx = random_ids(2, 30)
    out = model.generate(idx, 5, temperature=0)
    assert torch.equal(out[:, :30], idx)
    assert torch.equal(out[:, 30:], model.generate(idx[:, -16:], 5, temperature=0)[:, 16:])
    assert torch.equal(out, model.generate(idx, 5, temperature=0, use_cache=False))


def test_seeded_sampling_is_reproducible_and_the_same_with_the_cache():
    model = small_model()
    prompt = random_ids(2, 3)
    runs = [model.generate(prompt, 30, temperature=1.3, top_k=8, top_p=0.9, use_cache=use,
                           generator=torch.Generator().manual_seed(7))
            for use in (True, False, True)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other = model.generate(prompt, 30, temperature=1.3, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


def test_generate_arguments():
    model = small_model()
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int"):
        model.generate(random_ids(1, 3), -1)
    with pytest.raises(ValueError, match="T >= 1"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        KVCache(model, 0)


def test_kv_cache_size():
    model = small_model(torch.float32)
    cache = KVCache(model, batch_size=5)
    assert len(cache.keys) == len(cache.values) == 2
    assert cache.keys[0].shape == (5, 4, 16, 6) and cache.keys[0].dtype == torch.float32
    assert "length=0/16" in repr(cache)


def test_the_cache_goes_down_the_blocks_and_is_filled_in_place():
    from transformer_lib import AttentionCache, PreallocatedCache

    model = small_model()
    idx = random_ids(2, 10)
    cache = KVCache(model, batch_size=2)
    assert len(cache.layers) == 2 and all(isinstance(c, PreallocatedCache) for c in cache.layers)
    assert isinstance(cache.layers[0], AttentionCache) and cache.length == 0
    buffers = [t.data_ptr() for t in cache.keys + cache.values]
    first = model(idx[:, :6], cache=cache)  # forward_with_cache is this call
    second = forward_with_cache(model, idx[:, 6:], cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), model(idx), rtol=1e-10,
                               atol=1e-10)
    assert cache.length == 10 and [c.length for c in cache.layers] == [10, 10]
    assert [t.data_ptr() for t in cache.keys + cache.values] == buffers  # written in place
    block = cache.layers[1]
    assert (block.keys.data_ptr() == block.key_buffer.data_ptr()
            and block.keys.shape == (2, 4, 10, 6))
    # the blocks' keys are their attentions' projections of the (normalized) inputs, in order
    h = model.positions(model.embed(idx))
    layer0 = model.blocks.layers[0]
    expected = layer0.self_attn.k_proj(layer0.norm1(h)).view(2, 10, 4, 6).transpose(1, 2)
    torch.testing.assert_close(cache.layers[0].keys, expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError,
                       match="the cache has room for 16 positions: 10 are filled, 7 more"):
        cache.layers[0].update(*[torch.zeros(2, 4, 7, 6, dtype=torch.float64)] * 2)
    cache.layers[1].reorder(torch.tensor([1, 1]))
    torch.testing.assert_close(cache.layers[1].keys[0], cache.layers[1].keys[1], rtol=0, atol=0)
    assert cache.layers[1].length == 10 and cache.keys[1].shape == (2, 4, 16, 6)


# ---- data

def test_char_tokenizer():
    tok = CharTokenizer.from_text("def f(x):\n    return x\n")
    assert tok.chars == sorted(set("def f(x):\n    return x\n"))
    assert tok.vocab_size == len(tok.chars) + 1 and tok.unk_id == 0
    text = "def rut(f):\n"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("fez")
    assert ids.dtype == torch.long and ids.tolist()[2] == 0  # 'z' is unknown
    assert tok.decode(ids) == "fe\ufffd" and tok.decode([99]) == "\ufffd"
    with pytest.raises(ValueError, match="must not repeat"):
        CharTokenizer("aa")
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="1-d"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))


def test_python_source_files_skips_tests_and_is_deterministic(tmp_path):
    for rel in ["a.py", "pkg/b.py", "pkg/tests/test_b.py", "test/test_a.py", "site-packages/x.py",
                "big.py", "notes.txt"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n" * (1000 if rel == "big.py" else 1))
    files = python_source_files(root=tmp_path, max_file_bytes=100)
    assert [p for p, _ in files] == ["a.py", "pkg/b.py"]
    assert files[0][1] == "x = 1\n"
    assert (python_source_files(root=tmp_path, max_chars=1, max_file_bytes=100)
            in ([files[0]], [files[1]]))
    with pytest.raises(ValueError, match="root must be a folder"):
        python_source_files(root=tmp_path / "missing")
    with pytest.raises(ValueError, match="max_chars must be a positive int"):
        python_source_files(max_chars=0)


def test_python_source_files_reads_the_standard_library():
    files = python_source_files(max_chars=50_000)
    assert files == python_source_files(max_chars=50_000)
    assert [p for p, _ in files] == sorted(p for p, _ in files)
    assert sum(len(t) for _, t in files) >= 50_000
    assert not any("test" in p.split("/")[:-1] for p, _ in files)
    assert any("def " in t for _, t in files)


def test_exported_at_top_level():
    for name in ["GPTConfig", "GPT", "lm_loss", "next_token_probs", "sample_next_token", "KVCache",
                 "forward_with_cache", "generate", "CharTokenizer", "python_source_files"]:
        assert getattr(transformer_lib, name) is getattr(gpt_module, name)
        assert name in transformer_lib.__all__
