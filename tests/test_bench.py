"""The benchmark suite on the CPU: schema, errors against the reference, Markdown, plots.

Nothing here asserts a timing: the numbers of a shared CPU mean nothing.
"""

import argparse
import json

import pytest
import torch

pytest.importorskip("transformers")

from bertfast.bench import (
    cli,
    load_results,
    make_settings,
    plot_results,
    render_markdown,
    run_suite,
)
from bertfast.bench import kernels as bench_kernels
from bertfast.bench import runners as bench_runners
from bertfast.bench.e2e import finish_rows, model_flops
from bertfast.bench.runners import Runner, RunnerSpec, varlen_lengths
from bertfast.config import BertConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROW_FIELDS = {
    "backend",
    "config",
    "case",
    "batch",
    "seq",
    "dtype",
    "fill",
    "tokens",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "tokens_per_s",
    "tflops",
    "frac_ceiling",
    "speedup_vs_hf_sdpa",
    "max_abs_err",
    "err_ratio",
    "within_rule",
    "compile_s",
}
KERNEL_FIELDS = {
    "op",
    "backend",
    "median_ms",
    "gbps",
    "tflops",
    "frac_ceiling",
    "max_abs_err",
    "ci_low_ms",
    "ci_high_ms",
    "noisy",
    "interleaved",
    "samples_ms",
    "speedup_vs_baseline",
    "speedup_ci_low",
    "speedup_ci_high",
}


class OffsetRunner(Runner):
    """A deliberately wrong backend: bertfast's torch path plus 0.1 everywhere."""

    def __init__(self, inner: Runner):
        self.inner = inner

    def __call__(self, inputs):
        return self.inner(inputs) + 0.1


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    """One small run (tiny config, dense and varlen) with the wrong backend added."""
    out = tmp_path_factory.mktemp("bench")

    def build_wrong(source, dtype):
        return OffsetRunner(bench_runners.RUNNERS["bertfast-torch"].build(source, dtype))

    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bench_runners.RUNNERS, "wrong", RunnerSpec(build_wrong))
        settings = make_settings(
            device="cpu",
            quick=True,
            configs=["tiny"],
            batches=[2],
            seqs=[16],
            backends=["hf-eager", "hf-sdpa", "bertfast-torch", "bertfast-cuda", "wrong"],
            varlen=["3x16"],
            rep_ms=10,
            training=False,  # the training rows: tests/test_bench_training.py
        )
        results = run_suite(settings, out, log=lines.append)
    return results, out, lines


def test_results_file_has_the_schema(suite_run):
    results, out, lines = suite_run
    data = load_results(out / "results.json")
    for key in ("device", "versions", "git_commit", "ceilings", "settings", "backend_report"):
        assert key in data
    assert {"torch", "transformers", "bertfast", "triton"} <= set(data["versions"])
    assert data["ceilings"]["copy_gbps"] > 0 and data["ceilings"]["matmul_tflops"]["fp32"] > 0
    backends = {(r["backend"], r["case"]) for r in data["rows"]}
    for name in ("hf-eager", "hf-sdpa", "bertfast-torch", "wrong"):
        assert {(name, "dense"), (name, "varlen")} <= backends
    for row in data["rows"]:
        assert ROW_FIELDS <= set(row), ROW_FIELDS - set(row)
        assert row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
    assert data["kernel_rows"]
    for row in data["kernel_rows"]:
        assert KERNEL_FIELDS <= set(row)
    # A backend that cannot run is listed with its reason, not dropped.
    cuda = [s for s in data["skipped"] if s["backend"] == "bertfast-cuda"]
    assert cuda and all(s["reason"] for s in cuda)
    assert any("hf-sdpa" in line for line in lines)  # progress was reported


