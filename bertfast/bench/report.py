"""Results files: the JSON of record, the Markdown table, and plots drawn from the JSON."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

from bertfast.bench import gpu_model
from bertfast.bench.settings import E2E_BACKENDS, TRAIN_BACKENDS

E2E_COLUMNS = [
    ("backend", "backend", "s"),
    ("config", "config", "s"),
    ("case", "case", "s"),
    ("batch", "batch", "d"),
    ("seq", "seq", "d"),
    ("dtype", "dtype", "s"),
    ("fill", "fill", ".2f"),
    ("median_ms", "median ms", ".4g"),
    ("ci_ms", "95 % CI ms", "ci"),
    ("repeats", "n", "d"),
    ("noisy", "noisy", "noisy"),
    ("p10_ms", "p10 ms", ".4g"),
    ("p90_ms", "p90 ms", ".4g"),
    ("tokens_per_s", "tokens/s", ",.0f"),
    ("tflops", "TFLOP/s", ".3g"),
    ("frac_ceiling", "of matmul ceiling", "%"),
    ("speedup_vs_hf_sdpa", "× hf-sdpa", ".2f"),
    ("speedup_ci", "× hf-sdpa 95 % CI", "ci"),
    ("speedup_vs_padded", "× padded", ".2f"),
    ("max_abs_err", "max abs err", ".2e"),
    ("err_ratio", "err ratio", ".2f"),
    ("within_rule", "within 3× rule", "b"),
    ("compile_s", "compile s", ".1f"),
]
KERNEL_COLUMNS = [
    ("op", "op", "s"),
    ("backend", "backend", "s"),
    ("variant", "variant", "s"),
    ("batch", "batch", "d"),
    ("seq", "seq", "d"),
    ("dtype", "dtype", "s"),
    ("median_ms", "median ms", ".4g"),
    ("ci_ms", "95 % CI ms", "ci"),
    ("repeats", "n", "d"),
    ("noisy", "noisy", "noisy"),
    ("p10_ms", "p10 ms", ".4g"),
    ("p90_ms", "p90 ms", ".4g"),
    ("gbps", "GB/s", ".1f"),
    ("tflops", "TFLOP/s", ".3g"),
    ("frac_ceiling", "of ceiling", "%"),
    ("speedup_vs_baseline", "× baseline", ".2f"),
    ("speedup_ci", "× baseline 95 % CI", "ci"),
    ("baseline", "baseline", "s"),
    ("max_abs_err", "max abs err", ".2e"),
]

KERNEL_BACKWARD_COLUMNS = [
    *KERNEL_COLUMNS[:-1],
    ("max_abs_err", "grad max abs err", ".2e"),
    ("worst_grad", "worst grad", "s"),
]
TRAIN_COLUMNS = [
    ("backend", "backend", "s"),
    ("config", "config", "s"),
    ("head", "head", "s"),
    ("batch", "batch", "d"),
    ("seq", "seq", "d"),
    ("dtype", "dtype", "s"),
    ("median_ms", "ms/step", ".4g"),
    ("ci_ms", "95 % CI ms", "ci"),
    ("repeats", "n", "d"),
    ("noisy", "noisy", "noisy"),
    ("p10_ms", "p10 ms", ".4g"),
    ("p90_ms", "p90 ms", ".4g"),
    ("speedup_vs_hf_eager", "× hf-eager", ".2f"),
    ("speedup_ci", "× hf-eager 95 % CI", "ci"),
    ("tokens_per_s", "tokens/s", ",.0f"),
    ("frac_ceiling", "of matmul ceiling", "%"),
    ("peak_mib", "peak MiB", ",.0f"),
    ("peak_ratio_vs_hf_eager", "peak / hf-eager", ".2f"),
    ("loss_abs_err", "loss err", ".2e"),
    ("grad_max_abs_err", "grad max abs err", ".2e"),
    ("grad_rel_err", "grad rel err", ".1e"),
    ("grad_err_ratio", "grad err ratio", ".2f"),
    ("within_rule", "within 3× rule", "b"),
    ("compile_s", "compile s", ".1f"),
    ("note", "note", "s"),
]


def _finite(value):
    """JSON has no NaN or infinity: store None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(_finite(results), indent=1, allow_nan=False) + "\n")
    return path


