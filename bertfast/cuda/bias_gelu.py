"""CUDA kernel: GELU(x + bias), exact erf form or tanh form, math in fp32.

Launcher of ``bias_gelu`` in csrc/bias_gelu.cu (16-byte loads and stores when rows allow).
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

GELU_APPROXIMATIONS = ("none", "tanh")


def _launch(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    rows_view = as_rows("x", x)
    rows, cols = rows_view.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    dtype, device, stream = launch_context(x)
    extension().bias_gelu(
        out=out.data_ptr(),
        x=rows_view.data_ptr(),
        bias=ptr(bias),
        rows=rows,
        cols=cols,
        stride_x=rows_view.stride(0),
        tanh=approximate == "tanh",
        dtype=dtype,
        device=device,
        stream=stream,
    )
    return out


@torch.library.custom_op("bertfast::cuda_bias_gelu", mutates_args=())
def _bias_gelu_op(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    return _launch(x, bias, approximate)


@_bias_gelu_op.register_fake
def _(x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """GELU(x + bias) over the last dimension; ``approximate`` is 'none' (erf) or 'tanh'."""
    check_kernel_tensor("x", x)
    if bias is not None:
        check_kernel_tensor("bias", bias)
        if bias.dtype != x.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but x has {x.dtype}")
        check_vector("bias", bias, x.shape[-1])
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate={approximate!r}; supported: {GELU_APPROXIMATIONS}")
    check_cuda("x", x)
    if bias is not None:
        check_cuda("bias", bias, x)
    if use_custom_op():
        return _bias_gelu_op(x, bias, approximate)
    return _launch(x, bias, approximate)
