"""int8 CPU inference: dynamic quantization of the encoder layers' four linear layers.

Weights are quantized once, at load, to int8 with one scale per output channel (symmetric)
and packed for fbgemm (``torch.ops.quantized``, the x86 engine). Activations are quantized at
run time with one scale per token: each row is divided by its own max |x| before the GEMM and
the output row multiplied back (``y = s * Wq(x / s) + b``), so a token with large values does
not coarsen the grid of every other token in the batch, which a per-tensor scale would (ONNX
Runtime's dynamic quantization does that). Everything else, the attention's matmuls, softmax,
LayerNorm, embeddings, pooling, stays in fp32.

Of the int8 GEMMs this torch offers on the CPU, fbgemm's dynamic linear was the fastest here
(AVX2 EPYC, MiniLM shapes: 0.6-0.8x the time of oneDNN's packed fp32; ``torch._int_mm`` has no
fast CPU kernel, 50x slower; oneDNN's dynamic linear 1.3x fbgemm's).

The quantized copy lives beside the fp32 weight, keyed by it (as ``cpu_linear``'s packed
copies are): the model's parameters, ``state_dict`` and ``save_pretrained`` stay fp32, a weight
changed in place is quantized again, and a copy of the model (new weights) runs fp32 until it
is quantized itself (``quantized(model)`` says which). Only inference uses it: a forward with grad
enabled on a quantized model is refused.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

QUANTIZE_MODES = ("int8",)
# fbgemm's AVX2 kernels multiply u8 x s8 pairs into int16 (vpmaddubsw), which saturates with
# full-range activations and large weights; 7-bit activations (reduce_range) cannot saturate.
# On MiniLM the saturation cost more than the lost bit (min cosine 0.977 against 0.981).
REDUCE_RANGE = True
# Input channels per linear kept in fp32 (LLM.int8()'s decomposition): BERT's LayerNorm outputs
# carry a few channels 20-70x larger than the rest, which would otherwise set every token's
# scale. MiniLM's min cosine to fp32 on short texts: 0.981 with none, 0.9965 with 4.
OUTLIER_CHANNELS = 4
# The calibration forward that finds those channels: random token ids, fixed seed.
CALIBRATION_SHAPE = (8, 64)


@dataclass
class Int8Weight:
    """An fbgemm-packed int8 weight with its fp32 side: per-output-channel scales, no bias."""

    packed: torch.ScriptObject  # int8 weight, outlier input columns zeroed
    keep: torch.Tensor  # (in,) 1.0, 0.0 at the outlier input channels
    outliers: torch.Tensor  # (k,) long: the outlier input channels
    side: torch.Tensor  # (k + 1, out): fp32 outlier columns of W.T, then the rows of Wq summed
    key: tuple[int, int]  # (version, data_ptr) of the fp32 weight it was made from
    out_features: int


# id(weight) -> Int8Weight; an entry goes when its weight is collected.
_int8: dict[int, Int8Weight] = {}
# id(weight) -> max |x| per input channel, filled by cpu_linear.linear while calibrating.
_observed: dict[int, torch.Tensor] | None = None


def int8_unsupported_reason() -> str | None:
    """None where fbgemm's int8 linear runs here, else why not."""
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm")):
        return f"this torch ({torch.__version__}) has no fbgemm quantized engine ({engines})"
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        return f"this torch ({torch.__version__}) has no quantized.linear_dynamic"
    return None


