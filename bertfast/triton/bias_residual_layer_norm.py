"""Triton kernel: LayerNorm(x + bias + residual) in one pass, one row per program."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertfast.ops._checks import as_rows


@triton.jit
def _bias_residual_layer_norm_kernel(
    out_ptr,  # (rows, hidden) contiguous
    x_ptr,  # (rows, hidden), row stride stride_x
    bias_ptr,  # (hidden,), ignored unless HAS_BIAS
    residual_ptr,  # (rows, hidden), row stride stride_residual
    weight_ptr,  # (hidden,)
    ln_bias_ptr,  # (hidden,)
    hidden,
    stride_x,
    stride_residual,
    eps,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / hidden
    centered = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / hidden
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(ln_bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = centered * rstd * w + b
    tl.store(out_ptr + row * hidden + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch(x, bias, residual, weight, ln_bias, eps: float) -> torch.Tensor:
    """LayerNorm(x + bias + residual); inputs checked by ``bertfast.ops``."""
    x_rows = as_rows("x", x)
    residual_rows = as_rows("residual", residual)
    rows, hidden = x_rows.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if rows == 0:
        return out
    block = triton.next_power_of_2(hidden)
    _bias_residual_layer_norm_kernel[(rows,)](
        out,
        x_rows,
        bias if bias is not None else weight,
        residual_rows,
        weight,
        ln_bias,
        hidden,
        x_rows.stride(0),
        residual_rows.stride(0),
        eps,
        HAS_BIAS=bias is not None,
        BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )
    return out
