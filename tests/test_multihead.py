"""Chapter 2's export: MultiHeadAttention, both of its paths, and equivalence with PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import transformer_lib
from transformer_lib import MultiHeadAttention, causal_mask, padding_mask
from transformer_lib import multihead as multihead_module

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}
MASK_KINDS = ["none", "causal", "padding", "shared", "per_head", "padding+per_head",
              "causal+padding"]


def copy_weights(torch_mha: nn.MultiheadAttention, ours: MultiHeadAttention) -> None:
    """Copy by hand (independently of transformer_lib.interop): in_proj is [W^Q; W^K; W^V]."""
    with torch.no_grad():
        for i, layer in enumerate([ours.q_proj, ours.k_proj, ours.v_proj]):
            layer.weight.copy_(torch_mha.in_proj_weight[i * ours.d_model:(i + 1) * ours.d_model])
            if torch_mha.in_proj_bias is not None:
                layer.bias.copy_(torch_mha.in_proj_bias[i * ours.d_model:(i + 1) * ours.d_model])
        ours.out_proj.weight.copy_(torch_mha.out_proj.weight)
        if torch_mha.out_proj.bias is not None:
            ours.out_proj.bias.copy_(torch_mha.out_proj.bias)


def random_case(seed: int):
    """A random configuration: sizes, bias, batch_first, and a mask in both conventions.

    Key 0 is always allowed, so no query row is fully masked (PyTorch gives NaN there).
    """
    g = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    H, Dh = pick([1, 2, 3, 4, 8]), pick([1, 2, 4, 8])
    B, T = pick([1, 2, 3]), pick([1, 2, 5, 7])
    kind = MASK_KINDS[seed % len(MASK_KINDS)]
    S = T if kind.startswith("causal") else pick([1, 3, 6, 9])
    case = {"D": H * Dh, "H": H, "B": B, "T": T, "S": S, "kind": kind,
            "bias": bool(torch.rand(1, generator=g) < 0.5),
            "batch_first": bool(torch.rand(1, generator=g) < 0.5)}
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    pad = (torch.arange(S) < lengths[:, None]).view(B, 1, 1, S)  # ours: True = may attend
    shared = torch.rand(T, S, generator=g) < 0.5
    per_head = torch.rand(B, H, T, S, generator=g) < 0.5
    shared[:, 0] = per_head[..., 0] = True
    flat_heads = ~per_head.reshape(B * H, T, S)  # PyTorch's per-head attn_mask: (B * H, T, S)
    if kind == "none":
        ours, torch_kwargs = None, {}
    elif kind == "causal":
        ours, torch_kwargs = causal_mask(T), {"attn_mask": ~causal_mask(T)}
    elif kind == "padding":
        ours, torch_kwargs = pad, {"key_padding_mask": ~pad[:, 0, 0]}
    elif kind == "shared":
        ours, torch_kwargs = shared, {"attn_mask": ~shared}
    elif kind == "per_head":
        ours, torch_kwargs = per_head, {"attn_mask": flat_heads}
    elif kind == "padding+per_head":
        ours, torch_kwargs = pad & per_head, {"attn_mask": flat_heads,
                                              "key_padding_mask": ~pad[:, 0, 0]}
    else:  # causal+padding
        ours = causal_mask(T) & pad
        torch_kwargs = {"attn_mask": ~causal_mask(T), "key_padding_mask": ~pad[:, 0, 0]}
    case.update(mask=ours, torch_kwargs=torch_kwargs)
    return case


def torch_forward(torch_mha, query, key, value, batch_first, **kwargs):
    """Run nn.MultiheadAttention on batch-first inputs, whatever its batch_first."""
    if not batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    out, weights = torch_mha(query, key, value, need_weights=True, average_attn_weights=False,
                             **kwargs)
    return (out if batch_first else out.transpose(0, 1)), weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(21))
def test_matches_nn_multihead_attention(seed, dtype):
    c = random_case(seed)
    theirs_mod = nn.MultiheadAttention(c["D"], c["H"], bias=c["bias"], batch_first=c["batch_first"],
                                       dtype=dtype).eval()
    ours_mod = MultiHeadAttention(c["D"], c["H"], bias=c["bias"]).to(dtype).eval()
    copy_weights(theirs_mod, ours_mod)
    query = torch.randn(c["B"], c["T"], c["D"], dtype=dtype, requires_grad=True)
    memory = torch.randn(c["B"], c["S"], c["D"], dtype=dtype, requires_grad=True)
    grad_out = torch.randn(c["B"], c["T"], c["D"], dtype=dtype)
    where = f"case {c}"

    theirs, their_weights = torch_forward(theirs_mod, query, memory, memory, c["batch_first"],
                                          **c["torch_kwargs"])
    their_grads = torch.autograd.grad(theirs, (query, memory), grad_out)
    fast = ours_mod(query, memory, memory, mask=c["mask"])
    readable, our_weights = ours_mod(query, memory, memory, mask=c["mask"], need_weights=True)
    assert our_weights.shape == (c["B"], c["H"], c["T"], c["S"])
    for name, ours in [("fast path", fast), ("readable path", readable)]:
        torch.testing.assert_close(ours, theirs, **TOL[dtype],
                                   msg=lambda m, n=name: f"{n}, {where}: {m}")
        our_grads = torch.autograd.grad(ours, (query, memory), grad_out)
        for arg, a, b in zip(["query", "memory"], our_grads, their_grads):
            torch.testing.assert_close(
                a, b, **TOL[dtype], msg=lambda m, n=name, arg=arg: f"grad {arg}, {n}, {where}: {m}")
    torch.testing.assert_close(our_weights, their_weights, **TOL[dtype],
                               msg=lambda m: f"per-head weights, {where}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(8))
def test_fast_path_equals_readable_path_including_empty_rows(seed, dtype):
    c = random_case(seed)
    layer = MultiHeadAttention(c["D"], c["H"], bias=c["bias"]).to(dtype).eval()
    mask = torch.rand(c["B"], c["H"], c["T"], c["S"]) < 0.4  # some rows end up empty
    mask[0, 0, 0] = False  # at least one
    results = []
    for need_weights in (False, True):
        layer.zero_grad()
        x = torch.randn(c["B"], c["T"], c["D"], dtype=dtype,
                        generator=torch.Generator().manual_seed(seed))
        m = torch.randn(c["B"], c["S"], c["D"], dtype=dtype,
                        generator=torch.Generator().manual_seed(seed + 100))
        x.requires_grad_()
        m.requires_grad_()
        out = layer(x, m, m, mask=mask, need_weights=need_weights)
        out = out[0] if need_weights else out
        out.pow(2).sum().backward()
        results.append([out, x.grad, m.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*results):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_masked_rows_give_zeros_not_nan(need_weights):
    layer = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 4, 8, requires_grad=True)
    mask = torch.ones(2, 2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = False  # one head of one query
    mask[1, :, 3] = False  # every head of one query
    result = layer(x, x, x, mask=mask, need_weights=need_weights)
    out = result[0] if need_weights else result
    assert not out.isnan().any()
    torch.testing.assert_close(out[1, 3], layer.out_proj.bias)  # its heads output 0
    if need_weights:
        weights = result[1]
        assert (weights[0, 1, 2] == 0).all() and (weights[1, :, 3] == 0).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def _attention_with_nan_rows(query, key, value, attn_mask=None, dropout_p=0.0, **kwargs):
    """Like kernels that give NaN for a row with no allowed key: -inf scores, plain softmax."""
    scores = query @ key.transpose(-2, -1) / query.size(-1) ** 0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ value


def test_fast_path_guards_against_kernels_that_return_nan(monkeypatch):
    q = torch.randn(1, 1, 3, 4)
    empty = torch.tensor([[True, True, True], [False, False, False], [True, False, True]])
    assert _attention_with_nan_rows(q, q, q, attn_mask=empty)[0, 0, 1].isnan().all()  # the hazard
    monkeypatch.setattr(F, "scaled_dot_product_attention", _attention_with_nan_rows)
    layer = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 3, 8, requires_grad=True)
    out = layer(x, x, x, mask=empty)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 1], layer.out_proj.bias.expand(2, 8))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    monkeypatch.undo()
    torch.testing.assert_close(out, layer(x, x, x, mask=empty, need_weights=True)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_and_dtypes(dtype):
    layer = MultiHeadAttention(12, 3).to(dtype)
    query, memory = torch.randn(2, 5, 12, dtype=dtype), torch.randn(2, 7, 12, dtype=dtype)
    out = layer(query, memory, memory)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 12) and out.dtype == dtype
    out, weights = layer(query, memory, memory, need_weights=True)
    assert out.shape == (2, 5, 12) and weights.shape == (2, 3, 5, 7)
    assert out.dtype == weights.dtype == dtype
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5, dtype=dtype))


def test_matches_one_attention_per_head():
    layer = MultiHeadAttention(12, 3).double()
    query, memory = torch.randn(2, 5, 12).double(), torch.randn(2, 7, 12).double()
    heads = []
    for i in range(3):
        rows = slice(4 * i, 4 * (i + 1))
        q = F.linear(query, layer.q_proj.weight[rows], layer.q_proj.bias[rows])
        k = F.linear(memory, layer.k_proj.weight[rows], layer.k_proj.bias[rows])
        v = F.linear(memory, layer.v_proj.weight[rows], layer.v_proj.bias[rows])
        weights = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1)  # sqrt(Dh) = 2
        heads.append(weights @ v)
    expected = layer.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(layer(query, memory, memory), expected)
    torch.testing.assert_close(layer(query, memory, memory, need_weights=True)[0], expected)


def test_self_attention_is_permutation_equivariant():
    layer = MultiHeadAttention(16, 4).double()
    x = torch.randn(2, 6, 16).double()
    perm = torch.randperm(6)
    torch.testing.assert_close(layer(x, x, x)[:, perm], layer(x[:, perm], x[:, perm], x[:, perm]))


def test_causal_future_does_not_change_past():
    layer = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    y = x.clone()
    y[:, 4:] = torch.randn(2, 3, 16)
    for need_weights in (False, True):
        a = layer(x, x, x, mask=causal_mask(7), need_weights=need_weights)
        b = layer(y, y, y, mask=causal_mask(7), need_weights=need_weights)
        a, b = (a[0], b[0]) if need_weights else (a, b)
        torch.testing.assert_close(a[:, :4], b[:, :4])
        assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_padded_keys_have_no_influence():
    layer = MultiHeadAttention(16, 4).eval()
    tokens = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = padding_mask(tokens, 0)
    x = torch.randn(2, 3, 16)
    memory = torch.randn(2, 5, 16)
    changed = memory.clone()
    changed[1, 3:] = 100 * torch.randn(2, 16)
    torch.testing.assert_close(layer(x, memory, memory, mask=mask),
                               layer(x, changed, changed, mask=mask))
    _, weights = layer(x, memory, memory, mask=mask, need_weights=True)
    assert (weights[1, :, :, 3:] == 0).all()


def test_dropout_only_in_training_mode():
    layer = MultiHeadAttention(16, 4, dropout=0.5)
    plain = MultiHeadAttention(16, 4)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 32, 16)
    layer.eval()
    torch.testing.assert_close(layer(x, x, x), plain(x, x, x), rtol=0, atol=0)
    layer.train()
    assert not torch.allclose(layer(x, x, x), plain(x, x, x))
    assert not torch.equal(layer(x, x, x), layer(x, x, x))
    _, weights = layer(x, x, x, need_weights=True)
    assert 0.4 < (weights == 0).float().mean() < 0.6


@pytest.mark.parametrize("bias", [True, False])
def test_parameters_names_and_count(bias):
    for num_heads in (1, 2, 4, 8):
        layer = MultiHeadAttention(32, num_heads, bias=bias)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sub = getattr(layer, name)
            assert isinstance(sub, nn.Linear) and sub.weight.shape == (32, 32)
            assert (sub.bias is not None) == bias
        assert sum(p.numel() for p in layer.parameters()) == 4 * 32 * 32 + (4 * 32 if bias else 0)
        assert layer.head_dim == 32 // num_heads


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        ((10, 3), {}, r"d_model must be divisible by num_heads: d_model=10 and num_heads=3"),
        ((0, 1), {}, r"d_model must be a positive int"),
        ((8, 0), {}, r"num_heads must be a positive int"),
        ((8, 2.0), {}, r"num_heads must be a positive int"),
        ((8, 2), {"dropout": 1.5}, r"dropout must be a probability"),
    ],
)
def test_bad_constructor_arguments(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MultiHeadAttention(*args, **kwargs)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize(
    ("shapes", "mask", "pattern"),
    [
        (((2, 5, 8), (2, 7, 12), (2, 7, 12)), None,
         r"query must have shape \(B, T, D\) with D = d_model = 12"),
        (((2, 5, 12), (2, 7, 10), (2, 7, 12)), None, r"key must have shape \(B, S, D\)"),
        (((2, 5, 12), (2, 7, 12), (2, 7, 6)), None, r"value must have shape \(B, S, D\)"),
        (((5, 12), (7, 12), (7, 12)), None, r"query must have shape \(B, T, D\)"),
        (((2, 5, 12), (2, 6, 12), (2, 7, 12)), None, r"key and value must have the same length S"),
        (((2, 5, 12), (3, 7, 12), (3, 7, 12)), None, r"same batch size B"),
        (((2, 5, 12), (2, 7, 12), (2, 7, 12)), torch.ones(5, 5, dtype=torch.bool),
         r"mask of shape \(5, 5\) does not broadcast to the attention scores' shape "
         r"\(\.\.\., T, S\) = \(2, 3, 5, 7\)"),
        (((2, 5, 12), (2, 7, 12), (2, 7, 12)), torch.ones(3, 1, 1, 7, dtype=torch.bool),
         r"mask of shape \(3, 1, 1, 7\) does not broadcast"),
        (((2, 5, 12), (2, 7, 12), (2, 7, 12)), torch.ones(5, 7), r"mask must be a bool tensor"),
    ],
)
def test_bad_forward_arguments_on_both_paths(shapes, mask, pattern, need_weights):
    layer = MultiHeadAttention(12, 3)
    with pytest.raises(ValueError, match=pattern):
        layer(*(torch.randn(*s) for s in shapes), mask=mask, need_weights=need_weights)


@pytest.mark.parametrize("need_weights", [False, True])
def test_an_input_of_another_dtype_is_named(need_weights):
    layer, x = MultiHeadAttention(8, 2), torch.randn(2, 3, 8)
    for args, name in (((x.double(), x, x), "query"), ((x, x, x.half()), "value")):
        with pytest.raises(ValueError, match=rf"{name} must have the dtype of the layer's weights, "
                                             r"torch.float32, got torch.float(64|16)"):
            layer(*args, need_weights=need_weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast mixes dtypes on purpose
        assert layer(x, x, x).dtype == torch.bfloat16


def test_non_tensor_input_raises_type_error():
    with pytest.raises(TypeError, match=r"key must be a torch.Tensor of shape \(B, S, D\)"):
        MultiHeadAttention(4, 2)(torch.randn(1, 2, 4), [[[0.0] * 4]], torch.randn(1, 1, 4))


def test_exported_at_top_level():
    assert transformer_lib.MultiHeadAttention is multihead_module.MultiHeadAttention
    assert "MultiHeadAttention" in transformer_lib.__all__
    assert (multihead_module.scaled_dot_product_attention
            is transformer_lib.scaled_dot_product_attention)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("need_weights", [False, True])
def test_is_causal_equals_an_explicit_causal_mask(dtype, need_weights):
    layer = MultiHeadAttention(12, 3).to(dtype).eval()
    x = torch.randn(2, 6, 12, dtype=dtype)
    outputs, grads = [], []
    for kwargs in ({"mask": causal_mask(6)}, {"is_causal": True}):
        xi = x.clone().requires_grad_()
        result = layer(xi, xi, xi, need_weights=need_weights, **kwargs)
        out = result[0] if need_weights else result
        out.square().sum().backward()
        outputs.append(result)
        grads.append(xi.grad)
    if need_weights:
        torch.testing.assert_close(outputs[1][0], outputs[0][0], **TOL[dtype])
        torch.testing.assert_close(outputs[1][1], outputs[0][1], **TOL[dtype])
        assert (outputs[1][1].triu(diagonal=1) == 0).all()
    else:
        torch.testing.assert_close(outputs[1], outputs[0], **TOL[dtype])
    torch.testing.assert_close(grads[1], grads[0], **TOL[dtype])


def test_is_causal_with_a_mask_or_cross_attention_raises():
    layer = MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="pass mask or is_causal=True, not both"):
        layer(x, x, x, mask=causal_mask(5), is_causal=True)
    with pytest.raises(ValueError, match=r"is_causal=True needs as many keys as queries.*T=5.*S=7"):
        layer(x, torch.randn(2, 7, 8), torch.randn(2, 7, 8), is_causal=True)


# ---- split_heads and merge_heads (lab 2's contract), and the cache path


def test_split_and_merge_heads_meet_lab_2s_contract(capsys):
    from transformer_lib import checks, merge_heads, split_heads

    checks.check_split_heads(split_heads)
    checks.check_merge_heads(merge_heads)
    x = torch.randn(2, 5, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    torch.testing.assert_close(heads[:, 1], x[..., 4:8], rtol=0, atol=0)  # head 1: features 4 .. 7
    torch.testing.assert_close(merge_heads(heads), x, rtol=0, atol=0)
    assert transformer_lib.split_heads is multihead_module.split_heads
    assert {"split_heads", "merge_heads"} <= set(transformer_lib.__all__)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: transformer_lib.split_heads(torch.randn(2, 5, 10), 3),
         r"D divisible by num_heads=3"),
        (lambda: transformer_lib.split_heads(torch.randn(5, 12), 3),
         r"x must have shape \(B, T, D\)"),
        (lambda: transformer_lib.split_heads(torch.randn(2, 5, 12), 0),
         r"num_heads must be a positive int"),
        (lambda: transformer_lib.merge_heads(torch.randn(2, 5, 12)),
         r"x must have shape \(B, H, T, Dh\)"),
    ],
)
def test_split_and_merge_heads_name_a_wrong_shape(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("need_weights", [False, True])
def test_cached_self_attention_in_pieces_equals_one_causal_pass(dtype, need_weights):
    from transformer_lib import AttentionCache

    layer = MultiHeadAttention(12, 3).to(dtype).eval()
    x = torch.randn(2, 9, 12, dtype=dtype)
    full = layer(x, x, x, is_causal=True, need_weights=need_weights)
    cache, pieces = AttentionCache(), []
    for a, b in [(0, 4), (4, 5), (5, 9)]:
        piece = x[:, a:b]
        pieces.append(layer(piece, piece, piece, is_causal=True, need_weights=need_weights,
                            cache=cache))
        assert cache.length == b and cache.keys.shape == (2, 3, b, 4)
    if need_weights:
        torch.testing.assert_close(torch.cat([p[0] for p in pieces], dim=1), full[0], **TOL[dtype])
        for (a, b), (_, weights) in zip([(0, 4), (4, 5), (5, 9)], pieces):
            assert weights.shape == (2, 3, b - a, b)  # the new queries over every key so far
            torch.testing.assert_close(weights, full[1][:, :, a:b, :b], **TOL[dtype])
    else:
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL[dtype])
    # the cache holds exactly the keys and values of the full pass
    torch.testing.assert_close(cache.keys, layer.k_proj(x).view(2, 9, 3, 4).transpose(1, 2))


def test_cached_attention_with_an_explicit_mask_over_the_cached_keys():
    from transformer_lib import AttentionCache

    layer = MultiHeadAttention(8, 2).double().eval()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    pad = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1]],
                       dtype=torch.bool)
    mask = causal_mask(6) & pad[:, None, None, :]  # (B, 1, T, S)
    full = layer(x, x, x, mask=mask)
    cache = AttentionCache()
    first = layer(x[:, :2], x[:, :2], x[:, :2], mask=mask[..., :2, :2], cache=cache)
    second = layer(x[:, 2:], x[:, 2:], x[:, 2:], mask=mask[..., 2:, :], cache=cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError,
                       match=r"mask of shape \(4, 4\) does not broadcast.*\(3, 2, 4, 10\)"):
        layer(x[:, 2:], x[:, 2:], x[:, 2:], mask=causal_mask(4), cache=cache)


def test_a_cross_attention_cache_projects_the_memory_once():
    from transformer_lib import AttentionCache

    layer = MultiHeadAttention(8, 2).eval()
    memory, mask = (torch.randn(2, 5, 8),
                    padding_mask(torch.tensor([[1, 2, 3, 4, 5], [1, 2, 0, 0, 0]]), 0))
    calls = []
    layer.k_proj.register_forward_hook(lambda *args: calls.append("k"))
    cache = AttentionCache(cross=True)
    queries = torch.randn(2, 4, 8)
    for t in range(4):  # one query per step, as a decoder's cross-attention sees them
        out, weights = layer(queries[:, t:t + 1], memory, memory, mask=mask, cache=cache,
                             need_weights=True)
        expected, expected_weights = layer(queries[:, t:t + 1], memory, memory, mask=mask,
                                           need_weights=True)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(weights, expected_weights)
        assert cache.length == 5
    # the cached calls projected the memory once; uncached, each time
    assert calls.count("k") == 1 + 4


def test_attention_cache_reorders_rows_and_rejects_another_batch():
    from transformer_lib import AttentionCache

    layer = MultiHeadAttention(8, 2).eval()
    x = torch.randn(3, 4, 8)
    cache = AttentionCache()
    layer(x, x, x, is_causal=True, cache=cache)
    keys = cache.keys.clone()
    cache.reorder(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(cache.keys, keys[[2, 2, 0]], rtol=0, atol=0)
    assert "length=4" in repr(cache)
    with pytest.raises(ValueError,
                       match=r"cannot extend the cache's \(N, H, t, Dh\) = \(3, 2, 4, 4\)"):
        layer(x[:2, :1], x[:2, :1], x[:2, :1], cache=cache)
