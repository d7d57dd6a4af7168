"""Checks shared by the backward tests: a kernel's gradients against torch.autograd on the op's
torch reference (fp32 tight, fp16/bf16 by the 2x rule of testing.md), and a finite-difference
check of the kernel's own gradients (the kernels have no float64 path for gradcheck)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tests.helpers import assert_close


def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def grads_of(fn: Callable, inputs: Sequence, grad_out: torch.Tensor, wrt: Sequence[int]):
    """(output, grads of the inputs at ``wrt``) of ``fn(*inputs)`` for the output gradient."""
    leaves = [
        t.detach().clone().requires_grad_(i in wrt) if _is_float(t) else t
        for i, t in enumerate(inputs)
    ]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, [leaves[i] for i in wrt], grad_out)
    return out, grads


def check_against_reference(
    kernel: Callable,
    reference: Callable,
    inputs32: Sequence,
    wrt: dict[int, str],
    dtype: torch.dtype,
    what: str,
    atol32: float = 1e-5,
    rtol32: float = 1e-5,
    factor: float = 2.0,
) -> dict[str, float]:
    """Every gradient of ``kernel`` on ``inputs32`` cast to ``dtype`` against autograd on
    ``reference`` in fp32 (low precision: at most ``factor`` times the error of the reference
    run in ``dtype``); returns the max abs error per gradient name."""
    indices = list(wrt)
    out32 = reference(*inputs32)
    grad32 = torch.randn(out32.shape, device=out32.device)
    _, expected = grads_of(reference, inputs32, grad32, indices)
    cast = [t.to(dtype) if _is_float(t) else t for t in inputs32]
    out, ours = grads_of(kernel, cast, grad32.to(dtype), indices)
    assert out.dtype == dtype
    if dtype != torch.float32:
        _, low = grads_of(reference, cast, grad32.to(dtype), indices)
    errors = {}
    for k, i in enumerate(indices):
        name = f"{what} d{wrt[i]}"
        assert ours[k].dtype == dtype and ours[k].shape == inputs32[i].shape, name
        assert torch.isfinite(ours[k]).all(), f"{name}: non-finite gradient"
        errors[wrt[i]] = (ours[k].double() - expected[k].double()).abs().max().item()
        if dtype == torch.float32:
            assert_close(ours[k], expected[k], atol=atol32, rtol=rtol32, what=name)
            continue
        ref_err = (low[k].double() - expected[k].double()).abs().max().item()
        scale = expected[k].abs().max().item()
        # The tiny atol: fp32 summation-order noise on gradients that are exact sums.
        assert errors[wrt[i]] <= factor * ref_err + 1e-6 * (1 + scale), (
            f"{name}: {errors[wrt[i]]:.3e} > {factor} x {ref_err:.3e}"
        )
    return errors


def check_finite_differences(
    kernel: Callable,
    inputs: Sequence,
    wrt: Sequence[int],
    what: str,
    step: float = 1e-2,
    rtol: float = 1e-3,
) -> None:
    """The kernel's directional derivative of <grad_out, kernel(inputs)> along a random
    direction, by its backward and by central differences of its (fp32) forward."""
    out = kernel(*inputs)
    grad_out = torch.randn(out.shape, device=out.device)
    _, grads = grads_of(kernel, inputs, grad_out, wrt)
    directions = {i: torch.randn_like(inputs[i]) for i in wrt}
    analytic = sum((g.double() * directions[i].double()).sum() for g, i in zip(grads, wrt))

    def objective(t: float) -> torch.Tensor:
        shifted = [
            t_in + t * directions[i] if i in directions else t_in for i, t_in in enumerate(inputs)
        ]
        with torch.no_grad():
            return (kernel(*shifted).double() * grad_out.double()).sum()

    numeric = (objective(step) - objective(-step)) / (2 * step)
    assert abs(numeric - analytic) <= rtol * max(1.0, abs(analytic.item())), (
        f"{what}: finite differences {numeric.item():.6g}, backward {analytic.item():.6g}"
    )


def check_compiled_matches_eager(step: Callable, inputs: Sequence[torch.Tensor], seed: int) -> None:
    """``step(*inputs)`` (a scalar loss) compiled with fullgraph=True (no graph break) gives
    the loss and gradients of the eager call after the same ``torch.manual_seed``: the random
    draws (dropout seeds) are traced, not frozen."""
    torch.manual_seed(seed)
    loss = torch.compile(step, backend="aot_eager", fullgraph=True)(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    torch.manual_seed(seed)
    eager_loss = step(*inputs)
    eager_grads = torch.autograd.grad(eager_loss, inputs)
    assert_close(loss, eager_loss, atol=1e-4, rtol=1e-6, what="compiled loss")
    for i, (g, e) in enumerate(zip(grads, eager_grads, strict=True)):
        assert_close(g, e, atol=1e-5, rtol=1e-5, what=f"compiled grad of input {i}")
    torch.manual_seed(seed + 1)
    other = torch.compile(step, backend="aot_eager", fullgraph=True)(*inputs)
    assert not torch.equal(other, loss), "another seed gave the same loss: the seed is frozen"
