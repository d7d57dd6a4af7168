"""Triton kernel: a tiled GEMM ``x @ weight.T`` with its epilogue applied to the fp32 tile.

One program computes a BLOCK_M x BLOCK_N tile of the output, walking K in BLOCK_K steps; the
tiles are visited in groups of GROUP_M rows of tiles so that neighbouring programs share the
weight columns they read (L2 reuse). Epilogues: bias; bias + GELU (erf or tanh); bias +
residual + LayerNorm, in training with BERT's hidden dropout on x @ weight.T + bias before the
residual, its mask the one the residual LayerNorm kernel draws
(``bertfast/triton/hidden_dropout.py``, same element index).

The LayerNorm epilogue (rows up to ``MAX_FUSED_LAYER_NORM`` wide) has a kernel of its own: a
program owns BLOCK_M whole rows but never holds them at once (a 64 x 1024 fp32 tile is 256
values per thread at 8 warps: it spilled kilobytes). It walks the row in BLOCK_N-wide column
chunks, each a full GEMM over K with its bias, dropout and residual, merges each chunk's row
mean and centred sum of squares into running ones (Chan's parallel update: no cancellation),
and parks the fp32 pre-norm values; a second walk normalises them. Wider rows take GEMM + bias
here and the light LayerNorm pass after (``bertfast/triton/bias_residual_layer_norm.py``).

The backward (``launch_backward``) has no GEMM kernel of its own: it recomputes the
pre-activation ``x @ weight.T`` and forms ``dx`` and ``dweight`` with torch matmuls (cuBLAS on a
GPU), and takes the epilogue's gradient with the backward kernels of ``bias_gelu`` and
``bias_residual_layer_norm`` (any row width: one row per program there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertfast.ops._checks import as_rows
from bertfast.ops.linear_epilogue import MAX_FUSED_LAYER_NORM
from bertfast.triton import bias_gelu, bias_residual_layer_norm, target
from bertfast.triton.hidden_dropout import hidden_dropout_keep

SQRT_HALF = tl.constexpr(0.7071067811865476)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
# Epilogue codes (constexpr: each compiles its own kernel).
BIAS, GELU, GELU_TANH = 0, 1, 2
_CODES = {"bias": BIAS, "bias_gelu": GELU, "bias_gelu_tanh": GELU_TANH}


@triton.jit
def _gemm_chunk(x_ptr, weight_ptr, rows64, in_m, cols64, in_n, K, stride_x, stride_w,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                PRECISION: tl.constexpr):  # fmt: skip
    """x[rows] @ weight[cols].T as a (BLOCK_M, BLOCK_N) fp32 tile, walking K."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for block_k in range(0, tl.cdiv(K, BLOCK_K)):
        k = block_k * BLOCK_K + offs_k
        in_k = k < K
        a = tl.load(
            x_ptr + rows64[:, None] * stride_x + k[None, :],
            mask=in_m[:, None] & in_k[None, :],
            other=0.0,
        )
        b = tl.load(  # (BLOCK_K, BLOCK_N) tile of weight.T
            weight_ptr + cols64[None, :] * stride_w + k[:, None],
            mask=in_k[:, None] & in_n[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _linear_epilogue_kernel(
    out_ptr,  # (M, N) contiguous
    x_ptr,  # (M, K), row stride stride_x
    weight_ptr,  # (N, K), row stride stride_w
    bias_ptr,  # (N,)
    M,
    N,
    K,
    stride_x,
    stride_w,
    EPILOGUE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_m = offs_m < M
    in_n = offs_n < N
    rows64 = offs_m.to(tl.int64)
    cols64 = offs_n.to(tl.int64)
    acc = _gemm_chunk(x_ptr, weight_ptr, rows64, in_m, cols64, in_n, K, stride_x, stride_w,
                      BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
    y = acc + tl.load(bias_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 1:
        y = 0.5 * y * (1.0 + tl.math.erf(y * SQRT_HALF))
    elif EPILOGUE == 2:
        inner = SQRT_2_OVER_PI * (y + 0.044715 * y * y * y)
        inner = tl.minimum(tl.maximum(inner, -20.0), 20.0)  # exp stays finite; tanh(20) = 1
        e = tl.exp(2.0 * inner)
        y = y * (e / (e + 1.0))  # 0.5 * (1 + tanh(u)), without cancellation near tanh = -1
    tl.store(
        out_ptr + rows64[:, None] * N + offs_n[None, :],
        y.to(out_ptr.dtype.element_ty),
        mask=in_m[:, None] & in_n[None, :],
    )


@triton.jit
def _linear_residual_layer_norm_kernel(
    out_ptr,  # (M, N) contiguous, the stream's dtype: the LayerNorm's output
    pre_ptr,  # (M, N) fp32 contiguous: the pre-norm rows between the two walks (may be out)
    x_ptr,  # (M, K), row stride stride_x
    weight_ptr,  # (N, K), row stride stride_w
    bias_ptr,  # (N,)
    residual_ptr,  # (M, N), row stride stride_residual
    ln_weight_ptr,  # (N,)
    ln_bias_ptr,  # (N,)
    M,
    N,
    K,
    stride_x,
    stride_w,
    stride_residual,
    eps,
    seed,  # with HAS_DROPOUT: Philox seed of the hidden dropout's mask
    dropout_p,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """LayerNorm(dropout(x @ weight.T + bias) + residual) for BLOCK_M whole rows."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_m = offs_m < M
    rows64 = offs_m.to(tl.int64)
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum of squared deviations from mean
    for chunk in range(0, tl.cdiv(N, BLOCK_N)):
        offs_n = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        cols64 = offs_n.to(tl.int64)
        y = _gemm_chunk(x_ptr, weight_ptr, rows64, in_m, cols64, in_n, K, stride_x, stride_w,
                        BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
        y += tl.load(bias_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)[None, :]
        if HAS_DROPOUT:
            kept = hidden_dropout_keep(seed, dropout_p, rows64[:, None], cols64[None, :], N)
            y = tl.where(kept, y / (1.0 - dropout_p), 0.0)
        both = in_m[:, None] & in_n[None, :]
        residual = tl.load(
            residual_ptr + rows64[:, None] * stride_residual + offs_n[None, :],
            mask=both,
            other=0.0,
        )
        y = tl.where(in_n[None, :], y + residual.to(tl.float32), 0.0)
        tl.store(pre_ptr + rows64[:, None] * N + offs_n[None, :], y, mask=both)
        # Merge this chunk's mean and centred sum of squares into the running ones.
        seen = chunk * BLOCK_N * 1.0
        width = tl.minimum(N - chunk * BLOCK_N, BLOCK_N) * 1.0
        chunk_mean = tl.sum(y, axis=1) / width
        centered = tl.where(in_n[None, :], y - chunk_mean[:, None], 0.0)
        delta = chunk_mean - mean
        mean += delta * (width / (seen + width))
        m2 += tl.sum(centered * centered, axis=1) + delta * delta * (seen * width / (seen + width))
    rstd = 1.0 / tl.sqrt(m2 / N + eps)
    tl.debug_barrier()  # the second walk may read values other threads of the program wrote
    for chunk in range(0, tl.cdiv(N, BLOCK_N)):
        offs_n = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        both = in_m[:, None] & in_n[None, :]
        y = tl.load(pre_ptr + rows64[:, None] * N + offs_n[None, :], mask=both, other=0.0)
        w = tl.load(ln_weight_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)
        b = tl.load(ln_bias_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)
        normed = (y - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(
            out_ptr + rows64[:, None] * N + offs_n[None, :],
            normed.to(out_ptr.dtype.element_ty),
            mask=both,
        )


def block_config(
    n: int, fuse_layer_norm: bool, dtype: torch.dtype, capability: tuple[int, int] | None
) -> tuple[int, ...]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) for an output width on a
    card of ``capability`` (None: the interpreter). With ``fuse_layer_norm`` BLOCK_N is the
    width of the column chunks a program walks its rows in (GROUP_M unused).

    Chosen by the compile report (``python -m bertfast.compile_report``): no register spills on
    sm_80 or sm_90a at BERT's widths in fp16/bf16 (fp32, off the default path, may spill)."""
    wide = dtype != torch.float32
    if capability is None:
        # Small tiles: the interpreter's tiny test shapes still take several chunks and K steps.
        return (16, 32, 16, 1, 4, 1) if fuse_layer_norm else (32, 32, 16, 4, 4, 1)
    if fuse_layer_norm:
        return (64, 128, 64, 1, 8, 3) if wide else (32, 64, 32, 1, 8, 2)
    return (128, 128, 64, 8, 8, 3) if wide else (64, 128, 32, 8, 8, 3)


def launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    epilogue: str,
    residual: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float,
    config: tuple[int, ...] | None = None,
    dropout_p: float = 0.0,
    seed: int = 0,
    split_layer_norm: bool = False,
) -> torch.Tensor:
    """``epilogue(x @ weight.T + bias)``; inputs checked by ``bertfast.ops.linear_epilogue``.
    With ``dropout_p`` (the LayerNorm epilogue) x @ weight.T + bias is dropped by the mask of
    ``seed`` before the residual.

    ``config`` overrides ``block_config``; ``split_layer_norm`` takes the wide rows' path
    (GEMM + bias, then the light LayerNorm pass) at any width (tests use both).
    """
    x_rows = as_rows("x", x)
    m, k = x_rows.shape
    n = weight.shape[0]
    with_norm = epilogue == "bias_residual_layer_norm"
    dtype = residual.dtype if with_norm else x.dtype  # the stream's dtype after a LayerNorm
    out = torch.empty(*x.shape[:-1], n, dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    if with_norm and (split_layer_norm or n > MAX_FUSED_LAYER_NORM):
        # GEMM + bias here, residual + LayerNorm in one light pass.
        y = launch(x, weight, bias, "bias", None, None, None, eps, config)
        return bias_residual_layer_norm.launch(
            y, None, residual, ln_weight, ln_bias, eps, dropout_p=dropout_p, seed=seed
        )
    block_m, block_n, block_k, group_m, warps, stages = config or block_config(
        n, with_norm, x.dtype, target.capability(x.device)
    )
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    if with_norm:
        residual_rows = as_rows("residual", residual)
        # The pre-norm rows wait in fp32 between the program's two walks: in the output
        # itself when the stream is fp32 (autocast training), else in a scratch buffer.
        pre = out if dtype == torch.float32 else torch.empty(m, n, device=x.device)
        target.run(
            _linear_residual_layer_norm_kernel,
            (triton.cdiv(m, block_m),),
            out,
            pre,
            x_rows,
            weight,
            bias,
            residual_rows,
            ln_weight,
            ln_bias,
            m,
            n,
            k,
            x_rows.stride(0),
            weight.stride(0),
            residual_rows.stride(0),
            eps,
            seed,
            float(dropout_p),
            HAS_DROPOUT=dropout_p > 0,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            PRECISION=precision,
            num_warps=warps,
            num_stages=stages,
        )
        return out
    target.run(
        _linear_epilogue_kernel,
        (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),),
        out,
        x_rows,
        weight,
        bias,
        m,
        n,
        k,
        x_rows.stride(0),
        weight.stride(0),
        EPILOGUE=_CODES[epilogue],
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=group_m,
        PRECISION=precision,
        num_warps=warps,
        num_stages=stages,
    )
    return out


def launch_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    epilogue: str,
    residual: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    eps: float,
    dropout_p: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """(dx, dweight, dbias, dresidual, dln_weight, dln_bias) of ``epilogue(x @ weight.T + bias)``
    for the output's gradient ``grad``; the last three are empty unless the epilogue is
    ``"bias_residual_layer_norm"`` (whose hidden dropout, with ``dropout_p``, is drawn again
    from ``seed``). The gradient of the pre-activation, ``dpre``, is in x's
    dtype (as the unfused path's is); the matmuls accumulate in fp32 (cuBLAS, and torch on the
    CPU, do for fp16 and bf16)."""
    x_rows = as_rows("x", x)
    grad_rows = grad.reshape(x_rows.shape[0], weight.shape[0])
    pre = torch.matmul(x_rows, weight.t())  # (m, n) in x's dtype: the epilogue's input less bias
    with_norm = epilogue == "bias_residual_layer_norm"
    if with_norm:
        # Without dropout the residual and the pre-activation enter the LayerNorm as a sum:
        # both get dsum; with it the pre-activation's gradient is dsum through the mask.
        dsum, dropped, dbias, dln_weight, dln_bias = bias_residual_layer_norm.launch_backward(
            grad_rows, pre, bias, as_rows("residual", residual), ln_weight, eps,
            dropout_p=dropout_p, seed=seed,
        )  # fmt: skip
        dpre = (dropped if dropout_p else dsum).to(x.dtype)  # a float32 stream's dsum too
    elif epilogue == "bias":
        dpre = grad_rows
        dbias = grad_rows.sum(0, dtype=torch.float32).to(bias.dtype)
    else:
        approximate = "tanh" if epilogue == "bias_gelu_tanh" else "none"
        dpre, dbias = bias_gelu.launch_backward(grad_rows, pre, bias, approximate)
    dx = torch.matmul(dpre, weight).view(x.shape)
    dweight = torch.matmul(dpre.t(), x_rows)
    if with_norm:
        return dx, dweight, dbias, dsum.view(residual.shape), dln_weight, dln_bias
    # Empty, and one tensor each: the custom op's outputs may not alias one another.
    return dx, dweight, dbias, x.new_empty(0), x.new_empty(0), x.new_empty(0)
