"""Checks every Triton launcher makes before it launches, and small launch helpers."""

from __future__ import annotations

import torch

from bertfast.ops import triton_interpreter_enabled
from bertfast.ops._checks import FLOAT_DTYPES


def check_kernel_tensor(name: str, t: torch.Tensor, dtypes=FLOAT_DTYPES) -> None:
    """A tensor a kernel can read: supported dtype, a device Triton runs on, unit last stride."""
    if t.dtype not in dtypes:
        raise TypeError(
            f"{name} has dtype {t.dtype}; the Triton kernel supports {', '.join(map(str, dtypes))}"
        )
    if t.device.type == "cpu":
        if not triton_interpreter_enabled():
            raise RuntimeError(
                f"{name} is a CPU tensor: Triton kernels run on CUDA tensors, or on the CPU only "
                "under the interpreter (TRITON_INTERPRET=1 set before Python starts)"
            )
    elif t.device.type != "cuda":
        raise RuntimeError(f"{name} is on {t.device}; Triton kernels run on CUDA (or CPU) tensors")
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name} has last-dimension stride {t.stride(-1)}; the kernel needs it contiguous (1)"
        )


def check_same_device(name: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but the input is on {ref.device}")


def as_rows(name: str, t: torch.Tensor) -> torch.Tensor:
    """View (..., N) as (rows, N) without copying; rows may be strided, the last dim may not."""
    rows = t.reshape(-1, t.shape[-1])
    if rows.shape[-1] > 1 and rows.stride(-1) != 1:
        raise ValueError(f"{name} cannot be viewed as rows with a contiguous last dimension")
    return rows


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def use_custom_op() -> bool:
    """Inside torch.compile the registered custom op is traced; eager calls skip its overhead."""
    return torch.compiler.is_compiling()
