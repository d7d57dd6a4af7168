"""Training steps per backend: time, peak memory, and the loss and gradients against HF eager.

One step of ``BertForSequenceClassification`` (cross-entropy on random labels) or
``BertForPreTraining`` (masked-LM loss on ~15 % of the positions, -100 elsewhere, plus the
next-sentence loss) is: ``zero_grad(set_to_none=True)``; the forward and loss under
``torch.autocast`` (bf16 over fp32 master weights; fp32 without autocast on the CPU, where the
Triton interpreter refuses bf16); ``backward``; ``optimizer.step()`` of AdamW as transformers'
Trainer builds it by default (``adamw_torch_fused`` for torch >= 2.8: ``fused=True``, lr 5e-5).
Every model of a case starts from the same fp32 weights (``TrainSource``: the forward grid's
encoder weights plus seeded head weights) and keeps the config's dropout (BERT's 0.1) while
timed, so every row draws dropout alike.

The check of a row: one forward and backward from those weights, before any optimizer step,
on a copy of the model built with every dropout 0, in the row's precision; its loss and the
gradient of every parameter (under Hugging Face's names) against HF eager attention in fp32
with TF32 off, on the same batch. A row is within the rule when its loss and gradient errors
are at most 3× hf-eager's own in the same precision, plus the dtype's atol (testing.md).

Timing: every backend of a case is checked, built and past its first step (a compile, when it
compiles) before any is timed; then their steps run interleaved, one step each per rotating
round (``timing.benchmark_interleaved``), so a burst of load hits them alike and the speedup
over hf-eager carries the interval of the per-round ratios. A compiling backend followed by
another compiling one in the same case is timed alone first (the other's
``torch.compiler.reset()`` would make it compile again mid-rounds).

Work counted: 3× the encoder's forward FLOPs (``e2e.model_flops``; the backward runs two
matmuls per forward matmul), the heads not counted. Peak memory (CUDA only): how far
``torch.cuda.max_memory_allocated`` rises, over two steps after the first, above what was
allocated before the row's model was built (the models built before it sit idle meanwhile):
weights, gradients, AdamW's state, activations and workspace; on the CPU it is None (no
allocator statistics to read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertfast import ops
from bertfast.bench.e2e import (
    ERR_RULE_FACTOR,
    describe_error,
    err_atol,
    model_flops,
    skip_entry,
    speedup_interval,
    unavailable_reason,
)
from bertfast.bench.runners import ModelSource, fp32_reference_precision, make_inputs
from bertfast.bench.settings import VARLEN_FILL, BenchSettings, Case, TrainCase
from bertfast.bench.stats import fraction_of_ceiling
from bertfast.bench.timing import (
    Timing,
    _flush_buffer,
    benchmark_interleaved,
    empty_cache,
    synchronize,
)
from bertfast.config import BertConfig
from bertfast.weights import bertfast_to_hf

# Head name -> the class name in transformers and in bertfast.heads.
HEAD_CLASSES = {
    "classification": "BertForSequenceClassification",
    "pretraining": "BertForPreTraining",
}
MLM_FRACTION = 0.15  # share of positions with a masked-LM label
LEARNING_RATE = 5e-5  # transformers.TrainingArguments' default
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp32": None}
PEAK_STEPS = 2  # steps run after the first one to read the peak memory
INTERPRETER_NOTE = "Triton interpreter on the CPU: the time is not a kernel time"


@dataclass
class TrainBatch:
    """One training batch: dense inputs (no padding) and the head's labels."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    labels: torch.Tensor
    next_sentence_label: torch.Tensor | None = None  # pre-training only

    def kwargs(self) -> dict[str, torch.Tensor]:
        kw = dict(input_ids=self.input_ids, token_type_ids=self.token_type_ids, labels=self.labels)
        if self.next_sentence_label is not None:
            kw["next_sentence_label"] = self.next_sentence_label
        return kw


