"""The bridge to the compiled extension bertfast._cuda: import on first use, pointers, stream."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from bertfast.ops._checks import as_rows as as_rows  # re-exported for the launchers

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


def ptr(t: torch.Tensor | None) -> int:
    """The address a kernel reads, or 0 for a missing optional input."""
    return 0 if t is None else t.data_ptr()


def launch_context(t: torch.Tensor) -> tuple[int, int, int]:
    """(dtype code, device index, current stream handle) for a launch reading ``t``."""
    device = t.device
    return DTYPE_CODES.get(t.dtype, -1), device.index, torch.cuda.current_stream(device).cuda_stream
