"""The end-to-end grid: every backend on the same inputs, timed and checked against fp32.

Work counted per sequence of s real tokens (forward pass, 2 FLOP per multiply-add):
``2·L·(4·H² + 2·H·I)·s`` in the linear layers (= 24·L·H²·s when I = 4H) plus ``4·L·H·s²`` in
attention (QKᵀ and PV), so a padded batch is credited with its real tokens only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from bertfast.bench.runners import RUNNERS, Inputs, ModelSource, Runner, make_inputs
from bertfast.bench.settings import DTYPES, VARLEN_FILL, BenchSettings, Case
from bertfast.bench.stats import fraction_of_ceiling, ratio_summary
from bertfast.bench.timing import (
    Timing,
    benchmark,
    benchmark_interleaved,
    empty_cache,
    synchronize,
)
from bertfast.config import BertConfig

# testing.md: a low-precision output may be 3x as far from the fp32 reference as HF's SDPA
# model in the same dtype is, plus a tiny atol (fp32 paths: the 1e-4 bound).
ERR_RULE_FACTOR = 3.0


def err_atol(dtype: str) -> float:
    return 1e-4 if dtype == "fp32" else torch.finfo(DTYPES[dtype]).eps


def model_flops(config: BertConfig, lengths: list[int]) -> float:
    """Forward FLOPs of the encoder layers over sequences of these real lengths."""
    layers, h, i = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    linear = 2 * layers * (4 * h * h + 2 * h * i)
    return float(sum(linear * s + 4 * layers * h * s * s for s in lengths))


def max_abs_err(
    out: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None
) -> float | None:
    """Max |out - reference| over real tokens; None when the output holds NaN or inf."""
    diff = out.float() - reference
    if mask is not None:
        diff = diff[mask.bool()]
    err = diff.abs().max().item()
    return err if math.isfinite(err) else None


def skip_entry(
    backend: str, reason: str, config: str | None = None, kind: str = "e2e", **where
) -> dict:
    """A row that was not measured, and why; None fields mean "every one". ``kind`` "train":
    a training row, whose head stands where an end-to-end row's case does."""
    entry = {"kind": kind, "backend": backend, "config": config}
    entry["head" if kind == "train" else "case"] = None
    entry.update({"batch": None, "seq": None, "dtype": None})
    entry.update(where)
    entry["reason"] = reason
    return entry


def compile_on_cpu_reason(name: str, device: torch.device, settings: BenchSettings) -> str | None:
    """Why an hf-compile row does not run here: the CPU compiles only when asked."""
    if name.startswith("hf-compile") and device.type == "cpu" and not settings.compile_on_cpu:
        return "torch.compile runs on the GPU by default (pass --compile-on-cpu)"
    return None


