"""BERT's hidden dropout inside the fused GEMM + bias + residual + LayerNorm epilogue (Triton,
interpreter): the mask is the residual LayerNorm kernel's (same seed, same element index), in
the tile-fused LayerNorm and in the split path for wide rows; forward and every gradient equal
the reference with that mask; other epilogues refuse dropout."""

import importlib

import pytest
import torch

from bertfast import ops
from bertfast.ops import linear_epilogue_reference as reference
from tests.helpers import assert_close
from tests.ops.backward_checks import check_compiled_matches_eager

hidden_dropout = pytest.importorskip("bertfast.triton.hidden_dropout")
triton_module = importlib.import_module("bertfast.triton.linear_epilogue")
op_module = importlib.import_module("bertfast.ops.linear_epilogue")
NORM = "bias_residual_layer_norm"


def make(rows, k, n, dtype=torch.float32):
    tensors = [torch.randn(rows, k) * 2, torch.randn(n, k) / k**0.5, torch.randn(n),
               torch.randn(rows, n), 1 + 0.1 * torch.randn(n), 0.1 * torch.randn(n)]  # fmt: skip
    return [t.to(dtype).requires_grad_() for t in tensors]


def run(inputs, p, seed, monkeypatch):
    drawn = []
    real_draw = op_module.draw_seed
    monkeypatch.setattr(op_module, "draw_seed", lambda: drawn.append(real_draw()) or drawn[-1])
    x, weight, bias, residual, ln_weight, ln_bias = inputs
    torch.manual_seed(seed)
    out = ops.linear_epilogue(x, weight, bias, NORM, residual, ln_weight, ln_bias, 1e-5,
                              backend="triton", dropout_p=p)  # fmt: skip
    monkeypatch.setattr(op_module, "draw_seed", real_draw)
    assert len(drawn) == 1
    return out, int(drawn[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("split", [False, True], ids=["fused-norm", "split-norm"])
def test_forward_and_grads_equal_the_reference_with_the_mask(split, dtype, monkeypatch):
    if split:  # rows wider than one tile: GEMM + bias, then the residual LayerNorm kernel
        monkeypatch.setattr(triton_module, "MAX_FUSED_LAYER_NORM", 16)
    p, rows, n = 0.3, 37, 40
    inputs = make(rows, 24, n, dtype)
    out, seed = run(inputs, p, seed=rows, monkeypatch=monkeypatch)
    kept = hidden_dropout.dropout_mask((rows, n), p, seed, torch.device("cpu"))
    grad = torch.randn(rows, n).to(dtype)
    ours = torch.autograd.grad(out, inputs, grad)
    refs = [t.detach().float().requires_grad_() for t in inputs]
    x, weight, bias, residual, ln_weight, ln_bias = refs
    expected = reference(x, weight, bias, NORM, residual, ln_weight, ln_bias, 1e-5, kept, p)
    expected_grads = torch.autograd.grad(expected, refs, grad.float())
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    assert_close(out, expected, atol=tol, rtol=tol, what="forward")
    names = ("x", "weight", "bias", "residual", "ln_weight", "ln_bias")
    for name, g, e in zip(names, ours, expected_grads, strict=True):
        assert g.dtype == dtype
        assert_close(g, e, atol=tol * (1 + e.abs().max().item()), rtol=tol, what=f"d{name}")


def test_same_mask_as_the_residual_layer_norm_kernel(monkeypatch):
    """With the same seed, the fused op equals F.linear then the residual LayerNorm op with
    dropout: a model draws the same masks fused or not."""
    inputs = make(19, 16, 24)
    fused, _ = run(inputs, 0.2, seed=9, monkeypatch=monkeypatch)
    x, weight, bias, residual, ln_weight, ln_bias = inputs
    torch.manual_seed(9)
    plain = ops.bias_residual_layer_norm(
        torch.nn.functional.linear(x, weight), bias, residual, ln_weight, ln_bias, 1e-5,
        backend="triton", dropout_p=0.2,
    )  # fmt: skip
    assert_close(fused, plain, atol=2e-5, rtol=1e-5, what="fused vs unfused")


def test_dropout_on_another_epilogue_is_refused():
    x, weight, bias = (t.detach() for t in make(4, 8, 8)[:3])
    with pytest.raises(ValueError, match="dropout_p applies to the 'bias_residual_layer_norm'"):
        ops.linear_epilogue(x, weight, bias, "bias_gelu", backend="triton", dropout_p=0.1)


def test_compiled_with_dropout_traces_without_graph_breaks():
    inputs = make(7, 16, 24)

    def step(x, weight, bias, residual, ln_weight, ln_bias):
        out = ops.linear_epilogue(x, weight, bias, NORM, residual, ln_weight, ln_bias, 1e-5,
                                  backend="triton", validate=False, dropout_p=0.2)  # fmt: skip
        return out.square().sum()

    check_compiled_matches_eager(step, inputs, seed=6)
