"""The training rows of the benchmark suite on the CPU (Triton under the interpreter): rows per
backend, loss and gradient errors against HF eager in fp32, skip rows with reasons, the
report's table and plot, the command-line flags; and the kernels' forward + backward rows.

Nothing here asserts a timing: the numbers of a shared CPU mean nothing.
"""

import argparse

import pytest

pytest.importorskip("transformers")

import torch

from bertfast import ops
from bertfast.bench import cli, make_settings, render_markdown, run_suite, training
from bertfast.bench import kernels as bench_kernels
from bertfast.bench import runners as bench_runners
from bertfast.bench.settings import TimerSettings, TrainCase, default_train_cases
from bertfast.config import BertConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A small vocabulary: the pre-training head's vocabulary projection and AdamW over the word
# embeddings are most of a tiny step otherwise.
SMALL_VOCAB = 512
# The rows that train on the interpreter: one layer, FFN width 128 (the rows' fields, errors
# and rule do not depend on size; the model's layers are checked in test_triton_training.py).
INTERPRETER_TINY = {"vocab_size": SMALL_VOCAB, "num_hidden_layers": 1, "intermediate_size": 128}
TRAIN_FIELDS = {
    "backend",
    "config",
    "head",
    "batch",
    "seq",
    "dtype",
    "autocast",
    "dropout",
    "optimizer",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "speedup_vs_hf_eager",
    "speedup_ci_low",
    "speedup_ci_high",
    "ci_low_ms",
    "ci_high_ms",
    "noisy",
    "interleaved",
    "samples_ms",
    "peak_mib",
    "peak_ratio_vs_hf_eager",
    "loss",
    "loss_abs_err",
    "grad_max_abs_err",
    "grad_rel_err",
    "grad_worst_param",
    "within_rule",
    "compile_s",
    "note",
}
GOOD_BACKENDS = {"hf-eager", "hf-sdpa", "bertfast-torch", "bertfast-triton"}


def _build_wrong(source, head, dropout):
    """A deliberately wrong model: bertfast's torch backend with every head weight moved."""
    trainer = training.TRAINERS["bertfast-torch"].build(source, head, dropout)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if not name.startswith("bert."):
                p.add_(torch.randn(p.shape, generator=gen))
    return trainer


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """The training rows only, at tiny b1×s4 with both heads, the wrong model added."""
    out = tmp_path_factory.mktemp("bench-training")
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        for key, value in INTERPRETER_TINY.items():
            mp.setitem(bench_runners.TINY, key, value)
        mp.setitem(training.TRAINERS, "wrong", training.TrainerSpec(_build_wrong))
        settings = make_settings(
            device="cpu",
            quick=True,
            forward=False,
            kernels=False,
            backends=[
                "hf-eager",
                "hf-sdpa",
                "hf-compile",
                "bertfast-torch",
                "bertfast-triton",
                "bertfast-cuda",
                "bertfast-triton-graph",
                "wrong",
            ],
            train_cases=["tiny:1x4"],
            rep_ms=1,
        )
        # One warm-up and one timed step: a step on the interpreter takes a second or two.
        settings.train_timer = TimerSettings(1, 1.0, 1, 1, 1, False)
        results = run_suite(settings, out, log=lines.append)
    return results, out, lines


def test_rows_for_every_backend_that_trains(training_run):
    results, _, lines = training_run
    assert results["rows"] == [] and results["kernel_rows"] == []
    rows = results["training_rows"]
    got = {(r["backend"], r["head"]) for r in rows}
    for backend in GOOD_BACKENDS | {"wrong"}:
        assert {(backend, "classification"), (backend, "pretraining")} <= got
    for r in rows:
        assert TRAIN_FIELDS <= set(r), TRAIN_FIELDS - set(r)
        assert (r["config"], r["batch"], r["seq"], r["dtype"]) == ("tiny", 1, 4, "fp32")
        assert r["autocast"] is False and r["dropout"] == 0.1
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["optimizer"].startswith("AdamW")
    triton = [r for r in rows if r["backend"] == "bertfast-triton"]
    assert all(r["note"] == training.INTERPRETER_NOTE for r in triton)
    assert any(line.startswith("train tiny pretraining") for line in lines)


