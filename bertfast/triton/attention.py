"""Triton kernels: flash-style attention read straight from the fused QKV projection, and its
backward (probabilities recomputed from the saved log-sum-exp; dk/dv, then dq).

Online softmax over key blocks (the seq x seq score matrix never exists), fp32 statistics and
accumulation, base-2 exponentials with the 1/sqrt(d) scale folded in. One program computes a
block of query rows of one head of one sequence. Both input forms of ``bertfast.ops.attention``
share the kernel: the packed form finds its sequence through ``cu_seqlens``; the padded form
uses a batch stride and loads the key-padding mask block by block.

Padded keys are never loaded (masked loads return 0), so NaN or huge values stored there
cannot reach an output. A sequence with no real key returns zeros (its softmax denominator is
0 and is replaced by 1 over a zero accumulator).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import triton
import triton.language as tl

from bertfast.triton import target

LOG2_E = 1.4426950408889634


@triton.jit
def _dropout_keep(seed, dropout_p, rng_stride, batch_head, offs_m, offs_n):
    """Which (query, key) probabilities survive dropout: Philox numbers from the seed and each
    pair's number (sequence and head, query row, key column), so the backward regenerates the
    forward's mask without storing it."""
    pair = (batch_head * rng_stride + offs_m[:, None]) * rng_stride + offs_n[None, :]
    return tl.rand(seed, pair) >= dropout_p


@triton.jit
def _sequence_span(cu_seqlens_ptr, batch, seq_len, PACKED: tl.constexpr):
    """(first row, length) of one sequence: from the offsets when packed, (0, seq_len) padded."""
    if PACKED:
        start = tl.load(cu_seqlens_ptr + batch).to(tl.int64)
        length = tl.load(cu_seqlens_ptr + batch + 1) - tl.load(cu_seqlens_ptr + batch)
    else:
        start = 0
        length = seq_len
    return start, length


@triton.jit
def _real_keys(mask_ptr, batch64, stride_mask_batch, offs_kv, length, HAS_MASK: tl.constexpr):
    """Which key positions are in the sequence and, with a key-padding mask, real tokens."""
    valid = offs_kv < length
    if HAS_MASK:
        keep = tl.load(mask_ptr + batch64 * stride_mask_batch + offs_kv, mask=valid, other=0)
        valid = valid & (keep != 0)
    return valid


@triton.jit
def _load_rows(base, rows, stride, offs_d, in_rows):
    """A (rows, HEAD_DIM) tile of one head: zeros where ``in_rows`` is false."""
    return tl.load(
        base + rows.to(tl.int64)[:, None] * stride + offs_d[None, :],
        mask=in_rows[:, None],
        other=0.0,
    )


