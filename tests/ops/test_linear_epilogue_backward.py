"""The fused GEMM epilogue's backward (Triton, under the interpreter): dx, dweight, dbias and,
for the LayerNorm epilogue, dresidual, dln_weight and dln_bias against autograd on the
reference, in every epilogue, at odd shapes, in fp32 and fp16 (bf16 is refused on the CPU).

fp16 is judged as the forward is (tests/ops/test_linear_epilogue.py): against the fp32
reference, within twice the error of the unfused path in fp16 (F.linear, then the epilogue
op's reference), which rounds the pre-activation and its gradient to fp16 as the backward
does; and within three times the error of the reference's fp32 math run on fp16 inputs."""

import functools

import pytest
import torch
import torch.nn.functional as F

from bertfast import ops
from bertfast.ops import linear_epilogue_reference as reference
from tests.ops.backward_checks import check_against_reference, check_finite_differences

triton_module = pytest.importorskip("bertfast.triton.linear_epilogue")
kernel = functools.partial(ops.linear_epilogue, backend="triton")
NORM = "bias_residual_layer_norm"
SHAPES = [((37,), 48, 40), ((2, 5), 24, 40), ((1,), 8, 16)]  # (leading dims, in, out)


def make(lead, k, n, epilogue, eps=1e-5):
    """The op's arguments in fp32, and the names of the ones that get a gradient."""
    x = torch.randn(*lead, k) * 2
    weight = torch.randn(n, k) / k**0.5
    bias = torch.randn(n)
    names = {0: "x", 1: "weight", 2: "bias"}
    if epilogue != NORM:
        return [x, weight, bias, epilogue, None, None, None, eps], names
    residual = torch.randn(*lead, n)
    ln_weight, ln_bias = 1 + 0.1 * torch.randn(n), 0.1 * torch.randn(n)
    names.update({4: "residual", 5: "ln_weight", 6: "ln_bias"})
    return [x, weight, bias, epilogue, residual, ln_weight, ln_bias, eps], names


def unfused(x, weight, bias, epilogue, residual, ln_weight, ln_bias, eps):
    """The path the fused op replaces, in x's dtype: F.linear, then the epilogue op's
    reference."""
    y = F.linear(x, weight)
    if epilogue == "bias":
        return y + bias
    if epilogue.startswith("bias_gelu"):
        approximate = "tanh" if epilogue.endswith("tanh") else "none"
        return ops.bias_gelu_reference(y, bias, approximate)
    return ops.bias_residual_layer_norm_reference(y, bias, residual, ln_weight, ln_bias, eps)


def reference_or_unfused(*args):
    """The fp32 reference on fp32 inputs (the expected grads); the unfused path on fp16 ones
    (the baseline of the 2x rule)."""
    return (reference if args[0].dtype == torch.float32 else unfused)(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("epilogue", ops.EPILOGUES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, (*s[0], *s[1:]))))
def test_grads_against_autograd_on_reference(dtype, epilogue, shape):
    inputs, names = make(*shape, epilogue)
    what = f"{dtype} {epilogue} {shape}"
    atol32 = 1e-5
    check_against_reference(kernel, reference_or_unfused, inputs, names, dtype, what, atol32=atol32)


@pytest.mark.parametrize("epilogue", ops.EPILOGUES)
def test_fp16_within_three_times_the_reference_math(epilogue):
    """Against the reference's fp32 math on fp16 inputs, which rounds only its results."""
    inputs, names = make((37,), 48, 40, epilogue)
    check_against_reference(kernel, reference, inputs, names, torch.float16, epilogue, factor=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_row_wider_than_the_fused_layer_norm(monkeypatch, dtype):
    """The forward's split form (GEMM + bias, then the light LayerNorm pass) trains too."""
    monkeypatch.setattr(triton_module, "MAX_FUSED_LAYER_NORM", 16)
    light_passes = []
    real_launch = triton_module.bias_residual_layer_norm.launch

    def counted(*args, **kwargs):
        light_passes.append(args[0].shape)
        return real_launch(*args, **kwargs)

    monkeypatch.setattr(triton_module.bias_residual_layer_norm, "launch", counted)
    inputs, names = make((9,), 24, 40, NORM)
    what = f"{dtype} split LayerNorm"
    check_against_reference(kernel, reference_or_unfused, inputs, names, dtype, what)
    assert light_passes, "the forward did not take the light LayerNorm pass"


@pytest.mark.parametrize("epilogue", ops.EPILOGUES)
def test_finite_differences(epilogue):
    inputs, names = make((7,), 24, 40, epilogue)
    # The directions are unscaled (a weight step moves the pre-activation by ~|x| sqrt(in)):
    # a small step keeps the central difference's truncation error below the tolerance.
    check_finite_differences(kernel, inputs, list(names), epilogue, step=1e-3)


@pytest.mark.parametrize("epilogue", ["bias", NORM])
def test_gradient_of_a_sum_on_strided_rows(epilogue):
    """The expanded gradient of .sum() (stride 0); x a view with strided rows; the bias no
    leaf."""
    inputs, _ = make((2, 5), 32, 24, epilogue)
    wide = torch.randn(2, 5, 40) * 2
    grads = []
    for fn in (kernel, reference):
        source = wide.clone().requires_grad_()
        args = [t.clone().requires_grad_(i != 2) if isinstance(t, torch.Tensor) else t
                for i, t in enumerate(inputs)]  # fmt: skip
        args[0] = source[..., :32]  # rows with a stride of 40
        fn(*args).sum().backward()
        grads.append([source.grad] + [t.grad for t in args[1:] if isinstance(t, torch.Tensor)])
    for ours, expected in zip(*grads):
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert grads[0][2] is None  # the bias


def test_backward_custom_op_and_autograd_registration():
    inputs, _ = make((3,), 8, 16, NORM)
    leaves = [t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs]
    torch.library.opcheck(
        torch.ops.bertfast.linear_epilogue.default,
        (*leaves, "triton"),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    x, weight, bias, _, residual, ln_weight, _, eps = (
        t.detach() if isinstance(t, torch.Tensor) else t for t in inputs
    )
    backward = torch.ops.bertfast.linear_epilogue_backward.default
    grad = torch.randn(3, 16)
    torch.library.opcheck(
        backward, (grad, x, weight, bias, NORM, residual, ln_weight, eps, "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )  # fmt: skip
    torch.library.opcheck(
        backward, (grad, x, weight, bias, "bias_gelu", None, None, eps, "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )  # fmt: skip


@pytest.mark.parametrize("epilogue", ["bias_gelu_tanh", NORM])
def test_compiled_backward_traces_without_graph_breaks(epilogue):
    inputs, names = make((7,), 24, 40, epilogue)
    leaves = [t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs]

    def step(*args):
        return ops.linear_epilogue(*args, backend="triton", validate=False).square().sum()

    torch.compile(step, backend="aot_eager", fullgraph=True)(*leaves).backward()
    refs = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t
            for t in inputs]  # fmt: skip
    reference(*refs).square().sum().backward()
    for i, name in names.items():
        torch.testing.assert_close(leaves[i].grad, refs[i].grad, atol=1e-4, rtol=1e-5, msg=name)


def test_cuda_backend_has_no_backward():
    with pytest.raises(NotImplementedError, match="cuda kernel 'linear_epilogue' has no backward"):
        ops.get_backward("linear_epilogue", "cuda")