def make_train_batches(
    config: BertConfig, case: TrainCase, count: int, seed: int, device: torch.device
) -> list[TrainBatch]:
    """``count`` distinct batches: the forward grid's random ids, and seeded labels (for
    pre-training, MLM labels at ~15 % of the positions, at least one per row, and NSP labels)."""
    sets, _ = make_inputs(
        config, Case(case.config, case.batch, case.seq), VARLEN_FILL, count, seed, device
    )
    batches = []
    for i, inputs in enumerate(sets):
        gen = torch.Generator().manual_seed(seed * 1000 + 500 + i)
        if case.head == "classification":
            labels = torch.randint(0, config.num_labels, (case.batch,), generator=gen)
            batches.append(TrainBatch(inputs.input_ids, inputs.token_type_ids, labels.to(device)))
            continue
        chosen = torch.rand(case.batch, case.seq, generator=gen) < MLM_FRACTION
        one_per_row = torch.randint(0, case.seq, (case.batch,), generator=gen)
        chosen[torch.arange(case.batch), one_per_row] = True
        labels = torch.where(chosen, inputs.input_ids.cpu(), -100)
        nsp = torch.randint(0, 2, (case.batch,), generator=gen)
        batches.append(
            TrainBatch(inputs.input_ids, inputs.token_type_ids, labels.to(device), nsp.to(device))
        )
    return batches


class TrainSource:
    """One config's weights with a head, in fp32 under Hugging Face's names; every model of a
    case (HF, compiled HF, bertfast on each backend, the reference) loads them."""

    def __init__(self, source: ModelSource, seed: int):
        self.source = source
        self.name = source.name
        self.config = source.config
        self.seed = seed
        self._states: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.source.device

    def bertfast_config(self, dropout: bool) -> BertConfig:
        """The config with its dropout (BERT's 0.1), or with every dropout 0 (the check)."""
        # A copy: the classification head records its problem_type in config.extra.
        changes: dict = dict(extra=dict(self.config.extra))
        if not dropout:
            changes.update(
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=None
            )
        return dataclasses.replace(self.config, **changes)

    def hf_config(self, attn_implementation: str, dropout: bool):
        import transformers

        return transformers.BertConfig.from_dict(
            {**self.bertfast_config(dropout).to_dict(), "attn_implementation": attn_implementation}
        )

    def hf_state(self, head: str) -> dict[str, torch.Tensor]:
        """The head model's weights: the encoder's, and the head's drawn with a fixed seed."""
        if head not in self._states:
            import transformers

            self._states.clear()  # one head's weights on the device at a time
            torch.manual_seed(self.seed + 1)
            with torch.device(self.device):
                model = getattr(transformers, HEAD_CLASSES[head])(self.hf_config("eager", True))
            missing, unexpected = model.bert.load_state_dict(
                self.source.master.hf_state_dict(), strict=False
            )
            # A master without a pooler (MiniLM) leaves the head's seeded pooler in place.
            if unexpected or any(not k.startswith("pooler.") for k in missing):
                raise RuntimeError(
                    f"encoder weights do not fit transformers.{HEAD_CLASSES[head]}: missing "
                    f"{missing}, unexpected {unexpected}"
                )
            self._states[head] = {k: v.detach() for k, v in model.state_dict().items()}
        return self._states[head]

    def hf_model(self, head: str, attn_implementation: str, dropout: bool) -> torch.nn.Module:
        """``transformers.<head class>`` with these weights, in train mode."""
        import transformers

        with torch.device(self.device):
            model = getattr(transformers, HEAD_CLASSES[head])(
                self.hf_config(attn_implementation, dropout)
            )
        model.load_state_dict(self.hf_state(head))
        actual = model.config._attn_implementation
        if actual != attn_implementation:
            raise RuntimeError(
                f"transformers built attention {actual!r}, not {attn_implementation!r}"
            )
        return model.train()

    def bertfast_model(self, head: str, backend: str, dropout: bool) -> torch.nn.Module:
        """``bertfast.heads.<head class>`` on ``backend`` with these weights, in train mode."""
        from bertfast import heads

        cls = getattr(heads, HEAD_CLASSES[head])
        model = cls.from_hf_state_dict(
            self.bertfast_config(dropout),
            self.hf_state(head),
            backend=backend,
            dtype=torch.float32,
            device=self.device,
        )
        return model.train()

    def reference_step(self, head: str, batch: TrainBatch) -> tuple[float, dict[str, torch.Tensor]]:
        """Loss and every parameter's gradient of HF eager in fp32 (TF32 off), dropout off."""
        model = self.hf_model(head, "eager", dropout=False)
        with fp32_reference_precision():
            loss = model(**batch.kwargs()).loss
            loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        return loss.item(), grads


