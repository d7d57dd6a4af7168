"""Where a forward's time goes on a GPU: kernel time vs wall time, and launches per forward.

For BERT-base in bf16 at b1 x s128 and b32 x s128, each kernel backend eager and with CUDA
graphs (and Triton with fused GEMM epilogues): wall time per forward (CUDA events around a
loop), GPU kernel time per forward and kernel count per forward (torch.profiler, CUPTI), so
the gap between them is the host's share. Writes profile.json and profile.md to the results
folder given (and to $OUT when set).
Usage: python scripts/profile_forward.py benchmarks/results/<card>
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bertfast import BertConfig, BertModel, ops

SHAPES = [(1, 128), (32, 128)]
ITERS = 50


def variants() -> list[tuple[str, str, bool, bool]]:
    """(label, backend, cuda_graphs, fused_epilogues) for every backend that runs here."""
    found = []
    for backend in ("triton", "cuda"):
        if ops.backend_report("cuda")[backend] is not None:
            continue
        found += [
            (f"{backend}-eager", backend, False, False),
            (f"{backend}-graph", backend, True, False),
        ]
        if backend == "triton":
            found.append(("triton-fused-graph", backend, True, True))
    return found


def measure(model: BertModel, ids: torch.Tensor) -> dict:
    with torch.inference_mode():
        for _ in range(5):  # compile, capture, warm clocks
            model(ids)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(ITERS):
            model(ids)
        end.record()
        torch.cuda.synchronize()
        wall_ms = start.elapsed_time(end) / ITERS
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(ITERS):
                model(ids)
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(e.device_time for e in kernels) / ITERS
    return {
        "wall_ms": wall_ms,
        "kernel_ms": kernel_us / 1e3,
        "kernel_share": kernel_us / 1e3 / wall_ms,
        "kernels_per_forward": len(kernels) / ITERS,
    }


def main() -> None:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    dest.mkdir(parents=True, exist_ok=True)
    config = BertConfig.preset("bert-base")
    rows = []
    for label, backend, graphs, fused in variants():
        torch.manual_seed(0)
        model = BertModel(
            config,
            backend=backend,
            device="cuda",
            dtype=torch.bfloat16,
            cuda_graphs=graphs,
            fused_epilogues=fused,
        ).eval()
        for batch, seq in SHAPES:
            ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")
            row = {"variant": label, "batch": batch, "seq": seq, **measure(model, ids)}
            rows.append(row)
            print(
                f"{label:20s} b{batch}xs{seq}: wall {row['wall_ms']:.3f} ms, kernels "
                f"{row['kernel_ms']:.3f} ms ({row['kernel_share']:.0%}), "
                f"{row['kernels_per_forward']:.0f} kernels/forward"
            )
        del model
        torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name(), "dtype": "bf16", "rows": rows}
    lines = [
        f"# Forward profile: BERT-base bf16 on {result['device']}",
        "",
        "| variant | batch x seq | wall ms | kernel ms | kernel share | kernels / forward |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['batch']}x{r['seq']} | {r['wall_ms']:.3f} | {r['kernel_ms']:.3f} "
        f"| {r['kernel_share']:.0%} | {r['kernels_per_forward']:.0f} |"
        for r in rows
    ]
    for folder in {dest, Path(os.environ.get("OUT", dest))}:
        (folder / "profile.json").write_text(json.dumps(result, indent=1))
        (folder / "profile.md").write_text("\n".join(lines) + "\n")
        print(f"wrote {folder}/profile.json and profile.md")


if __name__ == "__main__":
    main()