def unavailable_reason(
    registry: dict, name: str, device: torch.device, settings: BenchSettings
) -> str | None:
    """Why backend ``name`` of ``registry`` (RUNNERS, TRAINERS) does not run here, or None."""
    reason = compile_on_cpu_reason(name, device, settings)
    return reason or registry[name].unavailable_reason(device)


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """A failure in one line: its type, first line and (for a traceback-like text) last line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1:
        text += f" … {lines[-1]}"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def measure_row(
    runner: Runner,
    inputs: list[Inputs],
    reference: torch.Tensor,
    device: torch.device,
    settings: BenchSettings,
) -> tuple[Timing, float | None, float]:
    """(timing, max_abs_err of the first call's output, that first call's seconds)."""
    err, first_call_s = first_call(runner, inputs, reference, device)
    with torch.inference_mode():
        n = len(inputs)
        timing = benchmark(lambda i: runner(inputs[i % n]), device, settings.timer)
    return timing, err, first_call_s


def first_call(
    runner: Runner, inputs: list[Inputs], reference: torch.Tensor, device: torch.device
) -> tuple[float | None, float]:
    """Start the case and make its first call (a compile, when the runner compiles): the
    output's max_abs_err and the call's seconds."""
    runner.start_case()
    with torch.inference_mode():
        synchronize(device)
        t0 = time.perf_counter()
        out = runner(inputs[0])
        synchronize(device)
        first_call_s = time.perf_counter() - t0
        err = max_abs_err(out, reference, inputs[0].attention_mask)
    return err, first_call_s


def make_row(
    backend: str,
    case: Case,
    dtype: str,
    config: BertConfig,
    lengths: list[int],
    timing: Timing,
    err: float | None,
    runner: Runner,
    first_call_s: float,
    ceilings: dict,
    interleaved: bool = False,
) -> dict:
    tokens = sum(lengths)
    flops = model_flops(config, lengths)
    seconds = timing.median_ms * 1e-3
    ceiling = ceilings["matmul_tflops"].get(dtype)
    tflops = flops / seconds / 1e12
    frac, ceiling_note = fraction_of_ceiling(tflops, ceiling)
    return {
        "backend": backend,
        "config": case.config,
        "case": case.kind,
        "batch": case.batch,
        "seq": case.seq,
        "dtype": dtype,
        "fill": tokens / (case.batch * case.seq),
        "tokens": tokens,
        "padding_free": bool(runner.padding_free),
        "median_ms": timing.median_ms,
        "p10_ms": timing.p10_ms,
        "p90_ms": timing.p90_ms,
        "repeats": timing.repeats,
        **timing.row_fields(),
        "interleaved": interleaved,
        "samples_ms": [float(f"{t:.4g}") for t in timing.samples_ms],
        "tokens_per_s": tokens / seconds,
        "gflop": flops / 1e9,
        "tflops": tflops,
        "frac_ceiling": frac,
        "ceiling_note": ceiling_note,
        "floor_ms": flops / (ceiling * 1e12) * 1e3 if ceiling else None,
        "speedup_vs_hf_sdpa": None,
        "speedup_vs_padded": None,
        "max_abs_err": err,
        "err_ratio": None,
        "within_rule": None,
        "compile_s": first_call_s if runner.compiles else None,
    }


def speedup_interval(base: dict, row: dict) -> tuple[float | None, float | None]:
    """The 95 % interval of base time / row time: from the per-round ratios when the two ran
    interleaved (the same load in each round), else the ratio of their intervals' far ends."""
    if base is row:  # a row against itself (a lone baseline, not interleaved): exactly 1
        return 1.0, 1.0
    a, b = base.get("samples_ms") or [], row.get("samples_ms") or []
    if base.get("interleaved") and row.get("interleaved") and a and len(a) == len(b):
        s = ratio_summary(a, b)
        return s.ci_low, s.ci_high
    if None in (base.get("ci_low_ms"), row.get("ci_high_ms")):
        return None, None
    return base["ci_low_ms"] / row["ci_high_ms"], base["ci_high_ms"] / row["ci_low_ms"]


def finish_rows(rows: list[dict]) -> None:
    """Fill in what compares rows: speedups, error ratios and the 3x rule."""
    by_key = {
        (r["backend"], r["config"], r["case"], r["batch"], r["seq"], r["dtype"]): r for r in rows
    }
    for r in rows:
        shape = (r["config"], r["case"], r["batch"], r["seq"], r["dtype"])
        sdpa = by_key.get(("hf-sdpa", *shape))
        if sdpa is not None:
            r["speedup_vs_hf_sdpa"] = sdpa["median_ms"] / r["median_ms"]
            r["speedup_ci_low"], r["speedup_ci_high"] = speedup_interval(sdpa, r)
            if r["max_abs_err"] is None:
                r["within_rule"] = False
            elif sdpa["max_abs_err"] is not None:
                if sdpa["max_abs_err"] > 0:
                    r["err_ratio"] = r["max_abs_err"] / sdpa["max_abs_err"]
                bound = ERR_RULE_FACTOR * sdpa["max_abs_err"] + err_atol(r["dtype"])
                r["within_rule"] = r["max_abs_err"] <= bound
        if r["case"] == "varlen":
            dense = by_key.get(
                (r["backend"], r["config"], "dense", r["batch"], r["seq"], r["dtype"])
            )
            if dense is not None:
                r["speedup_vs_padded"] = dense["median_ms"] / r["median_ms"]


