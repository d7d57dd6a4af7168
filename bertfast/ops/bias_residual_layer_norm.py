"""LayerNorm(x + bias + residual): the closing step of BERT's attention and FFN sub-layers.

The op's contract lives here once (signature, checks, reference, custom op, fake and autograd:
a backward custom op giving dx = dresidual, dbias, dweight, dln_bias); the backend modules of
the same name hold only kernels and their launch (the backward on Triton only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast.ops._checks import (
    check_float,
    check_kernel_device,
    check_kernel_tensor,
    check_same,
    check_vector,
)


def bias_residual_layer_norm_reference(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """fp32 math, result in x's dtype."""
    summed = x.float() + residual.float()
    if bias is not None:
        summed = summed + bias.float()
    out = F.layer_norm(summed, (summed.shape[-1],), weight.float(), ln_bias.float(), eps)
    return out.to(x.dtype)


def check_bias_residual_layer_norm_inputs(x, bias, residual, weight, ln_bias, backend) -> None:
    check_float("x", x)
    check_same("residual", residual, "x", x)
    if residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}")
    hidden = x.shape[-1]
    check_vector("bias", bias, hidden, x)
    check_vector("weight", weight, hidden, x)
    check_vector("ln_bias", ln_bias, hidden, x)
    if backend == "torch":
        return
    named = [("x", x), ("residual", residual), ("weight", weight), ("ln_bias", ln_bias)]
    named += [("bias", bias)] if bias is not None else []
    for name, t in named:
        check_kernel_tensor(name, t, backend)
    for name, t in named:
        check_kernel_device(name, t, backend)


@torch.library.custom_op("bertfast::bias_residual_layer_norm", mutates_args=())
def _bias_residual_layer_norm_op(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    backend: str,
) -> torch.Tensor:
    from bertfast.ops import get_kernel

    return get_kernel("bias_residual_layer_norm", backend)(x, bias, residual, weight, ln_bias, eps)


@_bias_residual_layer_norm_op.register_fake
def _(x, bias, residual, weight, ln_bias, eps, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("bertfast::bias_residual_layer_norm_backward", mutates_args=())
def _bias_residual_layer_norm_backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d(x + bias + residual), dbias, dweight, dln_bias); dbias is empty without a bias."""
    from bertfast.ops import get_backward

    return get_backward("bias_residual_layer_norm", backend)(grad, x, bias, residual, weight, eps)


@_bias_residual_layer_norm_backward_op.register_fake
def _(grad, x, bias, residual, weight, eps, backend):
    dbias = x.new_empty(0) if bias is None else torch.empty_like(bias)
    dsum = torch.empty_like(x, memory_format=torch.contiguous_format)
    return dsum, dbias, torch.empty_like(weight), torch.empty_like(weight)


def _setup_bias_residual_layer_norm_context(ctx, inputs, output):
    x, bias, residual, weight, ln_bias, eps, backend = inputs
    # mean and rstd are recomputed in the backward; ln_bias is not needed there.
    ctx.save_for_backward(x, bias, residual, weight)
    ctx.eps, ctx.backend = eps, backend


def _bias_residual_layer_norm_backward(ctx, grad):
    x, bias, residual, weight = ctx.saved_tensors
    dsum, dbias, dweight, dln_bias = _bias_residual_layer_norm_backward_op(
        grad, x, bias, residual, weight, ctx.eps, ctx.backend
    )
    # x and residual enter as a sum: both get dsum.
    return dsum, (dbias if bias is not None else None), dsum, dweight, dln_bias, None, None


_bias_residual_layer_norm_op.register_autograd(
    _bias_residual_layer_norm_backward, setup_context=_setup_bias_residual_layer_norm_context
)


def bias_residual_layer_norm(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    backend: str = "torch",
    validate: bool = True,
) -> torch.Tensor:
    """LayerNorm over the last dimension of ``x + bias + residual``; same shape and dtype as x.

    ``validate=False`` skips the checks for callers that made them already.
    """
    if validate:
        check_bias_residual_layer_norm_inputs(x, bias, residual, weight, ln_bias, backend)
    if backend == "torch":
        return bias_residual_layer_norm_reference(x, bias, residual, weight, ln_bias, float(eps))
    from bertfast.ops import run_kernel

    return run_kernel(
        "bias_residual_layer_norm",
        backend,
        _bias_residual_layer_norm_op,
        x,
        bias,
        residual,
        weight,
        ln_bias,
        float(eps),
    )
