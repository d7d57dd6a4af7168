"""GELU then the FFN-down GEMM with the GELU output recomputed in the backward (Triton,
interpreter): forward and every gradient equal the composition of the reference ops; the
backward keeps x, the bias and the weight only; under autocast the GEMMs run in its dtype."""

import pytest
import torch
import torch.nn.functional as F

from bertfast import ops
from tests.helpers import assert_close

pytest.importorskip("bertfast.triton.bias_gelu")


def reference(x, bias, approximate, weight):
    return F.linear(ops.bias_gelu_reference(x, bias, approximate), weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_forward_and_grads_equal_the_composition(approximate, dtype):
    x, bias, weight = torch.randn(2, 7, 48) * 2, torch.randn(48), torch.randn(24, 48) / 7
    inputs = [t.to(dtype).requires_grad_() for t in (x, bias, weight)]
    refs = [t.detach().float().requires_grad_() for t in (x, bias, weight)]
    out = ops.bias_gelu_linear(inputs[0], inputs[1], approximate, inputs[2], backend="triton")
    expected = reference(refs[0], refs[1], approximate, refs[2])
    grad = torch.randn(expected.shape)
    ours = torch.autograd.grad(out, inputs, grad.to(dtype))
    theirs = torch.autograd.grad(expected, refs, grad)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype
    assert_close(out, expected, atol=tol, rtol=tol, what="forward")
    for name, g, e in zip(("x", "bias", "weight"), ours, theirs, strict=True):
        assert g.dtype == dtype
        assert_close(g, e, atol=tol * (1 + e.abs().max().item()), rtol=tol, what=f"d{name}")


def test_keeps_only_its_inputs_and_runs_under_autocast():
    x = torch.randn(9, 32).to(torch.float16).requires_grad_()
    bias, weight = torch.randn(32, requires_grad=True), torch.randn(16, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.float16):
            out = ops.bias_gelu_linear(x, bias, "none", weight, backend="triton")
    assert out.dtype == torch.float16
    assert {t.data_ptr() for t in saved} == {x.data_ptr(), bias.data_ptr(), weight.data_ptr()}
    grads = torch.autograd.grad(out.float().sum(), (x, bias, weight))
    assert [g.dtype for g in grads] == [torch.float16, torch.float32, torch.float32]
    refs = [t.detach().float().requires_grad_() for t in (x, bias, weight)]
    expected = torch.autograd.grad(reference(*refs[:2], "none", refs[2]).sum(), refs)
    for g, e in zip(grads, expected, strict=True):
        assert_close(g, e, atol=2e-2 * (1 + e.abs().max().item()), rtol=2e-2, what="autocast")
