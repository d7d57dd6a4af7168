"""The ``bertfast`` command: info, embed, compile-report, and the commands of
``COMMAND_MODULES`` (the tasks, bench, serve, finetune and pretrain)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from collections.abc import Sequence

import torch

from bertfast._version import __version__
from bertfast.cli_options import (
    DTYPES,
    ArgumentParser,
    SubcommandParser,
    add_model_arguments,
    available_devices,
    did_you_mean,
    finite_json,
    parse_dtype,
    read_lines,
    resolve_model_options,
)
from bertfast.model_dirs import MINILM_NAMES
from bertfast.ops import backend_report
from bertfast.weights import DEFAULT_MODEL

# Modules that add subcommands through ``register(subparsers)``.
COMMAND_MODULES = (
    "bertfast.pipelines.cli",
    "bertfast.bench.cli",
    "bertfast.serve.cli",
    "bertfast.train.cli",
)
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    ImportError,
    RuntimeError,
    NotImplementedError,
)


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    devices = [d for d in available_devices() if d != "mps"]
    report = {
        "bertfast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "cuda_runtime": torch.version.cuda,
        "devices": {
            d: (
                torch.cuda.get_device_name(d)
                if d.startswith("cuda")
                else platform.processor() or "cpu"
            )
            for d in devices
        },
        "backends": {d: backend_report(d) for d in devices},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key in ("bertfast", "python", "torch", "triton", "transformers", "cuda_runtime"):
        print(f"{key:13s} {report[key]}")
    for device, name in report["devices"].items():
        print(f"\ndevice {device}: {name}")
        for backend, reason in report["backends"][device].items():
            print(f"  {backend:7s} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from bertfast.corpus.cli import check_sentence_mode, run_corpus
    from bertfast.sentence import SentenceEncoder

    if args.input is not None:  # corpus mode: files in, shards of vectors out
        return run_corpus(args)
    check_sentence_mode(args)
    texts = list(args.texts)
    if not texts:
        texts = read_lines(sys.stdin)  # names a line that is not UTF-8
    if not texts:
        raise ValueError("give at least one text (as arguments or one per line on stdin)")
    encoder = SentenceEncoder.from_pretrained(
        args.model,
        backend=args.backend,
        device=args.device,
        dtype=parse_dtype(args.dtype),
        quantize=args.quantize,
    )
    dtype = next(encoder.model.parameters()).dtype
    dtype_name = next((k for k, v in DTYPES.items() if v == dtype), str(dtype))
    if args.quantize:
        dtype_name = f"{args.quantize} GEMMs, {dtype_name} elsewhere"
    ran = f"{encoder.model.backend} backend, {dtype_name}, {encoder.device}"
    vectors = encoder.encode(texts, batch_size=args.batch_size, convert_to_tensor=True)
    bad_rows = (~torch.isfinite(vectors).all(dim=1)).nonzero().flatten().tolist()
    show = args.show or ("similarity" if len(texts) > 1 else "vectors")
    if show == "similarity":
        unit = torch.nn.functional.normalize(vectors, dim=1)
        sims = (unit @ unit.T).tolist()
        if args.json:
            print(finite_json({"texts": texts, "cosine_similarity": sims}))
        else:
            print(f"cosine similarity ({ran}):")
            for i, text in enumerate(texts):
                row = " ".join(f"{s:6.3f}" for s in sims[i])
                print(f"  [{i}] {row}  {text[:60]}")
        return _report_non_finite(bad_rows)
    if args.json:
        print(finite_json({"texts": texts, "embeddings": vectors.tolist()}))
    else:
        print(f"embeddings ({ran}):")
        for text, vec in zip(texts, vectors, strict=True):
            head = " ".join(f"{x:+.4f}" for x in vec[:8].tolist())
            print(f"{text[:60]!r}: dim {vec.numel()}, norm {vec.norm():.4f}, [{head} ...]")
    return _report_non_finite(bad_rows)


def _report_non_finite(bad_rows: list[int]) -> int:
    """Exit status 1, with a message, when the model produced non-finite values."""
    if not bad_rows:
        return 0
    print(
        f"bertfast embed: error: the model produced non-finite values (NaN or infinity) for "
        f"text(s) {bad_rows}; they are shown as null in JSON. Try --dtype fp32",
        file=sys.stderr,
    )
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="bertfast", description="Fast, faithful BERT.")
    parser.add_argument("--version", action="version", version=f"bertfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SubcommandParser)

    info = sub.add_parser("info", help="versions, devices and which backends can run here")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.set_defaults(func=cmd_info)

    from bertfast.corpus.cli import add_corpus_arguments

    embed = sub.add_parser("embed", help="sentence embeddings and their cosine similarities")
    embed.add_argument("texts", nargs="*", help="texts to embed (default: one per line on stdin)")
    add_model_arguments(embed, DEFAULT_MODEL)
    embed.add_argument(
        "--show",
        choices=("vectors", "similarity"),
        default=None,
        help="what to print (default: similarity for two or more texts, else vectors)",
    )
    embed.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    embed.add_argument("--json", action="store_true", help="print JSON")
    add_corpus_arguments(embed)
    embed.set_defaults(func=cmd_embed)

    for module in COMMAND_MODULES:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise

    # Listed here for the help; main() hands its arguments over before parsing, so that the
    # report's own parser answers them (its --help included).
    report = sub.add_parser(
        "compile-report",
        add_help=False,
        help="compile every Triton kernel configuration for sm_80 / sm_90a and report "
        "registers, spills and occupancy (python -m bertfast.compile_report)",
    )
    report.add_argument("arguments", nargs=argparse.REMAINDER)
    report.set_defaults(func=lambda args: run_compile_report(args.arguments))
    return parser


def check_model_names(args: argparse.Namespace) -> None:
    """A --model / --tokenizer that is neither a path nor the bundled model's name, but close to
    that name (all-minilm-l6-v2, all-MiniLM-L6v2 ...): say which name was meant."""
    for option in ("model", "tokenizer"):
        value = getattr(args, option, None)
        if not isinstance(value, str) or value in MINILM_NAMES or os.path.exists(value):
            continue
        by_lower = {name.lower(): name for name in MINILM_NAMES}
        match = did_you_mean(value.lower(), list(by_lower))
        if match:
            raise FileNotFoundError(
                f"--{option} {value!r} is neither a directory nor the bundled model's name; "
                f"did you mean {by_lower[match]!r}?"
            )


def run_compile_report(argv: Sequence[str]) -> int:
    """``bertfast compile-report ARGS``: ``python -m bertfast.compile_report ARGS``."""
    from bertfast.compile_report import main as compile_report

    return compile_report(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compile-report"]:
        return run_compile_report(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # as argparse answers a missing argument: usage, exit status 2
        parser.print_help(sys.stderr)
        print(
            "\nbertfast: error: give a command (bertfast COMMAND --help for its options)",
            file=sys.stderr,
        )
        return 2
    try:
        check_model_names(args)
        if hasattr(args, "backend") and hasattr(args, "dtype"):
            args.device = resolve_model_options(args)
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"bertfast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
