"""LayerNorm(x + bias + residual): the closing step of BERT's attention and FFN sub-layers.

The op's contract lives here once (signature, checks, reference, custom op and fake); the
backend modules of the same name hold only kernels and their launch.
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
