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


LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_same_or_fp32(
    name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, backend: str
) -> None:
    """``t`` shares ``ref``'s device and dtype, or is float32 beside a float16/bfloat16 ``ref``:
    the layout torch.autocast makes (fp32 parameters and residual stream, low-precision GEMM
    outputs), which the Triton kernels and the references read in fp32. The CUDA kernels take
    one dtype for every input."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype == ref.dtype:
        return
    mixed = t.dtype == torch.float32 and ref.dtype in LOW_PRECISION
    if mixed and backend != "cuda":
        return
    if mixed:
        raise TypeError(
            f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}: the cuda kernels take "
            f"one dtype for every input (the triton and torch backends read float32 "
            f"parameters beside {ref.dtype} activations, as under torch.autocast)"
        )
    also = " or torch.float32 (as under torch.autocast)" if ref.dtype in LOW_PRECISION else ""
    raise TypeError(
        f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; {name} may be "
        f"{ref.dtype}{also}"
    )


def check_vector(
    name: str,
    t: torch.Tensor | None,
    size: int,
    ref: torch.Tensor,
    backend: str | None = None,
) -> None:
    """A (size,) parameter on ``ref``'s device; of its dtype, or (with a ``backend``) float32
    beside low-precision activations (``check_same_or_fp32``)."""
    if t is None:
        return
    if t.dim() != 1 or t.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},), got {tuple(t.shape)}")
    if backend is None:
        check_same(name, t, "the input", ref)
    else:
        check_same_or_fp32(name, t, "the input", ref, backend)


def as_rows(name: str, t: torch.Tensor) -> torch.Tensor:
    """View (..., N) as (rows, N) without copying; rows may be strided, the last dim may not."""
    rows = t.reshape(-1, t.shape[-1])
    if rows.shape[-1] > 1 and rows.stride(-1) != 1:
        raise ValueError(f"{name} cannot be viewed as rows with a contiguous last dimension")
    return rows


def check_kernel_tensor(
    name: str, t: torch.Tensor, backend: str, dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
) -> None:
    """What every kernel reads: a supported dtype and a unit last stride (any device)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(
            f"{name} has dtype {t.dtype}; the {backend} kernel supports "
            f"{', '.join(map(str, dtypes))}"
        )
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name} has last-dimension stride {t.stride(-1)}; the kernel needs it contiguous (1)"
        )


def check_kernel_device(
    name: str, t: torch.Tensor, backend: str, ref: torch.Tensor | None = None
) -> None:
    """``t`` is where ``backend``'s kernels run, on ``ref``'s device when given.

    Checked after the shape checks, so that every other error shows (and is tested) on a
    machine without a GPU.
    """
    device = t.device
    if backend == "cuda" and device.type != "cuda":
        raise RuntimeError(
            f"{name} is a {device.type.upper()} tensor ({device}); the CUDA kernels run on "
            "CUDA tensors only"
        )
    if backend == "triton" and device.type != "cuda":
        from bertfast.ops.registry import triton_interpreter_enabled

        if device.type != "cpu":
            raise RuntimeError(
                f"{name} is on {device}; Triton kernels run on CUDA (or CPU) tensors"
            )
        if not triton_interpreter_enabled():
            raise RuntimeError(
                f"{name} is a CPU tensor: Triton kernels run on CUDA tensors, or on the CPU only "
                "under the interpreter (TRITON_INTERPRET=1 set before Python starts)"
            )
    if ref is not None and device != ref.device:
        raise ValueError(f"{name} is on {device} but the input is on {ref.device}")


def check_dot_dtype(name: str, t: torch.Tensor, backend: str) -> None:
    """Triton's CPU interpreter multiplies bf16 bit patterns in ``tl.dot``: refuse, never guess."""
    if backend == "triton" and t.device.type == "cpu" and t.dtype == torch.bfloat16:
        raise TypeError(
            f"{name} is bfloat16 on the CPU: the Triton interpreter's tl.dot does not support "
            "bf16 (its results are garbage); use float32 or float16 there, bf16 on a GPU"
        )
