"""CUDA kernel: flash-style attention read straight from the fused QKV projection.

Launcher of ``attention`` in csrc/attention.cu: tensor cores (mma.sync m16n8k16, fp32
accumulation) for fp16 and bf16, a plain fp32 path for fp32. Same forms and semantics as
``bertfast.ops.attention`` and the Triton twin: padded keys are never read, a sequence with no
real key returns zeros, padded query rows are computed like real ones.
"""

from __future__ import annotations

import torch

from bertfast.cuda._launch import (
    check_cuda,
    check_kernel_tensor,
    extension,
    launch_context,
    ptr,
    use_custom_op,
)
from bertfast.ops import KERNEL_HEAD_DIMS

SUPPORTED_HEAD_DIMS = KERNEL_HEAD_DIMS


def _aligned_for_tensor_cores(qkv: torch.Tensor) -> bool:
    """16-byte aligned rows: what cp.async needs (8 elements of 2 bytes)."""
    return qkv.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in qkv.stride()[:-1])


def _launch(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
) -> torch.Tensor:
    hidden = qkv.shape[-1] // 3
    head_dim = hidden // num_heads
    packed = cu_seqlens is not None
    out = torch.empty(*qkv.shape[:-1], hidden, dtype=qkv.dtype, device=qkv.device)
    if packed:
        batch = cu_seqlens.numel() - 1
        seq_len = 0
        longest = int(max_seqlen)
    else:
        batch, seq_len = qkv.shape[:2]
        longest = seq_len
    if out.numel() == 0 or longest == 0 or batch == 0:
        return out.zero_()
    if qkv.dtype != torch.float32 and not _aligned_for_tensor_cores(qkv):
        qkv = qkv.clone(memory_format=torch.contiguous_format)
    if packed:
        stride_qkv_batch, stride_qkv_token = 0, qkv.stride(0)
        stride_out_batch, stride_out_token = 0, out.stride(0)
    else:
        stride_qkv_batch, stride_qkv_token = qkv.stride(0), qkv.stride(1)
        stride_out_batch, stride_out_token = out.stride(0), out.stride(1)
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask.contiguous().view(torch.uint8)
    dtype, device, stream = launch_context(qkv)
    extension().attention(
        out=out.data_ptr(),
        qkv=qkv.data_ptr(),
        mask=ptr(mask),
        cu_seqlens=ptr(cu_seqlens),
        batch=batch,
        seq_len=seq_len,
        max_seqlen=longest,
        num_heads=num_heads,
        head_dim=head_dim,
        stride_qkv_batch=stride_qkv_batch,
        stride_qkv_token=stride_qkv_token,
        stride_out_batch=stride_out_batch,
        stride_out_token=stride_out_token,
        stride_mask_batch=mask.stride(0) if mask is not None else 0,
        dtype=dtype,
        device=device,
        stream=stream,
    )
    return out


@torch.library.custom_op("bertfast::cuda_attention", mutates_args=())
def _attention_op(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
) -> torch.Tensor:
    return _launch(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen)


@_attention_op.register_fake
def _(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen):
    return qkv.new_empty(*qkv.shape[:-1], qkv.shape[-1] // 3)


def _check_layout(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
) -> None:
    """The shape facts the kernel relies on for memory safety (cheap integer checks)."""
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if qkv.shape[-1] % (3 * num_heads):
        raise ValueError(
            f"qkv's last dimension ({qkv.shape[-1]}) must be 3 * num_heads * head_dim "
            f"with num_heads={num_heads}"
        )
    if cu_seqlens is None:
        if qkv.dim() != 3:
            raise ValueError(f"padded qkv must be (batch, seq, 3*hidden), got {tuple(qkv.shape)}")
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool:
                raise TypeError(f"key_padding_mask must be bool, got {key_padding_mask.dtype}")
            if key_padding_mask.shape != qkv.shape[:2]:
                raise ValueError(
                    f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected "
                    f"(batch, seq) = {tuple(qkv.shape[:2])}"
                )
        return
    if key_padding_mask is not None:
        raise ValueError("pass either key_padding_mask (padded form) or cu_seqlens, not both")
    if qkv.dim() != 2:
        raise ValueError(f"packed qkv must be (total_tokens, 3*hidden), got {tuple(qkv.shape)}")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"cu_seqlens must be a 1-D int32 tensor of batch + 1 offsets, got dtype "
            f"{cu_seqlens.dtype} shape {tuple(cu_seqlens.shape)}"
        )
    if max_seqlen is None or max_seqlen < 0:
        raise ValueError(f"packed attention needs max_seqlen >= 0, got {max_seqlen!r}")


def attention(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """Self-attention over heads from a fused QKV tensor; see ``bertfast.ops.attention``."""
    check_kernel_tensor("qkv", qkv)
    _check_layout(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen)
    head_dim = qkv.shape[-1] // 3 // num_heads
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"head_dim {head_dim} (hidden {qkv.shape[-1] // 3} / {num_heads} heads) is not "
            f"supported by the CUDA attention kernel; supported: {SUPPORTED_HEAD_DIMS}"
        )
    check_cuda("qkv", qkv)
    if key_padding_mask is not None:
        check_cuda("key_padding_mask", key_padding_mask, qkv)
    if cu_seqlens is not None:
        check_cuda("cu_seqlens", cu_seqlens, qkv)
        cu_seqlens = cu_seqlens.contiguous()
    if use_custom_op():
        return _attention_op(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen)
    return _launch(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen)
