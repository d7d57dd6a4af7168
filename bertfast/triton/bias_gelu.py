"""Triton kernels: GELU(x + bias), exact erf form or tanh form, and its backward; math in fp32."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertfast.ops._checks import as_rows
from bertfast.triton import target

SQRT_HALF = tl.constexpr(0.7071067811865476)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


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
        # 0.5 * (1 + tanh(u)) = e / (e + 1) with e = exp(2u): no libdevice, no cancellation
        # where tanh is near -1; |u| <= 20 keeps exp finite and tanh(20) is 1 in fp32.
        inner = tl.minimum(tl.maximum(inner, -20.0), 20.0)
        e = tl.exp(2.0 * inner)
        y = x * (e / (e + 1.0))
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
    target.run(
        _bias_gelu_kernel,
        grid,
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


@triton.jit
def _bias_gelu_backward_kernel(
    dx_ptr,  # (rows, cols) contiguous, out
    dbias_partial_ptr,  # (programs, cols) fp32, out: this program's column sums of dx
    grad_ptr,  # (rows, cols), row stride stride_grad
    x_ptr,  # (rows, cols), row stride stride_x
    bias_ptr,  # (cols,), ignored unless HAS_BIAS
    rows,
    cols,
    stride_grad,
    stride_x,
    rows_per_program,  # a multiple of BLOCK_ROWS
    HAS_BIAS: tl.constexpr,
    TANH: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    program = tl.program_id(0)
    col = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_mask = col < cols
    if HAS_BIAS:
        bias = tl.load(bias_ptr + col, mask=col_mask, other=0.0).to(tl.float32)
    dbias = tl.zeros((BLOCK_COLS,), dtype=tl.float32)
    first_row = program * rows_per_program
    for i in range(0, tl.cdiv(rows_per_program, BLOCK_ROWS)):
        row = first_row + i * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        mask = (row[:, None] < rows) & col_mask[None, :]
        row64 = row.to(tl.int64)[:, None]
        x = tl.load(x_ptr + row64 * stride_x + col[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        if HAS_BIAS:
            x += bias[None, :]
        g = tl.load(grad_ptr + row64 * stride_grad + col[None, :], mask=mask, other=0.0)
        g = g.to(tl.float32)
        if TANH:
            inner = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
            inner = tl.minimum(tl.maximum(inner, -20.0), 20.0)
            # 1 + tanh(u) = 2e / (e + 1) and 1 - tanh(u)^2 = 4e / (e + 1)^2 with e = exp(2u):
            # no cancellation where tanh is near -1 or +-1 ((e + 1)^2 <= e^40: finite).
            e = tl.exp(2.0 * inner)
            r = 1.0 / (e + 1.0)
            d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
            slope = e * r + 2.0 * x * e * r * r * d_inner
        else:
            # d/dx x * Phi(x) = Phi(x) + x * phi(x)
            slope = 0.5 * (1.0 + tl.math.erf(x * SQRT_HALF)) + x * INV_SQRT_2PI * tl.exp(
                -0.5 * x * x
            )
        dx = tl.where(mask, g * slope, 0.0)
        tl.store(dx_ptr + row64 * cols + col[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dbias += tl.sum(dx, axis=0)
    if HAS_BIAS:
        tl.store(dbias_partial_ptr + program * cols + col, dbias, mask=col_mask)


def reduction_programs(device: torch.device, column_blocks: int) -> int:
    """How many programs share the rows of a backward whose parameter grads are partial sums:
    about two waves of the GPU (a few under the interpreter, so the reduction is exercised)."""
    sms = target.multiprocessors(device)
    if sms is None:
        return 4
    return max(1, 2 * sms // column_blocks)


def launch_backward(
    grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, approximate: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dbias) of GELU(x + bias) for the output's gradient ``grad``; dbias (the column sums
    of dx, reduced from per-program fp32 partial sums, no atomics) is empty without a bias."""
    rows_view = as_rows("x", x)
    rows, cols = rows_view.shape
    grad_rows = grad.reshape(rows, cols)
    if cols > 1 and grad_rows.stride(-1) != 1:
        grad_rows = grad_rows.contiguous()  # e.g. the expanded gradient of a sum()
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if bias is None:
        dbias = x.new_empty(0)
    if dx.numel() == 0:
        return dx, dbias if bias is None else torch.zeros_like(bias)
    block_cols = min(1024, triton.next_power_of_2(cols))
    block_rows = max(1, min(2048 // block_cols, triton.next_power_of_2(rows)))
    column_blocks = triton.cdiv(cols, block_cols)
    programs = min(reduction_programs(x.device, column_blocks), triton.cdiv(rows, block_rows))
    rows_per_program = triton.cdiv(triton.cdiv(rows, programs), block_rows) * block_rows
    programs = triton.cdiv(rows, rows_per_program)
    partial = torch.empty(
        (programs, cols) if bias is not None else (1,), dtype=torch.float32, device=x.device
    )
    target.run(
        _bias_gelu_backward_kernel,
        (programs, column_blocks),
        dx,
        partial,
        grad_rows,
        rows_view,
        bias if bias is not None else rows_view,
        rows,
        cols,
        grad_rows.stride(0),
        rows_view.stride(0),
        rows_per_program,
        HAS_BIAS=bias is not None,
        TANH=approximate == "tanh",
        BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols,
        num_warps=4,
    )
    if bias is not None:
        dbias = partial.sum(0).to(bias.dtype)
    return dx, dbias
