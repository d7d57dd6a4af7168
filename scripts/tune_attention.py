"""Sweep the Triton attention kernel's block sizes on a GPU, at BERT shapes, against SDPA.

Prints, per (head dim, batch x seq), the time of each (BLOCK_M, BLOCK_N, warps, stages) and of
the current heuristic, writes everything to tune_attention.json (in $OUT when set), and the
best config per (head dim, seq) to bertfast/triton/attention_blocks.json, which the launcher
then uses (commit that file with the run's results).
Usage: python scripts/tune_attention.py [--dtype bf16|fp16]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os

import torch
from triton.testing import do_bench

from bertfast.ops import attention_reference
from bertfast.triton import attention as triton_attention

SHAPES = [(64, 32, 128), (64, 8, 384), (64, 8, 512), (32, 32, 128), (128, 8, 512)]
CONFIGS = [
    (bm, bn, w, s)
    for bm, bn, w, s in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4))
    if not (bm == 128 and bn == 128 and w == 4)
]


def tune_case(head_dim: int, batch: int, seq: int, dtype: torch.dtype) -> dict:
    """Time the heuristic and every config (packed form, full sequences) and SDPA."""
    heads = 768 // head_dim
    qkv = torch.randn(batch * seq, 3 * heads * head_dim, device="cuda", dtype=dtype)
    cu = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device="cuda")
    flops = 4 * batch * heads * seq * seq * head_dim
    expected = attention_reference(qkv.float(), heads, cu_seqlens=cu, max_seqlen=seq)
    case = {"head_dim": head_dim, "batch": batch, "seq": seq, "configs": []}
    default = triton_attention.block_sizes(head_dim, seq, torch.cuda.get_device_capability())
    for config in [default, *CONFIGS]:
        run = functools.partial(triton_attention.launch, qkv, heads, None, cu, seq, config)
        try:
            err = (run().float() - expected).abs().max().item()
            ms = do_bench(run, warmup=25, rep=100)
        except Exception as exc:  # out of shared memory or registers for this config
            case["configs"].append({"config": config, "error": str(exc).splitlines()[0]})
            continue
        case["configs"].append(
            {"config": config, "ms": ms, "tflops": flops / ms / 1e9, "max_abs_err": err}
        )
    q, k, v = qkv.view(batch, seq, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention, q, k, v)
    case["sdpa_ms"] = do_bench(sdpa, warmup=25, rep=100)
    timed = [c for c in case["configs"] if "ms" in c]
    best = min(timed, key=lambda c: c["ms"])
    print(
        f"d{head_dim} b{batch}x{seq}: heuristic {default} {timed[0]['ms'] * 1e3:.1f} us, "
        f"best {tuple(best['config'])} {best['ms'] * 1e3:.1f} us "
        f"({best['tflops']:.0f} TFLOP/s), SDPA {case['sdpa_ms'] * 1e3:.1f} us"
    )
    return case


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    results = {"device": torch.cuda.get_device_name(), "dtype": args.dtype}
    results["cases"] = [tune_case(d, b, s, dtype) for d, b, s in SHAPES]
    path = os.path.join(os.environ.get("OUT", "."), "tune_attention.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {path}")
    entries = []
    for case in results["cases"]:
        timed = [c for c in case["configs"] if "ms" in c and c["max_abs_err"] < 0.1]
        if timed:
            best = min(timed, key=lambda c: c["ms"])
            entries.append(
                {"head_dim": case["head_dim"], "seq": case["seq"], "config": list(best["config"])}
            )
    capability = list(torch.cuda.get_device_capability())
    table = {"device": results["device"], "capability": capability, "dtype": args.dtype}
    table["entries"] = entries
    for target in (
        triton_attention.TUNED_BLOCKS_PATH,
        os.path.join(os.environ.get("OUT", "."), "attention_blocks.json"),
    ):
        with open(target, "w") as f:
            json.dump(table, f, indent=1)
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
