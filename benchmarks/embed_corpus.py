"""Corpus embedding throughput: ``bertfast embed --input`` against sentence-transformers' encode.

Both run in this process, on the same device, model and texts: a generated corpus whose
lengths spread as real documents do (log-normal words per text, a long tail cut by the
model's max_seq_length). bertfast is timed end to end (read the JSON Lines file, tokenize
in its worker, sort, token-budget batches, write the shards); sentence-transformers is timed
on ``encode(texts)`` of the texts already in memory. Rows give texts/s and tokens/s (real
tokens after truncation, the same count for both), padding carried, and the largest
difference between the two sets of vectors.

    python benchmarks/embed_corpus.py --device cpu --output benchmarks/results/cpu-embed
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertfast.cli_options import DTYPES  # noqa: E402
from bertfast.corpus import EmbedOptions, embed_corpus, load_embeddings  # noqa: E402
from bertfast.corpus.embed import MAX_PADDING, SORT_WINDOW, plan_batches  # noqa: E402
from bertfast.model_dirs import resolve_model_dir  # noqa: E402
from bertfast.sentence import SentenceEncoder  # noqa: E402


def make_corpus(n: int, vocab_file: Path, seed: int) -> list[str]:
    """``n`` texts of whole vocabulary words, words per text log-normal (median 24, a tail
    past 300: titles, sentences, paragraphs)."""
    words = [
        w
        for w in vocab_file.read_text(encoding="utf-8").split("\n")
        if w.isalpha() and w.isascii() and len(w) > 1
    ]
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=np.log(24), sigma=0.9, size=n), 1, 600).astype(int)
    return [" ".join(rng.choice(words, size=k)) for k in lengths]


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    padded = sum(len(b) * lengths[b].max() for b in batches)
    return 1.0 - lengths.sum() / padded


def bertfast_batches(lengths: np.ndarray, budget: int, max_padding: float) -> list[np.ndarray]:
    """The batches bertfast forms (sorted windows, token budget), for the padding figure."""
    batches = []
    for start in range(0, len(lengths), SORT_WINDOW):
        window = lengths[start : start + SORT_WINDOW]
        batches += [b + start for b in plan_batches(window, budget, max_padding)]
    return batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="model directory or name")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bertfast's")
    parser.add_argument("--st-dtype", default=None, choices=sorted(DTYPES), help="default: fp32")
    parser.add_argument("--texts", type=int, default=3000, help="corpus size")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="bertfast token budget")
    parser.add_argument("--st-batch-size", type=int, default=32, help="encode's batch_size")
    parser.add_argument("--reps", type=int, default=1, help="timed passes over the corpus")
    parser.add_argument("--chunk", type=int, default=500, help="texts timed as one pair of runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write results.json and results.md here")
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    model_dir = resolve_model_dir(args.model)
    device = torch.device(args.device)
    encoder = SentenceEncoder.from_pretrained(model_dir, device=device, dtype=DTYPES[args.dtype])
    st = SentenceTransformer(str(model_dir), device=str(device))
    if args.st_dtype in ("fp16", "bf16"):
        st = st.to(DTYPES[args.st_dtype])
    texts = make_corpus(args.texts, model_dir / "vocab.txt", args.seed)
    ids = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_seq_length)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    tokens = int(lengths.sum())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    chunks = [range(i, min(i + args.chunk, len(texts))) for i in range(0, len(texts), args.chunk)]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for k, chunk in enumerate(chunks):
            files.append(Path(tmp) / f"chunk{k}.jsonl")
            files[-1].write_text("".join(json.dumps({"text": texts[i]}) + "\n" for i in chunk))
        run = [0]

        def bertfast_once(path: Path) -> tuple[float, np.ndarray]:
            run[0] += 1
            out = Path(tmp) / f"out{run[0]}"
            options = EmbedOptions(
                inputs=[str(path)],
                output=str(out),
                model=str(model_dir),
                device=str(device),
                batch_tokens=args.batch_tokens,
                dtype=DTYPES[args.dtype],
                progress=False,
            )
            sync()
            start = time.perf_counter()
            embed_corpus(options, encoder)
            sync()
            return time.perf_counter() - start, load_embeddings(out)[0]

        def st_once(batch: list[str]) -> tuple[float, np.ndarray]:
            sync()
            start = time.perf_counter()
            vectors = st.encode(batch, batch_size=args.st_batch_size)
            sync()
            return time.perf_counter() - start, vectors

        bertfast_once(files[0])  # warm-up: first forwards, allocator, graphs on CUDA
        st_once([texts[i] for i in chunks[0]])
        # Each chunk timed on both back to back, which one first alternating: on a shared
        # machine the load drifts between runs, and a pair sees nearly the same load.
        ours = np.zeros((args.reps, len(chunks)))
        theirs = np.zeros_like(ours)
        diff = 0.0
        for rep in range(args.reps):
            for k, chunk in enumerate(chunks):
                chunk_texts = [texts[i] for i in chunk]
                for side in (0, 1) if (rep + k) % 2 == 0 else (1, 0):
                    if side == 0:
                        ours[rep, k], mine = bertfast_once(files[k])
                    else:
                        theirs[rep, k], reference = st_once(chunk_texts)
                diff = max(diff, float(np.abs(mine.astype(np.float32) - reference).max()))
    ratios = (theirs / ours).flatten()
    pad = MAX_PADDING if encoder.model.backend == "torch" else 1.0
    our_batches, st_batches = [], []
    for chunk in chunks:
        chunk_lengths = lengths[chunk.start : chunk.stop]
        our_batches += [
            b + chunk.start for b in bertfast_batches(chunk_lengths, args.batch_tokens, pad)
        ]
        by_chars = np.argsort([-len(texts[i]) for i in chunk], kind="stable") + chunk.start
        st_batches += np.array_split(
            by_chars, range(args.st_batch_size, len(by_chars), args.st_batch_size)
        )
    rows = []
    for name, times, batches in (
        ("bertfast embed --input", ours, our_batches),
        ("sentence-transformers encode", theirs, st_batches),
    ):
        per_rep = times.sum(axis=1)
        rows.append(
            {
                "name": name,
                "seconds_per_rep": per_rep.tolist(),
                "texts_per_s": args.reps * len(texts) / per_rep.sum(),
                "tokens_per_s": args.reps * tokens / per_rep.sum(),
                "batches": len(batches),
                "padding_fraction": padding_fraction(lengths, batches),
            }
        )
    import sentence_transformers
    import transformers

    import bertfast

    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "bertfast": bertfast.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "python": platform.python_version(),
        },
        "model": args.model,
        "backend": encoder.model.backend,
        "dtype": args.dtype,
        "st_dtype": args.st_dtype or "fp32",
        "texts": len(texts),
        "tokens": tokens,
        "length_tokens": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)),
            "max": int(lengths.max()),
            "truncated": int((lengths >= encoder.max_seq_length).sum()),
        },
        "batch_tokens": args.batch_tokens,
        "st_batch_size": args.st_batch_size,
        "max_abs_diff_vs_sentence_transformers": diff,
        "speedup_texts_per_s": rows[0]["texts_per_s"] / rows[1]["texts_per_s"],
        "speedup_per_chunk": {
            "median": float(np.median(ratios)),
            "min": float(ratios.min()),
            "max": float(ratios.max()),
        },
        "rows": rows,
        "chunk": args.chunk,
        "reps": args.reps,
        "timing": f"{args.reps} rep(s) over chunks of {args.chunk} texts, each chunk timed on "
        "both back to back (which first alternating), after a warm-up chunk of each; texts/s "
        "= all texts / all time; bertfast end to end from the chunk's file to written shards, "
        "sentence-transformers on the texts in memory",
    }
    print(json.dumps(result, indent=2))
    if args.output:
        out_dir = Path(args.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (out_dir / "results.md").write_text(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lt = r["length_tokens"]
    c = r["speedup_per_chunk"]
    lines = [
        f"# Corpus embedding: {r['model']} on {r['device']} ({r['device_name']})",
        "",
        f"{r['texts']} generated texts, {r['tokens']} tokens after truncation (tokens per text: "
        f"min {lt['min']}, median {lt['median']:.0f}, p90 {lt['p90']:.0f}, max {lt['max']}; "
        f"{lt['truncated']} cut at max_seq_length). bertfast {r['backend']} backend "
        f"{r['dtype']}, --batch-tokens {r['batch_tokens']}; sentence-transformers "
        f"{r['st_dtype']}, batch_size {r['st_batch_size']}; torch threads "
        f"{r['torch_threads']}. {r['timing']}.",
        "",
        "| | texts/s | tokens/s | batches | padding | seconds per rep |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        runs = ", ".join(f"{s:.2f}" for s in row["seconds_per_rep"])
        lines.append(
            f"| {row['name']} | {row['texts_per_s']:.1f} | {row['tokens_per_s']:.0f} | "
            f"{row['batches']} | {row['padding_fraction']:.1%} | {runs} |"
        )
    lines += [
        "",
        f"Speed-up (texts/s): {r['speedup_texts_per_s']:.2f}x; per chunk pair median "
        f"{c['median']:.2f}x (min {c['min']:.2f}x, max {c['max']:.2f}x). Largest difference "
        f"between the two sets of vectors: {r['max_abs_diff_vs_sentence_transformers']:.2e}.",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
