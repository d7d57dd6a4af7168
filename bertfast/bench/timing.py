"""Timing and the device's ceilings.

On a GPU each call is timed with its own pair of CUDA events (like ``triton.testing.do_bench``,
written here so it does not depend on Triton's API); on the CPU with ``time.perf_counter``.
Warm-up calls are excluded, the work cycles through several input sets, and on a GPU a 256 MiB
buffer is *read* before each timed call so that no input or weight is served from L2. Reading,
not writing: zeroing the buffer would leave the L2 full of dirty lines whose write-back to HBM
then happens during, and is charged to, the timed call. After a read pass the lines are clean
and evicting them costs nothing.

Each timing carries the 95 % confidence interval of its median (``bertfast.bench.stats``) and
is extended, up to a time cap, until that interval is within ``TimerSettings.ci_width`` of the
median; a row still wider is marked noisy. ``benchmark_interleaved`` times several candidates
in rotating rounds (A, B, C, B, C, A, ...) so load on a shared machine hits them alike.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertfast.bench import stats
from bertfast.bench.settings import DTYPES, TimerSettings

L2_FLUSH_BYTES = 256 << 20


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median, 10th / 90th percentiles over ``repeats`` calls, the
    median's 95 % interval, and whether that interval is wider than asked (noisy)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None
    noisy: bool = False
    samples_ms: tuple[float, ...] = ()  # per call, in order (interleaved: one per round)

    def row_fields(self) -> dict:
        """The interval fields a results row carries."""
        return {
            "ci_low_ms": self.ci_low_ms,
            "ci_high_ms": self.ci_high_ms,
            "ci_rel_width": None
            if self.ci_low_ms is None
            else (self.ci_high_ms - self.ci_low_ms) / self.median_ms,
            "noisy": self.noisy,
        }


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


def summarise(times_ms: list[float], ci_width: float = stats.DEFAULT_CI_WIDTH) -> Timing:
    """Median, 10th / 90th percentiles (inclusive method) and the median's 95 % interval of
    per-call times; noisy when the interval is wider than ``ci_width`` of the median."""
    s = stats.summarise(times_ms, ci_width)
    return Timing(s.median, s.p10, s.p90, s.samples, s.ci_low, s.ci_high, s.noisy, tuple(times_ms))


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
    While the median's interval is wider than ``timer.ci_width`` of it, another batch of
    repeats is taken, up to ``CAP_FACTOR`` times the measuring time.
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
        times: list[float] = []
        start = time.perf_counter()
        while True:
            if device.type == "cuda":
                times += _time_calls_cuda(fn, device, reps, timer.flush_l2)
            else:
                times += _time_calls_cpu(fn, reps)
            spent_ms = (time.perf_counter() - start) * 1e3
            if stats.relative_width(times) <= timer.ci_width:
                break
            if spent_ms >= CAP_FACTOR * timer.rep_ms or len(times) >= CAP_FACTOR * timer.max_reps:
                break
    return summarise(times, timer.ci_width)


CAP_FACTOR = 4  # a noisy row may take up to this many times its measuring time


def benchmark_interleaved(
    fns: dict[str, Callable[[int], object]],
    device: torch.device,
    timer: TimerSettings,
) -> tuple[dict[str, Timing], dict[str, BaseException]]:
    """Time several candidates in rotating rounds, one call each per round, until every median's
    interval is within ``timer.ci_width`` (at least ``timer.min_reps`` rounds) or the time cap
    (``CAP_FACTOR`` x ``rep_ms`` per candidate) is hit. Returns their timings, and the
    exception of any that failed, in its warm-up or in a round (dropped from the rounds)."""
    failed: dict[str, BaseException] = {}
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for name, fn in fns.items():
            try:
                for i in range(max(timer.warmup, 1)):
                    fn(i)
                synchronize(device)
            except Exception as exc:  # one candidate failing must not end the others
                failed[name] = exc
        fns = {name: fn for name, fn in fns.items() if name not in failed}
        if not fns:
            return {}, failed
        time_call = None
        if device.type == "cuda":
            cache = _flush_buffer(device) if timer.flush_l2 else None

            def time_call(name: str, i: int) -> float:
                if cache is not None:
                    flush_l2(cache)
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fns[name](i)
                end.record()
                end.synchronize()
                return start.elapsed_time(end) * 1e-3

        result = stats.run_interleaved(
            fns,
            ci_width=timer.ci_width,
            min_rounds=max(timer.min_reps, stats.MIN_SAMPLES_FOR_CI),
            max_rounds=CAP_FACTOR * timer.max_reps,
            time_cap_s=CAP_FACTOR * timer.rep_ms * 1e-3 * len(fns),
            time_call=time_call,
        )
    timings = {
        name: summarise([t * 1e3 for t in times], timer.ci_width)
        for name, times in result.samples.items()
    }
    return timings, {**failed, **result.failed}


def measure_ceilings(
    device: torch.device, dtypes: list[str], timer: TimerSettings, log: Callable[[str], None]
) -> dict:
    """The copy bandwidth (GB/s, bytes read + written) and the matmul rate (TFLOP/s) per dtype,
    each the best of readings taken until two agree within 3 % (``unstable`` lists those that
    never did).

    GPU: a 1 GiB device-to-device copy and 8192^3 matmuls; CPU: 64 MiB and 1024^3, so the
    results file has the same fields everywhere. The operands dwarf any cache, so no L2 flush;
    on a GPU a quarter second of warm-up first lets the clocks settle.
    """
    gpu = device.type == "cuda"
    timer = TimerSettings(**{**timer.__dict__, "flush_l2": False})
    copy_elems = (1 << 28) if gpu else (1 << 24)  # fp32 elements: 1 GiB / 64 MiB
    warmup_ms = 250.0 if gpu else 0.0
    moved = 2 * copy_elems * 4
    # Re-measured until two readings agree (a busy machine reads low); the best is kept.
    copy = stats.stable_ceiling(
        lambda: moved / (_copy_ms(copy_elems, device, timer, warmup_ms) * 1e-3) / 1e9
    )
    ceilings: dict = {
        "copy_bytes": moved,
        "copy_gbps": copy.value,
        "matmul_n": 8192 if gpu else 1024,
        "matmul_tflops": {},
    }
    log(f"ceiling: copy {ceilings['copy_gbps']:.1f} GB/s ({moved / 1e9:.2f} GB read + written)")
    n = ceilings["matmul_n"]
    ceilings["matmul_readings"], ceilings["unstable"] = {}, []
    if not copy.stable:
        ceilings["unstable"].append("copy")
    ceilings["copy_readings"] = list(copy.readings)
    for name in dtypes:
        rate = stats.stable_ceiling(
            lambda name=name: 2 * n**3 / (
                _matmul_ms(n, DTYPES[name], device, timer, warmup_ms) * 1e-3
            ) / 1e12
        )  # fmt: skip
        ceilings["matmul_tflops"][name] = rate.value
        ceilings["matmul_readings"][name] = list(rate.readings)
        if not rate.stable:
            ceilings["unstable"].append(f"{name} matmul")
        log(
            f"ceiling: {name} matmul {n}^3 {rate.value:.2f} TFLOP/s (best of "
            f"{len(rate.readings)} readings{'' if rate.stable else ', never stable'})"
        )
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