class Trainer:
    """One backend's model of a head: the loss of a batch and the gradients under HF names."""

    compiles = False  # True when the first step compiles (its time is recorded)
    note: str | None = None  # said in the row (for example: timed on the Triton interpreter)

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.call: Callable | None = model

    def start_case(self) -> None:
        """Called once before the model's first step."""

    def finish(self) -> None:
        """Called when the model is done with; frees what it holds beyond the model."""

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        if self.call is None:
            self.start_case()
        return self.call(**batch.kwargs()).loss

    def hf_grads(self) -> dict[str, torch.Tensor]:
        """Each parameter's gradient under Hugging Face's name (those without one left out)."""
        return {n: p.grad for n, p in self.model.named_parameters() if p.grad is not None}


class CompiledHFTrainer(Trainer):
    """``torch.compile(dynamic=False)`` of the HF SDPA model, compiled afresh for each model
    (forward and backward: AOTAutograd), as the forward grid's hf-compile."""

    compiles = True

    def __init__(self, model: torch.nn.Module, mode: str | None = None):
        super().__init__(model)
        self.mode = mode
        self.call = None

    def start_case(self) -> None:
        torch.compiler.reset()
        self.call = torch.compile(self.model, dynamic=False, mode=self.mode)

    def finish(self) -> None:
        self.call = None
        torch.compiler.reset()  # the compiled graphs hold the model's tensors