@triton.jit
def _attention_kernel(
    out_ptr,  # padded: (batch, seq, hidden); packed: (tokens, hidden); last dim contiguous
    qkv_ptr,  # padded: (batch, seq, 3 * hidden); packed: (tokens, 3 * hidden); [q | k | v]
    mask_ptr,  # padded with HAS_MASK: (batch, seq) uint8, 1 = real token
    cu_seqlens_ptr,  # packed: (batch + 1,) int32 offsets
    stride_qkv_batch,  # 0 when packed
    stride_qkv_token,
    stride_out_batch,  # 0 when packed
    stride_out_token,
    stride_mask_batch,
    seq_len,  # padded: the padded length; packed: unused
    num_heads,
    hidden,
    qk_scale,  # 1/sqrt(head_dim) * log2(e)
    lse_ptr,  # with STORE_LSE: (heads, rows) fp32, rows = tokens (packed) or batch * seq
    stride_lse_head,
    stride_lse_batch,  # seq_len when padded, 0 when packed
    seed,  # with HAS_DROPOUT: Philox seed of this call's dropout mask
    dropout_p,  # with HAS_DROPOUT: probability of dropping an attention probability
    rng_stride,  # with HAS_DROPOUT: the longest sequence, to number (query, key) pairs
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PACKED: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    STORE_LSE: tl.constexpr = False,
    HAS_DROPOUT: tl.constexpr = False,
):
    # (batch * heads) on axis 0, whose limit is 2**31 - 1; axis 1 is capped at 65535.
    batch_head = tl.program_id(0)
    block_m = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    start, length = _sequence_span(cu_seqlens_ptr, batch, seq_len, PACKED)
    if block_m * BLOCK_M >= length:
        return

    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    batch64 = batch.to(tl.int64)
    qkv_base = qkv_ptr + batch64 * stride_qkv_batch + start * stride_qkv_token + head * HEAD_DIM
    q = _load_rows(qkv_base, offs_m, stride_qkv_token, offs_d, offs_m < length)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for block_n in range(0, tl.cdiv(length, BLOCK_N)):
        offs_kv = block_n * BLOCK_N + offs_n
        valid = _real_keys(mask_ptr, batch64, stride_mask_batch, offs_kv, length, HAS_MASK)
        k = _load_rows(qkv_base + hidden, offs_kv, stride_qkv_token, offs_d, valid)
        v = _load_rows(qkv_base + 2 * hidden, offs_kv, stride_qkv_token, offs_d, valid)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # Rows with no real key so far keep m = -inf; shift them by 0 so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(scores - m_shift[:, None])
        alpha = tl.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)  # the softmax normalises before dropout
        if HAS_DROPOUT:
            kept = _dropout_keep(seed, dropout_p, rng_stride, batch_head, offs_m, offs_kv)
            p = tl.where(kept, p / (1.0 - dropout_p), 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if STORE_LSE:
        # Base-2 log-sum-exp of the scaled scores, for the backward; +inf for a row with no
        # real key, so that the backward's exp2(score - lse) is 0 there.
        lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        lse_rows = lse_ptr + head * stride_lse_head + batch64 * stride_lse_batch + start + offs_m
        tl.store(lse_rows, lse, mask=offs_m < length)
    out_base = out_ptr + batch64 * stride_out_batch + start * stride_out_token + head * HEAD_DIM
    out_rows = offs_m.to(tl.int64)[:, None] * stride_out_token
    tl.store(
        out_base + out_rows + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=offs_m[:, None] < length,
    )


# Block sizes measured by scripts/tune_attention.py on a GPU (written beside this file and
# committed); the heuristic below is used where the file is absent or has no entry.
TUNED_BLOCKS_PATH = Path(__file__).with_name("attention_blocks.json")
_tuned: dict | None = None


def tuned_block_sizes(
    head_dim: int, max_seqlen: int, capability: tuple[int, int] | None = None
) -> tuple[int, int, int, int] | None:
    """The measured best config for ``head_dim`` at the smallest swept length >= max_seqlen
    (the longest swept one beyond it), or None. A table that names the capability it was
    measured on applies to cards of that major version only."""
    global _tuned
    if _tuned is None:
        _tuned = json.loads(TUNED_BLOCKS_PATH.read_text()) if TUNED_BLOCKS_PATH.is_file() else {}
    measured_on = _tuned.get("capability")
    if measured_on is not None and (capability is None or capability[0] != measured_on[0]):
        return None
    entries = sorted(
        (e["seq"], tuple(e["config"]))
        for e in _tuned.get("entries", [])
        if e["head_dim"] == head_dim
    )
    if not entries:
        return None
    for seq, config in entries:
        if seq >= max_seqlen:
            return config
    return entries[-1][1]


def block_sizes(
    head_dim: int,
    max_seqlen: int,
    capability: tuple[int, int] | None,
    training: bool = False,
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward for a head dim, the longest
    sequence and the card (None: the interpreter); ``training`` is the forward that also
    stores the log-sum-exp and may drop probabilities (more live values per thread)."""
    tuned = tuned_block_sizes(head_dim, max_seqlen, capability)
    if tuned is not None and not training:
        return tuned
    if head_dim == 128:
        return 64 if max_seqlen <= 64 else 128, 64, 8, 2
    if training:
        # Storing the log-sum-exp and drawing the dropout mask keep more values live: 128-row
        # blocks spilled (sm_80 104 B, sm_90a 32 B per thread; the compile report).
        return 64, 64, 4, 3
    if max_seqlen <= 64:
        return 64, 64, 4, 3
    # 128-row blocks at 4 warps spilled 40 B per thread on sm_80 with a key-padding mask.
    ampere = capability is not None and capability[0] < 9
    return 128, 64, 8 if ampere else 4, 3


def launch(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    block_config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Launch (inputs checked by ``bertfast.ops.attention``); ``block_config``
    (BLOCK_M, BLOCK_N, warps, stages) overrides the heuristic
    (scripts/tune_attention.py sweeps it on a GPU)."""
    return _launch(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, block_config)


def launch_with_lse(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    dropout_p: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of training: (out, lse), lse the (heads, rows) fp32 base-2 log-sum-exp of
    each query row's scaled scores (rows = tokens packed, batch * seq padded; +inf for a row
    with no real key), which the backward recomputes the probabilities from. With
    ``dropout_p``, the probabilities are dropped (and the kept ones scaled by 1 / (1 - p))
    by a mask drawn from ``seed``, which the backward draws again."""
    rows = qkv.shape[0] if cu_seqlens is not None else qkv.shape[0] * qkv.shape[1]
    lse = torch.full((num_heads, rows), float("inf"), dtype=torch.float32, device=qkv.device)
    out = _launch(
        qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, None, lse, dropout_p, seed
    )
    return out, lse


def _launch(
    qkv,
    num_heads,
    key_padding_mask,
    cu_seqlens,
    max_seqlen,
    block_config,
    lse=None,
    dropout_p: float = 0.0,
    seed: int = 0,
):
    hidden = qkv.shape[-1] // 3
    head_dim = hidden // num_heads
    packed = cu_seqlens is not None
    out = torch.empty(*qkv.shape[:-1], hidden, dtype=qkv.dtype, device=qkv.device)
    if packed:
        batch = cu_seqlens.numel() - 1
        longest = int(max_seqlen)
        strides = (0, qkv.stride(0), 0, out.stride(0))
        seq_len = 0
    else:
        batch, seq_len = qkv.shape[:2]
        longest = seq_len
        strides = (qkv.stride(0), qkv.stride(1), out.stride(0), out.stride(1))
    if out.numel() == 0 or longest == 0 or batch == 0:
        return out.zero_()
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask.contiguous().view(torch.uint8)
    block_m, block_n, num_warps, num_stages = block_config or block_sizes(
        head_dim, longest, target.capability(qkv.device), training=lse is not None
    )
    grid = (batch * num_heads, triton.cdiv(longest, block_m))
    target.run(
        _attention_kernel,
        grid,
        out,
        qkv,
        mask if mask is not None else qkv,
        cu_seqlens if packed else qkv,
        *strides,
        mask.stride(0) if mask is not None else 0,
        seq_len,
        num_heads,
        hidden,
        LOG2_E / math.sqrt(head_dim),
        lse if lse is not None else qkv,
        lse.stride(0) if lse is not None else 0,
        seq_len,
        seed,
        float(dropout_p),
        longest,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PACKED=packed,
        HAS_MASK=mask is not None,
        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        STORE_LSE=lse is not None,
        HAS_DROPOUT=dropout_p > 0,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


@triton.jit
def _attention_backward_dkdv_kernel(
    dqkv_ptr,  # same shape as qkv, contiguous, zero-filled; out: this block's dk and dv
    qkv_ptr,  # as in the forward
    dout_ptr,  # the output's gradient, contiguous, (..., hidden)
    lse_ptr,  # (heads, rows) fp32, from the forward
    delta_ptr,  # (heads, rows) fp32: rowsum(dout * out) per head
    mask_ptr,  # padded with HAS_MASK: (batch, seq) uint8, 1 = real token
    cu_seqlens_ptr,  # packed: (batch + 1,) int32 offsets
    stride_qkv_batch,  # 0 when packed (qkv and dqkv alike)
    stride_qkv_token,
    stride_dqkv_batch,
    stride_dqkv_token,
    stride_dout_batch,
    stride_dout_token,
    stride_mask_batch,
    stride_lse_head,  # lse and delta alike
    seq_len,
    num_heads,
    hidden,
    qk_scale,  # 1/sqrt(head_dim) * log2(e)
    sm_scale,  # 1/sqrt(head_dim)
    seed,  # with HAS_DROPOUT: the forward's seed, dropout probability and rng stride
    dropout_p,
    rng_stride,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PACKED: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
):
    """One program: one block of keys of one head of one sequence; loops over the queries."""
    batch_head = tl.program_id(0)
    block_n = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    start, length = _sequence_span(cu_seqlens_ptr, batch, seq_len, PACKED)
    if block_n * BLOCK_N >= length:
        return
    batch64 = batch.to(tl.int64)
    offs_n = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = _real_keys(mask_ptr, batch64, stride_mask_batch, offs_n, length, HAS_MASK)
    qkv_base = qkv_ptr + batch64 * stride_qkv_batch + start * stride_qkv_token + head * HEAD_DIM
    # Padded keys are never loaded: their dk and dv come out 0 (p is 0 in their columns).
    k = _load_rows(qkv_base + hidden, offs_n, stride_qkv_token, offs_d, valid)
    v = _load_rows(qkv_base + 2 * hidden, offs_n, stride_qkv_token, offs_d, valid)
    dout_base = dout_ptr + batch64 * stride_dout_batch + start * stride_dout_token + head * HEAD_DIM
    lse_base = lse_ptr + head * stride_lse_head + batch64 * seq_len + start
    delta_base = delta_ptr + head * stride_lse_head + batch64 * seq_len + start
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for block_m in range(0, tl.cdiv(length, BLOCK_M)):
        offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
        in_seq = offs_m < length
        q = _load_rows(qkv_base, offs_m, stride_qkv_token, offs_d, in_seq)
        do = _load_rows(dout_base, offs_m, stride_dout_token, offs_d, in_seq)
        lse = tl.load(lse_base + offs_m, mask=in_seq, other=float("inf"))
        delta = tl.load(delta_base + offs_m, mask=in_seq, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(scores - lse[:, None])
        p = tl.where(in_seq[:, None] & valid[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if HAS_DROPOUT:
            # out = (P * Z) V with Z the kept mask over (1 - p): dV = (P * Z)^T dO and the
            # gradient reaching P is Z * (dO V^T).
            kept = _dropout_keep(seed, dropout_p, rng_stride, batch_head, offs_m, offs_n)
            scale = 1.0 / (1.0 - dropout_p)
            dv += tl.dot(
                tl.trans(tl.where(kept, p * scale, 0.0).to(do.dtype)), do, input_precision=PRECISION
            )
            dp = tl.where(kept, dp * scale, 0.0)
        else:
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    dk *= sm_scale
    dqkv_base = dqkv_ptr + batch64 * stride_dqkv_batch + start * stride_dqkv_token + head * HEAD_DIM
    d_rows = offs_n.to(tl.int64)[:, None] * stride_dqkv_token + offs_d[None, :]
    in_rows = (offs_n < length)[:, None]
    tl.store(dqkv_base + hidden + d_rows, dk.to(dqkv_ptr.dtype.element_ty), mask=in_rows)
    tl.store(dqkv_base + 2 * hidden + d_rows, dv.to(dqkv_ptr.dtype.element_ty), mask=in_rows)


@triton.jit
def _attention_backward_dq_kernel(
    dqkv_ptr,  # same shape as qkv, contiguous, zero-filled; out: this block's dq
    qkv_ptr,
    dout_ptr,
    lse_ptr,
    delta_ptr,
    mask_ptr,
    cu_seqlens_ptr,
    stride_qkv_batch,
    stride_qkv_token,
    stride_dqkv_batch,
    stride_dqkv_token,
    stride_dout_batch,
    stride_dout_token,
    stride_mask_batch,
    stride_lse_head,
    seq_len,
    num_heads,
    hidden,
    qk_scale,
    sm_scale,
    seed,
    dropout_p,
    rng_stride,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PACKED: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
):
    """One program: one block of queries of one head of one sequence; loops over the keys."""
    batch_head = tl.program_id(0)
    block_m = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    start, length = _sequence_span(cu_seqlens_ptr, batch, seq_len, PACKED)
    if block_m * BLOCK_M >= length:
        return
    batch64 = batch.to(tl.int64)
    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_seq = offs_m < length
    qkv_base = qkv_ptr + batch64 * stride_qkv_batch + start * stride_qkv_token + head * HEAD_DIM
    q = _load_rows(qkv_base, offs_m, stride_qkv_token, offs_d, in_seq)
    dout_base = dout_ptr + batch64 * stride_dout_batch + start * stride_dout_token + head * HEAD_DIM
    do = _load_rows(dout_base, offs_m, stride_dout_token, offs_d, in_seq)
    row_base = head * stride_lse_head + batch64 * seq_len + start + offs_m
    lse = tl.load(lse_ptr + row_base, mask=in_seq, other=float("inf"))
    delta = tl.load(delta_ptr + row_base, mask=in_seq, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for block_n in range(0, tl.cdiv(length, BLOCK_N)):
        offs_kv = block_n * BLOCK_N + offs_n
        valid = _real_keys(mask_ptr, batch64, stride_mask_batch, offs_kv, length, HAS_MASK)
        k = _load_rows(qkv_base + hidden, offs_kv, stride_qkv_token, offs_d, valid)
        v = _load_rows(qkv_base + 2 * hidden, offs_kv, stride_qkv_token, offs_d, valid)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(scores - lse[:, None])
        p = tl.where(valid[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if HAS_DROPOUT:
            kept = _dropout_keep(seed, dropout_p, rng_stride, batch_head, offs_m, offs_kv)
            dp = tl.where(kept, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq *= sm_scale
    dqkv_base = dqkv_ptr + batch64 * stride_dqkv_batch + start * stride_dqkv_token + head * HEAD_DIM
    tl.store(
        dqkv_base + offs_m.to(tl.int64)[:, None] * stride_dqkv_token + offs_d[None, :],
        dq.to(dqkv_ptr.dtype.element_ty),
        mask=in_seq[:, None],
    )


def backward_block_sizes(
    head_dim: int, capability: tuple[int, int] | None
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the backward kernels for the card (None:
    the interpreter)."""
    if capability is None:
        return 16, 16, 1, 1  # several blocks per sequence even at the interpreter's tiny shapes
    if head_dim == 128:
        # 64 x 32 at 8 warps spilled 144-160 B per thread in dk/dv with dropout on sm_90a.
        return (32, 64, 8, 2) if capability[0] >= 9 else (64, 32, 8, 2)
    # 64 x 64 spilled in dk/dv with dropout: 56 B on sm_90a, 16 B on sm_80 (padded).
    return 64, 32, 4, 2


def launch_backward(
    grad: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    dropout_p: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """dqkv, laid out as qkv, for the output's gradient ``grad``: the probabilities recomputed
    from the forward's log-sum-exp, dk and dv in one kernel (a program per key block), dq in
    another (a program per query block), no atomics. Padded keys get zero gradient and pass
    none on; padded query rows are differentiated like real ones (as the forward computes
    them); rows outside every sequence get zeros."""
    hidden = qkv.shape[-1] // 3
    head_dim = hidden // num_heads
    packed = cu_seqlens is not None
    qkv = qkv.contiguous()
    grad = grad.contiguous()
    dqkv = torch.zeros(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    if packed:
        batch = cu_seqlens.numel() - 1
        longest = int(max_seqlen)
        seq_len = 0
        strides = (0, qkv.stride(0), 0, dqkv.stride(0), 0, grad.stride(0))
    else:
        batch, seq_len = qkv.shape[:2]
        longest = seq_len
        strides = (qkv.stride(0), qkv.stride(1), dqkv.stride(0), dqkv.stride(1))
        strides += (grad.stride(0), grad.stride(1))
    if dqkv.numel() == 0 or longest == 0 or batch == 0:
        return dqkv
    # delta = rowsum(dout * out) per head, laid out as lse.
    delta = (grad.float() * out.float()).view(-1, num_heads, head_dim).sum(-1).t().contiguous()
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask.contiguous().view(torch.uint8)
    block_m, block_n, num_warps, num_stages = backward_block_sizes(
        head_dim, target.capability(qkv.device)
    )
    args = (
        dqkv,
        qkv,
        grad,
        lse,
        delta,
        mask if mask is not None else qkv,
        cu_seqlens if packed else qkv,
        *strides,
        mask.stride(0) if mask is not None else 0,
        lse.stride(0),
        seq_len,
        num_heads,
        hidden,
        LOG2_E / math.sqrt(head_dim),
        1.0 / math.sqrt(head_dim),
        seed,
        float(dropout_p),
        longest,
    )
    meta = dict(
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PACKED=packed,
        HAS_MASK=mask is not None,
        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        HAS_DROPOUT=dropout_p > 0,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    dkdv_grid = (batch * num_heads, triton.cdiv(longest, block_n))
    target.run(_attention_backward_dkdv_kernel, dkdv_grid, *args, **meta)
    dq_grid = (batch * num_heads, triton.cdiv(longest, block_m))
    target.run(_attention_backward_dq_kernel, dq_grid, *args, **meta)
    return dqkv
