"""CUDA kernel: flash-style attention read straight from the fused QKV projection.

Launcher of ``attention`` in csrc/attention.cu: tensor cores (mma.sync m16n8k16, fp32
accumulation) for fp16 and bf16, a plain fp32 path for fp32. Same forms and semantics as
``bertfast.ops.attention`` and the Triton twin: padded keys are never read, a sequence with no
real key returns zeros, padded query rows are computed like real ones.
"""

from __future__ import annotations

import torch

from bertfast.cuda._launch import extension, launch_context, ptr


def _aligned_for_tensor_cores(qkv: torch.Tensor) -> bool:
    """16-byte aligned rows: what cp.async needs (8 elements of 2 bytes)."""
    return qkv.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in qkv.stride()[:-1])


def launch(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
) -> torch.Tensor:
    """Attention from fused QKV; inputs checked by ``bertfast.ops.attention``."""
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
        check_pointers=False,  # torch placed every tensor; ops checked the devices
    )
    return out
