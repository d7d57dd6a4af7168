"""Triton kernels: word + position + segment embedding gather, sum, LayerNorm and BERT's
embedding dropout in one pass, and its backward (LayerNorm grads from per-program partial sums,
table grads by id; the dropout mask drawn again from the seed)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertfast.triton import target
from bertfast.triton.hidden_dropout import hidden_dropout_keep


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
    seed,  # with HAS_DROPOUT: Philox seed of this call's mask
    dropout_p,  # with HAS_DROPOUT: probability of dropping an output element
    HAS_DROPOUT: tl.constexpr,
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
    if HAS_DROPOUT:
        kept = hidden_dropout_keep(seed, dropout_p, token, cols, hidden)
        y = tl.where(kept, y / (1.0 - dropout_p), 0.0)
    tl.store(out_ptr + token * hidden + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch(
    input_ids,
    token_type_ids,
    position_ids,
    word,
    position,
    token_type,
    weight,
    bias,
    eps: float,
    dropout_p: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """Embedding sum, LayerNorm and dropout (mask from ``seed``); inputs checked by
    ``bertfast.ops.embedding_layer_norm``."""
    hidden = word.shape[1]
    out = torch.empty(*input_ids.shape, hidden, dtype=word.dtype, device=word.device)
    tokens = input_ids.numel()
    if tokens == 0:
        return out
    block = triton.next_power_of_2(hidden)
    target.run(
        _embedding_layer_norm_kernel,
        (tokens,),
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
        seed,
        float(dropout_p),
        HAS_DROPOUT=dropout_p > 0,
        BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )
    return out


@triton.jit
def _embedding_layer_norm_backward_kernel(
    dsum_ptr,  # (tokens, hidden) fp32 contiguous, out: the gradient of the embedding sum
    partial_ptr,  # (2, programs, hidden) fp32, out: this program's dweight and dbias
    grad_ptr,  # (tokens, hidden), row stride stride_grad
    input_ids_ptr,  # (tokens,)
    token_type_ids_ptr,  # (tokens,)
    position_ids_ptr,  # (tokens,)
    word_ptr,  # (vocab, hidden) contiguous
    position_ptr,  # (max_positions, hidden) contiguous
    token_type_ptr,  # (type_vocab, hidden) contiguous
    weight_ptr,  # (hidden,)
    tokens,
    hidden,
    stride_grad,
    tokens_per_program,
    programs,
    eps,
    seed,
    dropout_p,
    HAS_DROPOUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    col_mask = cols < hidden
    w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dweight = tl.zeros((BLOCK,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, tokens_per_program):
        token = program * tokens_per_program + i
        mask = col_mask & ((cols * 0 + token) < tokens)  # a vector mask: the interpreter wants one
        token64 = tl.minimum(token, tokens - 1).to(tl.int64)  # ids read in bounds
        word_row = tl.load(input_ids_ptr + token64).to(tl.int64)
        type_row = tl.load(token_type_ids_ptr + token64).to(tl.int64)
        position_row = tl.load(position_ids_ptr + token64).to(tl.int64)
        # The sum, its mean and rstd recomputed from the tables (the forward saves nothing).
        s = tl.load(word_ptr + word_row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
        s += tl.load(position_ptr + position_row * hidden + cols, mask=mask, other=0.0).to(
            tl.float32
        )
        s += tl.load(token_type_ptr + type_row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(s, axis=0) / hidden
        centered = tl.where(mask, s - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / hidden + eps)
        normed = centered * rstd
        dy = tl.load(grad_ptr + token64 * stride_grad + cols, mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        if HAS_DROPOUT:  # the gradient of the LayerNorm's output, through the same mask
            kept = hidden_dropout_keep(seed, dropout_p, token64, cols, hidden)
            dy = tl.where(kept, dy / (1.0 - dropout_p), 0.0)
        dweight += dy * normed
        dbias += dy
        g = dy * w
        mean_g = tl.sum(g, axis=0) / hidden
        mean_g_normed = tl.sum(g * normed, axis=0) / hidden
        ds = (g - mean_g - normed * mean_g_normed) * rstd
        tl.store(dsum_ptr + token64 * hidden + cols, ds, mask=mask)
    out = partial_ptr + program * hidden + cols
    tl.store(out, dweight, mask=col_mask)
    tl.store(out + programs * hidden, dbias, mask=col_mask)


def _reduction_programs(device: torch.device) -> int:
    """Programs that share the tokens of the backward (each writes one partial sum of the
    LayerNorm grads): two per SM on a GPU, a few under the interpreter."""
    sms = target.multiprocessors(device)
    return 4 if sms is None else 2 * sms


def launch_backward(
    grad,
    input_ids,
    token_type_ids,
    position_ids,
    word,
    position,
    token_type,
    weight,
    eps: float,
    dropout_p: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dword, dposition, dtoken_type, dweight, dbias) for the output's gradient ``grad``.

    The kernel writes the fp32 gradient of the embedding sum per token and per-program partial
    sums of the LayerNorm grads (reduced after, no atomics); each table's grad is then the
    scatter-add of those rows by id (``index_add_`` in fp32). Every id gets its rows, the
    padding id too: nn.Embedding's padding rule is the model's (``_ZeroRowGradient``).
    """
    hidden = word.shape[1]
    tokens = input_ids.numel()
    dword = torch.zeros(word.shape, dtype=torch.float32, device=word.device)
    dposition = torch.zeros(position.shape, dtype=torch.float32, device=word.device)
    dtoken_type = torch.zeros(token_type.shape, dtype=torch.float32, device=word.device)
    if tokens == 0:
        tables = (t.to(word.dtype) for t in (dword, dposition, dtoken_type))
        return (*tables, torch.zeros_like(weight), torch.zeros_like(weight))
    ids = [t.reshape(-1).contiguous() for t in (input_ids, token_type_ids, position_ids)]
    grad_rows = grad.reshape(tokens, hidden)
    if hidden > 1 and grad_rows.stride(-1) != 1:
        grad_rows = grad_rows.contiguous()  # e.g. the expanded gradient of a sum()
    programs = min(_reduction_programs(word.device), tokens)
    tokens_per_program = triton.cdiv(tokens, programs)
    programs = triton.cdiv(tokens, tokens_per_program)
    dsum = torch.empty((tokens, hidden), dtype=torch.float32, device=word.device)
    partial = torch.empty((2, programs, hidden), dtype=torch.float32, device=word.device)
    block = triton.next_power_of_2(hidden)
    target.run(
        _embedding_layer_norm_backward_kernel,
        (programs,),
        dsum,
        partial,
        grad_rows,
        *ids,
        word,
        position,
        token_type,
        weight,
        tokens,
        hidden,
        grad_rows.stride(0),
        tokens_per_program,
        programs,
        eps,
        seed,
        float(dropout_p),
        HAS_DROPOUT=dropout_p > 0,
        BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )
    input_ids, token_type_ids, position_ids = ids
    dword.index_add_(0, input_ids, dsum)
    dposition.index_add_(0, position_ids, dsum)
    dtoken_type.index_add_(0, token_type_ids, dsum)
    dweight, dbias = (partial[k].sum(0).to(weight.dtype) for k in (0, 1))
    tables = (t.to(word.dtype) for t in (dword, dposition, dtoken_type))
    return (*tables, dweight, dbias)
