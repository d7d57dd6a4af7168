"""CUDA kernel: word + position + segment embedding gather, sum and LayerNorm in one pass.

Launcher of ``embedding_layer_norm`` in csrc/embedding_layer_norm.cu (one block per token,
16-byte loads when the tables allow, fp32 statistics).
"""

from __future__ import annotations

import torch

from bertfast.cuda._launch import (
    check_cuda,
    check_kernel_tensor,
    check_vector,
    extension,
    launch_context,
    use_custom_op,
)

ID_DTYPES = (torch.int32, torch.int64)


def _launch(
    input_ids, token_type_ids, position_ids, word, position, token_type, weight, bias, eps: float
) -> torch.Tensor:
    hidden = word.shape[1]
    out = torch.empty(*input_ids.shape, hidden, dtype=word.dtype, device=word.device)
    tokens = input_ids.numel()
    if tokens == 0:
        return out
    # The kernel reads all three id tensors with one integer type: that of input_ids.
    ids = [
        t.reshape(-1).to(input_ids.dtype).contiguous()
        for t in (input_ids, token_type_ids, position_ids)
    ]
    dtype, device, stream = launch_context(word)
    extension().embedding_layer_norm(
        out=out.data_ptr(),
        input_ids=ids[0].data_ptr(),
        token_type_ids=ids[1].data_ptr(),
        position_ids=ids[2].data_ptr(),
        word_embeddings=word.data_ptr(),
        position_embeddings=position.data_ptr(),
        token_type_embeddings=token_type.data_ptr(),
        weight=weight.data_ptr(),
        bias=bias.data_ptr(),
        tokens=tokens,
        hidden=hidden,
        ids_int64=input_ids.dtype == torch.int64,
        dtype=dtype,
        eps=float(eps),
        device=device,
        stream=stream,
    )
    return out


@torch.library.custom_op("bertfast::cuda_embedding_layer_norm", mutates_args=())
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
    id_tensors = (
        ("input_ids", input_ids),
        ("token_type_ids", token_type_ids),
        ("position_ids", position_ids),
    )
    for name, ids in id_tensors:
        check_kernel_tensor(name, ids, ID_DTYPES)
        if ids.shape != input_ids.shape:
            raise ValueError(
                f"{name} has shape {tuple(ids.shape)} but input_ids has {tuple(input_ids.shape)}"
            )
    tables = [word_embeddings, position_embeddings, token_type_embeddings, weight, bias]
    names = ("word_embeddings", "position_embeddings", "token_type_embeddings", "weight", "bias")
    for name, t in zip(names, tables):
        check_kernel_tensor(name, t)
        if t.dtype != word_embeddings.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but word_embeddings has {word_embeddings.dtype}"
            )
    hidden = word_embeddings.shape[-1]
    for name, table in zip(names[:3], tables[:3]):
        if table.dim() != 2 or table.shape[1] != hidden:
            raise ValueError(f"{name} must be (rows, {hidden}), got {tuple(table.shape)}")
    check_vector("weight", weight, hidden)
    check_vector("bias", bias, hidden)
    for name, t in (*zip(names, tables), *id_tensors):
        check_cuda(name, t, word_embeddings)
    tables = [t.contiguous() for t in tables]
    args = (input_ids, token_type_ids, position_ids, *tables, float(eps))
    if use_custom_op():
        return _embedding_layer_norm_op(*args)
    return _launch(*args)