def run_e2e(
    settings: BenchSettings, ceilings: dict, log: Callable[[str], None]
) -> tuple[list[dict], list[dict]]:
    """Measure the grid; returns (rows, skipped)."""
    device = torch.device(settings.device)
    rows: list[dict] = []
    skipped: list[dict] = []
    active = []
    for name in settings.backends:
        if name not in RUNNERS:
            continue  # a training-only backend (bertfast.bench.training.TRAINERS)
        reason = unavailable_reason(RUNNERS, name, device, settings)
        if reason is None:
            active.append(name)
        else:
            skipped.append(skip_entry(name, reason))
            log(f"skip {name}: {reason}")
    for compiled in [b for b in active if b.startswith("hf-compile")]:
        if settings.compile_cases is None:
            break
        labels = ", ".join(c.label for c in settings.compile_cases) or "no case"
        reason = f"--quick compiles only {labels}"
        skipped.append(skip_entry(compiled, reason))
        log(f"note: {reason}")

    for config_name in settings.configs:
        try:
            source = ModelSource.load(config_name, device, settings.seed)
        except ImportError as exc:
            skipped.append(skip_entry("all", describe_error(exc), config=config_name))
            log(f"skip config {config_name}: {describe_error(exc)}")
            continue
        runners: dict[tuple[str, str], Runner | None] = {}
        for case in (c for c in settings.cases if c.config == config_name):
            inputs, lengths = make_inputs(
                source.config, case, VARLEN_FILL, settings.timer.n_inputs, settings.seed, device
            )
            reference = source.reference(inputs[0])
            for dtype in settings.dtypes:
                where = dict(case=case.kind, batch=case.batch, seq=case.seq, dtype=dtype)
                measured: dict[str, tuple] = {}
                ready: dict[str, tuple[Runner, float | None, float]] = {}
                for backend in active:
                    if backend.startswith("hf-compile") and settings.compile_cases is not None:
                        if case not in settings.compile_cases:
                            continue
                    runner = _runner(runners, source, backend, dtype, skipped, log)
                    if runner is None:
                        continue
                    try:
                        if runner.compiles:
                            # Timed right after its compile: the next compiling runner's
                            # torch.compiler.reset() would make it compile again mid-rounds.
                            timing, err, first_s = measure_row(
                                runner, inputs, reference, device, settings
                            )
                            measured[backend] = (runner, timing, err, first_s, False)
                        else:
                            err, first_s = first_call(runner, inputs, reference, device)
                            ready[backend] = (runner, err, first_s)
                    except NotImplementedError as exc:
                        # A missing kernel fails every case alike: say so once.
                        runners[backend, dtype] = None
                        reason = describe_error(exc)
                        skipped.append(skip_entry(backend, reason, config_name, dtype=dtype))
                        log(f"skip {backend} {config_name} {dtype}: {reason}")
                        continue
                    except Exception as exc:  # one failing case must not end the run
                        empty_cache(device)
                        reason = describe_error(exc)
                        skipped.append(skip_entry(backend, reason, config_name, **where))
                        log(f"skip {backend} {case.label} {dtype}: {reason}")
                        continue
                # Every other backend of the case in rotating rounds: the same load for all.
                fns = {b: _call_rotating(r, inputs) for b, (r, _, _) in ready.items()}
                with torch.inference_mode():
                    timings, failed = benchmark_interleaved(fns, device, settings.timer)
                for backend, exc in failed.items():
                    empty_cache(device)
                    reason = describe_error(exc)
                    skipped.append(skip_entry(backend, reason, config_name, **where))
                    log(f"skip {backend} {case.label} {dtype}: {reason}")
                for backend, timing in timings.items():
                    runner, err, first_s = ready[backend]
                    measured[backend] = (runner, timing, err, first_s, len(timings) > 1)
                for backend in (b for b in active if b in measured):
                    runner, timing, err, first_s, interleaved = measured[backend]
                    row = make_row(
                        backend,
                        case,
                        dtype,
                        source.config,
                        lengths,
                        timing,
                        err,
                        runner,
                        first_s,
                        ceilings,
                        interleaved,
                    )
                    rows.append(row)
                    log(_progress(case, row))
        del source, runners
        empty_cache(device)
    finish_rows(rows)
    return rows, skipped


def _runner(
    runners: dict[tuple[str, str], Runner | None],
    source: ModelSource,
    backend: str,
    dtype: str,
    skipped: list[dict],
    log: Callable[[str], None],
) -> Runner | None:
    """The cached runner of (backend, dtype); None (recorded in skipped) if it cannot be built."""
    key = (backend, dtype)
    if key not in runners:
        try:
            runners[key] = RUNNERS[backend].build(source, DTYPES[dtype])
        except Exception as exc:
            runners[key] = None
            reason = describe_error(exc)
            skipped.append(skip_entry(backend, reason, source.name, dtype=dtype))
            log(f"skip {backend} {source.name} {dtype}: {reason}")
    return runners[key]


def _call_rotating(runner: Runner, inputs: list[Inputs]) -> Callable[[int], torch.Tensor]:
    """``fn(i)``: the runner on input set ``i`` modulo their count."""
    return lambda i: runner(inputs[i % len(inputs)])


def _progress(case: Case, row: dict) -> str:
    err = "nan/inf" if row["max_abs_err"] is None else f"{row['max_abs_err']:.2e}"
    text = (
        f"{case.label} {row['dtype']} {row['backend']}: {row['median_ms']:.3f} ms "
        f"(95 % CI [{row['ci_low_ms']:.3f}, {row['ci_high_ms']:.3f}], n={row['repeats']}"
        f"{', NOISY' if row['noisy'] else ''}) err {err}"
    )
    if row["compile_s"] is not None:
        text += f", compile {row['compile_s']:.1f} s"
    return text
