"""Token + position + segment embedding gather, sum and LayerNorm, as one op, with BERT's
embedding dropout after it in training (inside the kernel on Triton, the mask drawn again from
its seed by the backward: ``bertfast.ops._dropout``).

The op's contract lives here once (signature, checks, reference, custom op, fake and autograd);
the backend modules of the same name hold only kernels and their launch (the backward on Triton
only). The backward gives every table row the plain scatter-add of its tokens' gradients, the
padding id's row included, as a plain index would: ``nn.Embedding(padding_idx)``'s rule (no
gradient for the padding row) is applied by the model (``bertfast.model._ZeroRowGradient``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast.ops._checks import (
    check_float,
    check_kernel_device,
    check_kernel_tensor,
    check_same,
    check_vector,
)
from bertfast.ops._dropout import (
    check_dropout_p,
    check_kernel_dropout,
    draw_seed,
    dropout_kwargs,
)

ID_DTYPES = (torch.int32, torch.int64)


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
    backend: str = "torch",
) -> None:
    ids = (
        ("input_ids", input_ids),
        ("token_type_ids", token_type_ids),
        ("position_ids", position_ids),
    )
    for name, t in ids:
        if t.dtype not in ID_DTYPES:
            raise TypeError(f"{name} must be int32 or int64, got {t.dtype}")
        if t.shape != input_ids.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but input_ids has {tuple(input_ids.shape)}"
            )
        if t.device != word_embeddings.device:
            raise ValueError(f"{name} is on {t.device}, the tables on {word_embeddings.device}")
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
    if backend == "torch":
        return
    tables = (
        ("word_embeddings", word_embeddings),
        ("position_embeddings", position_embeddings),
        ("token_type_embeddings", token_type_embeddings),
        ("weight", weight),
        ("bias", bias),
    )
    for name, t in tables:
        check_kernel_tensor(name, t, backend)
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the kernel reads rows of it)")
    for name, t in tables:
        check_kernel_device(name, t, backend)


@torch.library.custom_op("bertfast::embedding_layer_norm", mutates_args=())
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
    backend: str,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    from bertfast.ops.registry import get_backward, get_kernel

    args = (
        input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
        token_type_embeddings, weight, bias, eps,
    )  # fmt: skip
    if dropout_p:
        get_backward("embedding_layer_norm", backend)  # dropout is for training: say if not
    return get_kernel("embedding_layer_norm", backend)(*args, **dropout_kwargs(dropout_p, seed))


@_embedding_layer_norm_op.register_fake
def _(input_ids, token_type_ids, position_ids, word, position, token_type, weight, bias, eps, b,
      dropout_p=0.0, seed=None):  # fmt: skip
    return word.new_empty(*input_ids.shape, word.shape[1])


@torch.library.custom_op("bertfast::embedding_layer_norm_backward", mutates_args=())
def _embedding_layer_norm_backward_op(
    grad: torch.Tensor,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    position_ids: torch.Tensor,
    word_embeddings: torch.Tensor,
    position_embeddings: torch.Tensor,
    token_type_embeddings: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    backend: str,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dword, dposition, dtoken_type, dweight, dbias): each table's grad is the plain
    scatter-add by id of the sum's gradient, the padding id's row included."""
    from bertfast.ops.registry import get_backward

    return get_backward("embedding_layer_norm", backend)(
        grad, input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
        token_type_embeddings, weight, eps, **dropout_kwargs(dropout_p, seed),
    )  # fmt: skip


@_embedding_layer_norm_backward_op.register_fake
def _(grad, input_ids, token_type_ids, position_ids, word, position, token_type, weight, eps, b,
      dropout_p=0.0, seed=None):  # fmt: skip
    return (
        torch.empty_like(word),
        torch.empty_like(position),
        torch.empty_like(token_type),
        torch.empty_like(weight),
        torch.empty_like(weight),
    )


def _setup_embedding_layer_norm_context(ctx, inputs, output):
    *tensors, bias, eps, backend, dropout_p, seed = inputs
    # The sum, mean, rstd and the dropout mask are recomputed in the backward.
    ctx.save_for_backward(*tensors, seed)
    ctx.eps, ctx.backend, ctx.dropout_p = eps, backend, dropout_p


def _embedding_layer_norm_backward(ctx, grad):
    *tensors, seed = ctx.saved_tensors
    grads = _embedding_layer_norm_backward_op(
        grad, *tensors, ctx.eps, ctx.backend, ctx.dropout_p, seed
    )
    return (None, None, None, *grads, None, None, None, None)


_embedding_layer_norm_op.register_autograd(
    _embedding_layer_norm_backward, setup_context=_setup_embedding_layer_norm_context
)


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
    validate: bool = True,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Embeddings of any-shaped id tensors (ids, types, positions alike): shape ids.shape + (H,).

    ``dropout_p`` > 0 drops output elements (BERT's embedding dropout; training): on the torch
    backend with torch's dropout, on Triton inside the kernel from a seed drawn from torch's
    CPU generator (``torch.manual_seed`` makes it repeatable; the backward draws it again).

    Ids are trusted to be in range here: the model validates them once, before any kernel.
    ``validate=False`` skips the layout checks for callers that made them already.
    """
    tensors = (
        input_ids,
        token_type_ids,
        position_ids,
        word_embeddings,
        position_embeddings,
        token_type_embeddings,
        weight,
        bias,
    )
    if validate:
        check_embedding_layer_norm_inputs(*tensors, backend=backend)
    dropout_p = check_dropout_p(dropout_p)
    if backend == "torch":
        out = embedding_layer_norm_reference(*tensors, float(eps))
        return F.dropout(out, dropout_p) if dropout_p else out
    if dropout_p:
        check_kernel_dropout("embedding", "embedding_layer_norm", backend, dropout_p)
        return _embedding_layer_norm_op(*tensors, float(eps), backend, dropout_p, draw_seed())
    from bertfast.ops.registry import run_kernel

    return run_kernel(
        "embedding_layer_norm", backend, _embedding_layer_norm_op, *tensors, float(eps)
    )