def test_gradient_errors_are_small_and_the_wrong_model_fails(training_run):
    results, _, _ = training_run
    for r in results["training_rows"]:
        if r["backend"] == "wrong":
            assert r["loss_abs_err"] > 0.05, r
            assert r["grad_max_abs_err"] > 1e-3, r
            assert r["within_rule"] is False
            continue
        assert r["grad_max_abs_err"] is not None and r["grad_max_abs_err"] < 1e-5, r
        assert r["loss_abs_err"] is not None and r["loss_abs_err"] < 1e-5, r
        assert r["grad_missing"] == []
        assert r["within_rule"] is True
        if r["backend"] == "hf-eager":
            assert r["speedup_vs_hf_eager"] == 1.0
    # The check covers every parameter, the tied word embeddings included.
    pretraining = next(r for r in results["training_rows"] if r["head"] == "pretraining")
    assert pretraining["ref_loss"] > 0


def test_skip_rows_carry_reasons(training_run):
    results, _, _ = training_run
    skipped = {s["backend"]: s for s in results["skipped"] if s["kind"] == "train"}
    assert "--compile-on-cpu" in skipped["hf-compile"]["reason"]
    assert skipped["bertfast-cuda"]["reason"] == (
        "the CUDA kernels run on CUDA devices only, not on cpu"
    )
    assert "inference only" in skipped["bertfast-triton-graph"]["reason"]
    assert all(s["reason"] for s in skipped.values())
    assert not {"hf-compile", "bertfast-cuda"} & {r["backend"] for r in results["training_rows"]}


def test_peak_memory_is_none_on_the_cpu_and_the_report_says_so(training_run):
    results, out, _ = training_run
    assert all(r["peak_mib"] is None for r in results["training_rows"])
    text = (out / "results.md").read_text()
    assert "Peak memory is read on CUDA devices only" in text


def test_report_renders_the_training_table_and_plot(training_run):
    results, out, _ = training_run
    text = (out / "results.md").read_text()
    assert text == render_markdown(results)
    assert "## Training steps" in text and "## End to end" not in text
    assert "| backend | config | head | batch | seq | dtype | ms/step |" in text
    lines = text.splitlines()
    for r in results["training_rows"]:
        head = f"| {r['backend']} | tiny | {r['head']} | 1 | 4 | fp32 |"
        assert sum(line.startswith(head) for line in lines) == 1, head
    wrong = next(line for line in lines if line.startswith("| wrong | tiny | classification"))
    assert "**NO**" in wrong
    assert "(hidden 0.1 / attention 0.1)" in text  # the timed rows' dropout is said
    assert (out / "training.png").read_bytes()[:8] == PNG_SIGNATURE


def _compiling(source, head, dropout):
    """A stand-in for a compiling trainer (bertfast's torch backend; TrainerSpec says it
    compiles)."""
    return training.TRAINERS["bertfast-torch"].build(source, head, dropout)


