"""bertfast's benchmarks as a pytest-benchmark suite: each kernel (forward, and forward +
backward), the encoder and a training step, per backend.

The cases, inputs, fp32 reference, error measure, FLOP and byte counts and ceilings are those
of ``bertfast bench`` (``bertfast.bench``); pytest-benchmark times the calls, each followed by
a device synchronisation, so saved runs, ``--benchmark-compare`` and histograms work as usual.
Each test's ``extra_info`` holds the row ``bertfast bench`` would write (``max_abs_err``
against the fp32 reference, ``frac_ceiling``, TFLOP/s or GB/s ...; a training step's loss and
gradient errors against HF eager in fp32, ``bertfast.bench.training``). GPU cases carry the
``gpu`` marker and are skipped without one. No test asserts a time.

    pytest benchmarks/ --bench-quick                       # the quick grids (what CI runs)
    pytest benchmarks/ -m gpu --benchmark-autosave         # save a run under .benchmarks/
    pytest benchmarks/ -m gpu --benchmark-compare          # this tree against the last save
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import pytest
import torch

from bertfast.bench.e2e import make_row, max_abs_err
from bertfast.bench.kernels import (
    BACKWARD_CASES,
    BACKWARD_PASS,
    KERNEL_OPS,
    OP_CASES,
    _first_call,
    backward_first_call,
    forward_backward,
    grad_error,
    kernel_row,
)
from bertfast.bench.plan import make_settings
from bertfast.bench.runners import (
    RUNNERS,
    TINY,
    ModelSource,
    fp32_reference_precision,
    make_inputs,
)
from bertfast.bench.settings import (
    DTYPES,
    E2E_BACKENDS,
    KERNEL_SHAPES,
    TRAIN_BACKENDS,
    VARLEN_FILL,
    Case,
    TrainCase,
    default_cases,
    default_dtypes,
    default_train_cases,
)
from bertfast.bench.timing import Timing, summarise, synchronize
from bertfast.bench.training import (
    TRAINERS,
    Measured,
    TrainSource,
    check_model,
    make_optimizer,
    make_train_batches,
    make_training_row,
    train_step,
)
from bertfast.config import BertConfig

pytest.importorskip("pytest_benchmark")
pytest.importorskip("transformers")

SEED = 0
KERNEL_BACKENDS = ("triton", "cuda")
# On the CPU the suite runs only these end to end (hf-compile needs --compile-on-cpu there).
CPU_E2E_BACKENDS = ("hf-eager", "hf-sdpa", "bertfast-torch")


@dataclass(frozen=True)
class KernelCase:
    device: str
    op: str
    batch: int
    seq: int
    dtype: str
    backend: str
    variant: str

    @property
    def id(self) -> str:
        variant = f"-{self.variant}" if self.variant else ""
        return (
            f"{self.device}-{self.op}-b{self.batch}-s{self.seq}-{self.dtype}-{self.backend}"
            + variant
        )


@dataclass(frozen=True)
class EndToEndCase:
    device: str
    case: Case
    dtype: str
    backend: str

    @property
    def id(self) -> str:
        c = self.case
        return f"{self.device}-{c.config}-b{c.batch}-s{c.seq}-{c.kind}-{self.dtype}-{self.backend}"


@dataclass(frozen=True)
class TrainingStepCase:
    device: str
    case: TrainCase
    backend: str

    @property
    def precision(self) -> str:
        """bertfast bench's default: bf16 autocast on a GPU, fp32 on the CPU."""
        return "bf16" if self.device == "cuda" else "fp32"

    @property
    def id(self) -> str:
        c = self.case
        return (
            f"{self.device}-train-{c.config}-{c.head}-b{c.batch}-s{c.seq}-{self.precision}-"
            f"{self.backend}"
        )


@functools.cache
def kernel_candidates(op: str, device_type: str) -> list[tuple[str, str]]:
    """(backend, variant) of the op's candidates on a device type, listed without a GPU.

    CUDA candidates are listed from a case built on the meta device (no memory, no driver).
    """
    cfg = BertConfig(**TINY)
    if device_type == "cpu":
        case = OP_CASES[op](cfg, 1, 4, torch.float32, torch.device("cpu"), 1, [])
    else:
        case = OP_CASES[op](cfg, 1, 4, torch.float32, torch.device("meta"), 1, KERNEL_BACKENDS)
    return [(c.backend, c.variant) for c in case.candidates]