def load_results(path: str | Path) -> dict:
    """Read a results file; ValueError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no results file at {str(path)!r}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    missing = [k for k in ("rows", "kernel_rows", "skipped", "ceilings") if k not in data]
    if missing:
        raise ValueError(f"{path} is not a bertfast bench results file (missing {missing})")
    return data


# Row fields behind the two-number cells: "95 % CI ms" and the speedup's "95 % CI" (against
# hf-sdpa, the kernel's baseline or hf-eager).
_INTERVALS = {
    "ci_ms": ("ci_low_ms", "ci_high_ms"),
    "speedup_ci": ("speedup_ci_low", "speedup_ci_high"),
}


def _cell(value, spec: str) -> str:
    if spec == "noisy":
        return "**noisy**" if value else ""
    if spec == "ci":
        low, high = value if value else (None, None)
        return "–" if low is None or high is None else f"{low:.4g}–{high:.4g}"
    if value is None or value == "":
        return "–"
    if spec == "s":
        return str(value)
    if spec == "b":
        return "yes" if value else "**NO**"
    if spec == "%":
        return f"{100 * value:.1f} %"
    return format(value, spec)


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    lines = [
        "| " + " | ".join(title for _, title, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for r in rows:
        cells = []
        for key, _, spec in columns:
            value = tuple(r.get(k) for k in _INTERVALS[key]) if key in _INTERVALS else r.get(key)
            cells.append(_cell(value, spec))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def machine_lines(results: dict) -> list[str]:
    """The load before and after the run, its warning, and the ceilings' stability, as lines."""
    lines = []
    load = results.get("load_average") or {}
    before, after = load.get("before"), load.get("after")
    if before or after:
        fmt = lambda v: "–" if not v else " / ".join(f"{x:.2f}" for x in v)  # noqa: E731
        lines.append(f"Load average (1 / 5 / 15 min) before {fmt(before)}, after {fmt(after)}.")
    if load.get("warning"):
        lines.append(f"**Warning: {load['warning']}.**")
    ceilings = results.get("ceilings", {})
    if ceilings.get("unstable"):
        lines.append(
            "Ceilings whose readings never agreed within 3 % (best reading kept): "
            + ", ".join(ceilings["unstable"])
            + "."
        )
    beaten = [
        r for key in ("rows", "kernel_rows", "kernel_backward_rows") for r in results.get(key, [])
        if r.get("ceiling_note")
    ]  # fmt: skip
    if beaten:
        lines.append(
            f"{len(beaten)} row(s) beat the measured ceiling (it was measured low): their "
            "fraction of it is left out rather than shown above 100 %."
        )
    noisy = sum(
        1 for key in ("rows", "kernel_rows", "kernel_backward_rows", "training_rows")
        for r in results.get(key, []) if r.get("noisy")
    )  # fmt: skip
    if noisy:
        lines.append(
            f"{noisy} row(s) marked **noisy**: the 95 % interval of the median stayed wider than "
            f"{100 * results.get('settings', {}).get('timer', {}).get('ci_width', 0.05):.0f} % "
            "of it within the time cap; compare them only through their intervals."
        )
    return [line + "\n" for line in lines]


def _where(entry: dict) -> str:
    keys = ("op", "pass", "config", "head", "case", "variant", "batch", "seq", "dtype")
    parts = [f"{k} {entry[k]}" for k in keys if entry.get(k) not in (None, "")]
    return ", ".join(parts) if parts else "every case"