def test_training_backends_of_a_case_run_interleaved(monkeypatch):
    """The backends of a case are timed in the same rotating rounds (one step each per round);
    a compiling backend followed by another compiling one is timed alone before it, since the
    other's check would reset torch.compile under it."""
    monkeypatch.setitem(bench_runners.TINY, "vocab_size", SMALL_VOCAB)
    for name in ("compiling-a", "compiling-b"):
        monkeypatch.setitem(
            training.TRAINERS, name, training.TrainerSpec(_compiling, compiles=True)
        )
    calls = []
    original = training.train_step

    def counting(trainer, optimizer, batch, device, precision):
        calls.append(trainer)
        return original(trainer, optimizer, batch, device, precision)

    monkeypatch.setattr(training, "train_step", counting)
    settings = make_settings(
        device="cpu",
        quick=True,
        forward=False,
        kernels=False,
        backends=["hf-eager", "compiling-a", "bertfast-torch", "compiling-b"],
        train_cases=["tiny:1x4"],
        train_heads=["classification"],
    )
    # One warm-up step, then 4 rounds (the most: 4 x max_reps) under a cap never reached.
    settings.train_timer = TimerSettings(1, 60_000.0, 1, 1, 1, False)
    lines = []
    rows, skipped = training.run_training(settings, {"matmul_tflops": {}}, lines.append)
    assert skipped == []
    by_backend = {r["backend"]: r for r in rows}
    assert list(by_backend) == ["hf-eager", "compiling-a", "bertfast-torch", "compiling-b"]
    alone = by_backend.pop("compiling-a")
    assert alone["interleaved"] is False and alone["repeats"] == 4
    for r in by_backend.values():
        assert r["interleaved"] is True and len(r["samples_ms"]) == r["repeats"] == 4
        assert r["ci_low_ms"] <= r["median_ms"] <= r["ci_high_ms"]
    eager = by_backend["hf-eager"]
    assert (eager["speedup_ci_low"], eager["speedup_ci_high"]) == (1.0, 1.0)
    # Interleaved rows: the interval of the per-round ratios; the lone row: the far ends of the
    # two intervals.
    assert alone["speedup_ci_low"] == pytest.approx(eager["ci_low_ms"] / alone["ci_high_ms"])
    assert alone["speedup_ci_high"] == pytest.approx(eager["ci_high_ms"] / alone["ci_low_ms"])
    # Each backend's first step as it is prepared; compiling-a's warm-up step and 4 rounds
    # before compiling-b's first step; then the other three's warm-up steps and their rounds,
    # one step each per round.
    trainers = list(dict.fromkeys(calls))
    steps = [trainers.index(t) for t in calls]
    assert steps[:12] == [0, 1, 2] + [1] * 5 + [3] + [0, 2, 3]
    rounds = steps[12:]
    assert len(rounds) == 12
    assert all(sorted(rounds[i : i + 3]) == [0, 2, 3] for i in range(0, 12, 3))
    assert any("95 % CI" in line for line in lines)


def test_a_backend_without_a_backward_becomes_a_skip_row(monkeypatch):
    """The refusal comes from the model (ops.KERNEL_BACKWARD_OPS), said once per config."""
    monkeypatch.setitem(bench_runners.TINY, "vocab_size", SMALL_VOCAB)
    monkeypatch.setitem(ops.KERNEL_BACKWARD_OPS, "triton", ("bias_gelu",))
    settings = make_settings(
        device="cpu",
        quick=True,
        forward=False,
        kernels=False,
        backends=["bertfast-triton"],
        train_cases=["tiny:1x4", "tiny:2x4"],
        train_heads=["classification"],
        rep_ms=1,
    )
    rows, skipped = training.run_training(settings, {"matmul_tflops": {}}, lambda _: None)
    assert rows == []
    assert len(skipped) == 1
    assert skipped[0]["backend"] == "bertfast-triton" and skipped[0]["config"] == "tiny"
    assert "cannot train on backend='triton'" in skipped[0]["reason"]
    assert "'attention'" in skipped[0]["reason"]


def test_training_under_bf16_autocast_on_the_cpu(monkeypatch):
    """bf16 autocast runs where the ops allow it; what cannot run is a skip row with its error
    (Triton's interpreter refuses bf16)."""
    monkeypatch.setitem(bench_runners.TINY, "vocab_size", SMALL_VOCAB)
    settings = make_settings(
        device="cpu",
        quick=True,
        forward=False,
        kernels=False,
        backends=["hf-eager", "bertfast-torch", "bertfast-triton"],
        train_cases=["tiny:2x4"],
        train_heads=["classification"],
        train_precision="bf16",
        rep_ms=1,
    )
    rows, skipped = training.run_training(settings, {"matmul_tflops": {}}, lambda _: None)
    by_backend = {r["backend"]: r for r in rows}
    assert set(by_backend) == {"hf-eager", "bertfast-torch"}
    for r in rows:
        assert r["dtype"] == "bf16" and r["autocast"] is True
        # bf16 errors are real but bounded, and hf-eager's own sets the rule.
        assert 0 < r["grad_max_abs_err"] < 0.05 and r["within_rule"] is True
    (triton,) = [s for s in skipped if s["backend"] == "bertfast-triton"]
    assert "bf16" in triton["reason"] or "bfloat16" in triton["reason"]
    assert triton["head"] == "classification" and triton["dtype"] == "bf16"


