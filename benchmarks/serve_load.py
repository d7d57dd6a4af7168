"""Loopback load for ``bertfast serve``, beside bertfast's in-process encode of the same texts.

    python benchmarks/serve_load.py --out benchmarks/results/cpu-serve
    python benchmarks/serve_load.py --url http://127.0.0.1:8080 --concurrency 1,8,32

Without ``--url`` it starts ``bertfast serve`` on a free loopback port (``--model``, default
the bundled MiniLM) and stops it at the end. One round of a concurrency level sends a fixed
number of /embed requests (one text each, a seeded mix of short, medium and long texts) or
stops at ``--duration`` seconds, whichever comes first; its rounds alternate with rounds of the
in-process reference (bertfast's SentenceEncoder encoding the same texts in this process, the
ceiling the server approaches, at the batch size found fastest first), interleaved
(``bertfast.bench.stats.run_interleaved``) until each one's median is within ``--ci-width`` of
it or ``--time-cap`` seconds pass. A level reports the median tokens/s of its rounds with the
95 % interval, the rounds behind it and whether it is noisy, the per-round ratio to the
in-process reference with its interval, and latency percentiles over all its requests. Latency
at concurrency 1, for one short sentence and for one text of the mix at a time: each round one
request to the server and one in-process encode of the same text, with intervals on each p50
and on their per-round ratio and difference. The load average before and after is recorded,
with a warning when other work loaded the machine. Load generator and server share the
machine's cores, as on any single host. Writes JSON and Markdown.
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
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from cpu_common import load_lines  # noqa: E402

from bertfast.bench.stats import (  # noqa: E402
    MIN_SAMPLES_FOR_CI,
    Interleaved,
    Summary,
    load_average,
    load_warning,
    median_ci,
    rate_summary,
    ratio_summary,
    run_interleaved,
    summarise,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHORT_SENTENCE = "A man is eating food."
SERVER, IN_PROCESS = "server", "in process"
# Idle time before each timed call, untimed: the other side's compute threads, which spin a
# little after their work, are asleep by then and take no core from the call.
SETTLE_S = 0.005
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


def latency_summary(latencies_s: list[float], ci_width: float) -> dict:
    """p50 / p90 / p99 in ms, the p50's 95 % interval, the sample count and the noisy mark."""
    out: dict = {**percentiles(latencies_s), "samples": len(latencies_s)}
    if latencies_s:
        s = summarise(latencies_s, ci_width)
        out.update(p50_ci_ms=[round(s.ci_low * 1e3, 3), round(s.ci_high * 1e3, 3)], noisy=s.noisy)
    return out


def rate_fields(rate: Summary) -> dict:
    """A tokens/s ``Summary``'s fields in a row: median, 95 % interval, samples, noisy mark."""
    return {
        "tokens_per_s": round(rate.median, 1),
        "tokens_per_s_ci": [round(rate.ci_low, 1), round(rate.ci_high, 1)],
        "samples": rate.samples,
        "noisy": rate.noisy,
    }


def ratio_fields(result: Interleaved, ci_width: float) -> dict:
    """Server rate / in-process rate, per round (in-process seconds over the server's, both
    per unit, from the same round), with its interval: above 1 the server is ahead."""
    if SERVER not in result.samples or IN_PROCESS not in result.samples:
        return {"vs_in_process": None, "vs_in_process_ci": None, "vs_in_process_noisy": None}
    s = ratio_summary(result.samples[IN_PROCESS], result.samples[SERVER], ci_width)
    return {
        "vs_in_process": round(s.median, 3),
        "vs_in_process_ci": [round(s.ci_low, 3), round(s.ci_high, 3)],
        "vs_in_process_noisy": s.noisy,
    }


def settled(candidates: dict[str, Callable[[int], float]]) -> Callable[[str, int], float]:
    """``run_interleaved``'s ``time_call`` for candidates that time themselves (each returns
    its seconds, or seconds per unit): SETTLE_S idle, untimed, then the candidate."""

    def time_call(name: str, r: int) -> float:
        time.sleep(SETTLE_S)
        return candidates[name](r)

    return time_call


def timed(fn: Callable[[int], object]) -> Callable[[int], float]:
    """``fn`` returning the seconds it took."""

    def run(r: int) -> float:
        start = time.perf_counter()
        fn(r)
        return time.perf_counter() - start

    return run


