"""A run's plan: ``make_settings`` turns a command's choices into ``BenchSettings``, checking
each against what exists (configs, dtypes, heads, and the backends that the forward runners
and the training steps register), and fills in the device's default grid for the rest.

It sits above the runners and the suites whose registries it reads (``runners.RUNNERS``,
``training.TRAINERS``); the names, cases and default grids it draws on are in ``settings``.
"""

from __future__ import annotations

import torch

from bertfast.bench.runners import RUNNERS
from bertfast.bench.settings import (
    AXES,
    CONFIG_NAMES,
    DTYPES,
    E2E_BACKENDS,
    KERNEL_SHAPES,
    MAX_SEQ,
    TRAIN_BACKENDS,
    TRAIN_HEADS,
    TRAIN_PRECISIONS,
    BenchSettings,
    Case,
    TimerSettings,
    TrainCase,
    default_cases,
    default_device,
    default_dtypes,
    default_timer,
    default_train_cases,
    default_train_timer,
    grid_cases,
    parse_shape,
    parse_train_case,
)
from bertfast.bench.training import TRAINERS


def make_settings(
    device: str | None = None,
    quick: bool = False,
    configs: list[str] | None = None,
    batches: list[int] | None = None,
    seqs: list[int] | None = None,
    dtypes: list[str] | None = None,
    backends: list[str] | None = None,
    varlen: list[str] | None = None,
    kernels: bool = True,
    compile_on_cpu: bool = False,
    rep_ms: float | None = None,
    ci_width: float | None = None,
    seed: int = 0,
    training: bool = True,
    forward: bool = True,
    train_cases: list[str] | None = None,
    train_heads: list[str] | None = None,
    train_precision: str | None = None,
) -> BenchSettings:
    """Settings for a run; raises ValueError naming any choice that cannot be honoured.

    ``varlen`` lists BATCHxSEQ shapes run with variable lengths for every config (``["none"]``
    for no varlen case); by default each config gets one at its largest batch and seq.
    ``training`` adds the training steps and the kernels' forward + backward rows;
    ``forward=False`` leaves out the end-to-end forward grid and the kernels' forward rows.
    ``train_cases`` lists CONFIG:BATCHxSEQ shapes, each run with every head of ``train_heads``
    (default: both); ``train_precision`` is bf16 (autocast, fp32 master weights; the GPU's
    default) or fp32 (the CPU's).
    """
    device = device or default_device()
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no CUDA GPU")
    gpu = dev.type == "cuda"

    for name in configs or []:
        if name not in CONFIG_NAMES:
            raise ValueError(f"unknown config {name!r}; choose from {', '.join(CONFIG_NAMES)}")
    for value, what in [(b, "batch") for b in batches or []] + [(s, "seq") for s in seqs or []]:
        if value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value}")
    for s in seqs or []:
        if s > MAX_SEQ:
            raise ValueError(f"seq {s} exceeds the configs' max_position_embeddings ({MAX_SEQ})")
    if not dtypes:
        dtypes = default_dtypes(gpu, quick)
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    known = {**RUNNERS, **TRAINERS}
    default = [b for b in E2E_BACKENDS if b in RUNNERS]
    backends = backends or default + [b for b in TRAIN_BACKENDS if b in known and b not in default]
    for b in backends:
        if b not in known:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(known)}")

    if not (configs or batches or seqs):
        cases = default_cases(gpu, quick)
    else:
        default_configs, default_batches, default_seqs = AXES[gpu, quick]
        cases = grid_cases(
            configs or default_configs, batches or default_batches, seqs or default_seqs, quick
        )
    # --quick compiles one case only: torch.compile takes tens of seconds per shape.
    compile_cases = [c for c in cases if not c.varlen][:1] if quick else None
    if varlen is not None:
        cases = [c for c in cases if not c.varlen]
        if varlen != ["none"]:
            shapes = [parse_shape(v) for v in varlen]
            for _, seq in shapes:
                if seq > MAX_SEQ:
                    raise ValueError(f"varlen seq {seq} exceeds {MAX_SEQ}")
            configs_in_grid = dict.fromkeys(c.config for c in cases)
            cases += [Case(c, b, s, varlen=True) for c in configs_in_grid for b, s in shapes]

    if not forward and not training:
        raise ValueError("nothing to measure: the forward grid and the training steps are both off")
    kernel_passes = tuple(
        p for p, on in (("forward", forward), ("backward", training)) if on and kernels
    )
    kernel_shapes = list(KERNEL_SHAPES[gpu, quick]) if kernel_passes else []
    if not forward:
        cases, compile_cases = [], []

    heads = train_heads or list(TRAIN_HEADS)
    for head in heads:
        if head not in TRAIN_HEADS:
            raise ValueError(f"unknown head {head!r}; choose from {', '.join(TRAIN_HEADS)}")
    if train_cases is None:
        train = [c for c in default_train_cases(gpu, quick) if c.head in heads]
    else:
        train = []
        for text in train_cases:
            config, batch, seq = parse_train_case(text)
            if config not in CONFIG_NAMES:
                raise ValueError(
                    f"unknown config {config!r} in training case {text!r}; choose from "
                    f"{', '.join(CONFIG_NAMES)}"
                )
            if batch < 1 or seq < 1 or seq > MAX_SEQ:
                raise ValueError(f"training case {text!r}: batch >= 1 and 1 <= seq <= {MAX_SEQ}")
            train += [TrainCase(config, head, batch, seq) for head in heads]
    if not training:
        train = []
    precision = train_precision or ("bf16" if gpu else "fp32")
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(
            f"unknown training precision {precision!r}; choose from {', '.join(TRAIN_PRECISIONS)}"
        )
    # --quick compiles one training case too (a training graph compiles for tens of seconds).
    train_compile_cases = train[:1] if quick else None

    timer = default_timer(gpu, quick)
    train_timer = default_train_timer(gpu, quick)
    if rep_ms is not None:
        if rep_ms <= 0:
            raise ValueError(f"rep_ms must be positive, got {rep_ms}")
        timer = TimerSettings(**{**timer.__dict__, "rep_ms": float(rep_ms)})
        train_timer = TimerSettings(**{**train_timer.__dict__, "rep_ms": float(rep_ms)})
    if ci_width is not None:
        if not 0 < ci_width < 1:
            raise ValueError(f"ci_width must be between 0 and 1, got {ci_width}")
        timer = TimerSettings(**{**timer.__dict__, "ci_width": float(ci_width)})
        train_timer = TimerSettings(**{**train_timer.__dict__, "ci_width": float(ci_width)})
    return BenchSettings(
        device=str(dev),
        quick=quick,
        cases=cases,
        dtypes=list(dtypes),
        backends=list(backends),
        compile_cases=compile_cases,
        kernel_shapes=kernel_shapes,
        timer=timer,
        compile_on_cpu=compile_on_cpu,
        seed=seed,
        train_cases=train,
        train_precision=precision,
        train_timer=train_timer,
        train_compile_cases=train_compile_cases,
        kernel_passes=kernel_passes,
    )
