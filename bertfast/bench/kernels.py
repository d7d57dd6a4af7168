"""Micro-benchmarks of the fused ops at BERT-base shapes (H 768, 12 heads of 64, I 3072).

Each op runs on the torch reference op (``torch-ref``, the bertfast torch backend), on plain
eager torch in the working dtype as Hugging Face writes it (``torch-native``), on each SDPA
backend for attention (``sdpa-*``, fed the same packed qkv and returning the same layout), and
on every bertfast kernel backend that can run. Work counted, with T = batch·seq tokens and e
bytes per element:

- attention: 4·T·S·H FLOP (QKᵀ and PV); bytes 4·T·H·e (qkv read, context written)
- embedding_layer_norm: 3·T·8 (int64 ids) + (T + S + 2)·H·e (word rows, distinct position and
  type rows) + 2·H·e (LayerNorm) + T·H·e (output) bytes
- bias_residual_layer_norm: (3·T·H + 3·H)·e bytes (x, residual, output; bias, weight, bias)
- bias_gelu: (2·T·I + I)·e bytes (x, output; bias)
- linear_gelu (H→I) and linear_residual_layer_norm (I→H): 2·T·K·N FLOP; each GEMM with its
  epilogue fused (``bertfast-triton`` variant ``fused``, ``ops.linear_epilogue``) against the
  unfused path of each kernel backend (F.linear, then the fused elementwise op) and torch

Attention and the GEMMs are judged in TFLOP/s against the matmul ceiling, the others in GB/s
against the copy ceiling.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bertfast import ops
from bertfast.bench.e2e import describe_error, max_abs_err
from bertfast.bench.runners import RUNNERS, fp32_reference_precision
from bertfast.bench.settings import DTYPES, BenchSettings
from bertfast.bench.timing import Timing, benchmark, empty_cache, synchronize
from bertfast.config import BertConfig

KERNEL_OPS = (
    "attention",
    "embedding_layer_norm",
    "bias_residual_layer_norm",
    "bias_gelu",
    "linear_gelu",
    "linear_residual_layer_norm",
)
# SDPA kernels torch has for CUDA only: on another device they are left out of the grid (and
# listed as skipped once), not tried and refused with torch's dispatcher text.
SDPA_CUDA_ONLY = ("efficient", "cudnn")


def _sdpa_backends(device: torch.device | None = None) -> list[tuple[str, object]]:
    """SDPA's kernels as (label, SDPBackend) that can exist on ``device`` (None: every one)."""
    from torch.nn.attention import SDPBackend

    names = [
        ("math", "MATH"),
        ("efficient", "EFFICIENT_ATTENTION"),
        ("flash", "FLASH_ATTENTION"),
        ("cudnn", "CUDNN_ATTENTION"),
    ]
    return [
        (label, getattr(SDPBackend, attr))
        for label, attr in names
        if hasattr(SDPBackend, attr)
        # meta: the candidates of a CUDA run listed without a GPU (benchmarks/conftest.py)
        and (device is None or device.type in ("cuda", "meta") or label not in SDPA_CUDA_ONLY)
    ]


@dataclass
class Candidate:
    backend: str
    variant: str
    fn: Callable[[dict], torch.Tensor]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


@dataclass
class OpCase:
    """One op at one shape and dtype: rotated inputs, its work, and who runs it."""

    op: str
    inputs: list[dict[str, torch.Tensor]]
    reference: Callable[[dict], torch.Tensor]  # fp32 output of an input set
    bytes: int
    flops: float | None
    candidates: list[Candidate] = field(default_factory=list)


