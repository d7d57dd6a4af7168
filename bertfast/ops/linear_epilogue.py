"""A linear layer with its epilogue fused into the GEMM: ``epilogue(x @ weight.T + bias)``.

BERT's three GEMMs that are followed by elementwise work:
- ``"bias_gelu"`` / ``"bias_gelu_tanh"``: the FFN-up projection and its GELU (erf or tanh form);
- ``"bias_residual_layer_norm"``: the attention-output and FFN-down projections, their
  residual add and LayerNorm; the LayerNorm is fused for rows up to ``MAX_FUSED_LAYER_NORM``
  wide (a program walks its rows in column chunks, then normalises them), else it runs as one
  light pass after;
- ``"bias"``: the plain linear layer.

The GEMM accumulates in fp32 and the epilogue runs on the fp32 accumulator, so the fused form
rounds once where the unfused one (``F.linear`` then the op) rounds twice. The op's contract
lives here once (signature, checks, reference, custom op, fake and autograd: a backward custom
op giving dx, dweight, dbias and, for the LayerNorm epilogue, dresidual, dln_weight,
dln_bias); ``bertfast/triton/linear_epilogue.py`` holds the kernel and both launches.

The backward (Triton only) saves the inputs, not the pre-activation: it recomputes
``x @ weight.T`` (a torch matmul, cuBLAS on a GPU), takes the epilogue's gradient with the
elementwise ops' own backward kernels (bias_gelu, bias_residual_layer_norm; for ``"bias"`` the
gradient itself), and ends with two torch matmuls, ``dx = dpre @ weight`` and
``dweight = dpre.T @ x``. The matmuls accumulate in fp32; in fp16/bf16 the recomputed
pre-activation and its gradient ``dpre`` are rounded to that dtype, as the unfused path
(``F.linear`` then the op) rounds them, so the backward is as accurate as that path's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast.ops._checks import (
    check_dot_dtype,
    check_float,
    check_kernel_device,
    check_kernel_tensor,
    check_same,
    check_same_or_fp32,
    check_vector,
)
from bertfast.ops._dropout import check_dropout_p, draw_seed, dropout_kwargs
from bertfast.ops.bias_residual_layer_norm import bias_residual_layer_norm_reference

EPILOGUES = ("bias", "bias_gelu", "bias_gelu_tanh", "bias_residual_layer_norm")
# Widest row whose LayerNorm is fused into the GEMM kernel (BERT-base 768, large 1024).
MAX_FUSED_LAYER_NORM = 1024


def linear_epilogue_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    epilogue: str,
    residual: torch.Tensor | None = None,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    eps: float = 1e-12,
    dropout_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """fp32 GEMM and epilogue, result in x's dtype (residual's for the LayerNorm epilogue:
    a float32 residual stream beside float16/bfloat16 x, as under autocast); ``dropout_mask``
    (the output's shape, True = kept; the LayerNorm epilogue) drops x @ weight.T + bias before
    the residual."""
    y = F.linear(x.float(), weight.float(), bias.float())
    if dropout_mask is not None:
        y = torch.where(dropout_mask, y / (1.0 - dropout_p), 0.0)
    if epilogue == "bias_gelu":
        y = F.gelu(y)
    elif epilogue == "bias_gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    elif epilogue == "bias_residual_layer_norm":
        y = F.layer_norm(
            y + residual.float(), (y.shape[-1],), ln_weight.float(), ln_bias.float(), eps
        )
        return y.to(residual.dtype)
    return y.to(x.dtype)


def check_linear_epilogue_inputs(
    x, weight, bias, epilogue, residual, ln_weight, ln_bias, backend: str
) -> None:
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue={epilogue!r}; supported: {EPILOGUES}")
    check_float("x", x)
    check_same("weight", weight, "x", x)
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"weight must be (out_features, {x.shape[-1]}) for x of shape {tuple(x.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    out_features = weight.shape[0]
    if bias is None:
        raise ValueError("linear_epilogue needs a bias (every BERT linear layer has one)")
    check_vector("bias", bias, out_features, x, backend)  # float32 beside fp16/bf16 x
    norm_inputs = (("residual", residual), ("ln_weight", ln_weight), ("ln_bias", ln_bias))
    if epilogue == "bias_residual_layer_norm":
        for name, t in norm_inputs:
            if t is None:
                raise ValueError(f"epilogue {epilogue!r} needs {name}")
        check_same_or_fp32("residual", residual, "x", x, backend)
        expected = (*x.shape[:-1], out_features)
        if tuple(residual.shape) != expected:
            raise ValueError(f"residual has shape {tuple(residual.shape)}, expected {expected}")
        check_vector("ln_weight", ln_weight, out_features, x, backend)
        check_vector("ln_bias", ln_bias, out_features, x, backend)
    elif any(t is not None for _, t in norm_inputs):
        raise ValueError(f"residual and LayerNorm parameters belong to 'bias_residual_layer_norm', "
                         f"not to epilogue {epilogue!r}")  # fmt: skip
    if backend == "torch":
        return
    if backend != "triton":
        raise ValueError(f"linear_epilogue has kernels on the triton backend only, not {backend!r}")
    named = [("x", x), ("weight", weight), ("bias", bias)]
    named += [(n, t) for n, t in norm_inputs if t is not None]
    for name, t in named:
        check_kernel_tensor(name, t, backend)
    check_dot_dtype("x", x, backend)
    for name, t in named:
        check_kernel_device(name, t, backend, x)


@torch.library.custom_op("bertfast::linear_epilogue", mutates_args=())
def _linear_epilogue_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    epilogue: str,
    residual: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float,
    backend: str,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    from bertfast.ops.registry import get_kernel

    return get_kernel("linear_epilogue", backend)(
        x, weight, bias, epilogue, residual, ln_weight, ln_bias, eps,
        **dropout_kwargs(dropout_p, seed),
    )  # fmt: skip


@_linear_epilogue_op.register_fake
def _(x, weight, bias, epilogue, residual, ln_weight, ln_bias, eps, backend, p=0.0, seed=None):
    dtype = residual.dtype if epilogue == "bias_residual_layer_norm" else x.dtype
    return x.new_empty(*x.shape[:-1], weight.shape[0], dtype=dtype)


@torch.library.custom_op("bertfast::linear_epilogue_backward", mutates_args=())
def _linear_epilogue_backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    epilogue: str,
    residual: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    eps: float,
    backend: str,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, dresidual, dln_weight, dln_bias); the last three are empty unless
    the epilogue is ``"bias_residual_layer_norm"``."""
    from bertfast.ops.registry import get_backward

    return get_backward("linear_epilogue", backend)(
        grad, x, weight, bias, epilogue, residual, ln_weight, eps,
        **dropout_kwargs(dropout_p, seed),
    )  # fmt: skip


@_linear_epilogue_backward_op.register_fake
def _(grad, x, weight, bias, epilogue, residual, ln_weight, eps, backend, p=0.0, seed=None):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    dweight, dbias = torch.empty_like(weight), torch.empty_like(bias)
    if epilogue != "bias_residual_layer_norm":
        return dx, dweight, dbias, x.new_empty(0), x.new_empty(0), x.new_empty(0)
    dresidual = torch.empty_like(residual, memory_format=torch.contiguous_format)
    return dx, dweight, dbias, dresidual, torch.empty_like(ln_weight), torch.empty_like(ln_weight)


def _setup_linear_epilogue_context(ctx, inputs, output):
    x, weight, bias, epilogue, residual, ln_weight, ln_bias, eps, backend, dropout_p, seed = inputs
    # The pre-activation and the dropout mask are recomputed in the backward; ln_bias is not
    # needed.
    ctx.save_for_backward(x, weight, bias, residual, ln_weight, seed)
    ctx.epilogue, ctx.eps, ctx.backend, ctx.dropout_p = epilogue, eps, backend, dropout_p


def _linear_epilogue_backward(ctx, grad):
    x, weight, bias, residual, ln_weight, seed = ctx.saved_tensors
    dx, dweight, dbias, dresidual, dln_weight, dln_bias = _linear_epilogue_backward_op(
        grad, x, weight, bias, ctx.epilogue, residual, ln_weight, ctx.eps, ctx.backend,
        ctx.dropout_p, seed,
    )  # fmt: skip
    if ctx.epilogue != "bias_residual_layer_norm":
        dresidual = dln_weight = dln_bias = None
    return dx, dweight, dbias, None, dresidual, dln_weight, dln_bias, None, None, None, None


_linear_epilogue_op.register_autograd(
    _linear_epilogue_backward, setup_context=_setup_linear_epilogue_context
)


def linear_epilogue(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    epilogue: str = "bias",
    residual: torch.Tensor | None = None,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    eps: float = 1e-12,
    backend: str = "torch",
    validate: bool = True,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``epilogue(x @ weight.T + bias)``, shape ``(*x.shape[:-1], out_features)``; on the
    triton backend it trains (the backward is registered on the custom op). ``dropout_p`` > 0
    (the LayerNorm epilogue only: BERT's hidden dropout) drops x @ weight.T + bias before the
    residual: torch's dropout on the torch backend, a Philox mask inside the kernel on Triton,
    its seed from torch's CPU generator.

    ``validate=False`` skips the checks for callers that made them already.
    """
    if validate:
        check_linear_epilogue_inputs(
            x, weight, bias, epilogue, residual, ln_weight, ln_bias, backend
        )
    dropout_p = check_dropout_p(dropout_p)
    if dropout_p and epilogue != "bias_residual_layer_norm":
        raise ValueError(
            f"dropout_p applies to the 'bias_residual_layer_norm' epilogue (BERT's hidden "
            f"dropout before the residual), not to {epilogue!r}"
        )
    if backend == "torch":
        if dropout_p:
            y = F.dropout(F.linear(x.float(), weight.float(), bias.float()), dropout_p)
            return bias_residual_layer_norm_reference(
                y, None, residual, ln_weight, ln_bias, float(eps)
            )
        return linear_epilogue_reference(
            x, weight, bias, epilogue, residual, ln_weight, ln_bias, float(eps)
        )
    if dropout_p:
        args = (x, weight, bias, epilogue, residual, ln_weight, ln_bias, float(eps), backend)
        return _linear_epilogue_op(*args, dropout_p, draw_seed())
    from bertfast.ops.registry import run_kernel

    return run_kernel(
        "linear_epilogue",
        backend,
        _linear_epilogue_op,
        x,
        weight,
        bias,
        epilogue,
        residual,
        ln_weight,
        ln_bias,
        float(eps),
    )