@functools.cache
def backward_candidates(op: str, device_type: str) -> list[tuple[str, str]]:
    """(backend, variant) of the op's forward + backward candidates, listed without a GPU."""
    cfg = BertConfig(**TINY)
    if device_type == "cpu":
        case = BACKWARD_CASES[op](cfg, 1, 4, torch.float32, torch.device("cpu"), 1, [])
    else:
        case = BACKWARD_CASES[op](
            cfg, 1, 4, torch.float32, torch.device("meta"), 1, KERNEL_BACKENDS
        )
    return [(c.backend, c.variant) for c in case.candidates]


def _marks(device: str) -> list:
    return [pytest.mark.gpu] if device == "cuda" else []


def kernel_params(quick: bool) -> list:
    params = []
    for device in ("cpu", "cuda"):
        gpu = device == "cuda"
        for (batch, seq), dtype, op in itertools.product(
            KERNEL_SHAPES[gpu, quick], default_dtypes(gpu, quick), KERNEL_OPS
        ):
            for backend, variant in kernel_candidates(op, device):
                k = KernelCase(device, op, batch, seq, dtype, backend, variant)
                params.append(pytest.param(k, id=k.id, marks=_marks(device)))
    return params


def e2e_params(quick: bool) -> list:
    params = []
    for device in ("cpu", "cuda"):
        gpu = device == "cuda"
        cases = default_cases(gpu, quick)
        # As bertfast bench --quick: one torch.compile case only (tens of seconds per shape).
        compiled = [c for c in cases if not c.varlen][:1] if quick else cases
        backends = E2E_BACKENDS if gpu else CPU_E2E_BACKENDS
        for case, dtype, backend in itertools.product(cases, default_dtypes(gpu, quick), backends):
            if backend.startswith("hf-compile") and case not in compiled:
                continue
            e = EndToEndCase(device, case, dtype, backend)
            params.append(pytest.param(e, id=e.id, marks=_marks(device)))
    return params


def kernel_backward_params(quick: bool) -> list:
    params = []
    for device in ("cpu", "cuda"):
        gpu = device == "cuda"
        for (batch, seq), dtype, op in itertools.product(
            KERNEL_SHAPES[gpu, quick], default_dtypes(gpu, quick), BACKWARD_CASES
        ):
            for backend, variant in backward_candidates(op, device):
                k = KernelCase(device, op, batch, seq, dtype, backend, variant)
                params.append(pytest.param(k, id=k.id + "-fwd-bwd", marks=_marks(device)))
    return params


def training_params(quick: bool) -> list:
    params = []
    for device in ("cpu", "cuda"):
        gpu = device == "cuda"
        cases = default_train_cases(gpu, quick)
        # As bertfast bench --quick: one torch.compile case only.
        compiled = cases[:1] if quick else cases
        backends = TRAIN_BACKENDS if gpu else [b for b in CPU_E2E_BACKENDS if b in TRAINERS]
        for case, backend in itertools.product(cases, backends):
            if backend.startswith("hf-compile") and case not in compiled:
                continue
            t = TrainingStepCase(device, case, backend)
            params.append(pytest.param(t, id=t.id, marks=_marks(device)))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    quick = metafunc.config.getoption("--bench-quick")
    if "kernel" in metafunc.fixturenames:
        metafunc.parametrize("kernel", kernel_params(quick))
    if "kernel_backward" in metafunc.fixturenames:
        metafunc.parametrize("kernel_backward", kernel_backward_params(quick))
    if "e2e" in metafunc.fixturenames:
        metafunc.parametrize("e2e", e2e_params(quick))
    if "training_step" in metafunc.fixturenames:
        metafunc.parametrize("training_step", training_params(quick))


def _timed(benchmark, call, device: torch.device, n_inputs: int) -> Timing | None:
    """pytest-benchmark times ``call(i)`` on input set i, synchronising the device after each
    call; the Timing of bertfast bench (median, p10, p90) from its rounds, None when disabled."""
    counter = itertools.count()

    def step() -> None:
        call(next(counter) % n_inputs)
        synchronize(device)

    benchmark(step)
    stats = getattr(benchmark, "stats", None)
    data = getattr(getattr(stats, "stats", None), "data", None)
    return summarise([t * 1e3 for t in data]) if data else None


