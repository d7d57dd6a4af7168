"""Triton kernel: a tiled GEMM ``x @ weight.T`` with its epilogue applied to the fp32 tile.

One program computes a BLOCK_M x BLOCK_N tile of the output, walking K in BLOCK_K steps; the
tiles are visited in groups of GROUP_M rows of tiles so that neighbouring programs share the
weight columns they read (L2 reuse). Epilogues: bias; bias + GELU (erf or tanh); bias +
residual, then the LayerNorm of the row when one tile spans it (FUSE_LAYER_NORM), or a light
LayerNorm pass after (``bertfast/triton/bias_residual_layer_norm.py``) for wider rows; in
training, BERT's hidden dropout on x @ weight.T + bias before the residual, its mask the one
the residual LayerNorm kernel draws (``bertfast/triton/hidden_dropout.py``, same element index).

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
from bertfast.triton import bias_gelu, bias_residual_layer_norm
from bertfast.triton.hidden_dropout import hidden_dropout_keep

SQRT_HALF = tl.constexpr(0.7071067811865476)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
# Epilogue codes (constexpr: each compiles its own kernel).
BIAS, GELU, GELU_TANH, RESIDUAL = 0, 1, 2, 3
_CODES = {"bias": BIAS, "bias_gelu": GELU, "bias_gelu_tanh": GELU_TANH}


@triton.jit
def _linear_epilogue_kernel(
    out_ptr,  # (M, N) contiguous
    x_ptr,  # (M, K), row stride stride_x
    weight_ptr,  # (N, K), row stride stride_w
    bias_ptr,  # (N,)
    residual_ptr,  # (M, N), row stride stride_residual; read when EPILOGUE == RESIDUAL
    ln_weight_ptr,  # (N,); read when FUSE_LAYER_NORM
    ln_bias_ptr,  # (N,); read when FUSE_LAYER_NORM
    M,
    N,
    K,
    stride_x,
    stride_w,
    stride_residual,
    eps,
    seed,  # with HAS_DROPOUT: Philox seed of the hidden dropout's mask
    dropout_p,
    EPILOGUE: tl.constexpr,
    FUSE_LAYER_NORM: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
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
    offs_k = tl.arange(0, BLOCK_K)
    in_m = offs_m < M
    in_n = offs_n < N
    rows64 = offs_m.to(tl.int64)
    cols64 = offs_n.to(tl.int64)
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

    y = acc + tl.load(bias_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 1:
        y = 0.5 * y * (1.0 + tl.math.erf(y * SQRT_HALF))
    elif EPILOGUE == 2:
        inner = SQRT_2_OVER_PI * (y + 0.044715 * y * y * y)
        inner = tl.minimum(tl.maximum(inner, -20.0), 20.0)  # exp stays finite; tanh(20) = 1
        e = tl.exp(2.0 * inner)
        y = y * (e / (e + 1.0))  # 0.5 * (1 + tanh(u)), without cancellation near tanh = -1
    elif EPILOGUE == 3:
        if HAS_DROPOUT:
            kept = hidden_dropout_keep(seed, dropout_p, rows64[:, None], cols64[None, :], N)
            y = tl.where(kept, y / (1.0 - dropout_p), 0.0)
        residual = tl.load(
            residual_ptr + rows64[:, None] * stride_residual + offs_n[None, :],
            mask=in_m[:, None] & in_n[None, :],
            other=0.0,
        )
        y += residual.to(tl.float32)
        if FUSE_LAYER_NORM:
            # The tile holds whole rows (BLOCK_N >= N): LayerNorm them in place.
            y = tl.where(in_n[None, :], y, 0.0)
            mean = tl.sum(y, axis=1) / N
            centered = tl.where(in_n[None, :], y - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / N + eps)
            w = tl.load(ln_weight_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)
            b_ln = tl.load(ln_bias_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)
            y = centered * rstd[:, None] * w[None, :] + b_ln[None, :]
    tl.store(
        out_ptr + rows64[:, None] * N + offs_n[None, :],
        y.to(out_ptr.dtype.element_ty),
        mask=in_m[:, None] & in_n[None, :],
    )


def block_config(n: int, fuse_layer_norm: bool, dtype: torch.dtype) -> tuple[int, ...]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) for an output width."""
    if fuse_layer_norm:
        # One tile spans the row: fewer rows per tile keep the fp32 accumulator in registers.
        return 32 if dtype == torch.float32 else 64, triton.next_power_of_2(n), 32, 8, 8, 2
    return 64 if dtype == torch.float32 else 128, 128, 32 if dtype == torch.float32 else 64, 8, 8, 3


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
) -> torch.Tensor:
    """``epilogue(x @ weight.T + bias)``; inputs checked by ``bertfast.ops.linear_epilogue``.
    With ``dropout_p`` (the LayerNorm epilogue) x @ weight.T + bias is dropped by the mask of
    ``seed`` before the residual.

    ``config`` overrides ``block_config`` (tests use it to force a split LayerNorm).
    """
    x_rows = as_rows("x", x)
    m, k = x_rows.shape
    n = weight.shape[0]
    with_norm = epilogue == "bias_residual_layer_norm"
    dtype = residual.dtype if with_norm else x.dtype  # the stream's dtype after a LayerNorm
    out = torch.empty(*x.shape[:-1], n, dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    fuse_norm = with_norm and n <= MAX_FUSED_LAYER_NORM
    block_m, block_n, block_k, group_m, warps, stages = config or block_config(
        n, fuse_norm, x.dtype
    )
    fuse_norm = fuse_norm and block_n >= n
    if with_norm and not fuse_norm:
        # Too wide for one tile: GEMM + bias here, residual + LayerNorm in one light pass.
        y = launch(x, weight, bias, "bias", None, None, None, eps, config)
        return bias_residual_layer_norm.launch(
            y, None, residual, ln_weight, ln_bias, eps, dropout_p=dropout_p, seed=seed
        )
    residual_rows = as_rows("residual", residual) if with_norm else x_rows
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _linear_epilogue_kernel[grid](
        out,
        x_rows,
        weight,
        bias,
        residual_rows,
        ln_weight if with_norm else bias,
        ln_bias if with_norm else bias,
        m,
        n,
        k,
        x_rows.stride(0),
        weight.stride(0),
        residual_rows.stride(0),
        eps,
        seed,
        float(dropout_p),
        EPILOGUE=RESIDUAL if with_norm else _CODES[epilogue],
        FUSE_LAYER_NORM=fuse_norm,
        HAS_DROPOUT=with_norm and dropout_p > 0,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=group_m,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
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
