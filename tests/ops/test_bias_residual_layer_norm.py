"""bias + residual + LayerNorm: reference against naive math, Triton kernel against reference."""

import functools

import pytest
import torch

from bertfast import ops
from bertfast.ops import bias_residual_layer_norm_reference as reference
from tests.helpers import assert_close

pytest.importorskip("bertfast.triton.bias_residual_layer_norm")
kernel = functools.partial(ops.bias_residual_layer_norm, backend="triton")


def naive(x, bias, residual, w, b, eps):
    s = x.double() + residual.double() + (0 if bias is None else bias.double())
    mean = s.mean(-1, keepdim=True)
    var = ((s - mean) ** 2).mean(-1, keepdim=True)
    return (s - mean) / torch.sqrt(var + eps) * w.double() + b.double()


def make(shape, dtype=torch.float32):
    h = shape[-1]
    return [
        torch.randn(shape) * 2 + 1,
        torch.randn(h),
        torch.randn(shape),
        torch.randn(h) + 1,
        torch.randn(h),
    ]


def test_reference_matches_naive_math():
    x, bias, res, w, b = make((4, 37))
    assert_close(reference(x, bias, res, w, b, 1e-12), naive(x, bias, res, w, b, 1e-12), atol=1e-5)
    assert_close(reference(x, None, res, w, b, 1e-5), naive(x, None, res, w, b, 1e-5), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 97), (2, 3, 129), (5, 384), (3, 768)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_kernel_against_reference(dtype, shape, with_bias):
    x, bias, res, w, b = make(shape)
    bias = bias if with_bias else None
    expected = reference(x, bias, res, w, b, 1e-12).double()
    cast = [t.to(dtype) if t is not None else None for t in (x, bias, res, w, b)]
    ours = kernel(*cast, 1e-12)
    assert ours.shape == x.shape and ours.dtype == dtype
    if dtype == torch.float32:
        assert_close(ours, expected, atol=2e-5, rtol=1e-5)
        return
    ref_err = (reference(*cast, 1e-12).double() - expected).abs().max().item()
    our_err = (ours.double() - expected).abs().max().item()
    assert our_err <= 2 * ref_err + 1e-6, (our_err, ref_err)


def test_strided_rows_and_eps_is_not_compiled_in():
    x, bias, res, w, b = make((6, 48))
    big = torch.randn(6, 64)
    big[:, :48] = x
    view = big[:, :48]
    for eps in (1e-12, 1e-5, 0.5):  # a runtime argument: any value, no recompile needed
        assert_close(
            kernel(view, bias, res, w, b, eps), reference(x, bias, res, w, b, eps), atol=2e-5
        )


def test_bad_inputs():
    x, bias, res, w, b = make((2, 8))
    with pytest.raises(ValueError, match=r"residual has shape \(2, 7\)"):
        ops.bias_residual_layer_norm(x, bias, res[:, :7], w, b, 1e-5, backend="triton")
    with pytest.raises(TypeError, match="residual has dtype torch.float16 but x has torch.float32"):
        ops.bias_residual_layer_norm(x, bias, res.half(), w, b, 1e-5, backend="triton")
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        ops.bias_residual_layer_norm(x, bias, res, w[:4], b, 1e-5, backend="triton")


def test_custom_op():
    x, bias, res, w, b = make((3, 16))
    op = torch.ops.bertfast.bias_residual_layer_norm
    assert_close(op(x, bias, res, w, b, 1e-5, "triton"), kernel(x, bias, res, w, b, 1e-5), atol=0)
    torch.library.opcheck(
        op.default,
        (x, None, res, w, b, 1e-5, "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )
