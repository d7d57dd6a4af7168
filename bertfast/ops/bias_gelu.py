"""GELU(x + bias), exact erf form (BERT's ``gelu``) or tanh form (``gelu_new``).

The op's contract lives here once: signature, input checks, torch reference, the custom op
torch.compile traces, its fake and its autograd (a backward custom op giving dx and dbias);
``bertfast/triton/bias_gelu.py`` and ``bertfast/cuda/bias_gelu.py`` hold only kernels and
their launch (the backward on Triton only).
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
    check_vector("bias", bias, x.shape[-1], x, backend)  # float32 beside fp16/bf16 x: autocast
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
    from bertfast.ops.registry import get_kernel

    return get_kernel("bias_gelu", backend)(x, bias, approximate)


@_bias_gelu_op.register_fake
def _(x, bias, approximate, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("bertfast::bias_gelu_backward", mutates_args=())
def _bias_gelu_backward_op(
    grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, approximate: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dbias); dbias is empty when there is no bias."""
    from bertfast.ops.registry import get_backward

    return get_backward("bias_gelu", backend)(grad, x, bias, approximate)


@_bias_gelu_backward_op.register_fake
def _(grad, x, bias, approximate, backend):
    dbias = x.new_empty(0) if bias is None else torch.empty_like(bias)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dbias


def _setup_bias_gelu_context(ctx, inputs, output):
    x, bias, approximate, backend = inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate, ctx.backend = approximate, backend


def _bias_gelu_backward(ctx, grad):
    x, bias = ctx.saved_tensors
    dx, dbias = _bias_gelu_backward_op(grad, x, bias, ctx.approximate, ctx.backend)
    return dx, (dbias if bias is not None else None), None, None


_bias_gelu_op.register_autograd(_bias_gelu_backward, setup_context=_setup_bias_gelu_context)


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
    from bertfast.ops.registry import run_kernel

    return run_kernel("bias_gelu", backend, _bias_gelu_op, x, bias, approximate)


class _BiasGeluLinear(torch.autograd.Function):
    """``F.linear(GELU(x + bias), weight)`` keeping only x for the backward: the GELU output,
    as wide as x, is recomputed there (one elementwise pass) instead of being saved for the
    GEMM's weight gradient. Under autocast the forward's GEMM runs in autocast's dtype and the
    backward's in the gradient's (the same)."""

    @staticmethod
    def forward(ctx, x, bias, approximate, weight, backend):
        ctx.save_for_backward(x, bias, weight)
        ctx.approximate, ctx.backend = approximate, backend
        return F.linear(_bias_gelu_op(x, bias, approximate, backend), weight)

    @staticmethod
    def backward(ctx, grad):
        x, bias, weight = ctx.saved_tensors
        inter = _bias_gelu_op(x, bias, ctx.approximate, ctx.backend).reshape(-1, x.shape[-1])
        grad_rows = grad.reshape(-1, grad.shape[-1])
        dinter = torch.matmul(grad_rows, weight.to(grad.dtype)).view(x.shape)
        dweight = torch.matmul(grad_rows.t(), inter.to(grad.dtype))  # cast back by autograd
        dx, dbias = _bias_gelu_backward_op(dinter, x, bias, ctx.approximate, ctx.backend)
        return dx, (dbias if bias is not None else None), None, dweight, None


def bias_gelu_linear(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    approximate: str,
    weight: torch.Tensor,
    backend: str = "torch",
    validate: bool = True,
) -> torch.Tensor:
    """``F.linear(bias_gelu(x, bias, approximate), weight)`` (BERT's FFN between its two GEMMs)
    for training: on a kernel backend with a backward the GELU output is not kept for the
    backward but recomputed (``_BiasGeluLinear``), saving as many values as x holds; the torch
    backend composes the two."""
    if validate:
        check_bias_gelu_inputs(x, bias, approximate, backend)
    if backend == "torch":
        return F.linear(bias_gelu_reference(x, bias, approximate), weight)
    from bertfast.ops.registry import KERNEL_BACKWARD_OPS

    if "bias_gelu" not in KERNEL_BACKWARD_OPS.get(backend, ()):
        return F.linear(bias_gelu(x, bias, approximate, backend, validate=False), weight)
    return _BiasGeluLinear.apply(x, bias, approximate, weight, backend)
