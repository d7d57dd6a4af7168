"""What the CPU benchmark scripts share: the text set, the machine's description (CPU model and
ISA flags, load average) and the Markdown of a result table with intervals.

Each row of a CPU result is a ``bertfast.bench.stats.Summary`` turned into a dict: median,
95 % interval, sample count, noisy mark. Kept free of torch so the peers' workers can import it.
"""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

# The flags that decide which low-precision paths a CPU has, in the order the tables list them.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def make_texts(vocab: list[str], count: int, seed: int = 0, median_words: int = 13) -> list[str]:
    """``count`` texts of mixed length (log-normal, median ``median_words`` words, 2 to 80)
    drawn from the model's vocabulary: the same set for every engine."""
    rng = random.Random(seed)
    words = [w for w in vocab if w.isalpha() and len(w) > 2]
    texts = []
    for _ in range(count):
        n = int(min(max(rng.lognormvariate(0.0, 0.6) * median_words, 2), 80))
        texts.append(" ".join(rng.choice(words) for _ in range(n)))
    return texts


# One ~10-word sentence: the batch-1 latency case.
LATENCY_TEXT = "The quick brown fox jumps over the lazy dog near the river."


def cpu_info() -> dict:
    """The CPU's model name, core count and which of ISA_FLAGS it has (from /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and name in ("", platform.machine()):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "model": name,
        "cpus": os.cpu_count(),
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
    }


def isa_line(info: dict) -> str:
    have = [f for f, on in info["isa"].items() if on]
    lack = [f for f, on in info["isa"].items() if not on]
    return f"{info['model']}, {info['cpus']} CPUs; has {', '.join(have) or 'none of them'}; " + (
        f"lacks {', '.join(lack)}" if lack else "lacks none"
    )


def format_interval(row: dict, scale: float = 1.0, digits: int = 3) -> str:
    """``median [low, high]`` of a Summary dict, times ``scale``, with the noisy mark."""
    text = (
        f"{row['median'] * scale:.{digits}g} [{row['ci_low'] * scale:.{digits}g}, "
        f"{row['ci_high'] * scale:.{digits}g}]"
    )
    return text + (" **noisy**" if row.get("noisy") else "")


def load_lines(load: dict) -> list[str]:
    def fmt(v):
        return "–" if not v else " / ".join(f"{x:.2f}" for x in v)

    lines = [
        f"Load average (1 / 5 / 15 min) before {fmt(load['before'])}, after {fmt(load['after'])}."
    ]
    if load.get("warning"):
        lines.append(f"**Warning: {load['warning']}.**")
    return lines


def write_results(out: Path, result: dict, markdown: list[str]) -> None:
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text("\n".join(markdown) + "\n")
