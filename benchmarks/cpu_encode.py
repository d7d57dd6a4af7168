"""Sentence encoding on the CPU: bertfast's SentenceEncoder in fp32, int8 and bf16 (where the
CPU has native bf16) against sentence-transformers (torch, fp32), in one process.

Same model (the bundled all-MiniLM-L6-v2), texts, batch size and threads. Two measurements,
each with the engines interleaved (one call each per rotating round, ``bertfast.bench.stats``)
until every median's 95 % interval is within ``--ci-width`` of it or the time cap is hit:
seconds to encode ``--texts`` mixed-length texts at ``--batch-size``, and the latency of one
~10-word sentence at batch 1 (where ``torch.compile`` of the fp32 model, inductor's C++ /
oneDNN path with frozen weights, runs too unless ``--no-compile``). Ratios come with the
interval of the per-round ratios. Accuracy: min cosine of each engine's vectors against
sentence-transformers'. The CPU model, its ISA flags and the load average before and after
are recorded; a warning is printed when the load was high.

Usage: python benchmarks/cpu_encode.py [--texts 1000] [--batch-size 32] [--threads 2]
Writes results.json and results.md to --output (default benchmarks/results/cpu-encode).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_common import (  # noqa: E402
    LATENCY_TEXT,
    cpu_info,
    format_interval,
    isa_line,
    load_lines,
    make_texts,
    write_results,
)

REFERENCE = "sentence-transformers fp32"


def build_engines(
    batch_size: int, compile_latency: bool, emulated_bf16: bool, log
) -> tuple[dict, dict, dict]:
    """name -> encoder for throughput and for batch 1, and name -> why it was skipped."""
    import torch._inductor.config as inductor_config
    from sentence_transformers import SentenceTransformer

    from bertfast import cpu_linear, cpu_quantize
    from bertfast.model_dirs import resolve_model_dir
    from bertfast.sentence import SentenceEncoder

    path = resolve_model_dir("all-MiniLM-L6-v2")
    engines = {
        REFERENCE: SentenceTransformer(str(path), device="cpu"),
        "bertfast fp32": SentenceEncoder.from_pretrained(path),
    }
    skipped = {}
    reason = cpu_quantize.int8_unsupported_reason()
    if reason is None:
        engines["bertfast int8"] = SentenceEncoder.from_pretrained(path, quantize="int8")
    else:
        skipped["bertfast int8"] = reason
    reason = cpu_linear.bf16_unsupported_reason()
    if reason is None:
        engines["bertfast bf16"] = SentenceEncoder.from_pretrained(path, dtype=torch.bfloat16)
    else:
        skipped["bertfast bf16"] = reason
        if emulated_bf16:  # what the entry points refuse, measured: BertModel takes it as asked
            from bertfast import BertModel

            fp32 = engines["bertfast fp32"]
            engines["bf16 without native bf16 (refused by the entry points)"] = SentenceEncoder(
                BertModel.from_pretrained(path, dtype=torch.bfloat16),
                fp32.tokenizer,
                max_seq_length=fp32.max_seq_length,
                modules=fp32.modules,
            )
    latency = dict(engines)
    if compile_latency:
        fp32 = engines["bertfast fp32"]
        inductor_config.freezing = True  # inductor packs the frozen weights for oneDNN itself
        compiled = SentenceEncoder(
            torch.compile(fp32.model, dynamic=False),
            fp32.tokenizer,
            max_seq_length=fp32.max_seq_length,
            modules=fp32.modules,
        )
        t0 = time.perf_counter()
        compiled.encode([LATENCY_TEXT], batch_size=1)
        log(f"torch.compile of the fp32 model: first call {time.perf_counter() - t0:.1f} s")
        latency["bertfast fp32 + torch.compile"] = compiled
    return engines, latency, skipped


def summaries(samples: dict[str, list[float]], ci_width: float) -> dict[str, dict]:
    from bertfast.bench.stats import summarise

    return {name: summarise(times, ci_width).to_dict() for name, times in samples.items()}


def ratios(samples: dict[str, list[float]], base: str, ci_width: float) -> dict[str, dict]:
    """base's time over each engine's, per round (>1: the engine is faster than base)."""
    from bertfast.bench.stats import ratio_summary

    if base not in samples:
        return {}
    return {
        name: ratio_summary(samples[base], times, ci_width).to_dict()
        for name, times in samples.items()
        if name != base
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000, help="texts to encode (default 1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--ci-width", type=float, default=0.03, help="target 95 %% interval / median (0.03)"
    )
    parser.add_argument(
        "--time-cap", type=float, default=150.0, help="seconds for the throughput rounds (150)"
    )
    parser.add_argument(
        "--latency-cap", type=float, default=45.0, help="seconds for the batch-1 rounds (45)"
    )
    parser.add_argument("--no-compile", action="store_true", help="no torch.compile candidate")
    parser.add_argument(
        "--emulated-bf16",
        action="store_true",
        help="on a CPU without native bf16, also time the model in bf16 as torch runs it there",
    )
    parser.add_argument("--output", default="benchmarks/results/cpu-encode", help="results folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bertfast.bench.stats import load_average, load_warning, run_interleaved

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    load_before = load_average()
    engines, latency, skipped = build_engines(
        args.batch_size, not args.no_compile, args.emulated_bf16, log
    )
    from bertfast.model_dirs import resolve_model_dir

    vocab = (Path(resolve_model_dir("all-MiniLM-L6-v2")) / "vocab.txt").read_text().split("\n")
    texts = make_texts(vocab, args.texts, seed=0)
    ids = engines[REFERENCE].tokenizer(texts)["input_ids"]
    tokens = sum(len(x) for x in ids)

    # Accuracy (and warm-up): each engine's vectors against sentence-transformers'.
    vectors = {
        name: np.asarray(e.encode(texts, batch_size=args.batch_size)) for name, e in engines.items()
    }
    reference = vectors[REFERENCE]
    accuracy = {
        name: float((v * reference).sum(axis=1).min())
        for name, v in vectors.items()
        if name != REFERENCE
    }
    for name, cosine in accuracy.items():
        log(f"{name}: min cosine {cosine:.6f} against {REFERENCE}")

    log(f"throughput: {len(texts)} texts ({tokens} tokens), engines interleaved")
    throughput = run_interleaved(
        {
            n: (lambda r, e=e: e.encode(texts, batch_size=args.batch_size))
            for n, e in engines.items()
        },
        ci_width=args.ci_width,
        min_rounds=6,
        max_rounds=200,
        time_cap_s=args.time_cap,
    )
    log(f"throughput: {throughput.rounds} rounds, {throughput.stopped}")
    log("batch 1: one sentence per call, engines interleaved")
    one = [LATENCY_TEXT]
    for e in latency.values():
        for _ in range(5):
            e.encode(one, batch_size=1)
    batch1 = run_interleaved(
        {n: (lambda r, e=e: e.encode(one, batch_size=1)) for n, e in latency.items()},
        ci_width=args.ci_width,
        min_rounds=30,
        max_rounds=5000,
        time_cap_s=args.latency_cap,
    )
    log(f"batch 1: {batch1.rounds} rounds, {batch1.stopped}")
    load_after = load_average()
    warning = load_warning(load_before, load_after, own_threads=args.threads)
    if warning:
        log(f"warning: {warning}")

    info = cpu_info()
    result = {
        "cpu": info,
        "torch": torch.__version__,
        "threads": args.threads,
        "texts": len(texts),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "ci_width": args.ci_width,
        "load_average": {"before": load_before, "after": load_after, "warning": warning},
        "skipped": skipped,
        "min_cosine_vs_reference": accuracy,
        "throughput": {
            "rounds": throughput.rounds,
            "stopped": throughput.stopped,
            "seconds": summaries(throughput.samples, args.ci_width),
            "speedup_vs_reference": ratios(throughput.samples, REFERENCE, args.ci_width),
            "speedup_vs_bertfast_fp32": ratios(throughput.samples, "bertfast fp32", args.ci_width),
            "samples_s": throughput.samples,
        },
        "batch1": {
            "rounds": batch1.rounds,
            "stopped": batch1.stopped,
            "seconds": summaries(batch1.samples, args.ci_width),
            "speedup_vs_reference": ratios(batch1.samples, REFERENCE, args.ci_width),
            "speedup_vs_bertfast_fp32": ratios(batch1.samples, "bertfast fp32", args.ci_width),
        },
    }
    markdown = render(result)
    write_results(Path(args.output), result, markdown)
    print("\n".join(markdown))


def render(result: dict) -> list[str]:
    tp, b1 = result["throughput"], result["batch1"]
    lines = [
        f"# CPU sentence encoding: all-MiniLM-L6-v2, {result['texts']} texts "
        f"({result['tokens']} tokens), batch {result['batch_size']}, {result['threads']} threads",
        "",
        f"CPU: {isa_line(result['cpu'])}. torch {result['torch']}.",
        "",
        *load_lines(result["load_average"]),
        "",
        f"Engines interleaved, rounds until each median's 95 % interval is within "
        f"{100 * result['ci_width']:.0f} % of it or the time cap: throughput {tp['rounds']} "
        f"rounds ({tp['stopped']}), batch 1 {b1['rounds']} rounds ({b1['stopped']}). Figures: "
        "median [95 % interval]; × is the paired per-round ratio against the reference.",
        "",
        "| engine | texts/s | seconds for all texts | × sentence-transformers | "
        "batch-1 p50 ms | batch-1 × sentence-transformers | min cosine | samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys([*tp["seconds"], *b1["seconds"]]))
    for name in names:
        t = tp["seconds"].get(name)
        rate = (
            f"{result['texts'] / t['median']:.0f} [{result['texts'] / t['ci_high']:.0f}, "
            f"{result['texts'] / t['ci_low']:.0f}]"
            if t
            else "–"
        )
        sp = tp["speedup_vs_reference"].get(name)
        lat = b1["seconds"].get(name)
        lsp = b1["speedup_vs_reference"].get(name)
        cos = result["min_cosine_vs_reference"].get(name)
        cos_text = f"{cos:.6f}" if cos is not None else "reference" if name == REFERENCE else "–"
        counts = "/".join(str(x["samples"]) for x in (t, lat) if x)
        lines.append(
            f"| {name} | {rate} | {format_interval(t) if t else '–'} | "
            f"{format_interval(sp) if sp else '–'} | {format_interval(lat, 1e3) if lat else '–'} | "
            f"{format_interval(lsp) if lsp else '–'} | {cos_text} "
            f"| {counts} |"
        )
    for name, reason in result["skipped"].items():
        lines += ["", f"Skipped {name}: {reason}."]
    return lines


if __name__ == "__main__":
    main()
