"""Loopback load for ``bertfast serve``, beside bertfast's in-process encode of the same texts.

    python benchmarks/serve_load.py --out benchmarks/results/cpu-serve
    python benchmarks/serve_load.py --url http://127.0.0.1:8080 --concurrency 1,8,32

Without ``--url`` it starts ``bertfast serve`` on a free loopback port (``--model``, default
the bundled MiniLM) and stops it at the end. Each concurrency level sends a fixed number of
/embed requests (one text each, a seeded mix of short, medium and long texts) or stops at
``--duration`` seconds, whichever comes first. It reports requests/s, tokens/s, p50/p90/p99
latency and error counts, then encodes the same texts in this process (SentenceEncoder, the
ceiling the server approaches) and writes JSON and Markdown. Load generator and server share
the machine's cores, as on any single host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHORT_SENTENCE = "A man is eating food."
VOCAB = (
    "the of and to in is was for on that with as by at from his her it an were are which "
    "this be or has had not but first one their its new after who they have two been other "
    "also all during time into more only over city school year world state people used most "
    "some part may many such between later three where under would film team season game "
    "river north south east west music album band song series house church war army party "
    "university college book story town village family station road line company market "
    "water island park center system language history science model data network light"
).split()


def make_texts(n: int, seed: int) -> list[str]:
    """A seeded mix: half short (4-16 words), a third medium (17-64), the rest long (65-200)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        u = rng.random()
        words = rng.randint(4, 16) if u < 0.5 else rng.randint(17, 64) if u < 0.85 else (
            rng.randint(65, 200)
        )  # fmt: skip
        texts.append(f"{i} " + " ".join(rng.choice(VOCAB) for _ in range(words)) + ".")
    return texts


def percentiles(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    ms = np.asarray(latencies_s) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)}