def check_quantize(
    quantize: str | None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> None:
    """Refuse a quantize mode that cannot run with this dtype and device, saying why."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; choose one of {QUANTIZE_MODES}")
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(
            f"quantize={quantize!r} runs on the CPU only (got device {torch.device(device)}); "
            "on a GPU use dtype fp16 or bf16"
        )
    if dtype not in (None, torch.float32):
        raise ValueError(
            f"quantize={quantize!r} runs with fp32 activations; got dtype {dtype} "
            "(leave the dtype at fp32)"
        )
    reason = int8_unsupported_reason()
    if reason is not None:
        raise ValueError(f"quantize={quantize!r} cannot run here: {reason}")


def _set_engine() -> None:
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"


def observe(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Record the largest |x| per input channel of ``weight``'s GEMM (during calibration)."""
    if _observed is not None:
        peak = x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
        seen = _observed.get(id(weight))
        _observed[id(weight)] = peak if seen is None else torch.maximum(seen, peak)


def quantize_weight(weight: torch.Tensor, channel_peaks: torch.Tensor | None) -> Int8Weight:
    """int8 with one symmetric scale per output channel, packed for fbgemm; the input channels
    with the largest ``channel_peaks`` stay fp32 beside it."""
    if weight.device.type != "cpu":
        raise ValueError(f"int8 weights are CPU only; this one is on {weight.device}")
    _set_engine()
    w = weight.detach().float().clone()
    k = min(OUTLIER_CHANNELS, w.shape[1] - 1) if channel_peaks is not None else 0
    outliers = torch.zeros(0, dtype=torch.long)
    if k:
        outliers = channel_peaks.topk(k).indices.sort().values
    outlier_columns = w[:, outliers].t().contiguous()
    w[:, outliers] = 0.0
    keep = torch.ones(w.shape[1])
    keep[outliers] = 0.0
    scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    dequantized = torch.round(w / scales[:, None]).clamp(-127, 127) * scales[:, None]
    with warnings.catch_warnings():
        # torch warns that quantized tensor creation is deprecated; fbgemm's packing takes one.
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch.quantize_per_channel(
            dequantized, scales.double(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8
        )
        packed = torch.ops.quantized.linear_prepack(qweight, None)
    # Each token's offset (its minimum) times the row sums of the weight fbgemm multiplies by.
    side = torch.cat([outlier_columns, dequantized.sum(dim=1)[None]])
    key = (0 if weight.is_inference() else weight._version, weight.data_ptr())
    return Int8Weight(packed, keep, outliers, side, key, w.shape[0])


def register(weight: torch.Tensor, channel_peaks: torch.Tensor | None = None) -> None:
    """Quantize ``weight`` and have ``cpu_linear.linear`` run it in int8 from now on."""
    if id(weight) not in _int8:
        weakref.finalize(weight, _int8.pop, id(weight), None)
    _int8[id(weight)] = quantize_weight(weight, channel_peaks)


def unregister(weight: torch.Tensor) -> None:
    _int8.pop(id(weight), None)


def int8_weight(weight: torch.Tensor) -> Int8Weight | None:
    """The int8 copy of ``weight`` if it was quantized (quantized again if it changed in place,
    with the same outlier channels)."""
    entry = _int8.get(id(weight))
    if entry is None:
        return None
    key = (0 if weight.is_inference() else weight._version, weight.data_ptr())
    if entry.key != key:
        peaks = torch.zeros(weight.shape[1])
        peaks[entry.outliers] = 1.0 + torch.arange(len(entry.outliers), dtype=torch.float32)
        entry = quantize_weight(weight, peaks if len(entry.outliers) else None)
        _int8[id(weight)] = entry
    return entry


def linear_int8(
    x: torch.Tensor, weight: Int8Weight, bias: torch.Tensor | None, gelu: str | None = None
) -> torch.Tensor:
    """``x @ W.T + bias`` (then GELU) with W in int8 and x quantized per token at run time:
    each token's non-outlier channels mapped onto [0, 1] by its own minimum and range."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "this model is quantized to int8 for inference: run it under torch.inference_mode() "
            "or torch.no_grad() (load it without quantize= to train)"
        )
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError(f"the int8 linear takes fp32 CPU activations, got {x.dtype} on {x.device}")
    rows = x.reshape(-1, x.shape[-1])
    inner = rows * weight.keep
    # amin and amax separately: aminmax along rows takes twice their time together here.
    low, high = inner.amin(dim=1, keepdim=True), inner.amax(dim=1, keepdim=True)
    # In place where the tensors are this call's own: at batch 1 each op's fixed cost is what
    # the int8 path pays beside its GEMM, so as few as possible.
    scale = high.sub_(low).clamp_min_(1e-12)
    unit = inner.sub_(low).div_(scale)  # each token on [0, 1]
    y = torch.ops.quantized.linear_dynamic(unit, weight.packed, REDUCE_RANGE)
    y = torch.addcmul(bias, y, scale) if bias is not None else y.mul_(scale)
    # + the fp32 outlier channels and each token's offset, in one small GEMM
    y.addmm_(torch.cat([rows.index_select(1, weight.outliers), low], dim=1), weight.side)
    if gelu is not None:
        y = F.gelu(y, approximate=gelu)
    return y.view(*x.shape[:-1], weight.out_features)


@runtime_checkable
class Int8Encoder(Protocol):
    """An encoder whose layers' GEMMs run in int8 (``bertfast.model.BertModel``), found by this
    method rather than by class: this module sits below the model and does not import it.
    ``quantize_`` also reads its ``config`` (vocab_size, max_position_embeddings), ``dtype``,
    ``device`` and ``backend``, and calls it on token ids to calibrate."""

    def int8_linears(self) -> list[torch.nn.Linear]:
        """The four GEMMs of each of its layers (the pooler stays fp32)."""
        ...


def int8_encoders(module: torch.nn.Module) -> list[Int8Encoder]:
    """The encoders inside ``module`` (itself included), in module order."""
    return [m for m in module.modules() if isinstance(m, Int8Encoder)]


def encoder_linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    """The four GEMMs of every encoder layer inside ``module`` (the pooler and heads stay fp32)."""
    return [linear for encoder in int8_encoders(module) for linear in encoder.int8_linears()]


def quantize_(module: torch.nn.Module, mode: str | None) -> torch.nn.Module:
    """Quantize the encoder layers of ``module`` (a BertModel, a head, anything holding them) in
    place for CPU inference; ``mode=None`` undoes it. Returns ``module``."""
    found = int8_encoders(module)
    linears = encoder_linears(module)
    if not linears:
        raise ValueError(f"{type(module).__name__} holds no bertfast encoder layer to quantize")
    for linear in linears:
        unregister(linear.weight)  # calibration runs the fp32 model
    if mode is not None:
        for encoder in found:
            check_quantize(mode, encoder.dtype, encoder.device)
            if encoder.backend != "torch":
                raise ValueError(
                    f"quantize={mode!r} runs on the torch backend (the model runs on "
                    f"{encoder.backend!r}); load it with backend='torch' or 'auto'"
                )
        peaks = calibrate(module, found)
        for linear in linears:
            register(linear.weight, peaks.get(id(linear.weight)))
    return module


def quantized(module: torch.nn.Module) -> str | None:
    """ "int8" when every encoder GEMM of ``module`` runs in int8, else None. A copy of a
    quantized model (deepcopy, ``.to``) is not quantized until ``quantize_`` runs on it."""
    linears = encoder_linears(module)
    if linears and all(id(linear.weight) in _int8 for linear in linears):
        return "int8"
    return None


@torch.inference_mode()
def calibrate(module: torch.nn.Module, encoders: list[Any]) -> dict[int, torch.Tensor]:
    """Each layer GEMM's largest |input| per channel over one fp32 forward of random token ids
    (BERT's outlier channels are a property of the weights, not of the text)."""
    global _observed
    generator = torch.Generator().manual_seed(0)
    training = module.training
    module.eval()  # no dropout in the calibration forward
    _observed = {}
    try:
        for encoder in encoders:
            vocab = encoder.config.vocab_size
            batch, seq = CALIBRATION_SHAPE
            seq = min(seq, encoder.config.max_position_embeddings)
            ids = torch.randint(0, vocab, (batch, seq), generator=generator)
            encoder(ids.to(encoder.device))
        return _observed
    finally:
        _observed = None
        module.train(training)