def _request_bytes(host: str, body: bytes) -> bytes:
    return (
        b"POST /embed HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (host.encode(), len(body))
    ) + body


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on one blocking socket, for the concurrency-1
    latency rows: next to nothing of the measured time is the client's own Python."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        self.address = (parsed.hostname, parsed.port or 80)
        self.host = parsed.netloc
        self.sock: socket.socket | None = None

    def post_embed(self, text: str) -> dict[str, str]:
        """POST /embed {"inputs": text, "truncate": true}; the headers, or an error."""
        body = json.dumps({"inputs": text, "truncate": True}).encode()
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.reader = self.sock.makefile("rb")
        self.sock.sendall(_request_bytes(self.host, body))
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.reader.readline()
            if not line:
                raise ConnectionError("the server closed the connection")
            head += line
        status, headers = _parse_head(head)
        self.reader.read(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        if status != 200:
            raise RuntimeError(f"/embed answered {status}")
        return headers

    def close(self) -> None:
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
            self.sock = None


async def run_level(
    url: str, texts: list[str], concurrency: int, duration: float, client: str = "raw"
) -> dict:
    """One round of a level: the texts in order, ``concurrency`` at a time, until all are sent
    or ``duration`` seconds pass; counts, the wall time, every answered request's latency and
    the CPU seconds this (client) process spent. ``client`` "raw": keep-alive HTTP/1.1 on
    asyncio streams, so the load generator takes little of the cores it shares with the
    server; "httpx": httpx's AsyncClient (several times the client CPU per request)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    if client == "raw":
        answer = await _run_level_raw(url, texts, concurrency, duration)
    else:
        answer = await _run_level_httpx(url, texts, concurrency, duration)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    answer["client_cpu_s"] = usage.ru_utime + usage.ru_stime - cpu_before
    return answer


async def _run_level_raw(url: str, texts: list[str], concurrency: int, duration: float) -> dict:
    parsed = urlparse(url)
    latencies: list[float] = []
    statuses: Counter = Counter()
    tokens = 0
    next_index = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal next_index, tokens
        reader = writer = None
        while next_index < len(texts) and time.perf_counter() < deadline:
            text = texts[next_index]
            next_index += 1
            body = json.dumps({"inputs": text, "truncate": True}).encode()
            start = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
                writer.write(_request_bytes(parsed.netloc, body))
                status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(int(headers.get("content-length", 0)))
            except (OSError, asyncio.IncompleteReadError) as exc:
                statuses[type(exc).__name__] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            elapsed = time.perf_counter() - start
            statuses[str(status)] += 1
            if status == 200:
                latencies.append(elapsed)
                tokens += int(headers.get("x-compute-tokens", 0))
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "requests": sum(statuses.values()),
        "ok": statuses.get("200", 0),
        "statuses": dict(statuses),
        "tokens": tokens,
        "seconds": wall,
        "latencies_s": latencies,
    }


async def _run_level_httpx(url: str, texts: list[str], concurrency: int, duration: float) -> dict:
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
    return {
        "requests": sum(statuses.values()),
        "ok": statuses.get("200", 0),
        "statuses": dict(statuses),
        "tokens": tokens,
        "seconds": wall,
        "latencies_s": latencies,
    }


class InProcess:
    """bertfast's own SentenceEncoder in this process: the ceiling the server approaches.

    Timed in the same rounds as the server (one round of each, in turn), so both see the same
    machine: other work on a shared host moves every figure from one minute to the next.
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

    def seconds_per_token(self, batch_size: int) -> float:
        """Encode every text once; the seconds per (truncated) token."""
        start = time.perf_counter()
        self.encoder.encode(self.texts, batch_size=batch_size)
        return (time.perf_counter() - start) / self.tokens

    def batch_size_pass(self, batch_sizes: list[int], ci_width: float, time_cap: float) -> dict:
        """Every batch size over all the texts, interleaved; the fastest is the reference."""
        if len(batch_sizes) == 1:
            return {"best_batch_size": batch_sizes[0], "rounds": 0, "stopped": "one batch size"}
        candidates = {str(b): (lambda r, b=b: self.seconds_per_token(b)) for b in batch_sizes}
        result = run_interleaved(
            candidates,
            ci_width=ci_width,
            min_rounds=MIN_SAMPLES_FOR_CI,
            max_rounds=1000,
            time_cap_s=time_cap,
            time_call=settled(candidates),
        )
        rows = []
        for name, samples in result.samples.items():
            rate = rate_summary(samples, ci_width)
            rows.append(
                {
                    "batch_size": int(name),
                    **rate_fields(rate),
                    "texts_per_s": round(rate.median * len(self.texts) / self.tokens, 2),
                }
            )
        best = max(rows, key=lambda row: row["tokens_per_s"])
        return {
            "best_batch_size": best["batch_size"],
            "rounds": result.rounds,
            "stopped": result.stopped,
            "batched": rows,
        }


def level_row(concurrency: int, rounds: list[dict], result: Interleaved, ci_width: float) -> dict:
    """A level's row from its server rounds (``run_level``'s answers) and the interleaved
    samples (seconds per token of the server and of the in-process reference)."""
    statuses: Counter = Counter()
    latencies: list[float] = []
    for r in rounds:
        statuses.update(r["statuses"])
        latencies += r["latencies_s"]
    row: dict = {
        "concurrency": concurrency,
        "rounds": result.rounds,
        "stopped": result.stopped,
        "requests": sum(r["requests"] for r in rounds),
        "ok": sum(r["ok"] for r in rounds),
        "errors": {k: v for k, v in statuses.items() if k != "200"},
        "seconds": round(sum(r["seconds"] for r in rounds), 3),
    }
    answered = sum(r["ok"] for r in rounds)
    if answered and all("client_cpu_s" in r for r in rounds):
        # The load generator shares the cores: what it took of them, per answered request.
        row["client_cpu_ms_per_request"] = round(
            1e3 * sum(r["client_cpu_s"] for r in rounds) / answered, 3
        )
    if SERVER in result.samples:
        per_round = [r["ok"] / r["seconds"] for r in rounds if r["seconds"] > 0]
        row["requests_per_s"] = round(statistics.median(per_round), 2)
        row.update(rate_fields(rate_summary(result.samples[SERVER], ci_width)))
    else:
        row.update(requests_per_s=None, tokens_per_s=None, tokens_per_s_ci=None, samples=0)
        row.update(noisy=True)
    latency = latency_summary(latencies, ci_width)
    row.update({k: latency.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "p50_ci_ms")})
    row["latency_samples"] = latency["samples"]  # every answered request of every round
    if IN_PROCESS in result.samples:
        row["in_process"] = rate_fields(rate_summary(result.samples[IN_PROCESS], ci_width))
    row.update(ratio_fields(result, ci_width))
    row["failed"] = {name: f"{type(e).__name__}: {e}" for name, e in result.failed.items()}
    row["samples_s_per_token"] = result.samples
    return row