def test_kernel_candidates_of_a_case_share_their_rounds(suite_run):
    """The candidates of one op, shape and dtype are timed in the same rotating rounds: one
    sample each per round, the speedup's interval from the per-round ratios."""
    results, _, _ = suite_run
    groups: dict[tuple, list[dict]] = {}
    for r in results["kernel_rows"]:
        groups.setdefault((r["op"], r["batch"], r["seq"], r["dtype"]), []).append(r)
    assert any(len(group) > 1 for group in groups.values())
    for group in groups.values():
        counts = {len(r["samples_ms"]) for r in group}
        assert len(counts) == 1 and counts == {group[0]["repeats"]}
        assert all(r["interleaved"] is (len(group) > 1) for r in group)
        for r in group:
            assert r["ci_low_ms"] <= r["median_ms"] <= r["ci_high_ms"]
            assert r["speedup_ci_low"] <= r["speedup_ci_high"]
        # The baseline row (the fastest non-bertfast candidate) against itself, round by
        # round: exactly 1. Variants may share its backend name; one row is the baseline.
        named = [r for r in group if r.get("baseline") == r["backend"]]
        if named:
            assert any((r["speedup_ci_low"], r["speedup_ci_high"]) == (1.0, 1.0) for r in named)


def test_kernel_table_shows_the_speedup_interval(suite_run):
    results, out, _ = suite_run
    text = (out / "results.md").read_text()
    assert "| × baseline | × baseline 95 % CI | baseline |" in text
    row = next(r for r in results["kernel_rows"] if r["backend"] == r["baseline"])
    head = f"| {row['op']} | {row['backend']} | {row['variant'] or '–'} | {row['batch']} |"
    line = next(line for line in text.splitlines() if line.startswith(head))
    assert "| 1–1 |" in line


def test_a_kernel_candidate_that_fails_becomes_a_skip_row(monkeypatch):
    """A candidate failing its first call, or one of the rounds, is a skip entry with its
    error; the others of the case are still timed and compared."""
    inputs = [{"x": torch.randn(4, 8)} for _ in range(2)]

    def flaky(x):
        if x is inputs[1]:
            raise RuntimeError("kernel failed on the second input set")
        return x["x"] * 2

    def make_case(cfg, batch, seq, dtype, device, n, kernel_backends):
        case = bench_kernels.OpCase("double", inputs, lambda x: x["x"] * 2, 256, None)
        case.candidates += [
            bench_kernels.Candidate("torch-ref", "", lambda x: x["x"] * 2),
            bench_kernels.Candidate("bertfast-flaky", "", flaky),
            bench_kernels.Candidate("bertfast-broken", "", lambda x: x["missing"]),
        ]
        return case

    monkeypatch.setattr(bench_kernels, "KERNEL_OPS", ("double",))
    monkeypatch.setitem(bench_kernels.OP_CASES, "double", make_case)
    # A time cap (4 x 100 ms per candidate) round 0 never reaches: round 1 (input set 1) runs.
    settings = make_settings(device="cpu", quick=True, rep_ms=100)
    settings.kernel_shapes = [(1, 8)]
    ceilings = {"copy_gbps": 10.0, "matmul_n": 8, "matmul_tflops": {"fp32": 1.0}}
    rows, skipped = bench_kernels.run_kernels(settings, ceilings, lambda _: None)
    assert [r["backend"] for r in rows] == ["torch-ref"]
    assert rows[0]["max_abs_err"] == 0.0 and rows[0]["speedup_vs_baseline"] == 1.0
    reasons = {s["backend"]: s["reason"] for s in skipped if s.get("op") == "double"}
    assert reasons["bertfast-flaky"] == "RuntimeError: kernel failed on the second input set"
    assert reasons["bertfast-broken"].startswith("KeyError")


def test_varlen_rows_count_real_tokens(suite_run):
    results, _, _ = suite_run
    row = next(r for r in results["rows"] if r["case"] == "varlen" and r["backend"] == "hf-sdpa")
    lengths = varlen_lengths(3, 16, 0.5, seed=0)
    assert row["tokens"] == sum(lengths) and row["fill"] == pytest.approx(sum(lengths) / 48)
    config = BertConfig(**bench_runners.TINY)
    assert row["gflop"] == pytest.approx(model_flops(config, lengths) / 1e9)


