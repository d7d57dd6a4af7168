"""GELU(x + bias), exact erf form (BERT's ``gelu``) or tanh form (``gelu_new``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast.ops._checks import check_float, check_vector

GELU_APPROXIMATIONS = ("none", "tanh")


def bias_gelu_reference(
    x: torch.Tensor, bias: torch.Tensor | None, approximate: str
) -> torch.Tensor:
    """fp32 math, result in x's dtype."""
    y = x.float() if bias is None else x.float() + bias.float()
    return F.gelu(y, approximate=approximate).to(x.dtype)


def bias_gelu(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    approximate: str = "none",
    backend: str = "torch",
) -> torch.Tensor:
    """GELU of ``x + bias`` over the last dimension's bias; same shape and dtype as x."""
    check_float("x", x)
    check_vector("bias", bias, x.shape[-1], x)
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate={approximate!r}; supported: {GELU_APPROXIMATIONS}")
    if backend == "torch":
        return bias_gelu_reference(x, bias, approximate)
    from bertfast.ops import run_kernel

    return run_kernel("bias_gelu", backend, x, bias, approximate)
