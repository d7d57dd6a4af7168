"""A linear layer with its epilogue fused into the GEMM: ``epilogue(x @ weight.T + bias)``.

BERT's three GEMMs that are followed by elementwise work:
- ``"bias_gelu"`` / ``"bias_gelu_tanh"``: the FFN-up projection and its GELU (erf or tanh form);
- ``"bias_residual_layer_norm"``: the attention-output and FFN-down projections, their
  residual add and LayerNorm; the LayerNorm is fused when one tile spans the whole row
  (hidden size up to ``MAX_FUSED_LAYER_NORM``), else it runs as one light pass after;
- ``"bias"``: the plain linear layer.

The GEMM accumulates in fp32 and the epilogue runs on the fp32 accumulator, so the fused form
rounds once where the unfused one (``F.linear`` then the op) rounds twice. The op's contract
lives here once; ``bertfast/triton/linear_epilogue.py`` holds the kernel and its launch.
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
    check_vector,
)

EPILOGUES = ("bias", "bias_gelu", "bias_gelu_tanh", "bias_residual_layer_norm")
# Widest row whose LayerNorm is computed inside the GEMM tile (BERT-base 768, large 1024).
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
) -> torch.Tensor:
    """fp32 GEMM and epilogue, result in x's dtype."""
    y = F.linear(x.float(), weight.float(), bias.float())
    if epilogue == "bias_gelu":
        y = F.gelu(y)
    elif epilogue == "bias_gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    elif epilogue == "bias_residual_layer_norm":
        y = F.layer_norm(
            y + residual.float(), (y.shape[-1],), ln_weight.float(), ln_bias.float(), eps
        )
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
    check_vector("bias", bias, out_features, x)
    norm_inputs = (("residual", residual), ("ln_weight", ln_weight), ("ln_bias", ln_bias))
    if epilogue == "bias_residual_layer_norm":
        for name, t in norm_inputs:
            if t is None:
                raise ValueError(f"epilogue {epilogue!r} needs {name}")
        check_same("residual", residual, "x", x)
        expected = (*x.shape[:-1], out_features)
        if tuple(residual.shape) != expected:
            raise ValueError(f"residual has shape {tuple(residual.shape)}, expected {expected}")
        check_vector("ln_weight", ln_weight, out_features, x)
        check_vector("ln_bias", ln_bias, out_features, x)
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
) -> torch.Tensor:
    from bertfast.ops import get_kernel

    return get_kernel("linear_epilogue", backend)(
        x, weight, bias, epilogue, residual, ln_weight, ln_bias, eps
    )


@_linear_epilogue_op.register_fake
def _(x, weight, bias, epilogue, residual, ln_weight, ln_bias, eps, backend):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


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
) -> torch.Tensor:
    """``epilogue(x @ weight.T + bias)``, shape ``(*x.shape[:-1], out_features)``.

    ``validate=False`` skips the checks for callers that made them already.
    """
    if validate:
        check_linear_epilogue_inputs(
            x, weight, bias, epilogue, residual, ln_weight, ln_bias, backend
        )
    if backend == "torch":
        return linear_epilogue_reference(
            x, weight, bias, epilogue, residual, ln_weight, ln_bias, float(eps)
        )
    from bertfast.ops import run_kernel

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