async def run_level(url: str, texts: list[str], concurrency: int, duration: float) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # httpx writes headers and body apart: without TCP_NODELAY, Nagle plus the server's
    # delayed ACK would add up to 40 ms to each request that is the client's doing.
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=nodelay)
    latencies: list[float] = []
    statuses: Counter = Counter()
    tokens = 0
    next_index = 0
    deadline = time.perf_counter() + duration

    async with httpx.AsyncClient(timeout=120, transport=transport) as client:

        async def worker() -> None:
            nonlocal next_index, tokens
            while next_index < len(texts) and time.perf_counter() < deadline:
                text = texts[next_index]
                next_index += 1
                start = time.perf_counter()
                try:
                    r = await client.post(url + "/embed", json={"inputs": text, "truncate": True})
                except httpx.TransportError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                elapsed = time.perf_counter() - start
                statuses[str(r.status_code)] += 1
                if r.status_code == 200:
                    latencies.append(elapsed)
                    tokens += int(r.headers.get("x-compute-tokens", 0))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = statuses.get("200", 0)
    return {
        "concurrency": concurrency,
        "requests": sum(statuses.values()),
        "ok": ok,
        "errors": {k: v for k, v in statuses.items() if k != "200"},
        "seconds": round(wall, 3),
        "requests_per_s": round(ok / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        **percentiles(latencies),
    }


class InProcess:
    """bertfast's own SentenceEncoder in this process: the ceiling the server approaches.

    Measured beside each server level (the same texts, right before it), so both see the
    same machine: other work on a shared host moves every figure from one minute to the next.
    """

    def __init__(self, model: str, texts: list[str]):
        import torch

        from bertfast.sentence import SentenceEncoder

        torch.set_grad_enabled(False)
        self.encoder = SentenceEncoder.from_pretrained(model, device="cpu")
        limit = self.encoder.max_seq_length
        ids = self.encoder.tokenizer(texts, truncation=False)["input_ids"]
        self.tokens = sum(min(len(i), limit) for i in ids)
        self.texts = texts
        self.encoder.encode(texts[:32], batch_size=32)  # warm-up

    def throughput(self, batch_sizes: list[int]) -> dict:
        """Every batch size over all the texts; the best one is the ceiling."""
        rows = []
        for batch_size in batch_sizes:
            start = time.perf_counter()
            self.encoder.encode(self.texts, batch_size=batch_size)
            wall = time.perf_counter() - start
            rows.append(
                {
                    "batch_size": batch_size,
                    "texts_per_s": round(len(self.texts) / wall, 2),
                    "tokens_per_s": round(self.tokens / wall, 1),
                }
            )
        best = max(rows, key=lambda row: row["tokens_per_s"])
        return {"best_batch_size": best["batch_size"], **best, "batched": rows}

    def one_text_latency(self, repeats: int) -> dict:
        times = []
        for text in self.texts[:repeats]:
            start = time.perf_counter()
            self.encoder.encode([text])
            times.append(time.perf_counter() - start)
        return percentiles(times)


def short_sentence_latency(url: str, inproc: InProcess, repeats: int, rounds: int = 4) -> dict:
    """One short sentence through the server (concurrency 1) and in process, in alternating
    blocks: request by request, each side's idle compute threads would slow the other."""
    import httpx

    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    server, local = [], []
    block = max(1, repeats // rounds)
    with httpx.Client(timeout=60, transport=httpx.HTTPTransport(socket_options=nodelay)) as c:
        for _ in range(rounds):
            for i in range(block + 2):  # the first two of a block warm it up
                start = time.perf_counter()
                c.post(url + "/embed", json={"inputs": SHORT_SENTENCE}).raise_for_status()
                if i >= 2:
                    server.append(time.perf_counter() - start)
            for i in range(block + 2):
                start = time.perf_counter()
                inproc.encoder.encode([SHORT_SENTENCE])
                if i >= 2:
                    local.append(time.perf_counter() - start)
    return {"server": percentiles(server), "in_process": percentiles(local)}


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    from bertfast.serve.server import READY

    # Warnings only: the server logs a line a request at info, and nothing reads the pipe
    # after the ready line (a full pipe would stall the server).
    cmd = [sys.executable, "-m", "bertfast", "serve", "--model", model, "--port", "0",
           "--log-level", "warning", *extra]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
    )
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        if line.startswith(READY):
            return proc, re.search(r"http://\S+", line).group(0)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the server did not start")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# bertfast serve, loopback load ({m['device']})",
        "",
        f"Model {report['model']}; /embed, one text a request, {report['texts']} texts "
        "(half 4-16 words, a third 17-64, the rest 65-200), the same texts at every level. "
        f"Load generator and server share the machine's {m['cpus']} cores (load average "
        f"{m['load_average_at_start'][0]} at the start, {m['load_average_at_end'][0]} at the "
        f"end; other work was running); torch threads {m['torch_threads']} on both sides. "
        f"{report['date']}.",
        "",
        "In-process: bertfast's `SentenceEncoder.encode` of the same texts in the load "
        "generator's process, measured right before each level (best batch size of "
        + ", ".join(str(r["batch_size"]) for r in report["levels"][0]["in_process"]["batched"])
        + ").",
        "",
        "| concurrency | requests | errors | req/s | tokens/s | p50 ms | p90 ms | p99 ms |"
        " in-process tokens/s | server / in-process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["levels"]:
        errs = sum(row["errors"].values())
        ip = row["in_process"]
        lines.append(
            f"| {row['concurrency']} | {row['requests']} | {errs} | {row['requests_per_s']} | "
            f"{row['tokens_per_s']} | {row['p50_ms']} | {row['p90_ms']} | {row['p99_ms']} | "
            f"{ip['tokens_per_s']} (batch {ip['best_batch_size']}) | {row['vs_in_process']:.2f}x |"
        )
    short, one = report["short_sentence"], report["in_process_one_text_latency"]
    lines += [
        "",
        f"Short sentence ({SHORT_SENTENCE!r}), concurrency 1, server and in-process in "
        f"alternating blocks: server p50 {short['server']['p50_ms']} ms (p99 "
        f"{short['server']['p99_ms']}), in-process p50 {short['in_process']['p50_ms']} ms (p99 "
        f"{short['in_process']['p99_ms']}).",
        "",
        f"In-process, one text of the mix at a time: p50 {one['p50_ms']} ms, p99 "
        f"{one['p99_ms']} ms.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bertfast.weights import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (loopback only)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=300, help="requests per level (at most)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per level (at most)")
    p.add_argument("--repeats", type=int, default=100, help="latency samples (short sentence)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-sizes", default="8,32", help="in-process encode batch sizes")
    p.add_argument("--out", default=None, help="folder for serve_load.json and serve_load.md")
    p.add_argument("--server-arg", action="append", default=[], help="passed to bertfast serve")
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="torch CPU threads of both the server and the in-process encode (default: "
        "torch's); 1 keeps a shared machine's other work from stalling every op",
    )
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        p.error(f"--url must be a loopback address ({', '.join(LOOPBACK)}), got {args.url}")
    if not 1 <= args.requests <= 10_000 or not 0 < args.duration <= 600:
        p.error("--requests must be in 1..10000 and --duration in (0, 600]")

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    texts = make_texts(args.requests, args.seed)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    proc = None
    url = args.url.rstrip("/") if args.url else None
    server_args = list(args.server_arg)
    if args.num_threads is not None:
        import torch

        torch.set_num_threads(args.num_threads)
        server_args += ["--num-threads", str(args.num_threads)]
    if url is None:
        proc, url = start_server(args.model, server_args)
    try:
        inproc = InProcess(args.model, texts)
        asyncio.run(run_level(url, texts[:20], 4, args.duration))  # warm-up
        results = []
        for c in levels:
            local = inproc.throughput(batch_sizes)
            row = asyncio.run(run_level(url, texts, c, args.duration))
            row["in_process"] = local
            row["vs_in_process"] = round(row["tokens_per_s"] / local["tokens_per_s"], 3)
            print(json.dumps(row), flush=True)
            results.append(row)
        short = short_sentence_latency(url, inproc, args.repeats)
        info = __import__("httpx").get(url + "/info").json()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    import torch

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": info.get("model_id", args.model),
        "server": info,
        "machine": {
            "device": info.get("model_device", "?") + f" ({platform.processor() or 'cpu'})",
            "cpus": os.cpu_count(),
            # Other work on the machine skews every figure: the load average says how much.
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "texts": len(texts),
        "levels": results,
        "short_sentence": short,
        "in_process_one_text_latency": inproc.one_text_latency(args.repeats),
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "serve_load.md").write_text(markdown(report))
        print(f"wrote {out / 'serve_load.json'} and {out / 'serve_load.md'}")
    else:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
