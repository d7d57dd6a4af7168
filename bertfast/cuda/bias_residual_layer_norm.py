"""CUDA kernel: LayerNorm(x + bias + residual) in one pass, one block per row.

Launcher of ``bias_residual_layer_norm`` in csrc/bias_residual_layer_norm.cu (16-byte loads
when rows allow, the row kept in registers, fp32 statistics, eps a runtime argument).
"""

from __future__ import annotations

import torch

from bertfast.cuda._launch import (
    as_rows,
    check_cuda,
    check_kernel_tensor,
    check_vector,
    extension,
    launch_context,
    ptr,
    use_custom_op,
)


def _launch(x, bias, residual, weight, ln_bias, eps: float) -> torch.Tensor:
    x_rows = as_rows("x", x)
    residual_rows = as_rows("residual", residual)
    rows, hidden = x_rows.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if rows == 0 or hidden == 0:
        return out
    dtype, device, stream = launch_context(x)
    extension().bias_residual_layer_norm(
        out=out.data_ptr(),
        x=x_rows.data_ptr(),
        bias=ptr(bias),
        residual=residual_rows.data_ptr(),
        weight=weight.data_ptr(),
        ln_bias=ln_bias.data_ptr(),
        rows=rows,
        hidden=hidden,
        stride_x=x_rows.stride(0),
        stride_residual=residual_rows.stride(0),
        dtype=dtype,
        eps=float(eps),
        device=device,
        stream=stream,
    )
    return out


@torch.library.custom_op("bertfast::cuda_bias_residual_layer_norm", mutates_args=())
def _bias_residual_layer_norm_op(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    return _launch(x, bias, residual, weight, ln_bias, eps)


@_bias_residual_layer_norm_op.register_fake
def _(x, bias, residual, weight, ln_bias, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def bias_residual_layer_norm(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """LayerNorm(x + bias + residual) over the last dimension, fp32 statistics."""
    check_kernel_tensor("x", x)
    others = (("residual", residual), ("weight", weight), ("ln_bias", ln_bias), ("bias", bias))
    for name, t in others:
        if t is not None:
            check_kernel_tensor(name, t)
            if t.dtype != x.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}")
    if residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}")
    hidden = x.shape[-1]
    for name, t in (("bias", bias), ("weight", weight), ("ln_bias", ln_bias)):
        if t is not None:
            check_vector(name, t, hidden)
    check_cuda("x", x)
    for name, t in others:
        if t is not None:
            check_cuda(name, t, x)
    if use_custom_op():
        return _bias_residual_layer_norm_op(x, bias, residual, weight, ln_bias, eps)
    return _launch(x, bias, residual, weight, ln_bias, eps)