class BertfastTrainer(Trainer):
    """A bertfast head, eager (CUDA graphs replay inference only)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model)
        if model.backend == "triton" and model.device.type == "cpu":
            self.note = INTERPRETER_NOTE

    def hf_grads(self) -> dict[str, torch.Tensor]:
        named = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        encoder = {n.removeprefix("bert."): g for n, g in named if n.startswith("bert.")}
        out = bertfast_to_hf(encoder, prefix="bert.")
        out.update({n: g for n, g in named if not n.startswith("bert.")})
        return out


@dataclass(frozen=True)
class TrainerSpec:
    """How to build a backend's trainer (source, head, dropout on?), why it cannot run on a
    device (None if it can), and whether its trainers compile (``torch.compiler.reset()`` at
    their start)."""

    build: Callable[[TrainSource, str, bool], Trainer]
    unavailable_reason: Callable[[torch.device], str | None] = lambda device: None
    compiles: bool = False


def _hf_spec(attn_implementation: str, compiled: bool = False) -> TrainerSpec:
    def build(source: TrainSource, head: str, dropout: bool) -> Trainer:
        model = source.hf_model(head, attn_implementation, dropout)
        return CompiledHFTrainer(model) if compiled else Trainer(model)

    return TrainerSpec(build, compiles=compiled)


def _bertfast_spec(backend: str, fused_epilogues: bool = False) -> TrainerSpec:
    """A bertfast backend that can run here trains if its kernels have a backward: the model
    says which lack one when a step starts (``ops.KERNEL_BACKWARD_OPS``), and the row becomes
    a skip entry with that message."""

    def reason(device: torch.device) -> str | None:
        if backend == "cuda" and device.type != "cuda":
            # The device reason first: building the extension would not make it run here.
            return f"the CUDA kernels run on CUDA devices only, not on {device.type}"
        return ops.backend_report(device)[backend]

    def build(source: TrainSource, head: str, dropout: bool) -> Trainer:
        model = source.bertfast_model(head, backend, dropout)
        model.bert.fused_epilogues = fused_epilogues
        return BertfastTrainer(model)

    return TrainerSpec(build, reason)


TRAINERS: dict[str, TrainerSpec] = {
    "hf-eager": _hf_spec("eager"),
    "hf-sdpa": _hf_spec("sdpa"),
    "hf-compile": _hf_spec("sdpa", compiled=True),
    "bertfast-torch": _bertfast_spec("torch"),
    "bertfast-triton": _bertfast_spec("triton"),
    "bertfast-cuda": _bertfast_spec("cuda"),
    # The GEMMs with their epilogues fused (ops.linear_epilogue), eager.
    "bertfast-triton-fused": _bertfast_spec("triton", fused_epilogues=True),
}
# Why a backend of the forward grid has no training row.
INFERENCE_ONLY = {
    "hf-compile-max-autotune": "the training baseline is hf-compile (default mode); "
    "max-autotune is timed on the forward only",
    "bertfast-triton-graph": "CUDA graphs replay inference only (eval, no grad): "
    "training runs eagerly (bertfast-triton)",
    "bertfast-cuda-graph": "CUDA graphs replay inference only (eval, no grad): "
    "training runs eagerly (bertfast-cuda)",
    "bertfast-triton-fused-graph": "CUDA graphs replay inference only (eval, no grad): "
    "training runs eagerly (bertfast-triton-fused)",
}


def make_optimizer(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, str]:
    """AdamW as transformers' Trainer makes it by default (fused), or foreach where the
    device has no fused kernel; and its description."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=LEARNING_RATE, fused=True), "AdamW fused"
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=LEARNING_RATE, foreach=True), "AdamW foreach"


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_step(
    trainer: Trainer,
    optimizer: torch.optim.Optimizer,
    batch: TrainBatch,
    device: torch.device,
    precision: str,
) -> torch.Tensor:
    """zero_grad, forward and loss under autocast, backward, optimizer step; the loss."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, precision):
        loss = trainer.loss(batch)
    loss.backward()
    optimizer.step()
    return loss


def grad_errors(
    grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> dict[str, object]:
    """Max |grad - reference| over every parameter, the parameter where it is, its size
    relative to the largest reference gradient, and parameters without a gradient."""
    missing = sorted(set(reference) - set(grads))
    names = [n for n in reference if n in grads]
    if names:
        errs = torch.stack([(grads[n].float() - reference[n]).abs().amax() for n in names])
        values = errs.tolist()
    else:
        values = []
    scale = max((r.abs().amax().item() for r in reference.values()), default=0.0)
    worst = max(range(len(values)), key=lambda i: values[i], default=None)
    if worst is None or not all(math.isfinite(v) for v in values):
        bad = next((n for n, v in zip(names, values, strict=True) if not math.isfinite(v)), None)
        return dict(
            grad_max_abs_err=None, grad_rel_err=None, grad_worst_param=bad, grad_missing=missing
        )
    err = values[worst] if not missing else None
    return dict(
        grad_max_abs_err=err,
        grad_rel_err=err / scale if err is not None and scale > 0 else None,
        grad_worst_param=names[worst],
        grad_missing=missing,
    )


def check_step(
    trainer: Trainer,
    batch: TrainBatch,
    reference: tuple[float, dict[str, torch.Tensor]],
    device: torch.device,
    precision: str,
) -> dict[str, object]:
    """One forward and backward (no optimizer step): loss and gradient errors."""
    ref_loss, ref_grads = reference
    trainer.model.zero_grad(set_to_none=True)
    with _autocast(device, precision):
        loss = trainer.loss(batch)
    loss.backward()
    value = loss.item()
    loss_err = abs(value - ref_loss) if math.isfinite(value) else None
    return dict(loss=value, ref_loss=ref_loss, loss_abs_err=loss_err) | grad_errors(
        trainer.hf_grads(), ref_grads
    )


def _release(device: torch.device) -> None:
    gc.collect()
    empty_cache(device)


@dataclass
class Measured:
    """What was measured of one backend and case; ``interleaved``: its steps were timed in
    rounds with the other backends of the case."""

    timing: Timing
    check: dict
    first_step_s: float
    peak_mib: float | None
    optimizer: str
    compiles: bool
    note: str | None
    interleaved: bool = False


@dataclass
class Prepared:
    """One backend's timed model, checked and past its first step, waiting for the rounds."""

    trainer: Trainer
    optimizer: torch.optim.Optimizer
    optimizer_name: str
    check: dict
    first_step_s: float
    peak_mib: float | None

    def measured(self, timing: Timing, interleaved: bool) -> Measured:
        t = self.trainer
        return Measured(
            timing,
            self.check,
            self.first_step_s,
            self.peak_mib,
            self.optimizer_name,
            t.compiles,
            t.note,
            interleaved,
        )