def measure_level(
    url: str,
    inproc: InProcess,
    concurrency: int,
    duration: float,
    batch_size: int,
    ci_width: float,
    time_cap: float,
    client: str = "raw",
) -> dict:
    """Rounds of the level, each beside one in-process encode of the same texts, interleaved
    until both medians are within ``ci_width`` or ``time_cap`` seconds pass."""
    rounds: list[dict] = []

    def server(r: int) -> float:
        answer = asyncio.run(run_level(url, inproc.texts, concurrency, duration, client))
        rounds.append(answer)
        if not answer["tokens"]:
            raise RuntimeError(f"no request answered: {answer['statuses']}")
        return answer["seconds"] / answer["tokens"]

    candidates = {SERVER: server, IN_PROCESS: lambda r: inproc.seconds_per_token(batch_size)}
    result = run_interleaved(
        candidates,
        ci_width=ci_width,
        min_rounds=MIN_SAMPLES_FOR_CI,
        max_rounds=1000,
        time_cap_s=time_cap,
        time_call=settled(candidates),
    )
    return level_row(concurrency, rounds, result, ci_width)


def latency_comparison(
    url: str,
    inproc: InProcess,
    text_for_round: Callable[[int], str],
    ci_width: float,
    min_rounds: int,
    time_cap: float,
    client: str = "raw",
) -> dict:
    """One text a round (``text_for_round(r)``) through the server at concurrency 1 and
    encoded in process, interleaved until the interval of their per-round ratio is within
    ``ci_width`` or ``time_cap`` seconds pass; ``client`` as ``run_level``'s."""
    import httpx

    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    raw = RawClient(url)
    with httpx.Client(timeout=60, transport=httpx.HTTPTransport(socket_options=nodelay)) as c:

        def server(r: int) -> None:
            if client == "raw":
                raw.post_embed(text_for_round(r))
                return
            body = {"inputs": text_for_round(r), "truncate": True}
            c.post(url + "/embed", json=body).raise_for_status()

        def local(r: int) -> None:
            inproc.encoder.encode([text_for_round(r)])

        for r in range(2):  # warm-up: connection, first calls
            server(r)
            local(r)
        candidates = {SERVER: timed(server), IN_PROCESS: timed(local)}
        result = run_interleaved(
            candidates,
            ci_width=ci_width,
            min_rounds=min_rounds,
            max_rounds=100_000,
            time_cap_s=time_cap,
            time_call=settled(candidates),
            ratio_to=IN_PROCESS,
        )
    raw.close()
    return latency_row(result, ci_width)


