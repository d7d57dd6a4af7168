"""LayerNorm(x + bias + residual): the closing step of BERT's attention and FFN sub-layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast.ops._checks import check_float, check_same, check_vector


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


def bias_residual_layer_norm(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    backend: str = "torch",
) -> torch.Tensor:
    """LayerNorm over the last dimension of ``x + bias + residual``; same shape and dtype as x."""
    check_float("x", x)
    check_same("residual", residual, "x", x)
    if residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}")
    hidden = x.shape[-1]
    check_vector("bias", bias, hidden, x)
    check_vector("weight", weight, hidden, x)
    check_vector("ln_bias", ln_bias, hidden, x)
    if backend == "torch":
        return bias_residual_layer_norm_reference(x, bias, residual, weight, ln_bias, float(eps))
    from bertfast.ops import run_kernel

    return run_kernel(
        "bias_residual_layer_norm", backend, x, bias, residual, weight, ln_bias, float(eps)
    )
