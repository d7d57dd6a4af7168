"""One benchmark run: the machine, its ceilings, the end-to-end grid, the kernels (forward, and
forward + backward), the training steps, the files."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bertfast import ops
from bertfast._version import __version__
from bertfast.bench import gpu_model
from bertfast.bench.e2e import run_e2e
from bertfast.bench.kernels import run_kernel_backwards, run_kernels
from bertfast.bench.report import plot_results, render_markdown, write_json
from bertfast.bench.settings import BenchSettings
from bertfast.bench.stats import load_average, load_warning
from bertfast.bench.timing import measure_ceilings
from bertfast.bench.training import run_training
from bertfast.cpu_linear import cpu_model_name

SCHEMA_VERSION = 1


class Progress:
    """Prints a progress line with the seconds since the run began."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", flush=True)


def device_tag(device: str) -> str:
    """A folder name for a device: ``cpu``, or the GPU's name (``h100-80gb-hbm3``)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    slug = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(dev).lower()).strip("-")
    return slug.removeprefix("nvidia-") or "cuda"


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]  # the checkout holding bertfast/
    try:
        done = subprocess.run(
            ["git", "-c", f"safe.directory={root}", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(device: torch.device) -> dict:
    """The machine and software a run measured (BERTFAST_GIT_COMMIT names the commit where the
    checkout has no .git, as on a device copy)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info = {
            "type": "cuda",
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
        }
    else:
        info = {"type": device.type, "name": cpu_model_name(), "threads": torch.get_num_threads()}
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain")) if commit else None
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": info,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "triton": _version("triton"),
            "transformers": _version("transformers"),
            "bertfast": __version__,
        },
        "git_commit": commit or os.environ.get("BERTFAST_GIT_COMMIT"),
        "git_dirty": dirty,
    }


def run_suite(
    settings: BenchSettings,
    output: str | Path,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure everything the settings ask for; write results.json, results.md and the plots."""
    if _version("transformers") is None:
        raise ValueError(
            "the benchmark needs transformers for its baselines and reference: "
            "pip install 'bertfast[bench]'"
        )
    log = log or Progress()
    started = time.perf_counter()
    device = torch.device(settings.device)
    results: dict = {"schema": SCHEMA_VERSION, **environment(device)}
    results["settings"] = settings.to_dict()
    results["backend_report"] = ops.backend_report(device)
    log(
        f"bertfast bench on {results['device']['name']}: {len(settings.cases)} cases, "
        f"{len(settings.train_cases)} training cases, dtypes {settings.dtypes}, "
        f"backends {settings.backends}"
    )
    dtypes = list(settings.dtypes)
    if settings.train_cases and settings.train_precision not in dtypes:
        dtypes.append(settings.train_precision)  # the training rows' fraction of the ceiling
    load_before = load_average()
    ceilings = measure_ceilings(device, dtypes, settings.timer, log)
    rows, skipped = run_e2e(settings, ceilings, log) if settings.cases else ([], [])
    kernel_rows, kernel_skipped = run_kernels(settings, ceilings, log)
    backward_rows, backward_skipped = run_kernel_backwards(settings, ceilings, log)
    training_rows, training_skipped = run_training(settings, ceilings, log)
    results.update(
        ceilings=ceilings,
        rows=rows,
        kernel_rows=kernel_rows,
        kernel_backward_rows=backward_rows,
        training_rows=training_rows,
        skipped=skipped + kernel_skipped + backward_skipped + training_skipped,
        elapsed_s=time.perf_counter() - started,
    )
    load_after = load_average()
    # The run's own busy threads are in the load read after it: the CPU's torch threads, or the
    # one host thread that drives a GPU.
    own = torch.get_num_threads() if device.type == "cpu" else 1
    warning = load_warning(load_before, load_after, own_threads=own)
    results["load_average"] = {"before": load_before, "after": load_after, "warning": warning}
    if warning:
        log(f"warning: {warning}")
    # The model's estimate of the GPU time: every card it knows on a machine without a GPU,
    # the run's own card (with the measured rows beside it) on one.
    card = gpu_model.card_for(results["device"]["name"]) if device.type == "cuda" else None
    if device.type != "cuda" or card is not None:
        estimates = gpu_model.estimate_table([card] if card else None)
        results["model_estimates"] = estimates
        totals = [r for r in estimates if r["what"] == "total"]
        for row in totals:
            log(f"model estimate {row['card']} {row['case']}: {row['total_us']:.0f} us forward")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    json_path = write_json(results, out / "results.json")
    (out / "results.md").write_text(render_markdown(results))
    written = [json_path, out / "results.md"]
    try:
        written += plot_results(json_path, out)
    except ImportError as exc:
        log(f"no plots: {exc} (pip install matplotlib)")
    log("wrote " + ", ".join(str(p) for p in written))
    return results
