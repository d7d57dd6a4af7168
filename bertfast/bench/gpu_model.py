"""A model of the GPU time of BERT's forward, kernel by kernel: an estimate to sit next to
measurements (never instead of them), so that a GPU run shows where the model is wrong.

Each kernel's time at a launch shape comes from its bytes and FLOPs, the card's peaks, and
the resident warps per SM that the compile report (``python -m bertfast.compile_report``,
``benchmarks/results/compile/report.json``) found for that kernel on the card's architecture.
The assumptions are ``ASSUMPTIONS`` below (and benchmarks/README.md):
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "compile" / "report.json"


@dataclass(frozen=True)
class Card:
    name: str
    arch: str  # the compile report's architecture
    bandwidth: float  # HBM bytes/s (datasheet)
    bf16_flops: float  # dense bf16 tensor FLOP/s (datasheet)
    multiprocessors: int


CARDS = {
    "h100-sxm": Card("H100 SXM", "sm_90a", 3.35e12, 989e12, 132),
    "h200": Card("H200", "sm_90a", 4.8e12, 989e12, 132),
    "a100": Card("A100 SXM", "sm_80", 2.0e12, 312e12, 108),
}

GEMM_FRACTION = 0.70  # of the dense peak, for cuBLAS at BERT's GEMM shapes
ATTENTION_FRACTION = 0.45  # of the dense peak, for the Triton flash-style attention at 8+ warps
BANDWIDTH_FRACTION = 0.80  # of the datasheet bandwidth, for a streaming kernel at 16+ warps
MIN_KERNEL_US = 2.0  # ramp-up and tail of one kernel inside a CUDA graph

ASSUMPTIONS = [
    f"GEMMs (cuBLAS): max(FLOPs at {GEMM_FRACTION:.0%} of the dense bf16 peak, bytes at "
    f"{BANDWIDTH_FRACTION:.0%} of the bandwidth).",
    f"Attention: FLOPs 4 * tokens * seq * hidden at {ATTENTION_FRACTION:.0%} of the peak, scaled "
    "by min(1, warps per SM / 8); its q, k, v and output bytes at the streaming rate.",
    f"Streaming kernels (LayerNorms, GELU, embeddings): every tensor read and written once, at "
    f"{BANDWIDTH_FRACTION:.0%} of the bandwidth scaled by min(1, resident warps per SM / 16).",
    "Resident warps per SM: the compile report's, for the kernel on the card's architecture "
    "(full residency where the report has no row for it).",
    "A grid of fewer programs than SMs fills that fraction of the SMs, one program each, and "
    "its warps per SM count against the 8 (16) needed.",
    f"Every kernel costs at least {MIN_KERNEL_US:g} us (ramp-up and tail); no launch gaps "
    "(the CUDA-graph path), no host time.",
]

__doc__ += "\n".join(f"- {line}" for line in ASSUMPTIONS) + "\n"


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    heads: int
    intermediate: int
    layers: int
    batch: int
    seq: int

    @property
    def label(self) -> str:
        return f"{self.name} b{self.batch}x s{self.seq}".replace("x s", "xs")


SHAPES = [
    Shape("base", 768, 12, 3072, 12, 1, 128),
    Shape("base", 768, 12, 3072, 12, 32, 128),
    Shape("large", 1024, 16, 4096, 24, 8, 384),
]


def _residency(arch: str) -> dict[str, int]:
    """Resident warps per SM of each Triton kernel on ``arch`` at BERT-base inference bf16
    (the first matching row of the committed compile report)."""
    if not REPORT.is_file():
        return {}
    warps: dict[str, int] = {}
    for row in json.loads(REPORT.read_text()).get("triton", []):
        if row.get("arch") != arch or "warps_per_sm" not in row:
            continue
        if any(case.startswith("base inference bf16") for case in row.get("cases", [])):
            warps.setdefault(row["kernel"], row["warps_per_sm"])
    return warps


def _achieved(
    peak: float, programs: int, warps: int, resident: int, needed: int, card: Card
) -> float:
    """The rate a grid of ``programs`` programs of ``warps`` warps reaches: the SMs it fills
    (one program per SM while there are fewer than SMs) times the fraction of ``needed``
    warps per SM it keeps resident (at most ``resident``, the compile report's)."""
    busy = min(1.0, programs / card.multiprocessors)
    per_sm = min(resident, math.ceil(programs / card.multiprocessors) * warps)
    return peak * busy * min(1.0, per_sm / needed)


def estimate(shape: Shape, card: Card, residency: dict[str, int] | None = None) -> list[dict]:
    """Per-kernel estimates (microseconds) of one forward at ``shape`` in bf16 on ``card``,
    the GEMMs included; the totals are the caller's sum."""
    residency = _residency(card.arch) if residency is None else residency
    h, i, heads = shape.hidden, shape.intermediate, shape.heads
    tokens = shape.batch * shape.seq
    element = 2  # bf16
    stream = card.bandwidth * BANDWIDTH_FRACTION

    def streaming(kernel: str, nbytes: float, programs: int, warps: int) -> float:
        resident = residency.get(kernel, 64)
        return nbytes / _achieved(stream, programs, warps, resident, 16, card)

    def gemm(m: int, n: int, k: int) -> float:
        flops = 2.0 * m * n * k
        nbytes = element * (m * k + n * k + m * n)
        return max(flops / (card.bf16_flops * GEMM_FRACTION), nbytes / stream)

    rows = []

    def add(kernel: str, what: str, seconds: float, count: int, nbytes=0.0, flops=0.0) -> None:
        us = max(seconds * 1e6, MIN_KERNEL_US)
        rows.append(
            dict(kernel=kernel, what=what, per_call_us=us, calls=count, total_us=us * count,
                 bytes=nbytes, flops=flops)
        )  # fmt: skip

    emb_bytes = tokens * (3 * 8 + 3 * h * 4 + h * element)  # ids, fp32 table rows, output
    add("_embedding_layer_norm_kernel", "embeddings + LayerNorm",
        streaming("_embedding_layer_norm_kernel", emb_bytes, tokens, 4), 1, emb_bytes)  # fmt: skip
    layers = shape.layers
    for what, (m, n, k) in (
        ("QKV projection", (tokens, 3 * h, h)),
        ("attention output projection", (tokens, h, h)),
        ("FFN up", (tokens, i, h)),
        ("FFN down", (tokens, h, i)),
    ):
        add("cuBLAS GEMM", what, gemm(m, n, k), layers, element * (m * k + n * k + m * n),
            2.0 * m * n * k)  # fmt: skip
    attn_flops = 4.0 * tokens * shape.seq * h
    attn_bytes = element * tokens * 4 * h
    attn_kernel = "_attention_kernel"
    resident = residency.get(attn_kernel, 64)
    block_m = 64 if shape.seq <= 64 else 128
    programs = shape.batch * heads * math.ceil(shape.seq / block_m)
    peak = card.bf16_flops * ATTENTION_FRACTION
    compute = attn_flops / _achieved(peak, programs, 4, resident, 8, card)
    memory = attn_bytes / _achieved(stream, programs, 4, resident, 16, card)
    add(attn_kernel, "attention", max(compute, memory), layers, attn_bytes, attn_flops)
    ln_bytes = tokens * h * element * 3 + 3 * h * element  # x, residual, out; parameters
    add("_bias_residual_layer_norm_kernel", "bias + residual + LayerNorm",
        streaming("_bias_residual_layer_norm_kernel", ln_bytes, tokens, 4), 2 * layers,
        ln_bytes)  # fmt: skip
    gelu_bytes = 2 * tokens * i * element
    gelu_programs = math.ceil(tokens / 2) * math.ceil(i / 1024)
    add("_bias_gelu_kernel", "bias + GELU",
        streaming("_bias_gelu_kernel", gelu_bytes, gelu_programs, 4), layers,
        gelu_bytes)  # fmt: skip
    return rows


def estimate_table(cards: list[str] | None = None) -> list[dict]:
    """Every shape on every card (or the named ones): one row per kernel and a total row."""
    out = []
    for key in cards or list(CARDS):
        card = CARDS[key]
        residency = _residency(card.arch)
        for shape in SHAPES:
            rows = estimate(shape, card, residency)
            for row in rows:
                out.append(dict(row, card=card.name, case=shape.label))
            out.append(
                dict(kernel="forward (graph replay)", what="total", card=card.name,
                     case=shape.label, calls=sum(r["calls"] for r in rows),
                     total_us=sum(r["total_us"] for r in rows))
            )  # fmt: skip
    return out


def card_for(device_name: str) -> str | None:
    """The model's card for a CUDA device name (None: not one the model knows)."""
    name = device_name.lower()
    for key, needle in (("h200", "h200"), ("h100-sxm", "h100"), ("a100", "a100")):
        if needle in name:
            return key
    return None


# The benchmark's kernel rows (bertfast-triton, bert-base shapes) by the model's kernel names.
_KERNEL_OPS = {
    "attention": "_attention_kernel",
    "embedding_layer_norm": "_embedding_layer_norm_kernel",
    "bias_residual_layer_norm": "_bias_residual_layer_norm_kernel",
    "bias_gelu": "_bias_gelu_kernel",
}
_CONFIGS = {"bert-base": "base", "bert-large": "large"}


def measured(results: dict) -> dict[tuple[str, str], float]:
    """(case, kernel) -> measured microseconds from a GPU run's bf16 rows: each Triton kernel
    row at a model shape, and the forward of bertfast-triton-graph as the total."""
    out: dict[tuple[str, str], float] = {}
    for row in results.get("kernel_rows", []):
        kernel = _KERNEL_OPS.get(row["op"])
        if kernel and row["backend"] == "bertfast-triton" and row["dtype"] == "bf16":
            case = f"base b{row['batch']}xs{row['seq']}"
            out[(case, kernel)] = row["median_ms"] * 1e3
    for row in results.get("rows", []):
        name = _CONFIGS.get(row["config"])
        if name and row["backend"] == "bertfast-triton-graph" and row["dtype"] == "bf16":
            if row["case"] == "dense":
                out[(f"{name} b{row['batch']}xs{row['seq']}", "forward (graph replay)")] = (
                    row["median_ms"] * 1e3
                )
    return out


def markdown(rows: list[dict], measured_us: dict[tuple[str, str], float] | None = None) -> str:
    """The estimates as a Markdown section; ``measured_us`` ((case, kernel) -> us, from
    ``measured``) fills the measured column of a GPU run's own card."""
    lines = [
        "## Model estimate (not a measurement)",
        "",
        "From bytes, FLOPs, the card's datasheet peaks and the compile report's occupancy "
        "(`bertfast/bench/gpu_model.py`). Assumptions:",
        "",
        *[f"- {a}" for a in ASSUMPTIONS],
        "",
        "| card | case | kernel | what | calls | per call (us) | total (us) | measured |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        got = (measured_us or {}).get((row["case"], row["kernel"]))
        per_call = f"{row['per_call_us']:.1f}" if "per_call_us" in row else ""
        lines.append(
            f"| {row['card']} | {row['case']} | {row['kernel']} | {row['what']} | "
            f"{row['calls']} | {per_call} | {row['total_us']:.1f} | "
            f"{'' if got is None else f'{got:.1f} us per call'} |"
        )
    return "\n".join(lines) + "\n"
