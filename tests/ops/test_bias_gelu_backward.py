"""bias + GELU backward on the Triton kernels: dx and dbias against autograd on the reference."""

import functools

import pytest
import torch

from bertfast import ops
from bertfast.ops import bias_gelu_reference
from tests.ops.backward_checks import check_against_reference, check_finite_differences

pytest.importorskip("bertfast.triton.bias_gelu")
triton_bias_gelu = functools.partial(ops.bias_gelu, backend="triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("rows", [1, 7, 97])
@pytest.mark.parametrize("cols", [8, 40, 130])
def test_grads_against_autograd_on_reference(dtype, approximate, rows, cols):
    inputs = [torch.randn(rows, cols) * 3, torch.randn(cols), approximate]
    check_against_reference(
        triton_bias_gelu,
        bias_gelu_reference,
        inputs,
        {0: "x", 1: "bias"},
        dtype,
        f"{dtype} {approximate} {rows}x{cols}",
    )


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_no_bias_strided_rows_and_3d(approximate):
    view = (torch.randn(6, 48) * 3)[:, :40]  # rows strided, last dim contiguous
    check_against_reference(
        triton_bias_gelu, bias_gelu_reference, [view, None, approximate], {0: "x"},
        torch.float32, "strided",
    )  # fmt: skip
    x3 = torch.randn(2, 3, 40) * 3
    check_against_reference(
        triton_bias_gelu, bias_gelu_reference, [x3, torch.randn(40), approximate],
        {0: "x", 1: "bias"}, torch.float32, "3d",
    )  # fmt: skip


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_finite_differences(approximate):
    inputs = [torch.randn(7, 40) * 3, torch.randn(40), approximate]
    check_finite_differences(triton_bias_gelu, inputs, [0, 1], approximate)


def test_gradient_of_a_sum_and_only_bias_needing_grad():
    """The expanded gradient of .sum() (stride 0), and a graph where only the bias is a leaf."""
    x = torch.randn(5, 8)
    bias = torch.randn(8, requires_grad=True)
    triton_bias_gelu(x, bias, "none").sum().backward()
    ref_bias = bias.detach().clone().requires_grad_()
    bias_gelu_reference(x, ref_bias, "none").sum().backward()
    torch.testing.assert_close(bias.grad, ref_bias.grad, atol=1e-6, rtol=1e-6)


def test_backward_custom_op_and_autograd_registration():
    x, b = torch.randn(3, 8), torch.randn(8)
    torch.library.opcheck(
        torch.ops.bertfast.bias_gelu.default,
        (x.requires_grad_(), b.requires_grad_(), "tanh", "triton"),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    torch.library.opcheck(
        torch.ops.bertfast.bias_gelu_backward.default,
        (torch.randn(3, 8), torch.randn(3, 8), None, "none", "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_cuda_backend_has_no_backward():
    with pytest.raises(NotImplementedError, match="the cuda kernel 'bias_gelu' has no backward"):
        ops.get_backward("bias_gelu", "cuda")


def test_compiled_backward_traces_without_graph_breaks():
    x = torch.randn(7, 40, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)

    def step(x, bias):
        return ops.bias_gelu(x, bias, "tanh", backend="triton", validate=False).square().sum()

    torch.compile(step, backend="aot_eager", fullgraph=True)(x, bias).backward()
    ref_x, ref_bias = x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    bias_gelu_reference(ref_x, ref_bias, "tanh").square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bias.grad, ref_bias.grad, atol=1e-5, rtol=1e-5)
