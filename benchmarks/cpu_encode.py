"""Sentence encoding on the CPU: bertfast's SentenceEncoder against sentence-transformers.

Same process, same model (the bundled all-MiniLM-L6-v2), same texts, batch size and threads;
the two are timed alternately (``--rounds`` each) so machine load hits both alike; the best
run of each is the figure of record (a shared machine's load only ever adds time), the
median is reported beside it. Texts are
generated from the model's vocabulary with a spread of lengths (short sentences by default).
Writes results.json and results.md to ``--output``.
Usage: python benchmarks/cpu_encode.py [--texts 1000] [--batch-size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def make_texts(vocab: list[str], count: int, min_words: int, max_words: int, seed: int):
    rng = random.Random(seed)
    words = [w for w in vocab if w.isalpha() and len(w) > 2]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(count)
    ]


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000, help="texts to encode (default 1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--min-words", type=int, default=4, help="shortest text (default 4)")
    parser.add_argument("--max-words", type=int, default=24, help="longest text (default 24)")
    parser.add_argument("--output", default="benchmarks/results/cpu-encode", help="results folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sentence_transformers import SentenceTransformer

    from bertfast.model_dirs import resolve_model_dir
    from bertfast.sentence import SentenceEncoder

    path = resolve_model_dir("all-MiniLM-L6-v2")
    ours = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
    theirs = SentenceTransformer(str(path), device="cpu")
    vocab = (Path(path) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    texts = make_texts(vocab, args.texts, args.min_words, args.max_words, seed=0)
    tokens = sum(len(ids) for ids in theirs.tokenizer(texts)["input_ids"])

    run_ours = lambda: ours.encode(texts, batch_size=args.batch_size)
    run_theirs = lambda: theirs.encode(texts, batch_size=args.batch_size)
    run_ours(), run_theirs()  # warm-up: allocator, threads, caches
    times = {"bertfast": [], "sentence-transformers": []}
    for _ in range(args.rounds):
        t, a = timed(run_ours)
        times["bertfast"].append(t)
        t, b = timed(run_theirs)
        times["sentence-transformers"].append(t)
    a, b = np.asarray(a), np.asarray(b)
    cosine = float((a * b).sum(1).min() / 1.0)
    rows = {}
    for name, ts in times.items():
        best = min(ts)
        rows[name] = {
            "best_s": best,
            "median_s": statistics.median(ts),
            "texts_per_s": len(texts) / best,
            "tokens_per_s": tokens / best,
            "runs_s": ts,
        }
    speedup = rows["bertfast"]["texts_per_s"] / rows["sentence-transformers"]["texts_per_s"]
    result = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "texts": len(texts),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "words_per_text": [args.min_words, args.max_words],
        "rows": rows,
        "speedup": speedup,
        "min_cosine": cosine,
        "max_abs_diff": float(np.abs(a - b).max()),
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# CPU sentence encoding: all-MiniLM-L6-v2, {len(texts)} texts ({tokens} tokens), "
        f"batch {args.batch_size}, {args.threads} threads",
        "",
        "| encoder | best s | median s | texts/s (best) | tokens/s (best) |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['best_s']:.3f} | {r['median_s']:.3f} | {r['texts_per_s']:.0f} "
            f"| {r['tokens_per_s']:.0f} |"
        )
    lines += [
        "",
        f"bertfast / sentence-transformers: {speedup:.2f}x texts/s; min cosine "
        f"{cosine:.7f}, max abs difference {result['max_abs_diff']:.2e}.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