def test_errors_are_measured_against_the_reference(suite_run):
    results, _, _ = suite_run
    for row in results["rows"]:
        if row["backend"] == "wrong":
            assert row["max_abs_err"] > 0.09
            assert row["within_rule"] is False
        else:
            assert row["max_abs_err"] < 1e-4
            assert row["within_rule"] is True
        if row["backend"] == "hf-sdpa":
            assert row["speedup_vs_hf_sdpa"] == 1.0


def test_markdown_table_has_every_row(suite_run):
    results, out, _ = suite_run
    text = (out / "results.md").read_text()
    assert text == render_markdown(results)
    lines = text.splitlines()
    for row in results["rows"]:
        head = f"| {row['backend']} | {row['config']} | {row['case']} | {row['batch']} | "
        head += f"{row['seq']} | {row['dtype']} |"
        assert sum(line.startswith(head) for line in lines) == 1, head
    for row in results["kernel_rows"]:
        head = f"| {row['op']} | {row['backend']} | {row['variant'] or '–'} | {row['batch']} |"
        assert any(line.startswith(head) for line in lines), head
    assert "**NO**" in text  # the wrong backend fails the 3x rule in the table too


def _small_results() -> dict:
    row = {
        "backend": "hf-sdpa",
        "config": "tiny",
        "case": "dense",
        "batch": 2,
        "seq": 16,
        "dtype": "fp32",
        "median_ms": 2.0,
        "speedup_vs_hf_sdpa": 1.0,
        "frac_ceiling": 0.3,
    }
    fast = {**row, "backend": "bertfast-triton", "median_ms": 1.0, "speedup_vs_hf_sdpa": 2.0}
    varlen = {**fast, "case": "varlen", "speedup_vs_hf_sdpa": None, "frac_ceiling": None}
    kernel = {
        "op": "bias_gelu",
        "backend": "torch-ref",
        "variant": "",
        "batch": 2,
        "seq": 16,
        "dtype": "fp32",
        "metric": "GB/s",
        "frac_ceiling": 0.5,
    }
    return {
        "device": {"name": "test device"},
        "ceilings": {"copy_gbps": 10.0, "matmul_n": 8, "matmul_tflops": {"fp32": 1.0}},
        "rows": [row, fast, varlen],
        "kernel_rows": [kernel],
        "skipped": [],
    }


def test_plots_are_drawn_from_a_results_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_small_results()))
    written = plot_results(path, tmp_path / "plots")
    assert {p.name for p in written} == {"speedup.png", "floor.png", "kernels.png"}
    for p in written:
        assert p.read_bytes()[:8] == PNG_SIGNATURE
    # The command draws them too, beside the file by default.
    assert cli.main(["--plot", str(path)]) == 0
    assert (tmp_path / "speedup.png").read_bytes()[:8] == PNG_SIGNATURE


def test_plot_rejects_a_file_that_is_not_results(tmp_path):
    path = tmp_path / "other.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a bertfast bench results file"):
        plot_results(path)


def test_three_times_rule():
    base = {"config": "c", "case": "dense", "batch": 1, "seq": 8, "dtype": "bf16"}
    sdpa = {**base, "backend": "hf-sdpa", "median_ms": 2.0, "max_abs_err": 0.01}
    close = {**base, "backend": "a", "median_ms": 1.0, "max_abs_err": 0.025}
    far = {**base, "backend": "b", "median_ms": 1.0, "max_abs_err": 0.05}
    nan = {**base, "backend": "c", "median_ms": 1.0, "max_abs_err": None}
    rows = [sdpa, close, far, nan]
    finish_rows(rows)
    assert close["within_rule"] is True and close["err_ratio"] == pytest.approx(2.5)
    assert far["within_rule"] is False
    assert nan["within_rule"] is False
    assert close["speedup_vs_hf_sdpa"] == 2.0


def test_flops_match_perf_targets():
    base = BertConfig.preset("bert-base")
    # perf-targets.md: 169.9 M linear FLOP/token, 4.7 M attention FLOP/token at S = 128.
    assert model_flops(base, [1]) == pytest.approx(169.9e6 + 4 * 12 * 768, rel=1e-3)
    assert model_flops(base, [128] * 32) / 1e9 == pytest.approx(715, rel=2e-3)