def _skip_unavailable(backend: str, device: torch.device) -> None:
    if backend not in RUNNERS:
        pytest.skip(f"no runner named {backend!r} in bertfast.bench.runners.RUNNERS")
    reason = RUNNERS[backend].unavailable_reason(device)
    if reason is not None:
        pytest.skip(reason)


def test_kernel(kernel: KernelCase, benchmark, op_cases, ceilings) -> None:
    device = torch.device(kernel.device)
    if kernel.backend.startswith("bertfast-"):
        _skip_unavailable(kernel.backend, device)
    settings = make_settings(device=kernel.device, quick=True)
    dtype = DTYPES[kernel.dtype]

    def build():
        runnable = [
            kb
            for kb in KERNEL_BACKENDS
            if RUNNERS[f"bertfast-{kb}"].unavailable_reason(device) is None
        ]
        torch.manual_seed(SEED)
        case = OP_CASES[kernel.op](
            BertConfig.preset("bert-base"),
            kernel.batch,
            kernel.seq,
            dtype,
            device,
            settings.timer.n_inputs,
            runnable,
        )
        with fp32_reference_precision(), torch.inference_mode():
            reference = case.reference(case.inputs[0])
        return case, reference

    key = (kernel.device, kernel.op, kernel.batch, kernel.seq, kernel.dtype)
    case, reference = op_cases.get(key, build)
    cand = next(
        (c for c in case.candidates if (c.backend, c.variant) == (kernel.backend, kernel.variant)),
        None,
    )
    if cand is None:
        pytest.skip(f"{kernel.backend} {kernel.variant} is not a candidate on {device}")
    with torch.inference_mode():
        out = _first_call(cand, case.inputs[0], device)
        if isinstance(out, str):
            pytest.skip(out)
        err = max_abs_err(out.reshape(reference.shape), reference, None)
        del out
        with cand.context():
            timing = _timed(benchmark, lambda i: cand.fn(case.inputs[i]), device, len(case.inputs))
    assert err is not None, "the output holds NaN or inf"  # a benchmark of garbage is no use
    info = {"device": str(device), "max_abs_err": err}
    if timing is not None:
        ceiling = ceilings[kernel.device, kernel.dtype]
        info.update(
            kernel_row(case, cand, timing, err, kernel.batch, kernel.seq, kernel.dtype, ceiling)
        )
    benchmark.extra_info.update(info)


def test_end_to_end(e2e: EndToEndCase, benchmark, model_sources, ceilings) -> None:
    device = torch.device(e2e.device)
    _skip_unavailable(e2e.backend, device)
    case = e2e.case
    settings = make_settings(device=e2e.device, quick=True)

    def build():
        try:
            source = ModelSource.load(case.config, device, SEED)
        except ImportError as exc:  # minilm without its package
            pytest.skip(str(exc))
        return source, {}

    source, prepared = model_sources.get((e2e.device, case.config), build)
    if case not in prepared:
        inputs, lengths = make_inputs(
            source.config, case, VARLEN_FILL, settings.timer.n_inputs, SEED, device
        )
        prepared[case] = (inputs, lengths, source.reference(inputs[0]))
    inputs, lengths, reference = prepared[case]

    runner = RUNNERS[e2e.backend].build(source, DTYPES[e2e.dtype])
    runner.start_case()
    with torch.inference_mode():
        synchronize(device)
        out = runner(inputs[0])
        synchronize(device)
        err = max_abs_err(out, reference, inputs[0].attention_mask)
        del out
        timing = _timed(benchmark, lambda i: runner(inputs[i]), device, len(inputs))
    assert err is not None, "the output holds NaN or inf"
    info = {"device": str(device), "max_abs_err": err}
    if timing is not None:
        ceiling = ceilings[e2e.device, e2e.dtype]
        row = make_row(
            e2e.backend, case, e2e.dtype, source.config, lengths, timing, err, runner, 0.0, ceiling
        )
        row.pop("compile_s")  # the first call above is not timed here
        info.update(row)
    benchmark.extra_info.update(info)


