"""The layout torch.autocast makes, on the Triton kernels (interpreter): float16 GEMM outputs
beside float32 parameters and a float32 residual stream. Each op reads the float32 inputs as
they are (fp32 math), writes GELU in x's dtype and each LayerNorm in the stream's float32, and
its backward gives every input a gradient of its own dtype; other mixes are refused, and the
CUDA kernels (one dtype) refuse this one."""

import pytest
import torch

from bertfast import ops
from tests.helpers import assert_close

pytest.importorskip("bertfast.triton.bias_gelu")
LOW = torch.float16


def leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors]


def check(kernel, reference, inputs, out_dtype, tol):
    """Forward and every gradient of ``kernel`` against ``reference`` on the same mixed inputs
    (which computes in fp32); each gradient in its input's dtype."""
    ours_in, ref_in = leaves(*inputs), leaves(*inputs)
    out, expected = kernel(*ours_in), reference(*ref_in)
    assert out.dtype == expected.dtype == out_dtype
    assert_close(out, expected, atol=tol, rtol=tol, what="forward")
    grad = torch.randn(out.shape)
    ours = torch.autograd.grad(out, ours_in, grad.to(out.dtype))
    theirs = torch.autograd.grad(expected, ref_in, grad.to(out.dtype))
    for i, (g, e) in enumerate(zip(ours, theirs, strict=True)):
        assert g.dtype == inputs[i].dtype, i
        assert_close(g, e, atol=tol * (1 + e.abs().max().item()), rtol=tol, what=f"grad {i}")


def test_bias_gelu_float32_bias_beside_float16_x():
    x, bias = torch.randn(13, 40).to(LOW), torch.randn(40)
    check(lambda x, b: ops.bias_gelu(x, b, "none", backend="triton"),
          lambda x, b: ops.bias_gelu_reference(x, b, "none"), [x, bias], LOW, 2e-3)  # fmt: skip


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_residual_layer_norm_writes_the_float32_stream(dropout):
    x = torch.randn(13, 40).to(LOW)
    rest = [torch.randn(40), torch.randn(13, 40), torch.randn(40) + 1, torch.randn(40)]

    def kernel(*a):
        torch.manual_seed(0)
        return ops.bias_residual_layer_norm(*a, 1e-12, backend="triton", dropout_p=dropout)

    def reference(x, bias, residual, weight, ln_bias):
        kept = None
        if dropout:
            from bertfast.triton.hidden_dropout import dropout_mask

            torch.manual_seed(0)
            seed = int(torch.randint(0, 2**31 - 1, (1,)))  # the op's draw (ops._dropout)
            kept = dropout_mask(x.shape, dropout, seed, x.device)
        return ops.bias_residual_layer_norm_reference(
            x, bias, residual, weight, ln_bias, 1e-12, kept, dropout
        )

    check(kernel, reference, [x, *rest], torch.float32, 2e-5)


def test_fused_epilogue_layer_norm_writes_the_float32_stream():
    x, weight = torch.randn(13, 24).to(LOW), (torch.randn(40, 24) / 5).to(LOW)
    rest = [torch.randn(40), torch.randn(13, 40), torch.randn(40) + 1, torch.randn(40)]
    norm = "bias_residual_layer_norm"

    def kernel(x, weight, bias, residual, ln_weight, ln_bias):
        return ops.linear_epilogue(x, weight, bias, norm, residual, ln_weight, ln_bias, 1e-12,
                                   backend="triton")  # fmt: skip

    def reference(x, weight, bias, residual, ln_weight, ln_bias):
        return ops.linear_epilogue_reference(x, weight, bias, norm, residual, ln_weight, ln_bias,
                                             1e-12)  # fmt: skip

    # The backward's matmuls run in float16 (as F.linear's under autocast); the reference's in
    # float32 on the same float16 operands.
    check(kernel, reference, [x, weight, *rest], torch.float32, 2e-2)


def test_other_mixes_are_refused():
    x, bias = torch.randn(4, 8), torch.randn(8).to(LOW)
    with pytest.raises(TypeError, match=r"bias has dtype torch.float16 but the input has "
                                        r"torch.float32; bias may be torch.float32$"):  # fmt: skip
        ops.bias_gelu(x, bias, "none", backend="triton")
    x16, stream = torch.randn(4, 8).to(LOW), torch.randn(4, 8).to(torch.bfloat16)
    params = [torch.randn(8).to(LOW) for _ in range(3)]
    with pytest.raises(TypeError, match=r"residual has dtype torch.bfloat16 but x has "
                                        r"torch.float16; residual may be torch.float16 or "
                                        r"torch.float32 \(as under torch.autocast\)"):  # fmt: skip
        ops.bias_residual_layer_norm(x16, params[0], stream, *params[1:], 1e-12, backend="triton")
    with pytest.raises(TypeError, match="the cuda kernels take one dtype for every input"):
        ops.bias_residual_layer_norm(
            x16, params[0], torch.randn(4, 8), *params[1:], 1e-12, backend="cuda"
        )
