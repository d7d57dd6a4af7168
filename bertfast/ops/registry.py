"""The backends and the kernel registry: where each backend can run, ``resolve_backend`` (a
request, "auto" / "torch" / "triton" / "cuda", into one that can run on a device, or an error
saying why not), and the lookup of each op's kernel and backward on a backend. Below the op
modules, which look their kernels up here; ``bertfast.ops`` re-exports it all.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

BACKENDS = ("torch", "triton", "cuda")
# Head dims the attention kernels of the kernel backends are built for.
KERNEL_HEAD_DIMS = (16, 32, 64, 128)
OPS = (
    "embedding_layer_norm",
    "attention",
    "bias_residual_layer_norm",
    "bias_gelu",
    "linear_epilogue",
)


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_reason(device: torch.device) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc}); install it with `pip install triton`"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"the GPU has compute capability {major}.{minor}; the kernels need 8.0 or newer"
        return None
    if device.type == "cpu":
        if triton_interpreter_enabled():
            return None
        return (
            "Triton kernels run on CUDA devices; on the CPU only under the interpreter "
            "(set TRITON_INTERPRET=1 before Python starts)"
        )
    return f"Triton kernels do not run on {device.type!r} devices"


def cuda_extension_reason() -> str | None:
    """None when the compiled extension bertfast._cuda imports, else how to build it."""
    try:
        importlib.import_module("bertfast._cuda")
    except ImportError as exc:
        return (
            f"the CUDA extension bertfast._cuda is not built ({exc}); build it with "
            "`cmake -S . -B build && cmake --build build`"
        )
    return None


def _cuda_reason(device: torch.device) -> str | None:
    # The device first: building the extension would not make it run here.
    if device.type != "cuda":
        return f"the CUDA kernels run on CUDA devices only, not on {device.type!r}"
    reason = cuda_extension_reason()
    if reason:
        return reason
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"the GPU has compute capability {major}.{minor}; the kernels need 8.0 or newer"
    return None


@dataclass(frozen=True)
class Backend:
    """A way to run the ops: where it can run, and the head dims it supports (None: any)."""

    name: str
    description: str
    unavailable_reason: Callable[[torch.device], str | None]
    head_dims: tuple[int, ...] | None = None

    def reason(self, device: torch.device, head_dim: int | None = None) -> str | None:
        """None if it can run a model of ``head_dim`` on ``device``, else why not."""
        reason = self.unavailable_reason(device)
        if reason is None and head_dim is not None and self.head_dims is not None:
            if head_dim not in self.head_dims:
                reason = f"its attention supports head dims {self.head_dims}, not {head_dim}"
        return reason


BACKEND_INFO = {
    "torch": Backend("torch", "plain PyTorch reference ops (SDPA attention)", lambda d: None),
    "triton": Backend(
        "triton", "fused Triton kernels, padding-free encoder", _triton_reason, KERNEL_HEAD_DIMS
    ),
    "cuda": Backend(
        "cuda", "fused CUDA C++ kernels (pybind11 extension)", _cuda_reason, KERNEL_HEAD_DIMS
    ),
}

# "auto" tries these in order on a CUDA device; on the CPU it is always torch. The CUDA
# extension (when built) comes first: on an H200 it beat Triton end to end in 4 of the 5
# quick-grid cases (benchmarks/results/h200-triton-cuda), losing only at 32 x 512.
AUTO_PRIORITY = ("cuda", "triton", "torch")


# Per-op choices of "auto" on a CUDA device, from measurements on the card: the CUDA attention
# (mma.sync) loses to Triton's from 384 tokens per sequence on (H200: 161 vs 189 TFLOP/s at
# b8 x s512, 7.91 vs 7.36 ms end to end at base b32 x s512; benchmarks/results/h200-*).
AUTO_ATTENTION_SWITCH = {"cuda": (384, "triton")}


def auto_attention_backend(
    backend: str, device: torch.device, head_dim: int, max_seqlen: int
) -> str:
    """The attention backend ``auto`` uses in a model that runs ``backend`` otherwise."""
    switch = AUTO_ATTENTION_SWITCH.get(backend)
    if switch is None or max_seqlen < switch[0]:
        return backend
    other = switch[1]
    if BACKEND_INFO[other].reason(device, head_dim) is not None:
        return backend
    load_kernels(other)
    return other


def _as_device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def backend_report(device: torch.device | str | None = None) -> dict[str, str | None]:
    """For each backend, None if it can run on ``device``, else the reason it cannot."""
    dev = _as_device(device)
    return {name: info.unavailable_reason(dev) for name, info in BACKEND_INFO.items()}


def resolve_backend(
    requested: str, device: torch.device | str | None = None, head_dim: int | None = None
) -> str:
    """The backend that will run on ``device`` for a request; never a silent substitute.

    ``auto`` takes the first of AUTO_PRIORITY that can run (torch off CUDA); an explicit
    request that cannot run, on this device or for a model of this ``head_dim``, raises.
    """
    dev = _as_device(device)
    if requested == "auto":
        if dev.type != "cuda":
            return "torch"
        for name in AUTO_PRIORITY:
            if BACKEND_INFO[name].reason(dev, head_dim) is None:
                return name
        return "torch"
    if requested not in BACKEND_INFO:
        raise ValueError(f"unknown backend {requested!r}; choose one of 'auto', {BACKENDS}")
    reason = BACKEND_INFO[requested].reason(dev, head_dim)
    if reason is not None:
        raise RuntimeError(f"backend {requested!r} cannot run on {dev}: {reason}")
    return requested


# The ops each kernel backend implements (the fused GEMM epilogue is Triton's only).
KERNEL_OPS = {"triton": OPS, "cuda": OPS[:4]}

_KERNELS: dict[tuple[str, str], Callable] = {}


def get_kernel(op: str, backend: str) -> Callable:
    """The raw launch of ``op`` on a kernel backend: ``bertfast.<backend>.<op>.launch``.

    It trusts its inputs: ``bertfast.ops.<op>`` checks them (once, at the edge of a forward).
    Cached in a plain dict so torch.compile traces the lookup without a graph break.
    """
    kernel = _KERNELS.get((op, backend))
    if kernel is not None:
        return kernel
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops: {OPS}")
    if backend not in ("triton", "cuda"):
        raise ValueError(f"backend {backend!r} has no kernels; kernel backends: triton, cuda")
    package = "bertfast.triton" if backend == "triton" else "bertfast.cuda"
    try:
        module = importlib.import_module(f"{package}.{op}")
    except ModuleNotFoundError as exc:
        raise NotImplementedError(f"op {op!r} has no {backend} kernel ({exc})") from exc
    kernel = _KERNELS[(op, backend)] = module.launch
    return kernel


# The ops whose kernels have a backward (``bertfast.<backend>.<op>.launch_backward``); the
# op's custom op carries it (``register_autograd`` in ``bertfast/ops/<op>.py``).
KERNEL_BACKWARD_OPS = {
    "triton": (
        "embedding_layer_norm",
        "attention",
        "bias_residual_layer_norm",
        "bias_gelu",
        "linear_epilogue",
    ),
    "cuda": (),
}

_BACKWARDS: dict[tuple[str, str], Callable] = {}


def no_backward_message(op: str, backend: str) -> str:
    return (
        f"the {backend} kernel {op!r} has no backward pass; train with backend='torch' "
        "(or run inference under torch.no_grad() / torch.inference_mode())"
    )


def get_backward(op: str, backend: str) -> Callable:
    """The backward launch of ``op`` on a kernel backend, or NotImplementedError saying which
    op lacks one."""
    backward = _BACKWARDS.get((op, backend))
    if backward is not None:
        return backward
    if op not in KERNEL_BACKWARD_OPS.get(backend, ()):
        raise NotImplementedError(no_backward_message(op, backend))
    package = "bertfast.triton" if backend == "triton" else "bertfast.cuda"
    module = importlib.import_module(f"{package}.{op}")
    backward = _BACKWARDS[(op, backend)] = module.launch_backward
    return backward


class _ForwardOnly(torch.autograd.Function):
    """A kernel call in a graph that needs gradients, where the kernel has no backward: the
    backward says so, instead of autograd silently skipping everything before the kernel."""

    @staticmethod
    def forward(ctx, op: str, backend: str, kernel: Callable, *args):
        ctx.op, ctx.backend = op, backend
        return kernel(*args)

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(no_backward_message(ctx.op, ctx.backend))


def run_kernel(op: str, backend: str, custom_op: Callable, *args):
    """Launch ``op`` on a kernel backend with checked ``args``.

    Inside torch.compile the op's registered custom op (``custom_op(*args, backend)``) is
    traced; eager calls go straight to the launch. When a gradient is needed, an op with a
    backward on ``backend`` runs through its custom op (whose registered autograd calls the
    backward kernels); backward through any other kernel is refused rather than dropped.
    """
    if torch.compiler.is_compiling():
        return custom_op(*args, backend)
    if torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    ):
        if op in KERNEL_BACKWARD_OPS.get(backend, ()):
            return custom_op(*args, backend)
        return _ForwardOnly.apply(op, backend, get_kernel(op, backend), *args)
    return get_kernel(op, backend)(*args)


def load_kernels(backend: str) -> None:
    """Import every kernel of a backend now, so that no import happens inside a trace."""
    if backend in ("triton", "cuda"):
        for op in OPS:
            if op in KERNEL_OPS[backend]:
                get_kernel(op, backend)
