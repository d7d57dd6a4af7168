"""LayerNorm(dropout(x + bias) + residual): the closing step of BERT's attention and FFN
sub-layers, with the hidden dropout BERT trains with between the bias and the residual.

The op's contract lives here once (signature, checks, reference, custom op, fake and autograd:
a backward custom op giving dresidual, dx, dbias, dweight, dln_bias); the backend modules of
the same name hold only kernels and their launch (the backward and the dropout on Triton
only). The dropout mask is Philox numbers of a seed and each element's position, drawn again
by the backward (``bertfast.ops._dropout``), so neither the mask nor x + bias is stored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast.ops._checks import (
    check_float,
    check_kernel_device,
    check_kernel_tensor,
    check_same_or_fp32,
    check_vector,
)
from bertfast.ops._dropout import (
    check_dropout_p,
    check_kernel_dropout,
    draw_seed,
    dropout_kwargs,
)


def bias_residual_layer_norm_reference(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    dropout_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """fp32 math, result in residual's dtype (x's but for the autocast layout: a float16 or
    bfloat16 x beside a float32 residual stream); ``dropout_mask`` (x's shape, True = kept)
    drops elements of x + bias and scales the kept ones by 1 / (1 - dropout_p)."""
    summed = x.float()
    if bias is not None:
        summed = summed + bias.float()
    if dropout_mask is not None:
        summed = torch.where(dropout_mask, summed / (1.0 - dropout_p), 0.0)
    summed = summed + residual.float()
    out = F.layer_norm(summed, (summed.shape[-1],), weight.float(), ln_bias.float(), eps)
    return out.to(residual.dtype)


def check_bias_residual_layer_norm_inputs(x, bias, residual, weight, ln_bias, backend) -> None:
    check_float("x", x)
    # float32 residual and parameters beside a float16/bfloat16 x: the layout of autocast
    check_same_or_fp32("residual", residual, "x", x, backend)
    if residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}")
    hidden = x.shape[-1]
    check_vector("bias", bias, hidden, x, backend)
    check_vector("weight", weight, hidden, x, backend)
    check_vector("ln_bias", ln_bias, hidden, x, backend)
    if backend == "torch":
        return
    named = [("x", x), ("residual", residual), ("weight", weight), ("ln_bias", ln_bias)]
    named += [("bias", bias)] if bias is not None else []
    for name, t in named:
        check_kernel_tensor(name, t, backend)
    for name, t in named:
        check_kernel_device(name, t, backend)


@torch.library.custom_op("bertfast::bias_residual_layer_norm", mutates_args=())
def _bias_residual_layer_norm_op(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    backend: str,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    from bertfast.ops.registry import get_backward, get_kernel

    if dropout_p:
        get_backward("bias_residual_layer_norm", backend)  # dropout is for training: say if not
    launch = get_kernel("bias_residual_layer_norm", backend)
    return launch(x, bias, residual, weight, ln_bias, eps, **dropout_kwargs(dropout_p, seed))


@_bias_residual_layer_norm_op.register_fake
def _(x, bias, residual, weight, ln_bias, eps, backend, dropout_p=0.0, seed=None):
    return torch.empty_like(residual, memory_format=torch.contiguous_format)


@torch.library.custom_op("bertfast::bias_residual_layer_norm_backward", mutates_args=())
def _bias_residual_layer_norm_backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    backend: str,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dresidual, dx, dbias, dweight, dln_bias): dresidual is the gradient of the LayerNorm's
    input; dx that of x (empty without dropout, where it equals dresidual); dbias is empty
    without a bias."""
    from bertfast.ops.registry import get_backward

    backward = get_backward("bias_residual_layer_norm", backend)
    return backward(grad, x, bias, residual, weight, eps, **dropout_kwargs(dropout_p, seed))


@_bias_residual_layer_norm_backward_op.register_fake
def _(grad, x, bias, residual, weight, eps, backend, dropout_p=0.0, seed=None):
    dbias = x.new_empty(0) if bias is None else torch.empty_like(bias)
    dsum = torch.empty_like(residual, memory_format=torch.contiguous_format)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if dropout_p else x.new_empty(0)
    return dsum, dx, dbias, torch.empty_like(weight), torch.empty_like(weight)


def _setup_bias_residual_layer_norm_context(ctx, inputs, output):
    x, bias, residual, weight, ln_bias, eps, backend, dropout_p, seed = inputs
    # mean, rstd and the dropout mask are recomputed in the backward; ln_bias is not needed.
    ctx.save_for_backward(x, bias, residual, weight, seed)
    ctx.eps, ctx.backend, ctx.dropout_p = eps, backend, dropout_p


def _bias_residual_layer_norm_backward(ctx, grad):
    x, bias, residual, weight, seed = ctx.saved_tensors
    dsum, dx, dbias, dweight, dln_bias = _bias_residual_layer_norm_backward_op(
        grad, x, bias, residual, weight, ctx.eps, ctx.backend, ctx.dropout_p, seed
    )
    # Without dropout x and residual enter as a sum: both get dsum (x in its own dtype).
    dx = dx if ctx.dropout_p else dsum.to(x.dtype)
    dbias = dbias if bias is not None else None
    return dx, dbias, dsum, dweight, dln_bias, None, None, None, None


_bias_residual_layer_norm_op.register_autograd(
    _bias_residual_layer_norm_backward, setup_context=_setup_bias_residual_layer_norm_context
)


def bias_residual_layer_norm(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    backend: str = "torch",
    validate: bool = True,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """LayerNorm over the last dimension of ``dropout(x + bias) + residual``; same shape and
    dtype as x. ``dropout_p`` > 0 drops elements of x + bias (BERT's hidden dropout; training):
    on the torch backend with torch's dropout, on Triton inside the kernel from a seed drawn
    from torch's CPU generator, so ``torch.manual_seed`` makes it repeatable.

    ``validate=False`` skips the checks for callers that made them already.
    """
    if validate:
        check_bias_residual_layer_norm_inputs(x, bias, residual, weight, ln_bias, backend)
    dropout_p = check_dropout_p(dropout_p)
    if backend == "torch":
        if dropout_p:
            x = F.dropout(x if bias is None else x + bias, dropout_p)
            bias = None
        return bias_residual_layer_norm_reference(x, bias, residual, weight, ln_bias, float(eps))
    if dropout_p:
        check_kernel_dropout("hidden", "bias_residual_layer_norm", backend, dropout_p)
        args = (x, bias, residual, weight, ln_bias, float(eps), backend)
        return _bias_residual_layer_norm_op(*args, dropout_p, draw_seed())
    from bertfast.ops.registry import run_kernel

    return run_kernel(
        "bias_residual_layer_norm",
        backend,
        _bias_residual_layer_norm_op,
        x,
        bias,
        residual,
        weight,
        ln_bias,
        float(eps),
    )
