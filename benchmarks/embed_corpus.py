"""Corpus embedding throughput: ``bertfast embed --input`` against sentence-transformers' encode.

Both run in this process, on the same device, model and texts: a generated corpus whose
lengths spread as real documents do (log-normal words per text, a long tail cut by the
model's max_seq_length). bertfast is timed end to end (read the JSON Lines file, tokenize
in its worker, sort, token-budget batches, write the shards); sentence-transformers is timed
on ``encode(texts)`` of the texts already in memory. The corpus is cut into chunks; a round
runs one chunk on both, interleaved (``bertfast.bench.stats.run_interleaved``: which goes
first alternates), the chunks in turn, until ``--reps`` passes are done and the interval of
the per-round speed-up is within ``--ci-width`` of it, or ``--time-cap`` seconds pass. Rows give
texts/s and tokens/s (real tokens after truncation, the same count for both) as the median of
the rounds with its 95 % interval, the rounds behind it and the noisy mark, padding carried,
and the largest difference between the two sets of vectors; the load average before and after
is recorded, with a warning when other work loaded the machine.

    python benchmarks/embed_corpus.py --device cpu --output benchmarks/results/cpu-embed
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_common import format_interval, load_lines  # noqa: E402

from bertfast.bench.stats import (  # noqa: E402
    MIN_SAMPLES_FOR_CI,
    load_average,
    load_warning,
    rate_summary,
    ratio_summary,
    run_interleaved,
)
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


OURS, THEIRS = "bertfast embed --input", "sentence-transformers encode"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="model directory or name")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bertfast's")
    parser.add_argument("--st-dtype", default=None, choices=sorted(DTYPES), help="default: fp32")
    parser.add_argument("--texts", type=int, default=3000, help="corpus size")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="bertfast token budget")
    parser.add_argument("--st-batch-size", type=int, default=32, help="encode's batch_size")
    parser.add_argument(
        "--reps", type=int, default=1, help="passes over the corpus at least (default 1)"
    )
    parser.add_argument("--chunk", type=int, default=500, help="texts of one round (one chunk)")
    parser.add_argument(
        "--ci-width", type=float, default=0.05, help="target 95 %% interval / median (0.05)"
    )
    parser.add_argument(
        "--time-cap", type=float, default=300.0, help="seconds for the timed rounds (300)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    if not 0 < args.ci_width < 1 or not args.time_cap > 0 or args.reps < 1 or args.chunk < 1:
        parser.error("--ci-width must be in (0, 1), --time-cap above 0, --reps and --chunk >= 1")

    from sentence_transformers import SentenceTransformer

    load_before = load_average()
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
    chunk_tokens = [int(lengths[c.start : c.stop].sum()) for c in chunks]
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
            elapsed = time.perf_counter() - start
            vectors = load_embeddings(out)[0]
            shutil.rmtree(out)  # many rounds: keep the disk use to one chunk's shards
            return elapsed, vectors

        def st_once(batch: list[str]) -> tuple[float, np.ndarray]:
            sync()
            start = time.perf_counter()
            vectors = st.encode(batch, batch_size=args.st_batch_size)
            sync()
            return time.perf_counter() - start, vectors

        bertfast_once(files[0])  # warm-up: first forwards, allocator, graphs on CUDA
        st_once([texts[i] for i in chunks[0]])
        # One chunk per round on both, interleaved (which first alternating): on a shared
        # machine the load drifts between runs, and a round's pair sees nearly the same load.
        # Each candidate times itself (seconds per token of its chunk, so chunks compare) and
        # keeps its first vectors of each chunk for the comparison.
        vectors: dict[tuple[str, int], np.ndarray] = {}
        seconds: dict[str, list[float]] = {OURS: [], THEIRS: []}

        def ours(r: int) -> float:
            k = r % len(chunks)
            elapsed, mine = bertfast_once(files[k])
            vectors.setdefault((OURS, k), mine)
            seconds[OURS].append(elapsed)
            return elapsed / chunk_tokens[k]

        def theirs(r: int) -> float:
            k = r % len(chunks)
            elapsed, reference = st_once([texts[i] for i in chunks[k]])
            vectors.setdefault((THEIRS, k), reference)
            seconds[THEIRS].append(elapsed)
            return elapsed / chunk_tokens[k]

        candidates = {OURS: ours, THEIRS: theirs}
        min_rounds = max(args.reps * len(chunks), MIN_SAMPLES_FOR_CI)
        measured = run_interleaved(
            candidates,
            ci_width=args.ci_width,
            min_rounds=min_rounds,
            max_rounds=max(min_rounds, 50 * len(chunks)),
            time_cap_s=args.time_cap,
            time_call=lambda name, r: candidates[name](r),
            ratio_to=THEIRS,
        )
    if measured.failed:
        raise RuntimeError(
            "; ".join(f"{name} failed: {exc!r}" for name, exc in measured.failed.items())
        )
    diff = max(
        float(np.abs(vectors[OURS, k].astype(np.float32) - vectors[THEIRS, k]).max())
        for k in range(len(chunks))
        if (OURS, k) in vectors and (THEIRS, k) in vectors
    )
    load_after = load_average()
    own = torch.get_num_threads() if device.type == "cpu" else 1
    warning = load_warning(load_before, load_after, own_threads=own)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
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
    chunk_texts = [len(c) for c in chunks]
    rows = []
    for name, batches in ((OURS, our_batches), (THEIRS, st_batches)):
        per_token = measured.samples[name]
        per_text = [
            t * chunk_tokens[r % len(chunks)] / chunk_texts[r % len(chunks)]
            for r, t in enumerate(per_token)
        ]
        rows.append(
            {
                "name": name,
                "rounds": len(per_token),
                "texts_per_s": rate_summary(per_text, args.ci_width).to_dict(),
                "tokens_per_s": rate_summary(per_token, args.ci_width).to_dict(),
                "seconds_per_round": [round(x, 4) for x in seconds[name]],
                "batches": len(batches),
                "padding_fraction": padding_fraction(lengths, batches),
            }
        )
    # THEIRS' seconds over OURS' per round (the same chunk): above 1, bertfast is faster.
    speedup = ratio_summary(measured.samples[THEIRS], measured.samples[OURS], args.ci_width)
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
        "speedup": speedup.to_dict(),
        "rows": rows,
        "chunk": args.chunk,
        "chunks": len(chunks),
        "reps": args.reps,
        "ci_width": args.ci_width,
        "time_cap_s": args.time_cap,
        "rounds": measured.rounds,
        "stopped": measured.stopped,
        "load_average": {"before": load_before, "after": load_after, "warning": warning},
        "timing": f"Rounds of one chunk of {args.chunk} texts on both, interleaved (which first "
        f"alternating), the {len(chunks)} chunks in turn, after a warm-up chunk of each, until "
        f"{args.reps} pass(es) are done and the per-round speed-up's 95 % interval is within "
        f"{100 * args.ci_width:.0f} % of it or {args.time_cap:g} s pass: {measured.rounds} rounds "
        f"({measured.stopped}); texts/s and tokens/s: median of the rounds [95 % interval]; "
        "bertfast end to end from the chunk's file to written shards, sentence-transformers on "
        "the texts in memory",
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
        *load_lines(r["load_average"]),
        "",
        "| | texts/s | tokens/s | rounds | batches | padding |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['name']} | {format_interval(row['texts_per_s'], digits=4)} | "
            f"{format_interval(row['tokens_per_s'], digits=4)} | {row['rounds']} | "
            f"{row['batches']} | {row['padding_fraction']:.1%} |"
        )
    lines += [
        "",
        f"Speed-up of bertfast (sentence-transformers' time over bertfast's, per round on the "
        f"same chunk): × {format_interval(r['speedup'])}. Largest difference between the two "
        f"sets of vectors: {r['max_abs_diff_vs_sentence_transformers']:.2e}.",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
