"""Triton kernels: LayerNorm(dropout(x + bias) + residual) in one pass, one row per program; its
backward, rows shared among a few programs that each write partial sums of the parameter grads.
The dropout mask is drawn from a seed and each element's index (row * hidden + column) in both,
so the backward regenerates it."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertfast.ops._checks import as_rows
from bertfast.triton import target
from bertfast.triton.hidden_dropout import hidden_dropout_keep


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
    seed,  # with HAS_DROPOUT: Philox seed of this call's mask
    dropout_p,  # with HAS_DROPOUT: probability of dropping an element of x + bias
    HAS_BIAS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_DROPOUT:
        kept = hidden_dropout_keep(seed, dropout_p, row, cols, hidden)
        x = tl.where(kept, x / (1.0 - dropout_p), 0.0)
    x += tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / hidden
    centered = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / hidden
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(ln_bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = centered * rstd * w + b
    tl.store(out_ptr + row * hidden + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch(
    x, bias, residual, weight, ln_bias, eps: float, dropout_p: float = 0.0, seed: int = 0
) -> torch.Tensor:
    """LayerNorm(dropout(x + bias) + residual), the mask drawn from ``seed``; inputs checked
    by ``bertfast.ops``."""
    x_rows = as_rows("x", x)
    residual_rows = as_rows("residual", residual)
    rows, hidden = x_rows.shape
    out = torch.empty(x.shape, dtype=residual.dtype, device=x.device)  # the stream's dtype
    if rows == 0:
        return out
    block = triton.next_power_of_2(hidden)
    target.run(
        _bias_residual_layer_norm_kernel,
        (rows,),
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
        seed,
        float(dropout_p),
        HAS_BIAS=bias is not None,
        HAS_DROPOUT=dropout_p > 0,
        BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )
    return out


@triton.jit
def _bias_residual_layer_norm_backward_kernel(
    dsum_ptr,  # (rows, hidden) contiguous, out: the gradient of the LayerNorm's input
    dx_ptr,  # with HAS_DROPOUT: (rows, hidden) contiguous, out: the gradient of x
    partial_ptr,  # (3, programs, hidden) fp32, out: this program's dweight, dln_bias, dbias
    grad_ptr,  # (rows, hidden), row stride stride_grad
    x_ptr,  # (rows, hidden), row stride stride_x
    bias_ptr,  # (hidden,), ignored unless HAS_BIAS
    residual_ptr,  # (rows, hidden), row stride stride_residual
    weight_ptr,  # (hidden,)
    rows,
    hidden,
    stride_grad,
    stride_x,
    stride_residual,
    rows_per_program,
    programs,
    eps,
    seed,
    dropout_p,
    HAS_BIAS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    col_mask = cols < hidden
    w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dweight = tl.zeros((BLOCK,), dtype=tl.float32)
    dln_bias = tl.zeros((BLOCK,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, rows_per_program):
        row = program * rows_per_program + i
        mask = col_mask & ((cols * 0 + row) < rows)  # a vector mask: the interpreter wants one
        row64 = row.to(tl.int64)
        # mean, rstd and the dropout mask recomputed from the inputs (the forward saves nothing).
        s = tl.load(x_ptr + row64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            s += bias
        if HAS_DROPOUT:
            kept = hidden_dropout_keep(seed, dropout_p, row64, cols, hidden)
            s = tl.where(kept, s / (1.0 - dropout_p), 0.0)
        s += tl.load(residual_ptr + row64 * stride_residual + cols, mask=mask, other=0.0).to(
            tl.float32
        )
        mean = tl.sum(s, axis=0) / hidden
        centered = tl.where(mask, s - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / hidden + eps)
        normed = centered * rstd
        dy = tl.load(grad_ptr + row64 * stride_grad + cols, mask=mask, other=0.0).to(tl.float32)
        dweight += dy * normed
        dln_bias += dy
        g = dy * w
        mean_g = tl.sum(g, axis=0) / hidden
        mean_g_normed = tl.sum(g * normed, axis=0) / hidden
        ds = tl.where(mask, (g - mean_g - normed * mean_g_normed) * rstd, 0.0)
        tl.store(dsum_ptr + row64 * hidden + cols, ds.to(dsum_ptr.dtype.element_ty), mask=mask)
        if HAS_DROPOUT:
            ds = tl.where(kept, ds / (1.0 - dropout_p), 0.0)
            tl.store(dx_ptr + row64 * hidden + cols, ds.to(dx_ptr.dtype.element_ty), mask=mask)
        dbias += ds
    out = partial_ptr + program * hidden + cols
    tl.store(out, dweight, mask=col_mask)
    tl.store(out + programs * hidden, dln_bias, mask=col_mask)
    if HAS_BIAS:
        tl.store(out + 2 * programs * hidden, dbias, mask=col_mask)


def _reduction_programs(device: torch.device) -> int:
    """Programs that share the rows of the backward (each writes one partial sum of the
    parameter grads): two per SM on a GPU, a few under the interpreter."""
    sms = target.multiprocessors(device)
    return 4 if sms is None else 2 * sms


def launch_backward(
    grad, x, bias, residual, weight, eps: float, dropout_p: float = 0.0, seed: int = 0
):
    """(dsum, dx, dbias, dweight, dln_bias) of LayerNorm(dropout(x + bias) + residual) for the
    output's gradient ``grad``: dsum is the gradient of residual (and of x without dropout, dx
    then empty); the parameter grads are reduced from per-program fp32 partial sums (no
    atomics); dbias is empty without a bias."""
    x_rows = as_rows("x", x)
    residual_rows = as_rows("residual", residual)
    rows, hidden = x_rows.shape
    grad_rows = grad.reshape(rows, hidden)
    if hidden > 1 and grad_rows.stride(-1) != 1:
        grad_rows = grad_rows.contiguous()  # e.g. the expanded gradient of a sum()
    dsum = torch.empty(x.shape, dtype=residual.dtype, device=x.device)  # the stream's dtype
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if dropout_p else x.new_empty(0)
    if rows == 0:
        dbias = x.new_empty(0) if bias is None else torch.zeros_like(bias)
        return dsum, dx, dbias, torch.zeros_like(weight), torch.zeros_like(weight)
    programs = min(_reduction_programs(x.device), rows)
    rows_per_program = triton.cdiv(rows, programs)
    programs = triton.cdiv(rows, rows_per_program)
    partial = torch.empty((3, programs, hidden), dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(hidden)
    target.run(
        _bias_residual_layer_norm_backward_kernel,
        (programs,),
        dsum,
        dx if dropout_p else dsum,
        partial,
        grad_rows,
        x_rows,
        bias if bias is not None else weight,
        residual_rows,
        weight,
        rows,
        hidden,
        grad_rows.stride(0),
        x_rows.stride(0),
        residual_rows.stride(0),
        rows_per_program,
        programs,
        eps,
        seed,
        float(dropout_p),
        HAS_BIAS=bias is not None,
        HAS_DROPOUT=dropout_p > 0,
        BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )
    # One sum per grad: the custom op's outputs may not be views of one tensor.
    dweight, dln_bias = (partial[k].sum(0).to(weight.dtype) for k in (0, 1))
    dbias = partial[2].sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)
    return dsum, dx, dbias, dweight, dln_bias
