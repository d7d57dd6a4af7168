"""BERT's hidden dropout inside the bias + residual + LayerNorm kernel (Triton, interpreter):
LayerNorm(dropout(x + bias) + residual), the mask drawn from a seed and each element's index
in the forward and again in the backward. The mask is read off the backward's dx / dresidual
and compared with the mask generator; forward and every gradient equal the reference with that
mask; keep rate, seeds, torch.compile."""

import importlib

import pytest
import torch

from bertfast import ops
from bertfast.ops import bias_residual_layer_norm_reference as reference
from tests.helpers import assert_close
from tests.ops.backward_checks import check_compiled_matches_eager

hidden_dropout = pytest.importorskip("bertfast.triton.hidden_dropout")
# The op's module (the package attribute of that name is the op function).
op_module = importlib.import_module("bertfast.ops.bias_residual_layer_norm")


def make(rows, hidden, dtype=torch.float32):
    tensors = [
        torch.randn(rows, hidden) * 2 + 1,
        torch.randn(hidden),
        torch.randn(rows, hidden),
        torch.randn(hidden) + 1,
        torch.randn(hidden),
    ]
    return [t.to(dtype).requires_grad_() for t in tensors]


def run(inputs, p, seed, with_bias=True):
    """The Triton op with dropout ``p``, its mask seeded by ``torch.manual_seed(seed)``; returns
    (out, the seed it drew)."""
    x, bias, residual, weight, ln_bias = inputs
    drawn = []
    real_draw = op_module.draw_seed

    def recording_draw():
        drawn.append(real_draw())
        return drawn[-1]

    op_module.draw_seed = recording_draw
    try:
        torch.manual_seed(seed)
        out = ops.bias_residual_layer_norm(
            x, bias if with_bias else None, residual, weight, ln_bias, 1e-12,
            backend="triton", dropout_p=p,
        )  # fmt: skip
    finally:
        op_module.draw_seed = real_draw
    assert len(drawn) == 1
    return out, int(drawn[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows, hidden, with_bias", [(1, 8, True), (13, 40, True), (7, 130, False)])
def test_forward_and_grads_equal_the_reference_with_the_kernels_mask(
    rows, hidden, with_bias, dtype
):
    p = 0.25
    inputs = make(rows, hidden, dtype)
    out, seed = run(inputs, p, seed=rows, with_bias=with_bias)
    kept = hidden_dropout.dropout_mask((rows, hidden), p, seed, torch.device("cpu"))
    grad = torch.randn(rows, hidden).to(dtype)
    ours = torch.autograd.grad(out, inputs if with_bias else inputs[:1] + inputs[2:], grad)

    refs = [t.detach().float().requires_grad_() for t in inputs]
    x, bias, residual, weight, ln_bias = refs
    expected = reference(x, bias if with_bias else None, residual, weight, ln_bias, 1e-12, kept, p)
    wrt = refs if with_bias else refs[:1] + refs[2:]
    expected_grads = torch.autograd.grad(expected, wrt, grad.float())
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype
    assert_close(out, expected, atol=tol, rtol=tol, what="forward")
    names = ["x", "bias", "residual", "weight", "ln_bias"]
    names = names if with_bias else names[:1] + names[2:]
    for name, g, e in zip(names, ours, expected_grads):
        assert g.dtype == dtype
        assert_close(g, e, atol=tol * (1 + e.abs().max().item()), rtol=tol, what=f"d{name}")


def test_the_backward_draws_the_forwards_mask():
    """dx = dresidual * mask / (1 - p): the backward's own mask, read off its gradients, is the
    generator's mask, and the forward drops exactly those elements (an x change there has no
    effect on the output)."""
    p = 0.4
    inputs = make(9, 24)
    out, seed = run(inputs, p, seed=5)
    dx, dbias, dresidual = torch.autograd.grad(out, inputs[:3], torch.randn(9, 24))
    kept = hidden_dropout.dropout_mask((9, 24), p, seed, torch.device("cpu"))
    assert 0 < kept.float().mean() < 1
    assert torch.equal(dx == 0, ~kept)
    assert_close(dx[kept], dresidual[kept] / (1 - p), atol=1e-6, rtol=1e-5, what="kept dx")
    assert_close(dbias, dx.sum(0), atol=1e-5, rtol=1e-5, what="dbias")
    bumped = [t.detach().clone() for t in inputs]
    bumped[0][~kept] += 100.0
    again, _ = run(bumped, p, seed=5)
    assert torch.equal(again, out.detach())


def test_keep_rate_and_seeds():
    p = 0.3
    rows, hidden = 16, 256  # 4,096 draws in few rows: the interpreter runs a program per row
    kept = hidden_dropout.dropout_mask((rows, hidden), p, 123, torch.device("cpu"))
    assert abs(kept.float().mean().item() - (1 - p)) < 0.04  # 4,096 draws: 4 sigma is 0.029
    assert torch.equal(kept, hidden_dropout.dropout_mask((rows, hidden), p, 123, "cpu"))
    other = hidden_dropout.dropout_mask((rows, hidden), p, 124, torch.device("cpu"))
    assert 0.3 < (kept != other).float().mean() < 0.55  # independent masks: 2p(1 - p) = 0.42
    # Rows are not copies of each other (the index, not the column, feeds the generator).
    assert (kept[0] != kept[1]).any()
    inputs = make(rows, hidden)
    first, _ = run(inputs, p, seed=1)
    same, _ = run(inputs, p, seed=1)
    different, _ = run(inputs, p, seed=2)
    assert torch.equal(first, same) and not torch.equal(first, different)


def test_scale_keeps_the_mean():
    """Kept elements are scaled by 1 / (1 - p): with residual 0 and an identity-like LayerNorm
    input the pre-norm sum's mean over many elements stays x's."""
    p = 0.5
    rows, hidden = 32, 256  # 8,192 draws, a program per row
    kept = hidden_dropout.dropout_mask((rows, hidden), p, 9, torch.device("cpu"))
    x = torch.ones(rows, hidden)
    dropped = torch.where(kept, x / (1 - p), 0.0)
    assert abs(dropped.mean().item() - 1.0) < 0.05


def test_no_dropout_is_the_plain_kernel():
    inputs = make(5, 40)
    with torch.no_grad():
        plain = ops.bias_residual_layer_norm(*inputs, 1e-12, backend="triton")
        zero = ops.bias_residual_layer_norm(*inputs, 1e-12, backend="triton", dropout_p=0.0)
    assert torch.equal(plain, zero)


def test_torch_backend_dropout_and_bad_p():
    """The torch backend applies torch's dropout to x + bias; p outside [0, 1) is refused;
    the CUDA kernels (no backward) refuse dropout with the reason."""
    x, bias, residual, weight, ln_bias = (t.detach() for t in make(6, 16))
    torch.manual_seed(3)
    out = ops.bias_residual_layer_norm(x, bias, residual, weight, ln_bias, 1e-12, dropout_p=0.5)
    torch.manual_seed(3)
    dropped = torch.nn.functional.dropout(x + bias, 0.5)
    expected = reference(dropped, None, residual, weight, ln_bias, 1e-12)
    assert torch.equal(out, expected)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\), got"):
            ops.bias_residual_layer_norm(x, bias, residual, weight, ln_bias, 1e-12, dropout_p=bad)
    with pytest.raises(NotImplementedError, match="hidden dropout .* the cuda kernels are for"):
        ops.bias_residual_layer_norm(
            x, bias, residual, weight, ln_bias, 1e-12, backend="cuda", validate=False,
            dropout_p=0.1,
        )  # fmt: skip


def test_compiled_step_with_dropout_traces_without_graph_breaks():
    """The seed is a tensor drawn inside the trace: torch.compile (fullgraph) runs forward and
    backward, and with the same torch seed gives what eager gives."""
    inputs = make(7, 40)

    def step(x, bias, residual, weight, ln_bias):
        out = ops.bias_residual_layer_norm(
            x, bias, residual, weight, ln_bias, 1e-12, backend="triton", validate=False,
            dropout_p=0.2,
        )  # fmt: skip
        return out.square().sum()

    check_compiled_matches_eager(step, inputs, seed=11)
