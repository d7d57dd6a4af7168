"""Triton kernel: word + position + segment embedding gather, sum and LayerNorm in one pass."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _embedding_layer_norm_kernel(
    out_ptr,  # (tokens, hidden) contiguous
    input_ids_ptr,  # (tokens,)
    token_type_ids_ptr,  # (tokens,)
    position_ids_ptr,  # (tokens,)
    word_ptr,  # (vocab, hidden) contiguous
    position_ptr,  # (max_positions, hidden) contiguous
    token_type_ptr,  # (type_vocab, hidden) contiguous
    weight_ptr,  # (hidden,)
    bias_ptr,  # (hidden,)
    hidden,
    eps,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    word_row = tl.load(input_ids_ptr + token).to(tl.int64)
    type_row = tl.load(token_type_ids_ptr + token).to(tl.int64)
    position_row = tl.load(position_ids_ptr + token).to(tl.int64)
    x = tl.load(word_ptr + word_row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(position_ptr + position_row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(token_type_ptr + type_row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / hidden
    centered = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / hidden
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = centered * rstd * w + b
    tl.store(out_ptr + token * hidden + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch(
    input_ids, token_type_ids, position_ids, word, position, token_type, weight, bias, eps: float
) -> torch.Tensor:
    """Embedding sum and LayerNorm; inputs checked by ``bertfast.ops.embedding_layer_norm``."""
    hidden = word.shape[1]
    out = torch.empty(*input_ids.shape, hidden, dtype=word.dtype, device=word.device)
    tokens = input_ids.numel()
    if tokens == 0:
        return out
    block = triton.next_power_of_2(hidden)
    _embedding_layer_norm_kernel[(tokens,)](
        out,
        input_ids.reshape(-1).contiguous(),
        token_type_ids.reshape(-1).contiguous(),
        position_ids.reshape(-1).contiguous(),
        word,
        position,
        token_type,
        weight,
        bias,
        hidden,
        eps,
        BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )
    return out