@pytest.mark.parametrize("batch,seq", [(32, 512), (8, 128), (3, 7), (1, 128)])
def test_varlen_lengths_are_seeded_and_half_full(batch, seq):
    lengths = varlen_lengths(batch, seq, 0.5, seed=0)
    assert lengths == varlen_lengths(batch, seq, 0.5, seed=0)
    assert all(1 <= n <= seq for n in lengths)
    assert sum(lengths) == round(0.5 * batch * seq)


def test_settings_reject_unknown_choices():
    with pytest.raises(ValueError, match="unknown config"):
        make_settings(device="cpu", configs=["bert-huge"])
    with pytest.raises(ValueError, match="unknown dtype"):
        make_settings(device="cpu", dtypes=["fp8"])
    with pytest.raises(ValueError, match="unknown backend"):
        make_settings(device="cpu", backends=["onnx"])
    with pytest.raises(ValueError, match="exceeds"):
        make_settings(device="cpu", seqs=[1024])


def test_cpu_quick_grid_records_the_baselines():
    settings = make_settings(device="cpu", quick=True)
    assert {"hf-eager", "hf-sdpa", "bertfast-torch"} <= set(settings.backends)
    assert settings.dtypes == ["fp32"]
    assert any(c.varlen for c in settings.cases)
    assert all(c.batch * c.seq <= 64 for c in settings.cases)


def test_register_adds_the_bench_subcommand():
    parser = argparse.ArgumentParser(prog="bertfast")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--device", "cpu", "--dtypes", "fp32"])
    assert args.func is cli.run and args.quick and args.dtypes == ["fp32"]


def test_cpu_kernel_grid_leaves_out_sdpa_kernels_that_need_cuda(suite_run):
    results, _, lines = suite_run
    backends = {r["backend"] for r in results["kernel_rows"]}
    assert "sdpa-math" in backends
    assert not backends & {"sdpa-efficient", "sdpa-cudnn"}
    left_out = {s["backend"]: s["reason"] for s in results["skipped"] if s["kind"] == "kernel"}
    assert left_out["sdpa-efficient"] == left_out["sdpa-cudnn"] == "not available on cpu"
    assert not any("turning off both" in s["reason"] for s in results["skipped"])
    assert not any("turning off both" in line for line in lines)


def test_kernel_section_says_what_ran_and_why_no_bertfast_rows(suite_run):
    results, out, _ = suite_run
    text = (out / "results.md").read_text()
    assert "## Kernels: BERT-base layer (H 768, 12 heads of 64, I 3072) at b2×s32, fp32" in text
    assert "BERT-base shapes" not in text
    note = next(line for line in text.splitlines() if line.startswith("No bertfast kernel rows"))
    # The device reason, not "not built": building the extension would not make it run here.
    assert "`bertfast-cuda`: the CUDA kernels run on CUDA devices only, not on cpu" in note


def test_kernel_note_is_absent_when_bertfast_kernels_ran(suite_run):
    results, _, _ = suite_run
    kernel = {**results["kernel_rows"][0], "backend": "bertfast-triton"}
    text = render_markdown({**results, "kernel_rows": [*results["kernel_rows"], kernel]})
    assert "No bertfast kernel rows" not in text


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("name", ["speedup.png", "floor.png", "kernels.png"])
def test_plots_are_readable(name):
    """Titles inside the figure, the legend clear of every bar, each bar labelled with its value."""
    pytest.importorskip("matplotlib")
    from bertfast.bench import report

    results = _small_results()
    long_name = "AMD EPYC 9654 96-Core Processor with a long marketing name"
    results["device"]["name"] = long_name
    # More backends and cases than fit beside a legend inside the axes.
    for backend in ("hf-eager", "bertfast-torch", "bertfast-cuda"):
        for batch in (1, 8, 32):
            results["rows"].append(
                {**results["rows"][0], "backend": backend, "batch": batch, "frac_ceiling": 0.9}
            )
    figures = {
        "speedup.png": lambda: report._e2e_figure(
            results, "speedup_vs_hf_sdpa", "speedup", "Speedup over HF SDPA", 1.0
        ),
        "floor.png": lambda: report._e2e_figure(
            results,
            "frac_ceiling",
            "floor / time",
            "Fraction of the compute floor (FLOPs at the measured matmul ceiling / time)",
            None,
            "{:.0%}",
        ),
        "kernels.png": lambda: report._kernel_figure(results),
    }
    fig = figures[name]()
    renderer = _drawn(fig)
    figure_box = fig.bbox
    title = fig._suptitle
    assert title is not None and long_name.split()[0] in title.get_text()
    box = title.get_window_extent(renderer)
    assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and box.y1 <= figure_box.y1
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        bars = [p for c in ax.containers for p in c.patches if p.get_height() == p.get_height()]
        assert bars
        for bar in bars:
            assert not _overlaps(legend, bar.get_window_extent(renderer))
        labels = [t for t in ax.texts if t.get_text()]
        finite = [b for b in bars if b.get_height() > 0]
        assert len(labels) == len(finite)
        assert all(
            t.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y1 + 1
            for t in labels
        )  # value labels fit under the top of the axes


