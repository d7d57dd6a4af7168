"""Input checks shared by the ops: each error says what was given and what is supported."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float(name: str, t: torch.Tensor, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; supported: {', '.join(map(str, dtypes))}")


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must share ``ref``'s dtype and device."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")


def check_vector(name: str, t: torch.Tensor | None, size: int, ref: torch.Tensor) -> None:
    if t is None:
        return
    if t.dim() != 1 or t.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},), got {tuple(t.shape)}")
    check_same(name, t, "the input", ref)


def as_rows(name: str, t: torch.Tensor) -> torch.Tensor:
    """View (..., N) as (rows, N) without copying; rows may be strided, the last dim may not."""
    rows = t.reshape(-1, t.shape[-1])
    if rows.shape[-1] > 1 and rows.stride(-1) != 1:
        raise ValueError(f"{name} cannot be viewed as rows with a contiguous last dimension")
    return rows


def use_custom_op() -> bool:
    """Inside torch.compile the registered custom op is traced; eager calls skip its overhead."""
    return torch.compiler.is_compiling()
