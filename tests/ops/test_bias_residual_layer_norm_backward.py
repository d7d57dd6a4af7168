"""bias + residual + LayerNorm backward on the Triton kernels: dx, dresidual, dbias, dweight and
dln_bias against autograd on the reference."""

import functools

import pytest
import torch

from bertfast import ops
from bertfast.ops import bias_residual_layer_norm_reference as reference
from tests.ops.backward_checks import check_against_reference, check_finite_differences

pytest.importorskip("bertfast.triton.bias_residual_layer_norm")
kernel = functools.partial(ops.bias_residual_layer_norm, backend="triton")
NAMES = {0: "x", 1: "bias", 2: "residual", 3: "weight", 4: "ln_bias"}


def make(rows, hidden, eps=1e-12):
    return [
        torch.randn(rows, hidden) * 2 + 1,
        torch.randn(hidden),
        torch.randn(rows, hidden),
        torch.randn(hidden) + 1,
        torch.randn(hidden),
        eps,
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows", [1, 7, 97])
@pytest.mark.parametrize("hidden", [8, 40, 130])
def test_grads_against_autograd_on_reference(dtype, rows, hidden):
    check_against_reference(
        kernel, reference, make(rows, hidden), NAMES, dtype, f"{dtype} {rows}x{hidden}"
    )


def test_no_bias_strided_rows_3d_and_eps():
    x, _, res, w, b, _ = make(6, 40)
    view = torch.randn(6, 48)[:, :40]  # rows strided, last dim contiguous
    names = {0: "x", 2: "residual", 3: "weight", 4: "ln_bias"}
    check_against_reference(kernel, reference, [view, None, res, w, b, 1e-5], names,
                            torch.float32, "strided, no bias")  # fmt: skip
    x3, bias, res3 = torch.randn(2, 3, 40), torch.randn(40), torch.randn(2, 3, 40)
    check_against_reference(kernel, reference, [x3, bias, res3, w, b, 0.5], NAMES,
                            torch.float32, "3d, eps 0.5")  # fmt: skip


@pytest.mark.parametrize("with_bias", [True, False])
def test_finite_differences(with_bias):
    inputs = make(7, 40, eps=1e-5)
    if not with_bias:
        inputs[1] = None
    wrt = [0, 1, 2, 3, 4] if with_bias else [0, 2, 3, 4]
    check_finite_differences(kernel, inputs, wrt, f"bias={with_bias}")


def test_leaf_x_and_residual_get_separate_grads():
    """x and residual receive the same gradient; accumulating into one must not touch the
    other."""
    x, bias, res, w, b, eps = make(5, 8)
    x.requires_grad_()
    res.requires_grad_()
    for _ in range(2):
        kernel(x, bias, res, w, b, eps).sum().backward()
    assert x.grad.data_ptr() != res.grad.data_ptr()
    ref_x, ref_res = x.detach().clone().requires_grad_(), res.detach().clone().requires_grad_()
    for _ in range(2):
        reference(ref_x, bias, ref_res, w, b, eps).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.grad, ref_res.grad, atol=1e-5, rtol=1e-5)


def test_backward_custom_op_and_autograd_registration():
    x, bias, res, w, b, eps = make(3, 8)
    torch.library.opcheck(
        torch.ops.bertfast.bias_residual_layer_norm.default,
        tuple(t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in (x, bias, res))
        + (w.requires_grad_(), b.requires_grad_(), eps, "triton"),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    torch.library.opcheck(
        torch.ops.bertfast.bias_residual_layer_norm_backward.default,
        (torch.randn(3, 8), x.detach(), None, res.detach(), w.detach(), eps, "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_compiled_backward_traces_without_graph_breaks():
    inputs = make(7, 40)
    leaves = [t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs]

    def step(*args):
        return ops.bias_residual_layer_norm(*args, backend="triton", validate=False).square().sum()

    torch.compile(step, backend="aot_eager", fullgraph=True)(*leaves).backward()
    refs = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t
            for t in inputs]  # fmt: skip
    reference(*refs).square().sum().backward()
    for ours, ref in zip(leaves[:5], refs[:5]):
        torch.testing.assert_close(ours.grad, ref.grad, atol=1e-4, rtol=1e-5)


def test_cuda_backend_has_no_backward():
    with pytest.raises(NotImplementedError, match="cuda kernel 'bias_residual_layer_norm' has no"):
        ops.get_backward("bias_residual_layer_norm", "cuda")
