"""Triton kernel: GELU(x + bias), exact erf form or tanh form, math in fp32."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertfast.ops._checks import as_rows

SQRT_HALF = tl.constexpr(0.7071067811865476)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)


@triton.jit
def _bias_gelu_kernel(
    out_ptr,  # (rows, cols) contiguous
    x_ptr,  # (rows, cols), row stride stride_x
    bias_ptr,  # (cols,), ignored unless HAS_BIAS
    rows,
    cols,
    stride_x,
    HAS_BIAS: tl.constexpr,
    TANH: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    col = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (row[:, None] < rows) & (col[None, :] < cols)
    row64 = row.to(tl.int64)[:, None]
    x = tl.load(x_ptr + row64 * stride_x + col[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + col, mask=col < cols, other=0.0).to(tl.float32)[None, :]
    if TANH:
        inner = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        # tanh(u) = 1 - 2 / (exp(2u) + 1), no libdevice; |u| <= 20 keeps exp finite and
        # tanh(20) is 1 in fp32 already.
        inner = tl.minimum(tl.maximum(inner, -20.0), 20.0)
        tanh = 1.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0)
        y = 0.5 * x * (1.0 + tanh)
    else:
        y = 0.5 * x * (1.0 + tl.math.erf(x * SQRT_HALF))
    tl.store(out_ptr + row64 * cols + col[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def launch(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """GELU(x + bias); inputs checked by ``bertfast.ops.bias_gelu``."""
    rows_view = as_rows("x", x)
    rows, cols = rows_view.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_cols = min(1024, triton.next_power_of_2(cols))
    block_rows = max(1, 2048 // block_cols)
    grid = (triton.cdiv(rows, block_rows), triton.cdiv(cols, block_cols))
    _bias_gelu_kernel[grid](
        out,
        rows_view,
        bias if bias is not None else rows_view,
        rows,
        cols,
        rows_view.stride(0),
        HAS_BIAS=bias is not None,
        TANH=approximate == "tanh",
        BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols,
        num_warps=4,
    )
    return out