def prepare_training_row(
    build: Callable[[bool], Trainer],
    batches: list[TrainBatch],
    reference: tuple[float, dict[str, torch.Tensor]],
    device: torch.device,
    settings: BenchSettings,
) -> Prepared:
    """The check on a dropout-free copy, then the model with the config's dropout: its first
    step (a compile, when it compiles) timed and, on CUDA, its peak memory read over
    PEAK_STEPS more; ``build(dropout)`` makes each. The caller finishes the trainer."""
    precision = settings.train_precision
    check = check_model(build(False), batches[0], reference, device, precision)

    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    trainer = build(True)
    try:
        trainer.start_case()
        optimizer, optimizer_name = make_optimizer(trainer.model)
        synchronize(device)
        t0 = time.perf_counter()
        train_step(trainer, optimizer, batches[0], device, precision)
        synchronize(device)
        first_step_s = time.perf_counter() - t0
        peak_mib = None
        if before is not None:
            torch.cuda.reset_peak_memory_stats(device)
            for i in range(1, PEAK_STEPS + 1):
                train_step(trainer, optimizer, batches[i % len(batches)], device, precision)
            synchronize(device)
            peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    except BaseException:
        trainer.finish()
        raise
    return Prepared(trainer, optimizer, optimizer_name, check, first_step_s, peak_mib)


def time_training_steps(
    prepared: dict[str, Prepared],
    batches: list[TrainBatch],
    device: torch.device,
    settings: BenchSettings,
) -> tuple[dict[str, Timing], dict[str, BaseException]]:
    """The prepared backends' steps in rotating rounds, one step each per round (input set
    ``i`` of round ``i`` for all); their timings, and the exception of any that failed."""
    n, precision = len(batches), settings.train_precision
    fns = {
        backend: (
            lambda i, p=p: train_step(p.trainer, p.optimizer, batches[i % n], device, precision)
        )
        for backend, p in prepared.items()
    }
    return benchmark_interleaved(fns, device, settings.train_timer)


def _time_group(
    group: dict[str, Prepared],
    batches: list[TrainBatch],
    device: torch.device,
    settings: BenchSettings,
    measured: dict[str, Measured],
    failed: dict[str, BaseException],
) -> None:
    """Time the group's steps interleaved into ``measured`` (the exception of any that failed
    into ``failed``), then finish its trainers and empty it, letting the models go."""
    try:
        timings, errors = time_training_steps(group, batches, device, settings)
        for backend, timing in timings.items():
            measured[backend] = group[backend].measured(timing, len(timings) > 1)
        failed.update(errors)
    finally:
        _finish(group)


def _finish(prepared: dict[str, Prepared]) -> None:
    """Finish every prepared trainer and forget them all."""
    while prepared:
        _, held = prepared.popitem()
        held.trainer.finish()


def check_model(
    checker: Trainer,
    batch: TrainBatch,
    reference: tuple[float, dict[str, torch.Tensor]],
    device: torch.device,
    precision: str,
) -> dict:
    """``check_step`` on a (dropout-free) model, which is freed afterwards."""
    try:
        checker.start_case()
        return check_step(checker, batch, reference, device, precision)
    finally:
        checker.finish()
        checker.model = checker.call = None
        _release(device)


