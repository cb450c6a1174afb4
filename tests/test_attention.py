"""Chapter 1's exports: scaled_dot_product_attention, causal_mask, padding_mask."""

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_lib import causal_mask, padding_mask, scaled_dot_product_attention

DTYPES = [torch.float32, torch.float64]
# (*batch, T, S, Dk, Dv)
SHAPES = [(2, 5, 5, 8, 8), (3, 4, 7, 16, 6), (2, 3, 6, 6, 4, 12), (1, 1, 1, 1, 1), (9, 3, 2, 5)]


def make_inputs(shape, dtype, requires_grad=False):
    *batch, T, S, Dk, Dv = shape
    return [
        torch.randn(*batch, n, d, dtype=dtype, requires_grad=requires_grad)
        for n, d in [(T, Dk), (S, Dk), (S, Dv)]
    ]


def make_masks(shape):
    *batch, T, S, _, _ = shape
    masks = {"none": None}
    if T == S:
        masks["causal"] = causal_mask(T)
    if batch:
        lengths = torch.randint(1, S + 1, (batch[0],))
        masks["padding"] = (torch.arange(S) < lengths[:, None]).view(batch[0], *[1] * len(batch), S)
    random = torch.rand(*batch, T, S) < 0.5
    random[..., -1] = True  # keep one key per row; fully masked rows are tested separately
    masks["random"] = random
    return masks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch_outputs_and_gradients(shape, dtype):
    for name, mask in make_masks(shape).items():
        ours_in = make_inputs(shape, dtype, requires_grad=True)
        theirs_in = [t.detach().clone().requires_grad_() for t in ours_in]
        grad_out = torch.randn(*shape[:-4], shape[-4], shape[-1], dtype=dtype)
        ours, _ = scaled_dot_product_attention(*ours_in, mask=mask)
        theirs = F.scaled_dot_product_attention(*theirs_in, attn_mask=mask)
        tol = ({"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32
               else {"rtol": 1e-10, "atol": 1e-12})
        torch.testing.assert_close(ours, theirs, **tol, msg=lambda m, name=name: f"{name}: {m}")
        ours.backward(grad_out)
        theirs.backward(grad_out)
        for arg, a, b in zip(["query", "key", "value"], ours_in, theirs_in):
            torch.testing.assert_close(a.grad, b.grad, **tol,
                                       msg=lambda m, arg=arg, name=name: f"grad {arg}, {name}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_are_softmax_of_scaled_scores(dtype):
    q, k, v = make_inputs((2, 3, 4, 6, 5), dtype)
    out, weights = scaled_dot_product_attention(q, k, v)
    expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(6), dim=-1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, dtype=dtype))
    torch.testing.assert_close(out, weights @ v)


def test_custom_scale():
    q, k, v = make_inputs((2, 3, 4, 6, 5), torch.float64)
    out, _ = scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3))


def test_masked_keys_get_exactly_zero_weight():
    q, k, v = make_inputs((2, 4, 6, 8, 3), torch.float32)
    mask = torch.rand(2, 4, 6) < 0.5
    mask[..., 0] = True
    _, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))


def test_padded_key_has_no_influence():
    q, k, v = make_inputs((2, 4, 6, 8, 3), torch.float32)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 0, 0]])
    mask = padding_mask(tokens, 0)[:, 0]  # (B, 1, S): no head axis here
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    k2, v2 = k.clone(), v.clone()
    k2[1, 4:] = 100.0 * torch.randn(2, 8)
    v2[1, 4:] = 100.0 * torch.randn(2, 3)
    out2, _ = scaled_dot_product_attention(q, k2, v2, mask=mask)
    torch.testing.assert_close(out, out2)


def test_causal_future_does_not_change_past():
    x = torch.randn(1, 2, 7, 8)
    out, _ = scaled_dot_product_attention(x, x, x, mask=causal_mask(7))
    y = x.clone()
    y[..., 4:, :] = torch.randn(1, 2, 3, 8)
    out2, _ = scaled_dot_product_attention(y, y, y, mask=causal_mask(7))
    torch.testing.assert_close(out[..., :4, :], out2[..., :4, :])
    assert not torch.allclose(out[..., 4:, :], out2[..., 4:, :])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_fully_masked_rows_give_zeros_not_nan(dtype):
    q, k, v = make_inputs((2, 3, 4, 8, 5), torch.float32, requires_grad=False)
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 1] = False  # query 1 of batch 0 may attend to nothing
    mask[1] = False  # batch 1 may attend to nothing at all
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert not out.isnan().any() and not weights.isnan().any()
    assert (out[0, 1] == 0).all() and (weights[0, 1] == 0).all()
    assert (out[1] == 0).all()
    assert (weights[0, 0].float().sum() - 1).abs() < 1e-2
    out.float().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0, 1] == 0).all()


def test_shape_dtype_and_device_preserved():
    for dtype in DTYPES:
        q, k, v = make_inputs((2, 3, 5, 7, 4, 6), dtype)
        out, weights = scaled_dot_product_attention(q, k, v)
        assert out.shape == (2, 3, 5, 6) and weights.shape == (2, 3, 5, 7)
        assert out.dtype == dtype and weights.dtype == dtype
        assert out.device == q.device and weights.device == q.device