def render_markdown(results: dict) -> str:
    """The results as Markdown: a header with the machine and ceilings, then one table each."""
    device = results.get("device", {})
    versions = results.get("versions", {})
    ceilings = results["ceilings"]
    commit = results.get("git_commit") or "unknown"
    if results.get("git_dirty"):
        commit += " (with uncommitted changes)"
    lines = [
        f"# bertfast benchmark: {device.get('name', '?')}",
        "",
        f"{results.get('created', '')}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        + f"; commit {commit}",
        "",
        f"Ceilings measured in this run: copy {ceilings['copy_gbps']:.1f} GB/s (bytes read + "
        f"written); matmul {ceilings['matmul_n']}³ "
        + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in ceilings["matmul_tflops"].items())
        + ".",
        "",
        _settings_line(results.get("settings", {})),
        "",
        *machine_lines(results),
    ]
    if results["rows"] or not results.get("training_rows"):
        lines += [
            "## End to end (last_hidden_state; error against HF eager in fp32, real tokens only)",
            "",
            *_table(results["rows"], E2E_COLUMNS),
        ]
    if results["kernel_rows"]:
        lines += [
            "",
            f"## Kernels: {kernel_section_title(results['kernel_rows'])}",
            "",
            *_kernel_note(results),
            *_table(results["kernel_rows"], KERNEL_COLUMNS),
        ]
    if results.get("kernel_backward_rows"):
        title = kernel_section_title(results["kernel_backward_rows"])
        lines += [
            "",
            f"## Kernels, forward + backward: {title}",
            "",
            "Each op's forward and `torch.autograd.grad` of its inputs for the same output "
            "gradient; the error is the largest max abs difference of any input gradient from "
            "the fp32 reference's autograd (`worst grad` names that input).",
            "",
            *_table(results["kernel_backward_rows"], KERNEL_BACKWARD_COLUMNS),
        ]
    if results.get("training_rows") or any(s.get("kind") == "train" for s in results["skipped"]):
        lines += ["", "## Training steps", "", *_training_note(results), ""]
        lines += _table(results.get("training_rows", []), TRAIN_COLUMNS)
    if results["skipped"]:
        lines += ["", "## Skipped", ""]
        for s in results["skipped"]:
            lines.append(f"- {s.get('kind', 'e2e')} `{s['backend']}` ({_where(s)}): {s['reason']}")
    if "elapsed_s" in results:
        lines += ["", f"Run took {results['elapsed_s']:.0f} s."]
    if results.get("model_estimates"):
        # A GPU run's own card gets its measured rows beside the estimate.
        measured = gpu_model.measured(results) if device.get("type") == "cuda" else None
        lines += ["", gpu_model.markdown(results["model_estimates"], measured).rstrip("\n")]
    return "\n".join(lines) + "\n"


def kernel_section_title(kernel_rows: list[dict]) -> str:
    """What the kernel rows ran: the layer shape and every batch × seq and dtype measured."""
    shapes = dict.fromkeys(f"b{r['batch']}×s{r['seq']}" for r in kernel_rows)
    dtypes = dict.fromkeys(r["dtype"] for r in kernel_rows)
    return (
        "BERT-base layer (H 768, 12 heads of 64, I 3072) at "
        + ", ".join(shapes)
        + ", "
        + ", ".join(dtypes)
    )


def _kernel_note(results: dict) -> list[str]:
    """Why no bertfast kernel rows appear, when none do (on the CPU: no kernel backend runs)."""
    if any(r["backend"].startswith("bertfast-") for r in results["kernel_rows"]):
        return []
    reasons = [
        f"`{s['backend']}`: {s['reason']}"
        for s in results["skipped"]
        if s.get("kind") == "kernel" and s["backend"].startswith("bertfast-") and not s.get("op")
    ]
    device = results.get("settings", {}).get("device", "this device")
    text = (
        f"No bertfast kernel rows: no kernel backend can be timed on {device}, so these rows "
        "compare torch variants only (bertfast's torch backend runs the `torch-ref` ops)."
    )
    if reasons:
        text += " " + "; ".join(reasons) + "."
    return [text, ""]