def make_training_row(
    backend: str,
    case: TrainCase,
    precision: str,
    config: BertConfig,
    measured: Measured,
    ceilings: dict,
) -> dict:
    timing = measured.timing
    tokens = case.batch * case.seq
    flops = 3 * model_flops(config, [case.seq] * case.batch)
    seconds = timing.median_ms * 1e-3
    ceiling = ceilings["matmul_tflops"].get(precision)
    tflops = flops / seconds / 1e12
    return {
        "backend": backend,
        "config": case.config,
        "head": case.head,
        "batch": case.batch,
        "seq": case.seq,
        "dtype": precision,
        "autocast": AUTOCAST_DTYPES[precision] is not None,
        "dropout": config.hidden_dropout_prob,
        "attention_dropout": config.attention_probs_dropout_prob,
        "optimizer": measured.optimizer,
        "tokens": tokens,
        "median_ms": timing.median_ms,
        "p10_ms": timing.p10_ms,
        "p90_ms": timing.p90_ms,
        "repeats": timing.repeats,
        **timing.row_fields(),
        "interleaved": measured.interleaved,
        "samples_ms": [float(f"{t:.4g}") for t in timing.samples_ms],
        "tokens_per_s": tokens / seconds,
        "gflop": flops / 1e9,
        "tflops": tflops,
        "frac_ceiling": fraction_of_ceiling(tflops, ceiling)[0],
        "peak_mib": measured.peak_mib,
        "speedup_vs_hf_eager": None,
        "speedup_ci_low": None,
        "speedup_ci_high": None,
        "peak_ratio_vs_hf_eager": None,
        **measured.check,
        "grad_err_ratio": None,
        "within_rule": None,
        "first_step_s": measured.first_step_s,
        "compile_s": measured.first_step_s if measured.compiles else None,
        "note": measured.note,
    }


def finish_training_rows(rows: list[dict]) -> None:
    """Fill in what compares a row with hf-eager's of the same case: speedup (with its
    interval), peak memory ratio, gradient error ratio and the 3× rule (loss and gradients)."""
    by_key = {
        (r["backend"], r["config"], r["head"], r["batch"], r["seq"], r["dtype"]): r for r in rows
    }
    for r in rows:
        eager = by_key.get(("hf-eager", r["config"], r["head"], r["batch"], r["seq"], r["dtype"]))
        if eager is None:
            continue
        r["speedup_vs_hf_eager"] = eager["median_ms"] / r["median_ms"]
        r["speedup_ci_low"], r["speedup_ci_high"] = speedup_interval(eager, r)
        if r["peak_mib"] is not None and eager["peak_mib"]:
            r["peak_ratio_vs_hf_eager"] = r["peak_mib"] / eager["peak_mib"]
        if r["grad_max_abs_err"] is None or r["loss_abs_err"] is None:
            r["within_rule"] = False
            continue
        if eager["grad_max_abs_err"] is None or eager["loss_abs_err"] is None:
            continue
        if eager["grad_max_abs_err"] > 0:
            r["grad_err_ratio"] = r["grad_max_abs_err"] / eager["grad_max_abs_err"]
        atol = err_atol(r["dtype"])
        r["within_rule"] = (
            r["grad_max_abs_err"] <= ERR_RULE_FACTOR * eager["grad_max_abs_err"] + atol
            and r["loss_abs_err"] <= ERR_RULE_FACTOR * eager["loss_abs_err"] + atol
        )


def train_skip(backend: str, reason: str, config: str | None = None, **where) -> dict:
    """A training row that was not measured, and why; None fields mean "every one"."""
    return skip_entry(backend, reason, config, kind="train", **where)