def test_broadcast_batch_dims():
    q = torch.randn(2, 3, 5, 8)
    k = torch.randn(1, 3, 6, 8)  # one set of keys shared by the batch
    v = torch.randn(1, 3, 6, 4)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 5, 4) and weights.shape == (2, 3, 5, 6)


def test_dropout_is_applied_and_weights_produce_output():
    q, k, v = make_inputs((2, 2, 16, 16, 8, 4), torch.float32)
    torch.manual_seed(1)
    out, weights = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert (weights == 0).float().mean() > 0.3  # about half the weights dropped
    torch.testing.assert_close(out, weights @ v)
    _, no_drop = scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    assert not (no_drop == 0).any()


def test_causal_mask_values():
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    assert m.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]
    assert causal_mask(1).tolist() == [[True]]
    assert causal_mask(3, device="cpu").device.type == "cpu"


def test_padding_mask_values():
    tokens = torch.tensor([[7, 8, 0], [0, 5, 6]])
    m = padding_mask(tokens, 0)
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, False], [False, True, True]]
    assert padding_mask(tokens, 5)[1, 0, 0].tolist() == [True, False, True]


@pytest.mark.parametrize("pad_id", [0.5, None, "0", True, torch.tensor(0.0), torch.tensor([0, 1])])
def test_padding_mask_rejects_a_pad_id_that_is_not_an_int(pad_id):
    with pytest.raises(ValueError, match="pad_id must be an int token id, got"):
        padding_mask(torch.tensor([[7, 8, 0]]), pad_id)


def test_padding_mask_takes_integer_pad_ids_of_any_kind():
    import numpy as np

    tokens = torch.tensor([[7, 8, 0]])
    for pad_id in (0, np.int64(0), torch.tensor(0)):
        assert padding_mask(tokens, pad_id)[0, 0, 0].tolist() == [True, True, False]


def test_half_precision_scores_stay_finite_where_torch_does():
    # unscaled, these dot products are 64 * 40 * 40 = 102400 > 65504, float16's largest value
    q = torch.full((1, 2, 3, 64), 40.0, dtype=torch.float16)
    k = torch.full((1, 2, 4, 64), 40.0, dtype=torch.float16)
    v = torch.randn(1, 2, 4, 64, dtype=torch.float16)
    out, weights = scaled_dot_product_attention(q, k, v, mask=causal_mask(4)[:3])
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                              attn_mask=causal_mask(4)[:3])
    torch.testing.assert_close(out.float(), expected, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("size", [0, -3, 2.5, "4", True, None])
def test_causal_mask_rejects_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        causal_mask(size)


def test_padding_mask_rejects_bad_tokens():
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, S\)"):
        padding_mask(torch.tensor([1, 2, 0]), 0)
    with pytest.raises(ValueError, match="integer token ids"):
        padding_mask(torch.rand(2, 3), 0)
    with pytest.raises(TypeError, match="tokens"):
        padding_mask([[1, 2, 0]], 0)


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        ((torch.randn(2, 3, 8), torch.randn(2, 4, 6), torch.randn(2, 4, 5)), {},
         r"key must have the query's feature size Dk=8"),
        ((torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 5, 5)), {},
         r"value must have one row per key"),
        ((torch.randn(2, 3, 8), torch.randn(3, 4, 8), torch.randn(3, 4, 5)), {},
         r"broadcastable batch dimensions"),
        ((torch.randn(8), torch.randn(4, 8), torch.randn(4, 5)), {},
         r"query must have shape \(\.\.\., length, features\)"),
        ((torch.randn(3, 8), torch.randn(4, 8).double(), torch.randn(4, 5)), {}, r"share a dtype"),
        ((torch.ones(3, 8, dtype=torch.long),) * 3, {}, r"query must be a floating-point tensor"),
        ((torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 5)),
         {"mask": torch.ones(2, 3, 4)}, r"mask must be a bool tensor \(True = may attend\)"),
        ((torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 5)),
         {"mask": torch.ones(2, 3, 5, dtype=torch.bool)},
         r"mask of shape \(2, 3, 5\) does not broadcast to the attention scores' shape "
         r"\(\.\.\., T, S\) = \(2, 3, 4\)"),
        ((torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 5)),
         {"mask": torch.ones(2, 1, 1, 4, dtype=torch.bool)},
         r"mask of shape \(2, 1, 1, 4\) does not broadcast"),
        ((torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 5)), {"dropout_p": 1.5},
         r"dropout_p must be a probability"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        scaled_dot_product_attention(*args, **kwargs)


def test_non_tensor_arguments_raise_type_error():
    with pytest.raises(TypeError, match="key must be a torch.Tensor"):
        scaled_dot_product_attention(torch.randn(3, 4), [[1.0] * 4], torch.randn(3, 4))
    with pytest.raises(TypeError, match="mask must be a bool torch.Tensor"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4),
                                     mask=[[True] * 3] * 3)
