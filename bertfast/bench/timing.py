"""Timing and the device's ceilings.

On a GPU each call is timed with its own pair of CUDA events (like ``triton.testing.do_bench``,
written here so it does not depend on Triton's API); on the CPU with ``time.perf_counter``.
Warm-up calls are excluded, the work cycles through several input sets, and on a GPU a 256 MiB
buffer is *read* before each timed call so that no input or weight is served from L2. Reading,
not writing: zeroing the buffer would leave the L2 full of dirty lines whose write-back to HBM
then happens during, and is charged to, the timed call. After a read pass the lines are clean
and evicting them costs nothing.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertfast.bench.settings import DTYPES, TimerSettings

L2_FLUSH_BYTES = 256 << 20


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median and the 10th / 90th percentiles over ``repeats`` calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


_flush_buffers: dict[torch.device, torch.Tensor] = {}


def _flush_buffer(device: torch.device) -> torch.Tensor:
    if device not in _flush_buffers:
        # Written once here; the first flush's read pass writes those lines back, untimed.
        _flush_buffers[device] = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    return _flush_buffers[device]


def flush_l2(cache: torch.Tensor) -> torch.Tensor:
    """Evict the L2 with clean lines: a read-only reduction over a buffer larger than it."""
    return cache.amax()


def summarise(times_ms: list[float]) -> Timing:
    """Median and 10th / 90th percentiles (inclusive method) of per-call times."""
    if len(times_ms) == 1:
        t = times_ms[0]
        return Timing(t, t, t, 1)
    deciles = statistics.quantiles(times_ms, n=10, method="inclusive")
    return Timing(statistics.median(times_ms), deciles[0], deciles[-1], len(times_ms))


def _time_calls_cuda(
    fn: Callable[[int], object], device: torch.device, reps: int, flush: bool
) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    cache = _flush_buffer(device) if flush else None
    for i in range(reps):
        if cache is not None:
            flush_l2(cache)
        starts[i].record()
        fn(i)
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


def _time_calls_cpu(fn: Callable[[int], object], reps: int) -> list[float]:
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def benchmark(
    fn: Callable[[int], object],
    device: torch.device,
    timer: TimerSettings,
    warmup_ms: float = 0.0,
) -> Timing:
    """Time ``fn(i)``, the work on input set ``i % n_inputs`` (``fn`` does the modulo).

    Warm-up runs ``timer.warmup`` calls (at least one) and, with ``warmup_ms``, until that much
    time passed (for a GPU whose clocks must ramp up first); its pace sets the repeat count.
    """
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        t0 = time.perf_counter()
        i = 0
        while i < max(timer.warmup, 1) or (time.perf_counter() - t0) * 1e3 < warmup_ms:
            fn(i)
            i += 1
            if i % 8 == 0:
                synchronize(device)  # keep the host's clock in step with the device
        synchronize(device)
        estimate_ms = max((time.perf_counter() - t0) * 1e3 / i, 1e-3)
        reps = int(min(max(timer.rep_ms / estimate_ms, timer.min_reps), timer.max_reps))
        if device.type == "cuda":
            times = _time_calls_cuda(fn, device, reps, timer.flush_l2)
        else:
            times = _time_calls_cpu(fn, reps)
    return summarise(times)


def measure_ceilings(
    device: torch.device, dtypes: list[str], timer: TimerSettings, log: Callable[[str], None]
) -> dict:
    """The copy bandwidth (GB/s, bytes read + written) and the matmul rate (TFLOP/s) per dtype.

    GPU: a 1 GiB device-to-device copy and 8192^3 matmuls; CPU: 64 MiB and 1024^3, so the
    results file has the same fields everywhere. The operands dwarf any cache, so no L2 flush;
    on a GPU a quarter second of warm-up first lets the clocks settle.
    """
    gpu = device.type == "cuda"
    timer = TimerSettings(**{**timer.__dict__, "flush_l2": False})
    copy_elems = (1 << 28) if gpu else (1 << 24)  # fp32 elements: 1 GiB / 64 MiB
    warmup_ms = 250.0 if gpu else 0.0
    moved = 2 * copy_elems * 4
    ceilings: dict = {
        "copy_bytes": moved,
        "copy_gbps": moved / (_copy_ms(copy_elems, device, timer, warmup_ms) * 1e-3) / 1e9,
        "matmul_n": 8192 if gpu else 1024,
        "matmul_tflops": {},
    }
    log(f"ceiling: copy {ceilings['copy_gbps']:.1f} GB/s ({moved / 1e9:.2f} GB read + written)")
    n = ceilings["matmul_n"]
    for name in dtypes:
        ms = _matmul_ms(n, DTYPES[name], device, timer, warmup_ms)
        tflops = 2 * n**3 / (ms * 1e-3) / 1e12
        ceilings["matmul_tflops"][name] = tflops
        log(f"ceiling: {name} matmul {n}^3 {tflops:.2f} TFLOP/s")
    empty_cache(device)
    return ceilings


def _copy_ms(elems: int, device: torch.device, timer: TimerSettings, warmup_ms: float) -> float:
    src = torch.randn(elems, device=device)
    dst = torch.empty_like(src)
    return benchmark(lambda i: dst.copy_(src), device, timer, warmup_ms).median_ms


def _matmul_ms(
    n: int, dtype: torch.dtype, device: torch.device, timer: TimerSettings, warmup_ms: float
) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return benchmark(lambda i: a @ b, device, timer, warmup_ms).median_ms
