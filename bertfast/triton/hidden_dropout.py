"""BERT's hidden dropout as the Triton kernels draw it: a keep mask from Philox numbers of a
seed and each element's index in the (rows, hidden) activation (``tl.rand``). The embedding
and bias + residual + LayerNorm kernels call ``hidden_dropout_keep`` in their forward and
again in their backward, so no mask is stored; ``dropout_mask`` writes the same mask out for
tests and references."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from bertfast.triton import target


@triton.jit
def hidden_dropout_keep(seed, dropout_p, row, cols, hidden):
    """Which elements of one row survive dropout: Philox numbers of the seed and each
    element's index in the (rows, hidden) activation."""
    return tl.rand(seed, row * hidden + cols) >= dropout_p


@triton.jit
def _hidden_dropout_mask_kernel(out_ptr, hidden, seed, dropout_p, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    kept = hidden_dropout_keep(seed, dropout_p, row, cols, hidden)
    tl.store(out_ptr + row * hidden + cols, kept.to(tl.int8), mask=cols < hidden)


def dropout_mask(
    shape: torch.Size | tuple[int, ...], dropout_p: float, seed: int, device: torch.device
) -> torch.Tensor:
    """The kernels' keep mask (bool, ``shape``) for ``seed``: what a forward with that seed
    drops, for tests and references."""
    hidden = shape[-1]
    rows = math.prod(shape[:-1])
    out = torch.empty((rows, hidden), dtype=torch.int8, device=device)
    if out.numel():
        block = triton.next_power_of_2(hidden)
        target.run(
            _hidden_dropout_mask_kernel, (rows,), out, hidden, seed, float(dropout_p), BLOCK=block
        )
    return out.view(shape).bool()