def latency_row(result: Interleaved, ci_width: float) -> dict:
    """p50s with their intervals, and the per-round ratio server / in-process and difference
    server - in-process (ms), each with the interval of its median."""
    out: dict = {"rounds": result.rounds, "stopped": result.stopped}
    for name, key in ((SERVER, "server"), (IN_PROCESS, "in_process")):
        if name in result.samples:
            out[key] = latency_summary(result.samples[name], ci_width)
    if SERVER in result.samples and IN_PROCESS in result.samples:
        server, local = result.samples[SERVER], result.samples[IN_PROCESS]
        ratio = ratio_summary(server, local, ci_width)
        out["ratio"] = {
            "median": round(ratio.median, 3),
            "ci": [round(ratio.ci_low, 3), round(ratio.ci_high, 3)],
            "samples": ratio.samples,
            "noisy": ratio.noisy,
        }
        diff = [(a - b) * 1e3 for a, b in zip(server, local, strict=True)]
        low, high = median_ci(diff)
        out["difference_ms"] = {
            "median": round(statistics.median(diff), 3),
            "ci": [round(low, 3), round(high, 3)],
            "samples": len(diff),
        }
    out["failed"] = {name: f"{type(e).__name__}: {e}" for name, e in result.failed.items()}
    out["samples_s"] = result.samples
    return out


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


def _interval(value, ci, noisy=False, digits: int = 4) -> str:
    """``value [low, high]`` (with the noisy mark), or – when not measured."""
    if value is None:
        return "–"
    text = f"{value:.{digits}g}"
    if ci:
        text += f" [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"
    return text + (" **noisy**" if noisy else "")


def _latency_line(title: str, row: dict) -> str:
    server, local = row.get("server"), row.get("in_process")
    parts = [f"{title}, concurrency 1, {row['rounds']} interleaved rounds ({row['stopped']}):"]
    for name, side in (("server", server), ("in-process", local)):
        if side:
            parts.append(
                f"{name} p50 {_interval(side['p50_ms'], side.get('p50_ci_ms'), side['noisy'])} "
                f"ms (p99 {side['p99_ms']});"
            )
    if "ratio" in row:
        ratio, diff = row["ratio"], row["difference_ms"]
        ratio_text = _interval(ratio["median"], ratio["ci"], ratio["noisy"], 3)
        diff_text = _interval(diff["median"], diff["ci"], digits=3)
        parts.append(
            f"server / in-process per round {ratio_text}, server - in-process {diff_text} ms."
        )
    for name, error in row.get("failed", {}).items():
        parts.append(f"{name} failed: {error}.")
    return " ".join(parts)