def _training_note(results: dict) -> list[str]:
    """What a training row measured and how it was checked, from the rows and settings."""
    rows = results.get("training_rows", [])
    settings = results.get("settings", {})
    precision = settings.get("train_precision", rows[0]["dtype"] if rows else "fp32")
    if precision == "fp32":
        how = "fp32 without autocast"
    else:
        how = f"forward and loss under torch.autocast({precision}) over fp32 master weights"
    dropouts = sorted({(r["dropout"], r["attention_dropout"]) for r in rows})
    dropout = ", ".join(f"hidden {h:g} / attention {a:g}" for h, a in dropouts) if dropouts else "–"
    optimizers = ", ".join(sorted({r["optimizer"] for r in rows})) or "AdamW"
    text = (
        f"One step: zero_grad, {how}, backward, {optimizers} step (lr 5e-5), median ms per "
        f"step. Classification: cross-entropy on random labels; pre-training: masked-LM loss "
        f"at ~15 % of the positions plus next-sentence loss. Timed with the config's dropout "
        f"({dropout}) on every row. Check: one forward and backward from the same weights, "
        f"before any optimizer step, on a copy with dropout 0, in the row's precision; loss "
        f"and every parameter's gradient against HF eager in fp32 (TF32 off). `grad max abs "
        f"err` is the largest over all parameters, `grad rel err` that over the largest "
        f"reference gradient; within the rule: both errors ≤ 3 × hf-eager's in the same "
        f"precision + atol. `× hf-eager` and `peak / hf-eager`: hf-eager's time or peak over "
        f"this row's (a peak ratio below 1 is less memory)."
    )
    device = results.get("device", {}).get("type") or settings.get("device", "")
    if not str(device).startswith("cuda"):
        text += (
            " Peak memory is read on CUDA devices only (torch.cuda.max_memory_allocated); "
            "this run has none."
        )
    else:
        text += (
            " Peak MiB: the rise of torch.cuda.max_memory_allocated over two steps above what "
            "was allocated before the model was built (weights, gradients, AdamW state, "
            "activations)."
        )
    return [text]


def _settings_line(settings: dict) -> str:
    if not settings:
        return ""
    timer = settings.get("timer", {})
    return (
        f"Settings: {'--quick' if settings.get('quick') else 'full grid'}; backends "
        f"{', '.join(settings.get('backends', []))}; median of repeats filling "
        f"{timer.get('rep_ms', '?')} ms after {timer.get('warmup', '?')} warm-up calls, "
        f"{timer.get('n_inputs', '?')} input sets rotated"
        + (", L2 flushed before each call" if timer.get("flush_l2") else "")
        + f"; repeated until the median's 95 % interval is within "
        f"{100 * timer.get('ci_width', 0.05):.0f} % of it or the time cap (4x) is hit; the "
        "backends of an end-to-end case, the candidates of a kernel case and the backends of a "
        "training case run interleaved (one call each per rotating round, speedups from the "
        "per-round ratios), a compiled end-to-end backend right after its compile."
    )


def _backend_order(names: set[str]) -> list[str]:
    known = [b for b in E2E_BACKENDS if b in names]
    return known + sorted(names - set(known))


def _case_label(r: dict) -> str:
    return f"{r['config']} b{r['batch']}×s{r['seq']}" + (" varlen" if r["case"] == "varlen" else "")


def _bars(
    ax,
    labels: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    fmt: str = "{:.2f}",
    intervals: dict[str, list[tuple[float, float] | None]] | None = None,
) -> None:
    """Grouped bars, each with its value on top and, where ``intervals`` has one, its 95 %
    interval as an error bar; the legend outside the axes, right of them."""
    width = 0.8 / max(len(series), 1)
    vertical = len(labels) * len(series) > 12  # many narrow bars: turn their labels
    top = _top(series)
    for j, (name, values) in enumerate(series.items()):
        offset = (j - (len(series) - 1) / 2) * width
        yerr = _yerr(values, (intervals or {}).get(name))
        if yerr is not None:  # a value's label sits above its error bar
            top = max([top] + [v + up for v, up in zip(values, yerr[1], strict=True) if v == v])
        bars = ax.bar(
            [i + offset for i in range(len(labels))],
            values,
            width,
            label=name,
            yerr=yerr,
            error_kw={"elinewidth": 0.8, "capsize": 2},
        )
        texts = ["" if math.isnan(v) else fmt.format(v) for v in values]
        ax.bar_label(
            bars,
            texts,
            padding=2,
            fontsize=7,
            rotation=90 if vertical else 0,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8},
        )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top * (1.25 if vertical else 1.15))  # room for the value labels
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _yerr(values: list[float], spans: list[tuple[float, float] | None] | None):
    """matplotlib's (2, n) below / above errors from intervals (zero where none), or None."""
    if not spans or all(span is None for span in spans):
        return None
    below, above = [], []
    for v, span in zip(values, spans, strict=True):
        if span is None or math.isnan(v) or span[0] is None or span[1] is None:
            below.append(0.0)
            above.append(0.0)
        else:
            below.append(max(v - span[0], 0.0))
            above.append(max(span[1] - v, 0.0))
    return [below, above]


