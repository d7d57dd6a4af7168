"""What one benchmark run measures: the grid of cases, dtypes, backends and timing budgets.

``bertfast.bench.plan.make_settings`` turns the command line's choices into the
``BenchSettings`` defined here: defaults depend on the device (small shapes and fp32 on the CPU)
and on ``quick``. Giving configs, batches or seqs replaces the default grid with their product.
The training steps have their own cases (``TrainCase``: a config, a head, batch and seq),
unaffected by configs, batches and seqs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
# Names a run can ask for: the presets of BertConfig, MiniLM's real checkpoint, and "tiny".
CONFIG_NAMES = ("bert-base", "bert-large", "minilm", "transformer-base", "tiny")
# Backends of the end-to-end grid, in table order (bertfast.bench.runners.RUNNERS builds them).
E2E_BACKENDS = (
    "hf-eager",
    "hf-sdpa",
    "hf-compile",
    "hf-compile-max-autotune",
    "bertfast-torch",
    "bertfast-triton",
    "bertfast-cuda",
    "bertfast-triton-graph",
    "bertfast-cuda-graph",
    "bertfast-triton-fused-graph",
)
# Backends of the training rows, in table order (bertfast.bench.training.TRAINERS builds them).
# The graph and max-autotune rows are inference only; a bertfast backend trains eagerly.
TRAIN_BACKENDS = (
    "hf-eager",
    "hf-sdpa",
    "hf-compile",
    "bertfast-torch",
    "bertfast-triton",
    "bertfast-cuda",
    "bertfast-triton-fused",  # training only: eager, GEMM epilogues fused
)
# The heads a training step runs: Hugging Face's BertForSequenceClassification and
# BertForPreTraining (and bertfast.heads' classes of the same names).
TRAIN_HEADS = ("classification", "pretraining")
# Training precision: "bf16" is torch.autocast(bf16) over fp32 master weights, "fp32" no
# autocast (the CPU's default: the Triton interpreter refuses bf16).
TRAIN_PRECISIONS = ("bf16", "fp32")
MAX_SEQ = 512  # max_position_embeddings of every config above
VARLEN_FILL = 0.5  # mean fill of the variable-length cases


@dataclass(frozen=True)
class Case:
    """One end-to-end shape: a config, a batch of ``batch`` rows of at most ``seq`` tokens."""

    config: str
    batch: int
    seq: int
    varlen: bool = False  # lengths drawn so the mean fill is VARLEN_FILL, padded to seq

    @property
    def kind(self) -> str:
        return "varlen" if self.varlen else "dense"

    @property
    def label(self) -> str:
        return f"{self.config} b{self.batch}×s{self.seq}" + (" varlen" if self.varlen else "")


@dataclass(frozen=True)
class TrainCase:
    """One training-step shape: a config and head, a dense batch of ``batch`` × ``seq``."""

    config: str
    head: str
    batch: int
    seq: int

    @property
    def label(self) -> str:
        return f"{self.config} {self.head} b{self.batch}×s{self.seq}"


@dataclass(frozen=True)
class TimerSettings:
    """How hard to time: warm-up calls, a time budget per measurement, rotated input sets."""

    warmup: int
    rep_ms: float  # target measuring time; repeats = rep_ms / (estimated time of one call)
    min_reps: int
    max_reps: int
    n_inputs: int  # distinct input sets cycled through, so caches do not flatter
    flush_l2: bool  # zero a 256 MiB buffer before each timed call (GPU only)
    # The median's 95 % interval must be within this fraction of it, else more repeats are
    # taken (up to timing.CAP_FACTOR x rep_ms) and a row still wider is marked noisy.
    ci_width: float = 0.05


@dataclass
class BenchSettings:
    """Everything a run needs to know; stored in the results file under ``settings``."""

    device: str
    quick: bool
    cases: list[Case]
    dtypes: list[str]
    backends: list[str]
    compile_cases: list[Case] | None  # None: compile every case
    kernel_shapes: list[tuple[int, int]]  # (batch, seq) of the kernel micro-benchmarks
    timer: TimerSettings
    compile_on_cpu: bool = False
    seed: int = 0
    # Training steps (bertfast.bench.training): their cases, precision, timer and which
    # cases hf-compile runs (None: every one); kernel_passes says whether the kernel
    # micro-benchmarks time the forward, the forward + backward, or both.
    train_cases: list[TrainCase] = field(default_factory=list)
    train_precision: str = "fp32"
    train_timer: TimerSettings | None = None
    train_compile_cases: list[TrainCase] | None = None
    kernel_passes: tuple[str, ...] = ("forward", "backward")

    @property
    def configs(self) -> list[str]:
        """The configs of the grid, in order of first appearance."""
        return list(dict.fromkeys(c.config for c in self.cases))

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "quick": self.quick,
            "cases": [c.label for c in self.cases],
            "dtypes": self.dtypes,
            "backends": self.backends,
            "compile_cases": None
            if self.compile_cases is None
            else [c.label for c in self.compile_cases],
            "kernel_shapes": [list(s) for s in self.kernel_shapes],
            "timer": self.timer.__dict__,
            "compile_on_cpu": self.compile_on_cpu,
            "seed": self.seed,
            "varlen_fill": VARLEN_FILL,
            "train_cases": [c.label for c in self.train_cases],
            "train_precision": self.train_precision,
            "train_timer": None if self.train_timer is None else self.train_timer.__dict__,
            "train_compile_cases": None
            if self.train_compile_cases is None
            else [c.label for c in self.train_compile_cases],
            "kernel_passes": list(self.kernel_passes),
        }


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_shape(text: str) -> tuple[int, int]:
    """``"32x512"`` -> (32, 512)."""
    try:
        batch, seq = (int(p) for p in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r} is not BATCHxSEQ (for example 32x512)") from None
    return batch, seq


def parse_train_case(text: str) -> tuple[str, int, int]:
    """``"bert-base:32x128"`` -> ("bert-base", 32, 128)."""
    config, sep, shape = text.partition(":")
    if not sep:
        raise ValueError(f"training case {text!r} is not CONFIG:BATCHxSEQ (e.g. bert-base:32x128)")
    return (config, *parse_shape(shape))


def default_timer(gpu: bool, quick: bool) -> TimerSettings:
    if gpu:
        if quick:
            return TimerSettings(5, 150.0, 10, 200, 4, True)
        return TimerSettings(10, 500.0, 25, 1000, 4, True)
    if quick:
        return TimerSettings(1, 300.0, 3, 20, 2, False)
    return TimerSettings(2, 1000.0, 5, 100, 2, False)


# (on a GPU, quick) -> the configs, batches and seqs whose product is the default grid
AXES: dict[tuple[bool, bool], tuple[list[str], list[int], list[int]]] = {
    (True, False): (["bert-base", "bert-large", "minilm"], [1, 8, 32], [128, 384, 512]),
    (True, True): (["bert-base"], [1, 32], [128]),
    (False, False): (["transformer-base", "minilm", "bert-base"], [1, 8], [32, 128]),
    (False, True): (["transformer-base", "minilm"], [2], [32]),
}
# The GPU's --quick grid is not a product: the goal cases of perf-targets.md.
QUICK_GPU_CASES = [
    Case("bert-base", 32, 128),
    Case("bert-base", 1, 128),
    Case("bert-large", 8, 384),
    Case("bert-base", 32, 512),  # the padded cost beside the varlen case
    Case("bert-base", 32, 512, varlen=True),
]


def default_train_timer(gpu: bool, quick: bool) -> TimerSettings:
    """A step takes tens of ms on a GPU (the forward's timer fits); on the CPU fewer repeats,
    since a step on the Triton interpreter takes seconds."""
    if gpu:
        return default_timer(gpu, quick)
    if quick:
        return TimerSettings(1, 300.0, 2, 20, 2, False)
    return TimerSettings(1, 1000.0, 3, 50, 2, False)


# (on a GPU, quick) -> (config, batch, seq) of the training steps, each run with every head:
# the shapes on a GPU, the bench's tiny preset on the CPU (seconds, for CI).
TRAIN_SHAPES: dict[tuple[bool, bool], list[tuple[str, int, int]]] = {
    (True, False): [("bert-base", 32, 128), ("bert-large", 8, 384)],
    (True, True): [("bert-base", 32, 128), ("bert-large", 8, 384)],
    (False, False): [("tiny", 2, 16), ("tiny", 4, 32)],
    (False, True): [("tiny", 2, 16)],
}


def default_train_cases(gpu: bool, quick: bool) -> list[TrainCase]:
    """Every head at each default training shape of the device."""
    return [
        TrainCase(config, head, batch, seq)
        for config, batch, seq in TRAIN_SHAPES[gpu, quick]
        for head in TRAIN_HEADS
    ]


# (on a GPU, quick) -> (batch, seq) of the kernel micro-benchmarks
KERNEL_SHAPES: dict[tuple[bool, bool], list[tuple[int, int]]] = {
    (True, False): [(1, 128), (32, 128), (32, 512)],
    (True, True): [(32, 128), (8, 512)],
    (False, False): [(2, 32)],
    (False, True): [(2, 32)],
}


def default_cases(gpu: bool, quick: bool) -> list[Case]:
    """The end-to-end grid a run gets when no configs, batches or seqs are given."""
    if gpu and quick:
        return list(QUICK_GPU_CASES)
    configs, batches, seqs = AXES[gpu, quick]
    return grid_cases(configs, batches, seqs, quick)


def default_dtypes(gpu: bool, quick: bool) -> list[str]:
    return (["bf16"] if quick else ["bf16", "fp16"]) if gpu else ["fp32"]


def grid_cases(configs: list[str], batches: list[int], seqs: list[int], quick: bool) -> list[Case]:
    """Every dense case, then a varlen case at the largest shape (its dense twin is above)."""
    dense = [Case(c, b, s) for c, b, s in itertools.product(configs, batches, seqs)]
    varlen_configs = configs[:1] if quick else configs
    return dense + [Case(c, max(batches), max(seqs), varlen=True) for c in varlen_configs]
