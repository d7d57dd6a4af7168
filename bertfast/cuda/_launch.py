"""Checks every CUDA launcher makes, and the bridge to the compiled extension bertfast._cuda."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from bertfast.ops._checks import FLOAT_DTYPES
from bertfast.ops._checks import as_rows as as_rows  # re-exported for the launchers
from bertfast.ops._checks import use_custom_op as use_custom_op

# Must match enum DType in csrc/common.cuh.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
BUILD_HINT = (
    "build it with `cmake -S . -B build && cmake --build build` from the repository root "
    "(needs nvcc and pybind11; see CMakeLists.txt)"
)

_extension: ModuleType | None = None


def extension() -> ModuleType:
    """The compiled module, imported on first use (never at import time)."""
    global _extension
    if _extension is None:
        try:
            _extension = importlib.import_module("bertfast._cuda")
        except ImportError as exc:
            raise RuntimeError(
                f"the CUDA extension bertfast._cuda is not built ({exc}); {BUILD_HINT}"
            ) from exc
    return _extension


def check_kernel_tensor(name: str, t: torch.Tensor, dtypes=FLOAT_DTYPES) -> None:
    """A tensor a CUDA kernel can read: supported dtype and a unit last stride.

    The device is checked separately (``check_cuda``), after the shape checks, so that every
    other error can be seen, and tested, on a machine without a GPU.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(
            f"{name} has dtype {t.dtype}; the CUDA kernel supports {', '.join(map(str, dtypes))}"
        )
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name} has last-dimension stride {t.stride(-1)}; the kernel needs it contiguous (1)"
        )


def check_cuda(name: str, t: torch.Tensor, ref: torch.Tensor | None = None) -> None:
    """``t`` is a CUDA tensor, on the same device as ``ref`` when given."""
    if t.device.type != "cuda":
        raise RuntimeError(
            f"{name} is a {t.device.type.upper()} tensor ({t.device}); the CUDA kernels run on "
            "CUDA tensors only"
        )
    if ref is not None and t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but the input is on {ref.device}")


def check_vector(name: str, t: torch.Tensor, size: int) -> None:
    if t.dim() != 1 or t.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},), got {tuple(t.shape)}")


def ptr(t: torch.Tensor | None) -> int:
    """The address a kernel reads, or 0 for a missing optional input."""
    return 0 if t is None else t.data_ptr()


def launch_context(t: torch.Tensor) -> tuple[int, int, int]:
    """(dtype code, device index, current stream handle) for a launch reading ``t``."""
    device = t.device
    return DTYPE_CODES.get(t.dtype, -1), device.index, torch.cuda.current_stream(device).cuda_stream
