"""The fused GEMM epilogue (Triton, under the interpreter) against F.linear + the reference
epilogue, at odd shapes in fp32 and fp16, in every epilogue and both LayerNorm forms."""

import functools

import pytest
import torch
import torch.nn.functional as F

from bertfast import ops
from bertfast.ops import linear_epilogue_reference
from tests.helpers import assert_close

triton_module = pytest.importorskip("bertfast.triton.linear_epilogue")
fused = functools.partial(ops.linear_epilogue, backend="triton")
SHAPES = [(1, 8, 16), (7, 40, 24), (97, 70, 130), (33, 129, 64)]  # (rows, in, out)


def make(rows, k, n, dtype=torch.float32, lead=()):
    x = torch.randn(*lead, rows, k)
    weight = torch.randn(n, k) / k**0.5
    bias = torch.randn(n)
    residual = torch.randn(*lead, rows, n)
    ln_weight, ln_bias = 1 + 0.1 * torch.randn(n), 0.1 * torch.randn(n)
    return [t.to(dtype) for t in (x, weight, bias, residual, ln_weight, ln_bias)]


def unfused(x, weight, bias, epilogue, residual, ln_weight, ln_bias, eps):
    """Today's path in the same dtype: F.linear, then the op's own reference."""
    y = F.linear(x, weight)
    if epilogue == "bias":
        return y + bias
    if epilogue.startswith("bias_gelu"):
        approximate = "tanh" if epilogue.endswith("tanh") else "none"
        return ops.bias_gelu_reference(y, bias, approximate)
    return ops.bias_residual_layer_norm_reference(y, bias, residual, ln_weight, ln_bias, eps)


def args_for(epilogue, x, weight, bias, residual, ln_weight, ln_bias):
    if epilogue == "bias_residual_layer_norm":
        return (x, weight, bias, epilogue, residual, ln_weight, ln_bias, 1e-5)
    return (x, weight, bias, epilogue, None, None, None, 1e-5)


@pytest.mark.parametrize("epilogue", ops.EPILOGUES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_equals_linear_and_reference_epilogue(epilogue, shape):
    args = args_for(epilogue, *make(*shape))
    assert_close(fused(*args), unfused(*args), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("epilogue", ops.EPILOGUES)
@pytest.mark.parametrize("shape", SHAPES[1:3])
def test_fp16_within_twice_the_unfused_error(epilogue, shape):
    tensors32 = make(*shape)
    expected = linear_epilogue_reference(*args_for(epilogue, *tensors32)).double()
    args16 = args_for(epilogue, *[t.half() for t in tensors32])
    ours = (fused(*args16).double() - expected).abs().max().item()
    theirs = (unfused(*args16).double() - expected).abs().max().item()
    assert ours <= 2 * theirs + 1e-3, (ours, theirs)


def test_wide_rows_take_the_light_layer_norm_pass():
    """Rows wider than MAX_FUSED_LAYER_NORM: GEMM + bias in the kernel, residual + LayerNorm
    after (forced here at a small width)."""
    x, weight, bias, residual, lw, lb = make(9, 24, 80)
    args = (x, weight, bias, "bias_residual_layer_norm", residual, lw, lb, 1e-5)
    split = triton_module.launch(*args, split_layer_norm=True)
    assert_close(split, unfused(*args), atol=2e-5, rtol=1e-5)
    assert_close(split, fused(*args), atol=2e-5, rtol=1e-5)


def test_leading_dims_and_strided_rows():
    x, weight, bias, residual, lw, lb = make(5, 32, 48, lead=(2,))
    wide = torch.randn(2, 5, 40)
    view = wide[..., :32]  # rows with a stride of 40
    args = (view, weight, bias, "bias_residual_layer_norm", residual, lw, lb, 1e-5)
    out = fused(*args)
    assert out.shape == (2, 5, 48)
    assert_close(out, unfused(*args), atol=2e-5, rtol=1e-5)


def test_bad_inputs_are_named():
    x, weight, bias, residual, lw, lb = make(3, 8, 16)
    with pytest.raises(ValueError, match="epilogue='relu'; supported"):
        fused(x, weight, bias, "relu")
    with pytest.raises(ValueError, match=r"weight must be \(out_features, 8\)"):
        fused(x, weight[:, :4], bias)
    with pytest.raises(ValueError, match="needs residual"):
        fused(x, weight, bias, "bias_residual_layer_norm")
    with pytest.raises(ValueError, match="belong to 'bias_residual_layer_norm'"):
        fused(x, weight, bias, "bias_gelu", residual)
    with pytest.raises(TypeError, match="weight has dtype torch.float16 but x has torch.float32"):
        fused(x, weight.half(), bias)
    with pytest.raises(TypeError, match="bf16"):
        fused(x.bfloat16(), weight.bfloat16(), bias.bfloat16())
    with pytest.raises(ValueError, match="triton backend only"):
        ops.linear_epilogue(x, weight, bias, backend="cuda")


def test_custom_op():
    x, weight, bias, residual, lw, lb = make(4, 16, 32)
    args = (x, weight, bias, "bias_residual_layer_norm", residual, lw, lb, 1e-5)
    op = torch.ops.bertfast.linear_epilogue
    assert_close(op(*args, "triton"), fused(*args), atol=0)
    torch.library.opcheck(
        op.default, (*args, "triton"), test_utils=("test_schema", "test_faketensor")
    )