def markdown(report: dict) -> str:
    m = report["machine"]
    batch = report["in_process_batch_sizes"]
    tried = ", ".join(str(r["batch_size"]) for r in batch.get("batched", [])) or str(
        batch["best_batch_size"]
    )
    lines = [
        f"# bertfast serve, loopback load ({m['device']})",
        "",
        f"Model {report['model']}; /embed, one text a request, {report['texts']} texts "
        "(half 4-16 words, a third 17-64, the rest 65-200), the same texts at every level. "
        f"Load generator and server share the machine's {m['cpus']} cores; torch threads "
        f"{m['torch_threads']} on both sides; the load generator's client: "
        f"{report.get('client', 'httpx')} (its CPU per request in the table). {report['date']}.",
        "",
        *load_lines(report["load_average"]),
        "",
        "Each level: rounds of the server (every text once, or until --duration) and of the "
        "in-process reference (bertfast's `SentenceEncoder.encode` of the same texts in the "
        f"load generator's process, batch size {batch['best_batch_size']}, the fastest of "
        f"{tried}), interleaved until each median's 95 % interval is within "
        f"{100 * report['ci_width']:.0f} % of it or {report['time_cap_s']:g} s pass. Figures: "
        "median [95 % interval] over the rounds; latencies over every request of the level; "
        "server / in-process is the per-round ratio of tokens/s.",
        "",
        "| concurrency | rounds | requests | errors | req/s | tokens/s | p50 ms | p90 ms | "
        "p99 ms | client CPU ms/request | in-process tokens/s | server / in-process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["levels"]:
        errs = sum(row["errors"].values())
        ip = row.get("in_process") or {}
        ratio = _interval(
            row["vs_in_process"], row["vs_in_process_ci"], row["vs_in_process_noisy"], 3
        )
        lines.append(
            f"| {row['concurrency']} | {row['rounds']} | {row['requests']} | {errs} | "
            f"{row['requests_per_s'] if row['requests_per_s'] is not None else '–'} | "
            f"{_interval(row['tokens_per_s'], row['tokens_per_s_ci'], row['noisy'])} | "
            f"{_interval(row['p50_ms'], row.get('p50_ci_ms'))} | {row['p90_ms']} | "
            f"{row['p99_ms']} | {row.get('client_cpu_ms_per_request', '–')} | "
            f"{_interval(ip.get('tokens_per_s'), ip.get('tokens_per_s_ci'), ip.get('noisy'))} | "
            f"{ratio} |"
        )
    for row in report["levels"]:
        for name, error in row.get("failed", {}).items():
            lines += ["", f"Concurrency {row['concurrency']}: {name} failed: {error}."]
    lines += [
        "",
        _latency_line(f"Short sentence ({SHORT_SENTENCE!r})", report["short_sentence"]),
        "",
        _latency_line("One text of the mix a round", report["one_text_of_the_mix"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bertfast.weights import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (loopback only)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=300, help="requests per round (at most)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per round (at most)")
    p.add_argument(
        "--repeats", type=int, default=100, help="latency rounds at least (short sentence; mix)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="raw: keep-alive HTTP/1.1 on plain sockets, so the load generator takes little of "
        "the cores it shares with the server; httpx: httpx's clients (default: raw)",
    )
    p.add_argument("--batch-sizes", default="8,32", help="in-process encode batch sizes")
    p.add_argument(
        "--ci-width", type=float, default=0.05, help="target 95 %% interval / median (0.05)"
    )
    p.add_argument(
        "--time-cap",
        type=float,
        default=60.0,
        help="seconds for the rounds of each measurement: each level, the batch-size pass, "
        "each latency comparison (60)",
    )
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
    if not 0 < args.ci_width < 1 or not args.time_cap > 0 or args.repeats < 1:
        p.error("--ci-width must be in (0, 1), --time-cap above 0 and --repeats at least 1")

    import torch

    load_before = load_average()
    texts = make_texts(args.requests, args.seed)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    proc = None
    url = args.url.rstrip("/") if args.url else None
    server_args = list(args.server_arg)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
        server_args += ["--num-threads", str(args.num_threads)]
    if url is None:
        proc, url = start_server(args.model, server_args)
    width, cap = args.ci_width, args.time_cap
    try:
        inproc = InProcess(args.model, texts)
        asyncio.run(run_level(url, texts[:20], 4, args.duration, args.client))  # warm-up
        batch = inproc.batch_size_pass(batch_sizes, width, cap)
        print(json.dumps(batch), flush=True)
        results = []
        for c in levels:
            row = measure_level(
                url, inproc, c, args.duration, batch["best_batch_size"], width, cap, args.client
            )
            print(json.dumps({k: v for k, v in row.items() if k != "samples_s_per_token"}))
            results.append(row)
        short = latency_comparison(
            url, inproc, lambda r: SHORT_SENTENCE, width, args.repeats, cap, args.client
        )
        mix = latency_comparison(
            url, inproc, lambda r: texts[r % len(texts)], width, args.repeats, cap, args.client
        )
        info = __import__("httpx").get(url + "/info").json()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    load_after = load_average()
    threads = torch.get_num_threads()
    # The run's own busy threads are in the load read after it: this process's torch threads
    # and, when it started the server, the server's.
    own = threads * (2 if proc is not None else 1)
    warning = load_warning(load_before, load_after, own_threads=own)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": info.get("model_id", args.model),
        "server": info,
        "machine": {
            "device": info.get("model_device", "?") + f" ({platform.processor() or 'cpu'})",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": threads,
        },
        # Other work on the machine skews every figure: the load average says how much.
        "load_average": {"before": load_before, "after": load_after, "warning": warning},
        "client": args.client,
        "ci_width": width,
        "time_cap_s": cap,
        "texts": len(texts),
        "in_process_batch_sizes": batch,
        "levels": results,
        "short_sentence": short,
        "one_text_of_the_mix": mix,
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
