"""Triton kernel: flash-style attention read straight from the fused QKV projection.

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

LOG2_E = 1.4426950408889634


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
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PACKED: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # (batch * heads) on axis 0, whose limit is 2**31 - 1; axis 1 is capped at 65535.
    batch_head = tl.program_id(0)
    block_m = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    if PACKED:
        start = tl.load(cu_seqlens_ptr + batch).to(tl.int64)
        length = tl.load(cu_seqlens_ptr + batch + 1) - tl.load(cu_seqlens_ptr + batch)
    else:
        start = 0
        length = seq_len
    if block_m * BLOCK_M >= length:
        return

    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    batch64 = batch.to(tl.int64)
    qkv_base = qkv_ptr + batch64 * stride_qkv_batch + start * stride_qkv_token + head * HEAD_DIM
    q_rows = offs_m.to(tl.int64)[:, None] * stride_qkv_token
    q = tl.load(qkv_base + q_rows + offs_d[None, :], mask=offs_m[:, None] < length, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for block_n in range(0, tl.cdiv(length, BLOCK_N)):
        offs_kv = block_n * BLOCK_N + offs_n
        valid = offs_kv < length
        if HAS_MASK:
            keep = tl.load(mask_ptr + batch64 * stride_mask_batch + offs_kv, mask=valid, other=0)
            valid = valid & (keep != 0)
        kv_rows = offs_kv.to(tl.int64)[:, None] * stride_qkv_token + offs_d[None, :]
        k = tl.load(qkv_base + hidden + kv_rows, mask=valid[:, None], other=0.0)
        v = tl.load(qkv_base + 2 * hidden + kv_rows, mask=valid[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # Rows with no real key so far keep m = -inf; shift them by 0 so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(scores - m_shift[:, None])
        alpha = tl.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
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


def tuned_block_sizes(head_dim: int, max_seqlen: int) -> tuple[int, int, int, int] | None:
    """The measured best config for ``head_dim`` at the smallest swept length >= max_seqlen
    (the longest swept one beyond it), or None."""
    global _tuned
    if _tuned is None:
        _tuned = json.loads(TUNED_BLOCKS_PATH.read_text()) if TUNED_BLOCKS_PATH.is_file() else {}
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


def _block_sizes(head_dim: int, max_seqlen: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a head dim and the longest sequence."""
    tuned = tuned_block_sizes(head_dim, max_seqlen)
    if tuned is not None:
        return tuned
    block_m = 64 if max_seqlen <= 64 else 128
    if head_dim == 128:
        return block_m, 64, 8, 2
    return block_m, 64, 4, 3


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
    block_m, block_n, num_warps, num_stages = block_config or _block_sizes(head_dim, longest)
    grid = (batch * num_heads, triton.cdiv(longest, block_m))
    _attention_kernel[grid](
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
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PACKED=packed,
        HAS_MASK=mask is not None,
        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