def _sdpa(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """SDPA on views of the packed qkv, context back in (batch, seq, hidden) like our op."""
    batch, seq, three_hidden = qkv.shape
    hidden = three_hidden // 3
    q, k, v = qkv.view(batch, seq, 3, num_heads, hidden // num_heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, seq, hidden)


def _attention_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> OpCase:
    from torch.nn.attention import sdpa_kernel

    h, heads = cfg.hidden_size, cfg.num_attention_heads
    tokens = batch * seq
    sets = [{"qkv": torch.randn(batch, seq, 3 * h, device=device, dtype=dtype)} for _ in range(n)]
    cu_seqlens = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=device)
    case = OpCase(
        "attention",
        sets,
        lambda x: ops.attention_reference(x["qkv"].float(), heads),
        4 * tokens * h * dtype.itemsize,
        4.0 * tokens * seq * h,
    )
    case.candidates.append(
        Candidate("torch-ref", "padded", lambda x: ops.attention(x["qkv"], heads))
    )
    for label, backend in _sdpa_backends(torch.device(device)):
        case.candidates.append(
            Candidate(
                f"sdpa-{label}",
                "padded",
                lambda x: _sdpa(x["qkv"], heads),
                lambda backend=backend: sdpa_kernel([backend]),
            )
        )
    for kb in kernel_backends:
        case.candidates.append(
            Candidate(
                f"bertfast-{kb}",
                "padded",
                lambda x, kb=kb: ops.attention(x["qkv"], heads, backend=kb),
            )
        )
        case.candidates.append(
            Candidate(
                f"bertfast-{kb}",
                "packed",
                lambda x, kb=kb: ops.attention(
                    x["qkv"].view(tokens, 3 * h),
                    heads,
                    cu_seqlens=cu_seqlens,
                    max_seqlen=seq,
                    backend=kb,
                ).view(batch, seq, h),
            )
        )
    return case


def _embedding_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> OpCase:
    h, eps = cfg.hidden_size, cfg.layer_norm_eps
    tokens = batch * seq

    def table(rows: int) -> torch.Tensor:
        return torch.randn(rows, h, device=device, dtype=dtype) * 0.02

    word, pos, typ = table(cfg.vocab_size), table(cfg.max_position_embeddings), table(2)
    weight = 1 + torch.randn(h, device=device, dtype=dtype) * 0.1
    bias = torch.randn(h, device=device, dtype=dtype) * 0.1
    positions = torch.arange(seq, device=device).repeat(batch)
    sets = [
        {
            "ids": torch.randint(0, cfg.vocab_size, (tokens,), device=device),
            "types": torch.randint(0, 2, (tokens,), device=device),
        }
        for _ in range(n)
    ]

    def run(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.embedding_layer_norm(
            x["ids"], x["types"], positions, word, pos, typ, weight, bias, eps, backend=backend
        )

    def native(x: dict) -> torch.Tensor:
        summed = word[x["ids"]] + pos[positions] + typ[x["types"]]
        return F.layer_norm(summed, (h,), weight, bias, eps)

    def reference(x: dict) -> torch.Tensor:
        tables = [t.float() for t in (word, pos, typ, weight, bias)]
        return ops.embedding_layer_norm_reference(x["ids"], x["types"], positions, *tables, eps)

    e = dtype.itemsize
    moved = 3 * tokens * 8 + (tokens + seq + 2) * h * e + 2 * h * e + tokens * h * e
    case = OpCase("embedding_layer_norm", sets, reference, moved, None)
    case.candidates += [
        Candidate("torch-ref", "", run("torch")),
        Candidate("torch-native", "", native),
    ]
    case.candidates += [Candidate(f"bertfast-{kb}", "", run(kb)) for kb in kernel_backends]
    return case


def _residual_norm_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> OpCase:
    h, eps = cfg.hidden_size, cfg.layer_norm_eps
    tokens = batch * seq
    bias = torch.randn(h, device=device, dtype=dtype) * 0.1
    weight = 1 + torch.randn(h, device=device, dtype=dtype) * 0.1
    ln_bias = torch.randn(h, device=device, dtype=dtype) * 0.1
    sets = [
        {
            "x": torch.randn(tokens, h, device=device, dtype=dtype),
            "residual": torch.randn(tokens, h, device=device, dtype=dtype),
        }
        for _ in range(n)
    ]

    def run(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.bias_residual_layer_norm(
            x["x"], bias, x["residual"], weight, ln_bias, eps, backend=backend
        )

    def native(x: dict) -> torch.Tensor:
        return F.layer_norm(x["x"] + bias + x["residual"], (h,), weight, ln_bias, eps)

    def reference(x: dict) -> torch.Tensor:
        return ops.bias_residual_layer_norm_reference(
            x["x"].float(),
            bias.float(),
            x["residual"].float(),
            weight.float(),
            ln_bias.float(),
            eps,
        )

    moved = (3 * tokens * h + 3 * h) * dtype.itemsize
    case = OpCase("bias_residual_layer_norm", sets, reference, moved, None)
    case.candidates += [
        Candidate("torch-ref", "", run("torch")),
        Candidate("torch-native", "", native),
    ]
    case.candidates += [Candidate(f"bertfast-{kb}", "", run(kb)) for kb in kernel_backends]
    return case


def _bias_gelu_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> OpCase:
    inter, approximate = cfg.intermediate_size, cfg.gelu_approximate
    tokens = batch * seq
    bias = torch.randn(inter, device=device, dtype=dtype) * 0.1
    sets = [{"x": torch.randn(tokens, inter, device=device, dtype=dtype)} for _ in range(n)]

    def run(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.bias_gelu(x["x"], bias, approximate, backend=backend)

    case = OpCase(
        "bias_gelu",
        sets,
        lambda x: ops.bias_gelu_reference(x["x"].float(), bias.float(), approximate),
        (2 * tokens * inter + inter) * dtype.itemsize,
        None,
    )
    case.candidates += [
        Candidate("torch-ref", "", run("torch")),
        Candidate("torch-native", "", lambda x: F.gelu(x["x"] + bias, approximate=approximate)),
    ]
    case.candidates += [Candidate(f"bertfast-{kb}", "", run(kb)) for kb in kernel_backends]
    return case


def _gemm_epilogue_case(cfg, batch, seq, dtype, device, n, kernel_backends, which: str):
    """A GEMM with its epilogue: fused (``ops.linear_epilogue``, Triton) against today's
    unfused path on each kernel backend (F.linear, then the fused elementwise op) and torch."""
    h, inter, eps = cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps
    tokens = batch * seq
    k, out = (h, inter) if which == "ffn_up" else (inter, h)
    weight = torch.randn(out, k, device=device, dtype=dtype) / k**0.5
    bias = torch.randn(out, device=device, dtype=dtype) * 0.1
    ln_weight = 1 + torch.randn(out, device=device, dtype=dtype) * 0.1
    ln_bias = torch.randn(out, device=device, dtype=dtype) * 0.1
    approximate = cfg.gelu_approximate
    if which == "ffn_up":
        epilogue = "bias_gelu_tanh" if approximate == "tanh" else "bias_gelu"
    else:
        epilogue = "bias_residual_layer_norm"
    sets = []
    for _ in range(n):
        x = {"x": torch.randn(tokens, k, device=device, dtype=dtype)}
        if which != "ffn_up":
            x["residual"] = torch.randn(tokens, out, device=device, dtype=dtype)
        sets.append(x)

    def norm_args(x: dict) -> tuple:
        if which == "ffn_up":
            return (None, None, None)
        return (x["residual"], ln_weight, ln_bias)

    def fused(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.linear_epilogue(
            x["x"], weight, bias, epilogue, *norm_args(x), eps, backend=backend
        )

    def unfused(backend: str) -> Callable[[dict], torch.Tensor]:
        def run(x: dict) -> torch.Tensor:
            y = F.linear(x["x"], weight)
            if which == "ffn_up":
                return ops.bias_gelu(y, bias, approximate, backend=backend)
            residual = x["residual"]
            return ops.bias_residual_layer_norm(
                y, bias, residual, ln_weight, ln_bias, eps, backend=backend
            )

        return run

    def native(x: dict) -> torch.Tensor:
        y = F.linear(x["x"], weight, bias)
        if which == "ffn_up":
            return F.gelu(y, approximate=approximate)
        return F.layer_norm(y + x["residual"], (out,), ln_weight, ln_bias, eps)

    def reference(x: dict) -> torch.Tensor:
        norm = [None if t is None else t.float() for t in norm_args(x)]
        return ops.linear_epilogue_reference(
            x["x"].float(), weight.float(), bias.float(), epilogue, *norm, eps
        )

    moved = (tokens * k + out * k + tokens * out * (1 if which == "ffn_up" else 2)) * dtype.itemsize
    case = OpCase(f"linear_{epilogue}", sets, reference, moved, 2.0 * tokens * k * out)
    case.candidates.append(Candidate("torch-native", "", native))
    for kb in kernel_backends:
        case.candidates.append(Candidate(f"bertfast-{kb}", "unfused", unfused(kb)))
    if "triton" in kernel_backends:
        case.candidates.append(Candidate("bertfast-triton", "fused", fused("triton")))
    return case


OP_CASES = {
    "attention": _attention_case,
    "embedding_layer_norm": _embedding_case,
    "bias_residual_layer_norm": _residual_norm_case,
    "bias_gelu": _bias_gelu_case,
    "linear_gelu": lambda *a: _gemm_epilogue_case(*a, which="ffn_up"),
    "linear_residual_layer_norm": lambda *a: _gemm_epilogue_case(*a, which="ffn_down"),
}


def _backend_skip(backend: str, reason: str) -> dict:
    """A kernel candidate left out of every op and shape, and why."""
    return {"kind": "kernel", "op": None, "backend": backend, "variant": None, "reason": reason}


def _skip(op: str, cand: Candidate, batch: int, seq: int, dtype: str, reason: str) -> dict:
    return {
        "kind": "kernel",
        "op": op,
        "backend": cand.backend,
        "variant": cand.variant,
        "batch": batch,
        "seq": seq,
        "dtype": dtype,
        "reason": reason,
    }


def _first_call(cand: Candidate, x: dict, device: torch.device) -> torch.Tensor | str:
    """The first call's output, or why it failed (SDPA explains a refusal in its warnings)."""
    with warnings.catch_warnings(record=True) as caught, cand.context():
        warnings.simplefilter("always")
        try:
            out = cand.fn(x)
            synchronize(device)
            return out
        except Exception as exc:
            reason = describe_error(exc)
            why = "; ".join(str(w.message).strip().splitlines()[0] for w in caught[:2])
            return f"{reason} ({why})" if why else reason


def finish_kernel_rows(rows: list[dict]) -> None:
    """Speedup over the fastest non-bertfast candidate of the same op, shape and dtype."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["batch"], r["seq"], r["dtype"]), []).append(r)
    for group in groups.values():
        baselines = [r for r in group if not r["backend"].startswith("bertfast-")]
        if not baselines:
            continue
        best = min(baselines, key=lambda r: r["median_ms"])
        for r in group:
            r["baseline"] = best["backend"]
            r["speedup_vs_baseline"] = best["median_ms"] / r["median_ms"]


def run_kernels(
    settings: BenchSettings, ceilings: dict, log: Callable[[str], None]
) -> tuple[list[dict], list[dict]]:
    """Time every op at the settings' kernel shapes; returns (kernel_rows, skipped)."""
    device = torch.device(settings.device)
    cfg = BertConfig.preset("bert-base")
    rows: list[dict] = []
    skipped: list[dict] = []
    if not settings.kernel_shapes:
        return rows, skipped
    kernel_backends = []
    for kb in ("triton", "cuda"):
        if f"bertfast-{kb}" not in settings.backends:
            continue
        reason = RUNNERS[f"bertfast-{kb}"].unavailable_reason(device)
        if reason is None:
            kernel_backends.append(kb)
        else:  # said once here, so the report can tell why no bertfast kernel rows appear
            skipped.append(_backend_skip(f"bertfast-{kb}", reason))
    if device.type != "cuda":
        for label in SDPA_CUDA_ONLY:
            skipped.append(
                {
                    **_backend_skip(f"sdpa-{label}", f"not available on {device.type}"),
                    "op": "attention",
                }
            )
    torch.manual_seed(settings.seed)
    for batch, seq in settings.kernel_shapes:
        for dtype_name in settings.dtypes:
            dtype = DTYPES[dtype_name]
            for op in KERNEL_OPS:
                case = OP_CASES[op](
                    cfg, batch, seq, dtype, device, settings.timer.n_inputs, kernel_backends
                )
                with fp32_reference_precision(), torch.inference_mode():
                    reference = case.reference(case.inputs[0])
                for cand in case.candidates:
                    row = _measure(
                        case, cand, reference, batch, seq, dtype_name, settings, ceilings
                    )
                    if isinstance(row, str):
                        entry = _skip(op, cand, batch, seq, dtype_name, row)
                        skipped.append(entry)
                        log(f"skip {op} {cand.backend} {cand.variant} b{batch}×s{seq}: {row}")
                    else:
                        rows.append(row)
                        log(_progress(row))
                del case, reference
                empty_cache(device)
    finish_kernel_rows(rows)
    return rows, skipped


def _measure(case, cand, reference, batch, seq, dtype_name, settings, ceilings) -> dict | str:
    """The candidate's row, or the reason it could not run."""
    device = torch.device(settings.device)
    n = len(case.inputs)
    with torch.inference_mode():
        out = _first_call(cand, case.inputs[0], device)
        if isinstance(out, str):
            empty_cache(device)
            return out
        err = max_abs_err(out.reshape(reference.shape), reference, None)
        del out
        with cand.context():
            timing = benchmark(lambda i: cand.fn(case.inputs[i % n]), device, settings.timer)
    return kernel_row(case, cand, timing, err, batch, seq, dtype_name, ceilings)


def kernel_row(
    case: OpCase,
    cand: Candidate,
    timing: Timing,
    err: float | None,
    batch: int,
    seq: int,
    dtype_name: str,
    ceilings: dict,
) -> dict:
    """A measured candidate's row: its rates and their fraction of the device's ceiling."""
    seconds = timing.median_ms * 1e-3
    gbps = case.bytes / seconds / 1e9
    tflops = case.flops / seconds / 1e12 if case.flops is not None else None
    if tflops is not None:
        ceiling = ceilings["matmul_tflops"].get(dtype_name)
        frac = tflops / ceiling if ceiling else None
    else:
        frac = gbps / ceilings["copy_gbps"]
    return {
        "op": case.op,
        "backend": cand.backend,
        "variant": cand.variant,
        "batch": batch,
        "seq": seq,
        "dtype": dtype_name,
        "tokens": batch * seq,
        "median_ms": timing.median_ms,
        "p10_ms": timing.p10_ms,
        "p90_ms": timing.p90_ms,
        "repeats": timing.repeats,
        "bytes": case.bytes,
        "flops": case.flops,
        "gbps": gbps,
        "tflops": tflops,
        "metric": "TFLOP/s" if tflops is not None else "GB/s",
        "frac_ceiling": frac,
        "baseline": None,
        "speedup_vs_baseline": None,
        "max_abs_err": err,
    }


def _progress(row: dict) -> str:
    value = (
        f"{row['tflops']:.2f} TFLOP/s" if row["tflops"] is not None else f"{row['gbps']:.1f} GB/s"
    )
    err = "nan/inf" if row["max_abs_err"] is None else f"{row['max_abs_err']:.1e}"
    return (
        f"kernel {row['op']} b{row['batch']}×s{row['seq']} {row['dtype']} {row['backend']}"
        f"{' ' + row['variant'] if row['variant'] else ''}: {row['median_ms']:.4f} ms, "
        f"{value}, err {err}"
    )
