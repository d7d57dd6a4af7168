"""The CPU path's GEMMs: oneDNN with weights packed once into its blocked layout.

On an x86 CPU, ``F.linear`` calls MKL's sgemm on the plain row-major weight every time;
oneDNN's inner-product primitive on a weight reordered once ahead of time (what inductor's
CPU freezing does) runs BERT's GEMMs about twice as fast here (2 cores, AVX-512: 480 x 384 x
1536 in 1.3 ms against 3.0 ms), and fuses the FFN's GELU into the GEMM. Results agree with
``F.linear`` to fp32 rounding (about 3e-6).

Used for fp32 inference (grad disabled) on the CPU when torch has oneDNN, and for bf16
inference where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX; elsewhere a bf16 model
is refused at load, see ``check_cpu_dtype``, since oneDNN would emulate it, slower than fp32).
The packed copy of each weight is kept beside it (one extra copy of the linear weights in
memory) and repacked when the weight changes in place. A weight that ``bertfast.cpu_quantize``
quantized runs its int8 GEMM instead. Elsewhere, or where the ops are missing, ``F.linear``.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from bertfast import cpu_quantize

_available: bool | None = None
_bf16_reason: str | None = None  # why bf16 cannot run here ("" once checked and it can)
# id(weight) -> ((version, data_ptr), packed); an entry goes when its weight is collected. Not
# stored on the tensor itself: deepcopy and pickling of the model must not meet oneDNN tensors.
_packed: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}


def onednn_available() -> bool:
    """oneDNN's packed linear ops exist in this torch (checked once, on a tiny GEMM)."""
    global _available
    if _available is None:
        try:
            w = torch.ones(2, 2)
            packed = torch.ops.mkldnn._reorder_linear_weight(w)
            out = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), packed, None, "none", [], "")
            _available = bool(torch.backends.mkldnn.is_available()) and out.sum().item() == 4.0
        except (AttributeError, RuntimeError, NotImplementedError):
            _available = False
    return _available


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> dict[str, bool]:
    """The instruction sets the CPU paths care about, as torch's CPU checks see them."""
    cpu = torch.cpu

    def has(name: str) -> bool:
        check = getattr(cpu, name, None)
        return bool(check()) if check is not None else False

    return {
        "avx2": has("_is_avx2_supported"),
        "avx512": has("_is_avx512_supported"),
        "avx512_bf16": has("_is_avx512_bf16_supported"),
        "avx512_vnni": has("_is_vnni_supported"),
        "amx": has("_is_amx_tile_supported"),
    }


def bf16_unsupported_reason() -> str | None:
    """None where bf16 GEMMs run natively on this CPU (AVX-512 BF16 or AMX, through oneDNN),
    else why not. Checked once."""
    global _bf16_reason
    if _bf16_reason is None:
        isa = cpu_isa()
        if not onednn_available():
            _bf16_reason = f"this torch ({torch.__version__}) has no oneDNN packed linear"
        elif not (isa["avx512_bf16"] or isa["amx"]):
            _bf16_reason = (
                f"this CPU ({cpu_model_name()}) has neither AVX-512 BF16 nor AMX, so bf16 "
                "matmuls would be emulated, slower than fp32"
            )
        elif not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            _bf16_reason = f"oneDNN in this torch ({torch.__version__}) has no bf16 on this CPU"
        else:
            _bf16_reason = ""
    return _bf16_reason or None


def check_cpu_dtype(dtype: torch.dtype | None, device: torch.device | str | None) -> None:
    """Refuse bf16 inference on a CPU that would only emulate it (never a silent fp32)."""
    if dtype != torch.bfloat16 or (device is not None and torch.device(device).type != "cpu"):
        return
    reason = bf16_unsupported_reason()
    if reason is not None:
        raise ValueError(
            f"dtype bf16 is refused on the CPU: {reason}; use fp32, or quantize='int8' "
            "(--quantize int8) for a faster low-precision path"
        )


def applies(x: torch.Tensor) -> bool:
    """Whether ``linear`` would take the oneDNN path for input ``x``: fp32, or bf16 on a CPU
    with native bf16."""
    return (
        x.device.type == "cpu"
        and (
            x.dtype == torch.float32
            or (x.dtype == torch.bfloat16 and bf16_unsupported_reason() is None)
        )
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()  # inductor packs weights itself (freezing)
        and onednn_available()
    )


def _packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """Packed once per weight; a version or storage change (an in-place update,
    load_state_dict) repacks. Two threads may pack at once: the same result."""
    # Inference tensors (made under inference_mode) cannot change in place: no version.
    key = (0 if weight.is_inference() else weight._version, weight.data_ptr())
    entry = _packed.get(id(weight))
    if entry is None:
        weakref.finalize(weight, _packed.pop, id(weight), None)
    if entry is None or entry[0] != key:
        entry = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        _packed[id(weight)] = entry
    return entry[1]


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gelu: str | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias``, then GELU when ``gelu`` is ``"none"`` (erf) or ``"tanh"``."""
    if cpu_quantize._observed is not None:
        cpu_quantize.observe(x, weight)  # calibrating the int8 path's outlier channels
    int8 = cpu_quantize.int8_weight(weight)
    if int8 is not None:
        return cpu_quantize.linear_int8(x, int8, bias, gelu)
    if not applies(x):
        y = F.linear(x, weight, bias)
        return y if gelu is None else F.gelu(y, approximate=gelu)
    packed = _packed_weight(weight)
    if gelu is None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], gelu)