def test_default_training_cases():
    gpu = default_train_cases(gpu=True, quick=True)
    assert gpu == default_train_cases(gpu=True, quick=False)
    for head in ("classification", "pretraining"):
        assert TrainCase("bert-base", head, 32, 128) in gpu
        assert TrainCase("bert-large", head, 8, 384) in gpu
    cpu = make_settings(device="cpu", quick=True)
    assert cpu.train_cases == default_train_cases(gpu=False, quick=True)
    assert all(c.config == "tiny" and c.batch * c.seq <= 64 for c in cpu.train_cases)
    assert {c.head for c in cpu.train_cases} == {"classification", "pretraining"}
    assert cpu.train_precision == "fp32" and cpu.kernel_passes == ("forward", "backward")
    assert cpu.to_dict()["train_cases"] == [c.label for c in cpu.train_cases]


def test_settings_reject_bad_training_choices():
    with pytest.raises(ValueError, match="unknown head"):
        make_settings(device="cpu", train_heads=["qa"])
    with pytest.raises(ValueError, match="CONFIG:BATCHxSEQ"):
        make_settings(device="cpu", train_cases=["32x128"])
    with pytest.raises(ValueError, match="unknown config"):
        make_settings(device="cpu", train_cases=["bert-huge:1x8"])
    with pytest.raises(ValueError, match="seq"):
        make_settings(device="cpu", train_cases=["tiny:1x1024"])
    with pytest.raises(ValueError, match="unknown training precision"):
        make_settings(device="cpu", train_precision="fp8")
    with pytest.raises(ValueError, match="nothing to measure"):
        make_settings(device="cpu", forward=False, training=False)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bertfast")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_cli_training_flags_parse():
    args = _parse(
        [
            "--training-only",
            "--train-cases",
            "bert-base:32x128",
            "tiny:2x8",
            "--train-heads",
            "pretraining",
            "--train-precision",
            "bf16",
        ]
    )
    assert args.training_only and not args.no_training
    assert args.train_cases == ["bert-base:32x128", "tiny:2x8"]
    assert args.train_heads == ["pretraining"] and args.train_precision == "bf16"
    assert _parse(["--no-training"]).no_training
    with pytest.raises(SystemExit):
        _parse(["--no-training", "--training-only"])
    with pytest.raises(SystemExit):
        _parse(["--train-heads", "qa"])
    settings = make_settings(
        device="cpu",
        forward=not args.training_only,
        train_cases=args.train_cases,
        train_heads=args.train_heads,
        train_precision=args.train_precision,
    )
    assert settings.cases == [] and settings.kernel_passes == ("backward",)
    assert settings.train_cases == [
        TrainCase("bert-base", "pretraining", 32, 128),
        TrainCase("tiny", "pretraining", 2, 8),
    ]
    assert settings.train_precision == "bf16"
    no_training = make_settings(device="cpu", training=False)
    assert no_training.train_cases == [] and no_training.kernel_passes == ("forward",)


def test_help_lists_the_training_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--no-training", "--training-only", "--train-cases", "--train-heads"):
        assert flag in text
    assert "training steps" in text


