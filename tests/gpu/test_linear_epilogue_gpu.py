"""The fused GEMM epilogues compiled on a GPU: bf16 and fp16 at BERT shapes against the fp32
reference, within twice the error of today's unfused path in the same dtype."""

import pytest
import torch
import torch.nn.functional as F

from bertfast import ops

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


def unfused(x, weight, bias, epilogue, residual, ln_weight, ln_bias, eps):
    y = F.linear(x, weight)
    if epilogue.startswith("bias_gelu"):
        approximate = "tanh" if epilogue.endswith("tanh") else "none"
        return ops.bias_gelu_reference(y, bias, approximate)
    return ops.bias_residual_layer_norm_reference(y, bias, residual, ln_weight, ln_bias, eps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "epilogue,k,n",
    [
        ("bias_gelu", 768, 3072),
        ("bias_gelu_tanh", 1024, 4096),
        ("bias_residual_layer_norm", 3072, 768),
        ("bias_residual_layer_norm", 768, 768),
        ("bias_residual_layer_norm", 4096, 1024),
        ("bias_residual_layer_norm", 512, 1536),  # wider than one tile: the light LN pass
    ],
)
@pytest.mark.parametrize("rows", [1, 77, 4096])
def test_fused_within_twice_the_unfused_error(dtype, epilogue, k, n, rows):
    if ops.backend_report(DEVICE)["triton"] is not None or ops.triton_interpreter_enabled():
        pytest.skip("needs compiled Triton on a CUDA device (TRITON_INTERPRET=0)")
    torch.manual_seed(0)
    x = torch.randn(rows, k, device=DEVICE)
    weight = torch.randn(n, k, device=DEVICE) / k**0.5
    bias = torch.randn(n, device=DEVICE) * 0.1
    residual = torch.randn(rows, n, device=DEVICE)
    ln_weight = 1 + 0.1 * torch.randn(n, device=DEVICE)
    ln_bias = 0.1 * torch.randn(n, device=DEVICE)
    norm = epilogue == "bias_residual_layer_norm"
    args32 = (x, weight, bias, epilogue, *((residual, ln_weight, ln_bias) if norm else (None,) * 3))
    expected = ops.linear_epilogue_reference(*args32, 1e-12).double()
    low = [t if t is None or isinstance(t, str) else t.to(dtype) for t in args32]
    ours = ops.linear_epilogue(*low, 1e-12, backend="triton")
    theirs = unfused(*low, 1e-12)
    our_err = (ours.double() - expected).abs().max().item()
    their_err = (theirs.double() - expected).abs().max().item()
    assert torch.isfinite(ours).all()
    assert our_err <= 2 * their_err + 1e-3, (our_err, their_err)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "epilogue,k,n",
    [
        ("bias", 768, 2304),
        ("bias_gelu", 768, 3072),
        ("bias_gelu_tanh", 1024, 4096),
        ("bias_residual_layer_norm", 3072, 768),
        ("bias_residual_layer_norm", 512, 1536),  # the forward's light LN pass
    ],
)
@pytest.mark.parametrize("rows", [77, 4096])
def test_backward_within_three_times_the_reference_error(dtype, epilogue, k, n, rows):
    """Every gradient against autograd on the fp32 reference, within 3x the error of the
    reference run on low-precision inputs (testing.md; the backward rounds the pre-activation
    and its gradient to the low dtype, as the unfused path does)."""
    if ops.backend_report(DEVICE)["triton"] is not None or ops.triton_interpreter_enabled():
        pytest.skip("needs compiled Triton on a CUDA device (TRITON_INTERPRET=0)")
    from tests.ops.backward_checks import check_against_reference

    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference exact
    try:
        torch.manual_seed(0)
        x = torch.randn(rows, k, device=DEVICE)
        weight = torch.randn(n, k, device=DEVICE) / k**0.5
        bias = torch.randn(n, device=DEVICE) * 0.1
        inputs = [x, weight, bias, epilogue, None, None, None, 1e-12]
        names = {0: "x", 1: "weight", 2: "bias"}
        if epilogue == "bias_residual_layer_norm":
            inputs[4:7] = [
                torch.randn(rows, n, device=DEVICE),
                1 + 0.1 * torch.randn(n, device=DEVICE),
                0.1 * torch.randn(n, device=DEVICE),
            ]
            names.update({4: "residual", 5: "ln_weight", 6: "ln_bias"})
        check_against_reference(
            lambda *a: ops.linear_epilogue(*a, backend="triton"),
            ops.linear_epilogue_reference, inputs, names, dtype,
            f"{dtype} {epilogue} {rows}x{k}x{n}", factor=3,
        )  # fmt: skip
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