def _top(series: dict[str, list[float]]) -> float:
    finite = [v for values in series.values() for v in values if not math.isnan(v)]
    return max(finite, default=1.0) or 1.0


def _wrapped(text: str, fig_width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit the figure's width (at most 0.75 em a character)."""
    return textwrap.fill(text, width=max(20, int(fig_width_in * 72 / (0.75 * fontsize))))


def _row_interval(r: dict, key: str) -> tuple[float, float] | None:
    """The 95 % interval of a plotted value: the speedup's own, or a rate's from the time's."""
    if key in ("speedup_vs_hf_sdpa", "speedup_vs_baseline", "speedup_vs_hf_eager"):
        low, high = r.get("speedup_ci_low"), r.get("speedup_ci_high")
        return None if low is None or high is None else (low, high)
    if key not in ("frac_ceiling", "tflops", "gbps", "tokens_per_s"):
        return None  # not a rate (a memory ratio): no interval
    value, low, high = r.get(key), r.get("ci_low_ms"), r.get("ci_high_ms")
    if value is None or low is None or not low:
        return None
    return value * r["median_ms"] / high, value * r["median_ms"] / low  # rate ~ 1 / time


def _e2e_figure(
    results: dict, key: str, ylabel: str, title: str, hline: float | None, fmt: str = "{:.2f}"
):
    from matplotlib.figure import Figure

    rows = results["rows"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    labels_by_dtype = {
        d: list(dict.fromkeys(_case_label(r) for r in rows if r["dtype"] == d)) for d in dtypes
    }
    widest = max((len(v) for v in labels_by_dtype.values()), default=1)
    width = max(7.0, 0.9 * widest + 3)  # + the legend column on the right
    fig = Figure(figsize=(width, 4.2 * max(len(dtypes), 1) + 0.4), layout="constrained")
    fig.suptitle(_wrapped(f"{title} — {results.get('device', {}).get('name', '')}", width, 11))
    axes = fig.subplots(max(len(dtypes), 1), 1, squeeze=False)[:, 0]
    for ax, dtype in zip(axes, dtypes, strict=False):
        labels = labels_by_dtype[dtype]
        backends = _backend_order({r["backend"] for r in rows if r["dtype"] == dtype})
        value = {(r["backend"], _case_label(r)): r[key] for r in rows if r["dtype"] == dtype}
        series = {
            b: [math.nan if value.get((b, c)) is None else value[b, c] for c in labels]
            for b in backends
        }
        by_label = {(r["backend"], _case_label(r)): r for r in rows if r["dtype"] == dtype}
        intervals = {
            b: [_row_interval(by_label[b, c], key) if (b, c) in by_label else None for c in labels]
            for b in backends
        }
        _bars(ax, labels, series, ylabel, fmt, intervals)
        if hline is not None:
            ax.axhline(hline, color="black", linewidth=0.8)
        ax.set_title(dtype, fontsize=10)
    return fig


def _kernel_figure(results: dict, what: str = ""):
    from matplotlib.figure import Figure

    rows = results["kernel_rows"]
    op_names = list(dict.fromkeys(r["op"] for r in rows))
    fig = Figure(figsize=(10, 3.6 * len(op_names) + 0.4), layout="constrained")
    title = f"Kernels{', ' + what if what else ''}: {kernel_section_title(rows)}"
    fig.suptitle(_wrapped(f"{title} — {results.get('device', {}).get('name', '')}", 10, 11))
    axes = fig.subplots(len(op_names), 1, squeeze=False)[:, 0]
    for ax, op in zip(axes, op_names, strict=True):
        op_rows = [r for r in rows if r["op"] == op]
        labels = list(dict.fromkeys(f"b{r['batch']}×s{r['seq']} {r['dtype']}" for r in op_rows))
        names = list(dict.fromkeys(f"{r['backend']} {r['variant']}".strip() for r in op_rows))
        value = {
            (
                f"{r['backend']} {r['variant']}".strip(),
                f"b{r['batch']}×s{r['seq']} {r['dtype']}",
            ): r["frac_ceiling"]
            for r in op_rows
        }
        series = {
            n: [math.nan if value.get((n, c)) is None else value[n, c] for c in labels]
            for n in names
        }
        by_label = {
            (f"{r['backend']} {r['variant']}".strip(), f"b{r['batch']}×s{r['seq']} {r['dtype']}"): r
            for r in op_rows
        }
        intervals = {
            n: [
                _row_interval(by_label[n, c], "frac_ceiling") if (n, c) in by_label else None
                for c in labels
            ]
            for n in names
        }
        _bars(ax, labels, series, "fraction of ceiling", "{:.0%}", intervals)
        metric = op_rows[0]["metric"]
        ceiling = "matmul" if metric == "TFLOP/s" else "copy"
        ax.set_title(f"{op}: {metric} / measured {ceiling} ceiling", fontsize=10)
    return fig


def _training_label(r: dict) -> str:
    return f"{r['config']} {r['head']} b{r['batch']}×s{r['seq']}"


def _training_figure(results: dict):
    """Speedup over hf-eager per backend and training case; below it, peak memory over
    hf-eager's where it was measured (CUDA)."""
    from matplotlib.figure import Figure

    rows = results["training_rows"]
    panels = [("speedup_vs_hf_eager", "speedup over hf-eager", "{:.2f}")]
    if any(r.get("peak_ratio_vs_hf_eager") is not None for r in rows):
        panels.append(("peak_ratio_vs_hf_eager", "peak memory / hf-eager's", "{:.2f}"))
    labels = list(dict.fromkeys(_training_label(r) for r in rows))
    known = [b for b in TRAIN_BACKENDS if b in {r["backend"] for r in rows}]
    backends = known + sorted({r["backend"] for r in rows} - set(known))
    width = max(7.0, 0.9 * len(labels) + 3)
    fig = Figure(figsize=(width, 4.2 * len(panels) + 0.4), layout="constrained")
    dtypes = ", ".join(dict.fromkeys(r["dtype"] for r in rows))
    fig.suptitle(
        _wrapped(
            f"Training step ({dtypes}) — {results.get('device', {}).get('name', '')}", width, 11
        )
    )
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (key, ylabel, fmt) in zip(axes, panels, strict=True):
        by_label = {(r["backend"], _training_label(r)): r for r in rows}
        series = {
            b: [
                math.nan if by_label.get((b, c), {}).get(key) is None else by_label[b, c][key]
                for c in labels
            ]
            for b in backends
        }
        intervals = {
            b: [_row_interval(by_label[b, c], key) if (b, c) in by_label else None for c in labels]
            for b in backends
        }
        _bars(ax, labels, series, ylabel, fmt, intervals)
        ax.axhline(1.0, color="black", linewidth=0.8)
    return fig


def plot_results(path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw the PNG plots of a results file (into out_dir, default: beside the file)."""
    results = load_results(path)
    out = Path(out_dir) if out_dir is not None else Path(path).parent
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if results["rows"]:
        figures.append(
            (
                "speedup.png",
                _e2e_figure(
                    results,
                    "speedup_vs_hf_sdpa",
                    "speedup over hf-sdpa",
                    "Speedup over HF SDPA",
                    1.0,
                ),
            )
        )
        figures.append(
            (
                "floor.png",
                _e2e_figure(
                    results,
                    "frac_ceiling",
                    "compute floor / measured time",
                    "Fraction of the compute floor (FLOPs at the measured matmul ceiling "
                    "/ measured time)",
                    None,
                    "{:.0%}",
                ),
            )
        )
    if results["kernel_rows"]:
        figures.append(("kernels.png", _kernel_figure(results)))
    if results.get("kernel_backward_rows"):
        backward = {**results, "kernel_rows": results["kernel_backward_rows"]}
        figures.append(("kernels_backward.png", _kernel_figure(backward, "forward + backward")))
    if results.get("training_rows"):
        figures.append(("training.png", _training_figure(results)))
    written = []
    for name, fig in figures:
        fig.savefig(out / name, dpi=110)
        written.append(out / name)
    return written