def test_kernel_backward_rows_on_the_cpu(monkeypatch):
    """Forward + backward of every op with a backward, against the fp32 reference's autograd;
    the kernel backends are listed as skipped on the CPU with their reason."""
    settings = make_settings(device="cpu", quick=True, training=True, rep_ms=1)
    settings.kernel_shapes = [(1, 8)]
    rows, skipped = bench_kernels.run_kernel_backwards(settings, _ceilings(), lambda _: None)
    ops_seen = {r["op"] for r in rows}
    assert len(ops_seen) == len(bench_kernels.BACKWARD_CASES)
    assert {"attention", "bias_gelu", "linear_bias_gelu", "linear_bias_residual_layer_norm"} <= (
        ops_seen
    )
    for r in rows:
        assert r["pass"] == "fwd+bwd"
        assert r["max_abs_err"] is not None and r["max_abs_err"] < 1e-3, r
        assert r["worst_grad"]
        assert r["speedup_vs_baseline"] is not None
    assert {"torch-ref", "torch-native", "sdpa-math"} <= {r["backend"] for r in rows}
    left_out = {s["backend"]: s for s in skipped if not s.get("op")}
    assert "timed on CUDA devices only" in left_out["bertfast-triton"]["reason"]
    assert all(s["pass"] == "fwd+bwd" for s in skipped)
    text = render_markdown(
        {
            "ceilings": _ceilings(),
            "rows": [],
            "kernel_rows": [],
            "kernel_backward_rows": rows,
            "skipped": skipped,
        }
    )
    assert "## Kernels, forward + backward: BERT-base layer" in text
    assert "| attention | torch-ref | padded | 1 | 8 | fp32 |" in text


def _ceilings() -> dict:
    return {"copy_gbps": 10.0, "matmul_n": 8, "matmul_tflops": {"fp32": 1.0}}


def _tiny_config() -> BertConfig:
    return BertConfig(**{**bench_runners.TINY, "vocab_size": SMALL_VOCAB})


@pytest.mark.parametrize("op", list(bench_kernels.BACKWARD_CASES))
def test_triton_backward_candidates_match_the_reference_in_the_interpreter(op):
    case = bench_kernels.BACKWARD_CASES[op](
        _tiny_config(), 2, 8, torch.float32, torch.device("cpu"), 1, ["triton"]
    )
    reference = case.reference_grads()
    triton = [c for c in case.candidates if c.backend == "bertfast-triton"]
    assert triton
    for cand in [*triton, case.candidates[0]]:
        grads = bench_kernels.backward_first_call(case, cand, torch.device("cpu"))
        assert not isinstance(grads, str), grads
        err, worst = bench_kernels.grad_error(grads, reference)
        assert err is not None and err < 1e-4, (cand.backend, cand.variant, worst, err)
    # A wrong gradient is caught.
    wrong = {k: g + 0.01 for k, g in grads.items()}
    assert bench_kernels.grad_error(wrong, reference)[0] > 5e-3


def test_backward_candidates_follow_the_backward_registry(monkeypatch):
    monkeypatch.setitem(ops.KERNEL_BACKWARD_OPS, "triton", ("bias_gelu",))
    monkeypatch.setitem(ops.KERNEL_BACKWARD_OPS, "cuda", ("attention",))
    cfg, cpu, kbs = _tiny_config(), torch.device("cpu"), ["triton", "cuda"]
    backends = {
        op: {c.backend for c in make(cfg, 1, 4, torch.float32, cpu, 1, kbs).candidates}
        for op, make in bench_kernels.BACKWARD_CASES.items()
    }
    assert "bertfast-triton" in backends["bias_gelu"]
    assert "bertfast-triton" not in backends["attention"]
    assert "bertfast-cuda" in backends["attention"]
    assert "bertfast-cuda" not in backends["bias_gelu"]


def test_fused_epilogue_training_row(monkeypatch):
    """bertfast-triton-fused: the GEMM epilogues fused (ops.linear_epilogue) in training, on the
    interpreter; its loss and gradients as close to HF eager as the unfused model's."""
    for key, value in INTERPRETER_TINY.items():
        monkeypatch.setitem(bench_runners.TINY, key, value)
    calls = []
    original = ops.linear_epilogue

    def counting(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    monkeypatch.setattr(ops, "linear_epilogue", counting)
    settings = make_settings(
        device="cpu",
        quick=True,
        forward=False,
        kernels=False,
        backends=["hf-eager", "bertfast-triton-fused"],
        train_cases=["tiny:1x4"],
        train_heads=["classification"],
        rep_ms=1,
    )
    rows, _ = training.run_training(settings, {"matmul_tflops": {}}, lambda _: None)
    fused = next(r for r in rows if r["backend"] == "bertfast-triton-fused")
    assert fused["grad_max_abs_err"] < 1e-5 and fused["within_rule"] is True
    assert "triton" in calls  # the model ran the fused GEMM epilogue op