def run_training(
    settings: BenchSettings, ceilings: dict, log: Callable[[str], None]
) -> tuple[list[dict], list[dict]]:
    """Measure the training steps of the settings' cases; returns (rows, skipped)."""
    device = torch.device(settings.device)
    rows: list[dict] = []
    skipped: list[dict] = []
    if not settings.train_cases:
        return rows, skipped
    active = []
    for name in settings.backends:
        if name not in TRAINERS:
            reason = INFERENCE_ONLY.get(name, "no training runner (bertfast.bench.training)")
            skipped.append(train_skip(name, reason))
            continue
        reason = unavailable_reason(TRAINERS, name, device, settings)
        if reason is None:
            active.append(name)
        else:
            skipped.append(train_skip(name, reason))
            log(f"skip training {name}: {reason}")
    if "hf-compile" in active and settings.train_compile_cases is not None:
        labels = ", ".join(c.label for c in settings.train_compile_cases) or "no case"
        skipped.append(train_skip("hf-compile", f"--quick compiles only {labels}"))
    if device.type == "cuda" and settings.train_timer.flush_l2:
        _flush_buffer(device)  # allocated now, so that no row's peak memory counts it
    precision = settings.train_precision

    for config_name in dict.fromkeys(c.config for c in settings.train_cases):
        try:
            master = ModelSource.load(config_name, device, settings.seed)
        except ImportError as exc:
            skipped.append(train_skip("all", describe_error(exc), config=config_name))
            log(f"skip training config {config_name}: {describe_error(exc)}")
            continue
        source = TrainSource(master, settings.seed)
        disabled: set[str] = set()
        for case in (c for c in settings.train_cases if c.config == config_name):
            where = dict(head=case.head, batch=case.batch, seq=case.seq, dtype=precision)
            batches = make_train_batches(
                source.config, case, settings.train_timer.n_inputs, settings.seed, device
            )
            try:
                reference = source.reference_step(case.head, batches[0])
            except Exception as exc:
                reason = describe_error(exc)
                skipped.append(train_skip("all", f"reference: {reason}", config_name, **where))
                log(f"skip training {case.label}: reference failed: {reason}")
                _release(device)
                continue
            case_backends = [
                b
                for b in active
                if b not in disabled
                and not (
                    b == "hf-compile"
                    and settings.train_compile_cases is not None
                    and case not in settings.train_compile_cases
                )
            ]
            prepared: dict[str, Prepared] = {}
            measured: dict[str, Measured] = {}
            failed: dict[str, BaseException] = {}
            try:
                for backend in case_backends:
                    spec = TRAINERS[backend]
                    if spec.compiles:
                        # Its check and start reset torch.compile: a compiled model still held
                        # is timed now, alone, before it would have to compile again.
                        held = {b: prepared.pop(b) for b in list(prepared) if TRAINERS[b].compiles}
                        if held:
                            _time_group(held, batches, device, settings, measured, failed)

                    def build(dropout: bool, spec=spec, head=case.head, source=source) -> Trainer:
                        return spec.build(source, head, dropout)

                    try:
                        prepared[backend] = prepare_training_row(
                            build, batches, reference, device, settings
                        )
                    except NotImplementedError as exc:
                        # A missing backward fails every case alike: say so once per config.
                        _release(device)
                        disabled.add(backend)
                        reason = describe_error(exc)
                        skipped.append(train_skip(backend, reason, config_name, dtype=precision))
                        log(f"skip training {backend} {config_name}: {reason}")
                    except Exception as exc:  # one failing case must not end the run
                        _release(device)
                        reason = describe_error(exc)
                        skipped.append(train_skip(backend, reason, config_name, **where))
                        log(f"skip training {backend} {case.label}: {reason}")
                _time_group(prepared, batches, device, settings, measured, failed)
            finally:
                _finish(prepared)  # what an interruption left
                _release(device)  # the timed models went with their trainers
            for backend, exc in failed.items():
                reason = describe_error(exc)
                skipped.append(train_skip(backend, reason, config_name, **where))
                log(f"skip training {backend} {case.label}: {reason}")
            for backend in (b for b in case_backends if b in measured):
                row = make_training_row(
                    backend, case, precision, source.config, measured[backend], ceilings
                )
                rows.append(row)
                log(_progress(case, row))
            del reference, batches
            _release(device)
        source = master = None
        _release(device)
    finish_training_rows(rows)
    return rows, skipped


def _fmt(value: float | None, spec: str) -> str:
    return "nan/inf" if value is None else format(value, spec)


def _progress(case: TrainCase, row: dict) -> str:
    text = (
        f"train {case.label} {row['dtype']} {row['backend']}: {row['median_ms']:.3f} ms/step "
        f"(95 % CI [{row['ci_low_ms']:.3f}, {row['ci_high_ms']:.3f}], n={row['repeats']}"
        f"{', NOISY' if row['noisy'] else ''}), "
        f"loss err {_fmt(row['loss_abs_err'], '.1e')}, "
        f"grad err {_fmt(row['grad_max_abs_err'], '.1e')}"
    )
    if row["peak_mib"] is not None:
        text += f", peak {row['peak_mib']:.0f} MiB"
    if row["compile_s"] is not None:
        text += f", compile {row['compile_s']:.1f} s"
    return text
