"""The ``bench`` subcommand: ``bertfast bench``, ``python -m bertfast.bench``, benchmarks/run.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertfast.bench.settings import (
    CONFIG_NAMES,
    DTYPES,
    E2E_BACKENDS,
    TRAIN_BACKENDS,
    TRAIN_HEADS,
    TRAIN_PRECISIONS,
)
from bertfast.cli_options import HelpFormatter, add_device_option, add_output_option, check_device

# Default results folder, under the current directory and named for what it holds, so a run
# never writes into a repository's committed results (benchmarks/results/ here).
DEFAULT_OUTPUT = "bertfast-bench-results"

DESCRIPTION = """\
Benchmark bertfast against Hugging Face transformers (eager, SDPA, torch.compile) on the same
weights and inputs: an end-to-end grid (time, tokens/s, TFLOP/s, fraction of the measured
matmul ceiling, speedup, error against an fp32 reference), kernel micro-benchmarks (forward,
and forward + backward) and training steps (forward, loss, backward and AdamW step of
BertForSequenceClassification and BertForPreTraining: time, peak memory, loss and gradient
error against HF eager in fp32). Writes results.json, results.md and PNG plots. See
benchmarks/README.md for the columns."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_option(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small grid and fewer repeats (GPU: < 4 min for the forward; the training "
        "rows add minutes, not yet measured: hf-compile compiles a training step twice)",
    )
    add_output_option(
        parser,
        f"the results (default: ./{DEFAULT_OUTPUT}/<device-tag>, e.g. ./{DEFAULT_OUTPUT}/cpu); "
        "with --plot, where the plots go (default: beside the file)",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        metavar="NAME",
        help=f"models among {', '.join(CONFIG_NAMES)} (default: the device's grid, see "
        "benchmarks/README.md)",
    )
    parser.add_argument(
        "--batches", nargs="+", type=int, metavar="B", help="batch sizes (default: the grid's)"
    )
    parser.add_argument(
        "--seqs", nargs="+", type=int, metavar="S", help="sequence lengths (default: the grid's)"
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        metavar="DTYPE",
        help=f"among {', '.join(DTYPES)} (default: bf16 fp16 on a GPU, bf16 with --quick; "
        "fp32 on the CPU)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help=f"among {', '.join(E2E_BACKENDS)} and, for training only, "
        f"{', '.join(b for b in TRAIN_BACKENDS if b not in E2E_BACKENDS)} (default: all; those "
        "that cannot run here are listed as skipped; the training rows take those that train)",
    )
    parser.add_argument(
        "--varlen",
        nargs="+",
        metavar="BxS",
        help="variable-length shapes (mean fill 50%%) for every config, or 'none' "
        "(default: one per config at the largest batch and seq)",
    )
    parser.add_argument(
        "--no-kernels",
        action="store_true",
        help="skip the kernel micro-benchmarks (forward and forward + backward)",
    )
    training = parser.add_mutually_exclusive_group()
    training.add_argument(
        "--no-training",
        action="store_true",
        help="skip the training steps and the kernels' forward + backward rows",
    )
    training.add_argument(
        "--training-only",
        action="store_true",
        help="only the training steps and the kernels' forward + backward rows (no forward "
        "grid, no forward kernel rows)",
    )
    parser.add_argument(
        "--train-cases",
        nargs="+",
        metavar="CONFIG:BxS",
        help="training-step shapes, each run with every head (default: GPU bert-base:32x128 "
        "bert-large:8x384; CPU tiny:2x16, and tiny:4x32 without --quick); training rows: "
        f"{', '.join(TRAIN_BACKENDS)} among --backends",
    )
    parser.add_argument(
        "--train-heads",
        nargs="+",
        metavar="HEAD",
        choices=TRAIN_HEADS,
        help=f"heads of the training steps among {', '.join(TRAIN_HEADS)} (default: both)",
    )
    parser.add_argument(
        "--train-precision",
        choices=TRAIN_PRECISIONS,
        help="training precision: bf16 = torch.autocast(bf16) over fp32 master weights (GPU "
        "default), fp32 = no autocast (CPU default: the Triton interpreter refuses bf16)",
    )
    parser.add_argument(
        "--compile-on-cpu", action="store_true", help="run the hf-compile baseline on the CPU too"
    )
    parser.add_argument(
        "--rep-ms",
        type=float,
        help="measuring time per row, in ms (default: GPU 500, CPU 1000; --quick 150 / 300)",
    )
    parser.add_argument(
        "--ci-width",
        type=float,
        help="repeat a row until its median's 95 %% interval is within this fraction of it, or "
        "4x --rep-ms is spent; wider rows are marked noisy (default: 0.05)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights and inputs seed (default: 0)")
    parser.add_argument(
        "--plot",
        metavar="RESULTS_JSON",
        help="only draw the plots of an existing results file (default: measure, then plot)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the suite (or only draw plots) as the parsed arguments say."""
    from bertfast.bench.report import plot_results

    if args.plot:
        for path in plot_results(args.plot, args.output):
            print(path)
        return 0
    from bertfast.bench.plan import make_settings
    from bertfast.bench.suite import device_tag, run_suite

    device = None if args.device is None else str(check_device(args.device))
    settings = make_settings(
        device=device,
        quick=args.quick,
        configs=args.configs,
        batches=args.batches,
        seqs=args.seqs,
        dtypes=args.dtypes,
        backends=args.backends,
        varlen=args.varlen,
        kernels=not args.no_kernels,
        compile_on_cpu=args.compile_on_cpu,
        rep_ms=args.rep_ms,
        ci_width=args.ci_width,
        seed=args.seed,
        training=not args.no_training,
        forward=not args.training_only,
        train_cases=args.train_cases,
        train_heads=args.train_heads,
        train_precision=args.train_precision,
    )
    output = args.output or Path(DEFAULT_OUTPUT) / device_tag(settings.device)
    run_suite(settings, output)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to the main ``bertfast`` CLI."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark against Hugging Face transformers",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The subcommand on its own, for ``python -m bertfast.bench`` and benchmarks/run.py."""
    parser = argparse.ArgumentParser(
        prog="bertfast bench",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"bertfast bench: error: {exc}", file=sys.stderr)
        return 2
