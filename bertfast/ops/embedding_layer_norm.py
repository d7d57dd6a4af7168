"""Token + position + segment embedding gather, sum and LayerNorm, as one op."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast.ops._checks import check_float, check_same, check_vector


def embedding_layer_norm_reference(
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
    """LayerNorm(word[ids] + position[pos] + type[tt]) computed in fp32, cast to the table dtype."""
    summed = (
        word_embeddings[input_ids].float()
        + position_embeddings[position_ids].float()
        + token_type_embeddings[token_type_ids].float()
    )
    out = F.layer_norm(summed, (summed.shape[-1],), weight.float(), bias.float(), eps)
    return out.to(word_embeddings.dtype)


def check_embedding_layer_norm_inputs(
    input_ids,
    token_type_ids,
    position_ids,
    word_embeddings,
    position_embeddings,
    token_type_embeddings,
    weight,
    bias,
) -> None:
    for name, ids in (
        ("input_ids", input_ids),
        ("token_type_ids", token_type_ids),
        ("position_ids", position_ids),
    ):
        if ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be int32 or int64, got {ids.dtype}")
        if ids.shape != input_ids.shape:
            raise ValueError(
                f"{name} has shape {tuple(ids.shape)} but input_ids has {tuple(input_ids.shape)}"
            )
        if ids.device != word_embeddings.device:
            raise ValueError(f"{name} is on {ids.device}, the tables on {word_embeddings.device}")
    check_float("word_embeddings", word_embeddings)
    hidden = word_embeddings.shape[-1]
    for name, table in (
        ("position_embeddings", position_embeddings),
        ("token_type_embeddings", token_type_embeddings),
    ):
        check_same(name, table, "word_embeddings", word_embeddings)
        if table.dim() != 2 or table.shape[1] != hidden:
            raise ValueError(f"{name} must be (rows, {hidden}), got {tuple(table.shape)}")
    check_vector("weight", weight, hidden, word_embeddings)
    check_vector("bias", bias, hidden, word_embeddings)


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
    backend: str = "torch",
) -> torch.Tensor:
    """Embeddings of any-shaped id tensors (ids, types, positions alike): shape ids.shape + (H,).

    Ids are trusted to be in range here: the model validates them once, before any kernel.
    """
    check_embedding_layer_norm_inputs(
        input_ids,
        token_type_ids,
        position_ids,
        word_embeddings,
        position_embeddings,
        token_type_embeddings,
        weight,
        bias,
    )
    args = (
        input_ids,
        token_type_ids,
        position_ids,
        word_embeddings,
        position_embeddings,
        token_type_embeddings,
        weight,
        bias,
        float(eps),
    )
    if backend == "torch":
        return embedding_layer_norm_reference(*args)
    from bertfast.ops import run_kernel

    return run_kernel("embedding_layer_norm", backend, *args)
