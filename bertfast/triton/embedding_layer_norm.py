"""Triton kernel: word + position + segment embedding gather, sum and LayerNorm in one pass."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertfast.triton._launch import check_kernel_tensor, check_same_device, use_custom_op

ID_DTYPES = (torch.int32, torch.int64)


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


def _launch(
    input_ids, token_type_ids, position_ids, word, position, token_type, weight, bias, eps: float
) -> torch.Tensor:
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


@torch.library.custom_op("bertfast::triton_embedding_layer_norm", mutates_args=())
def _embedding_layer_norm_op(
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    position_ids: torch.Tensor,
    word_embeddings: torch.Tensor,
    position_embeddings: torch.Tensor,
    token_type_embeddings: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    return _launch(
        input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
        token_type_embeddings, weight, bias, eps,
    )  # fmt: skip


@_embedding_layer_norm_op.register_fake
def _(input_ids, token_type_ids, position_ids, word, position, token_type, weight, bias, eps):
    return word.new_empty(*input_ids.shape, word.shape[1])


def embedding_layer_norm(
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    position_ids: torch.Tensor,
    word_embeddings: torch.Tensor,
    position_embeddings: torch.Tensor,
    token_type_embeddings: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """LayerNorm(word[ids] + position[pos] + type[tt]); ids must already be in range."""
    for name, ids in (
        ("input_ids", input_ids),
        ("token_type_ids", token_type_ids),
        ("position_ids", position_ids),
    ):
        check_kernel_tensor(name, ids, ID_DTYPES)
        check_same_device(name, ids, word_embeddings)
    tables = [word_embeddings, position_embeddings, token_type_embeddings, weight, bias]
    names = ("word_embeddings", "position_embeddings", "token_type_embeddings", "weight", "bias")
    for name, t in zip(names, tables):
        check_kernel_tensor(name, t)
        check_same_device(name, t, word_embeddings)
    tables = [t.contiguous() for t in tables]
    args = (input_ids, token_type_ids, position_ids, *tables, eps)
    if use_custom_op():
        return _embedding_layer_norm_op(*args)
    return _launch(*args)
