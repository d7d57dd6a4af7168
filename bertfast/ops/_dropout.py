"""Dropout inside the kernels: the mask is Philox numbers of a seed and each element's position
(Triton's ``tl.rand``), so a backward draws the forward's mask again instead of storing it."""

from __future__ import annotations

import torch


def check_dropout_p(dropout_p: float) -> float:
    if not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    return float(dropout_p)


def draw_seed() -> torch.Tensor:
    """A (1,) int64 CPU tensor from torch's CPU generator: ``torch.manual_seed`` governs the
    masks, no device is waited for, and torch.compile traces the draw (a tensor, not a
    Python int read from one)."""
    return torch.randint(0, 2**31 - 1, (1,))


def seed_value(seed: torch.Tensor | None) -> int:
    """The launch's int seed from a CPU seed tensor (0 without dropout)."""
    return 0 if seed is None else int(seed.item())


def dropout_kwargs(dropout_p: float, seed: torch.Tensor | None) -> dict:
    """A kernel launch's dropout keywords: none without dropout (every launch's default)."""
    return dict(dropout_p=dropout_p, seed=seed_value(seed)) if dropout_p else {}


def check_kernel_dropout(what: str, op: str, backend: str, dropout_p: float) -> None:
    """Dropout is for training: a kernel backend without ``op``'s backward refuses it."""
    from bertfast.ops.registry import KERNEL_BACKWARD_OPS

    if dropout_p and op not in KERNEL_BACKWARD_OPS.get(backend, ()):
        raise NotImplementedError(
            f"{what} dropout (p={dropout_p}) runs on the torch and triton backends; "
            f"the {backend} kernels are for inference (call model.eval())"
        )
