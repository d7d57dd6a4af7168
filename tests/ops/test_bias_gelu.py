"""bias + GELU: torch reference against the closed forms, the Triton kernel against the reference."""

import functools
import math

import pytest
import torch

from bertfast import ops
from bertfast.ops import bias_gelu_reference
from tests.helpers import assert_close

pytest.importorskip("bertfast.triton.bias_gelu")
triton_bias_gelu = functools.partial(ops.bias_gelu, backend="triton")


def closed_form(x, approximate):
    x = x.double()
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_reference_matches_closed_form(approximate):
    x = torch.randn(5, 33) * 4
    bias = torch.randn(33)
    assert_close(
        bias_gelu_reference(x, bias, approximate), closed_form(x + bias, approximate), atol=1e-6
    )


def within_rule(ours, x32, bias32, approximate, what):
    expected = bias_gelu_reference(x32, bias32, approximate).double()
    if ours.dtype == torch.float32:
        assert_close(ours, expected, atol=1e-6, rtol=1e-6, what=what)
        return
    low = bias_gelu_reference(x32.to(ours.dtype), bias32.to(ours.dtype), approximate).double()
    ref_err = (low - expected).abs().max().item()
    our_err = (ours.double() - expected).abs().max().item()
    assert our_err <= 2 * ref_err + 1e-6, f"{what}: {our_err:.3e} > 2 x {ref_err:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 97), (3, 5, 129), (2, 1536)])
def test_kernel_against_reference(dtype, approximate, shape):
    x32 = torch.randn(shape) * 3
    bias32 = torch.randn(shape[-1])
    ours = triton_bias_gelu(x32.to(dtype), bias32.to(dtype), approximate)
    assert ours.shape == x32.shape and ours.dtype == dtype
    within_rule(ours, x32, bias32, approximate, f"{dtype} {approximate} {shape}")


def test_no_bias_extremes_and_strided_rows():
    x = torch.tensor([[-1e4, -30.0, -5.0, 0.0, 5.0, 30.0, 1e4]])
    for approximate in ("none", "tanh"):
        assert_close(triton_bias_gelu(x, None, approximate), closed_form(x, approximate), atol=1e-5)
    big = torch.randn(6, 40)
    view = big[:, :33]  # rows strided, last dim contiguous
    assert_close(
        triton_bias_gelu(view, None, "none"), bias_gelu_reference(view, None, "none"), atol=1e-6
    )


def test_bad_inputs(monkeypatch):
    with pytest.raises(ValueError, match="approximate='sigmoid'"):
        triton_bias_gelu(torch.randn(2, 3), None, "sigmoid")
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\), got \(4,\)"):
        ops.bias_gelu(torch.randn(2, 3), torch.randn(4), backend="triton")
    with pytest.raises(TypeError, match="float64"):
        ops.bias_gelu(torch.randn(2, 3, dtype=torch.float64), None, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="x is a CPU tensor"):
        triton_bias_gelu(torch.randn(2, 3), None, "none")


def test_custom_op():
    x, b = torch.randn(3, 8), torch.randn(8)
    assert_close(
        torch.ops.bertfast.bias_gelu(x, b, "tanh", "triton"), triton_bias_gelu(x, b, "tanh"), atol=0
    )
    torch.library.opcheck(
        torch.ops.bertfast.bias_gelu.default,
        (x, b, "none", "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )
