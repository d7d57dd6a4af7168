"""Checks every Triton launcher makes before it launches, and small launch helpers."""

from __future__ import annotations

import torch

from bertfast.ops import triton_interpreter_enabled
from bertfast.ops._checks import FLOAT_DTYPES
from bertfast.ops._checks import as_rows as as_rows  # re-exported for the launchers
from bertfast.ops._checks import use_custom_op as use_custom_op


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
