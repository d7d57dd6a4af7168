"""GELU(x + bias), exact erf form (BERT's ``gelu``) or tanh form (``gelu_new``).

The op's contract lives here once: signature, input checks, torch reference, the custom op
torch.compile traces and its fake; ``bertfast/triton/bias_gelu.py`` and
``bertfast/cuda/bias_gelu.py`` hold only kernels and their launch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast.ops._checks import (
    check_float,
    check_kernel_device,
    check_kernel_tensor,
    check_vector,
)

GELU_APPROXIMATIONS = ("none", "tanh")


def bias_gelu_reference(
    x: torch.Tensor, bias: torch.Tensor | None, approximate: str
) -> torch.Tensor:
    """fp32 math, result in x's dtype."""
    y = x.float() if bias is None else x.float() + bias.float()
    return F.gelu(y, approximate=approximate).to(x.dtype)


def check_bias_gelu_inputs(
    x: torch.Tensor, bias: torch.Tensor | None, approximate: str, backend: str
) -> None:
    check_float("x", x)
    check_vector("bias", bias, x.shape[-1], x)
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate={approximate!r}; supported: {GELU_APPROXIMATIONS}")
    if backend == "torch":
        return
    check_kernel_tensor("x", x, backend)
    check_kernel_device("x", x, backend)


@torch.library.custom_op("bertfast::bias_gelu", mutates_args=())
def _bias_gelu_op(
    x: torch.Tensor, bias: torch.Tensor | None, approximate: str, backend: str
) -> torch.Tensor:
    from bertfast.ops import get_kernel

    return get_kernel("bias_gelu", backend)(x, bias, approximate)


@_bias_gelu_op.register_fake
def _(x, bias, approximate, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def bias_gelu(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    approximate: str = "none",
    backend: str = "torch",
    validate: bool = True,
) -> torch.Tensor:
    """GELU of ``x + bias`` over the last dimension's bias; same shape and dtype as x.

    ``validate=False`` skips the checks for callers that made them already (the model checks
    its inputs once per forward and its weights once per device and dtype).
    """
    if validate:
        check_bias_gelu_inputs(x, bias, approximate, backend)
    if backend == "torch":
        return bias_gelu_reference(x, bias, approximate)
    from bertfast.ops import run_kernel

    return run_kernel("bias_gelu", backend, _bias_gelu_op, x, bias, approximate)