def test_kernel_backward(kernel_backward: KernelCase, benchmark, op_cases, ceilings) -> None:
    """Forward + backward of one op and candidate; the input gradients' error in extra_info."""
    kernel = kernel_backward
    device = torch.device(kernel.device)
    if kernel.backend.startswith("bertfast-"):
        _skip_unavailable(kernel.backend, device)
    settings = make_settings(device=kernel.device, quick=True)

    def build():
        runnable = [
            kb
            for kb in KERNEL_BACKENDS
            if RUNNERS[f"bertfast-{kb}"].unavailable_reason(device) is None
        ]
        torch.manual_seed(SEED)
        case = BACKWARD_CASES[kernel.op](
            BertConfig.preset("bert-base"),
            kernel.batch,
            kernel.seq,
            DTYPES[kernel.dtype],
            device,
            settings.timer.n_inputs,
            runnable,
        )
        return case, case.reference_grads()

    key = (kernel.device, kernel.op, kernel.batch, kernel.seq, kernel.dtype, BACKWARD_PASS)
    case, reference = op_cases.get(key, build)
    cand = next(
        (c for c in case.candidates if (c.backend, c.variant) == (kernel.backend, kernel.variant)),
        None,
    )
    if cand is None:
        pytest.skip(f"{kernel.backend} {kernel.variant} has no backward on {device}")
    grads = backward_first_call(case, cand, device)
    if isinstance(grads, str):
        pytest.skip(grads)
    err, worst = grad_error(grads, reference)
    del grads
    with cand.context():
        timing = _timed(
            benchmark, lambda i: forward_backward(case, cand, i), device, len(case.inputs)
        )
    assert err is not None, f"the gradient of {worst} holds NaN or inf"
    info = {"device": str(device), "max_abs_err": err, "worst_grad": worst}
    if timing is not None:
        ceiling = ceilings[kernel.device, kernel.dtype]
        info.update(
            kernel_row(case, cand, timing, err, kernel.batch, kernel.seq, kernel.dtype, ceiling)
        )
        info["pass"] = BACKWARD_PASS
    benchmark.extra_info.update(info)


def test_training_step(training_step: TrainingStepCase, benchmark, train_sources, ceilings):
    """One training step (zero_grad, forward and loss, backward, AdamW step) of a head on one
    backend; the loss and gradient errors against HF eager in fp32 (dropout off) first."""
    t = training_step
    device = torch.device(t.device)
    if t.backend not in TRAINERS:
        pytest.skip(f"no trainer named {t.backend!r} in bertfast.bench.training.TRAINERS")
    reason = TRAINERS[t.backend].unavailable_reason(device)
    if reason is not None:
        pytest.skip(reason)
    case, precision = t.case, t.precision

    def build():
        try:
            source = TrainSource(ModelSource.load(case.config, device, SEED), SEED)
        except ImportError as exc:
            pytest.skip(str(exc))
        return source, {}

    source, prepared = train_sources.get((t.device, case.config), build)
    if case not in prepared:
        n_inputs = make_settings(device=t.device, quick=True).train_timer.n_inputs
        batches = make_train_batches(source.config, case, n_inputs, SEED, device)
        prepared.clear()  # one case's reference gradients at a time
        prepared[case] = (batches, source.reference_step(case.head, batches[0]))
    batches, reference = prepared[case]
    spec = TRAINERS[t.backend]
    try:
        check = check_model(
            spec.build(source, case.head, False), batches[0], reference, device, precision
        )
    except NotImplementedError as exc:  # a backend whose kernels lack a backward
        pytest.skip(str(exc))
    assert check["grad_max_abs_err"] is not None, f"gradients hold NaN or inf ({check})"
    trainer = spec.build(source, case.head, True)
    try:
        trainer.start_case()
        optimizer, optimizer_name = make_optimizer(trainer.model)
        train_step(trainer, optimizer, batches[0], device, precision)  # compiles, allocates
        synchronize(device)
        timing = _timed(
            benchmark,
            lambda i: train_step(trainer, optimizer, batches[i], device, precision),
            device,
            len(batches),
        )
        info = {"device": str(device), **check}
        if timing is not None:
            measured = Measured(
                timing, check, 0.0, None, optimizer_name, trainer.compiles, trainer.note
            )
            row = make_training_row(
                t.backend, case, precision, source.config, measured, ceilings[t.device, precision]
            )
            for untimed in ("compile_s", "first_step_s", "peak_mib"):
                row.pop(untimed)  # bertfast bench measures these; not here
            info.update(row)
        benchmark.extra_info.update(info)
    finally:
        trainer.finish()