def test_value_labels_sit_inside_the_axes_above_long_error_bars():
    """A bar's value label goes above its error bar: the axes leave room for both."""
    pytest.importorskip("matplotlib")
    from bertfast.bench import report

    results = _small_results()
    for row in results["rows"][:2]:
        row.update(speedup_ci_low=0.5 * row["speedup_vs_hf_sdpa"], speedup_ci_high=4.0)
    fig = report._e2e_figure(results, "speedup_vs_hf_sdpa", "speedup", "Speedup", 1.0)
    renderer = _drawn(fig)
    (ax,) = fig.axes
    assert ax.get_ylim()[1] > 4.0
    labels = [t for t in ax.texts if t.get_text()]
    assert len(labels) == 2
    top = ax.get_window_extent(renderer).y1
    assert all(t.get_window_extent(renderer).y1 <= top + 1 for t in labels)


def test_pytest_benchmark_grid_reuses_the_suite_cases():
    """benchmarks/test_bench_pytest.py: the suite's grids, GPU cases behind the gpu marker."""
    pytest.importorskip("pytest_benchmark")
    from benchmarks import test_bench_pytest as suite_tests
    from bertfast.bench.settings import default_cases

    kernels = suite_tests.kernel_params(quick=True)
    e2e = suite_tests.e2e_params(quick=True)
    for param in kernels + e2e:
        gpu = any(mark.name == "gpu" for mark in param.marks)
        assert gpu == (param.values[0].device == "cuda"), param.id
    cpu_kernels = {p.values[0].backend for p in kernels if p.values[0].device == "cpu"}
    assert "sdpa-math" in cpu_kernels and not cpu_kernels & {"sdpa-efficient", "sdpa-cudnn"}
    assert not any(b.startswith("bertfast-") for b in cpu_kernels)
    gpu_kernels = {p.values[0].backend for p in kernels if p.values[0].device == "cuda"}
    assert {"bertfast-triton", "bertfast-cuda", "sdpa-cudnn"} <= gpu_kernels
    cpu_cases = {p.values[0].case for p in e2e if p.values[0].device == "cpu"}
    assert cpu_cases == set(default_cases(gpu=False, quick=True))
    # --quick compiles one case per torch.compile backend, on the GPU only.
    compiled = [p.values[0] for p in e2e if p.values[0].backend.startswith("hf-compile")]
    assert compiled and all(e.device == "cuda" for e in compiled)
    assert len(compiled) == len({e.backend for e in compiled})


def test_cpu_run_shows_the_gpu_model_estimates(suite_run):
    """Without a GPU the run still shows the model's estimate of the GPU forward for every card
    it knows, as log lines, rows in results.json and a section of results.md."""
    results, out, lines = suite_run
    totals = [r for r in results["model_estimates"] if r["what"] == "total"]
    assert {r["card"] for r in totals} == {"H100 SXM", "H200", "A100 SXM"}
    assert sum(line.startswith("model estimate ") for line in lines) == len(totals)
    text = (out / "results.md").read_text()
    assert "## Model estimate (not a measurement)" in text
