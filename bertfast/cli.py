"""The ``bertfast`` command: info, embed, and the task and benchmark commands."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from collections.abc import Sequence

import torch

import bertfast
from bertfast.weights import DEFAULT_MODEL

# Modules that add subcommands through ``register(subparsers)``.
COMMAND_MODULES = ("bertfast.pipelines.cli", "bertfast.bench.cli")
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    ImportError,
    RuntimeError,
    NotImplementedError,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str | None) -> None:
    """--model, --backend, --device, --dtype, shared by every command that loads a model."""
    parser.add_argument(
        "--model",
        default=default_model,
        required=default_model is None,
        help="local Hugging Face model directory"
        + (f" (default: {default_model})" if default_model else ""),
    )
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "triton", "cuda"))
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp32")


def default_device(device: str | None) -> str:
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    report = {
        "bertfast": bertfast.__version__,
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
        "backends": {d: bertfast.backend_report(d) for d in devices},
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
    from bertfast.sentence import SentenceEncoder

    texts = list(args.texts)
    if not texts:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError("give at least one text (as arguments or one per line on stdin)")
    encoder = SentenceEncoder.from_pretrained(
        args.model,
        backend=args.backend,
        device=default_device(args.device),
        dtype=parse_dtype(args.dtype),
    )
    vectors = encoder.encode(texts, batch_size=args.batch_size)
    show = args.show or ("similarity" if len(texts) > 1 else "vectors")
    if show == "similarity":
        unit = torch.nn.functional.normalize(vectors, dim=1)
        sims = (unit @ unit.T).tolist()
        if args.json:
            print(json.dumps({"texts": texts, "cosine_similarity": sims}))
        else:
            print(f"cosine similarity ({encoder.model.backend} backend, {encoder.device}):")
            for i, text in enumerate(texts):
                row = " ".join(f"{s:6.3f}" for s in sims[i])
                print(f"  [{i}] {row}  {text[:60]}")
        return 0
    if args.json:
        print(json.dumps({"texts": texts, "embeddings": vectors.tolist()}))
    else:
        for text, vec in zip(texts, vectors, strict=True):
            head = " ".join(f"{x:+.4f}" for x in vec[:8].tolist())
            print(f"{text[:60]!r}: dim {vec.numel()}, norm {vec.norm():.4f}, [{head} ...]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertfast", description="Fast, faithful BERT.")
    parser.add_argument("--version", action="version", version=f"bertfast {bertfast.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="versions, devices and which backends can run here")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    embed = sub.add_parser("embed", help="sentence embeddings and their cosine similarities")
    embed.add_argument("texts", nargs="*", help="texts to embed (default: one per line on stdin)")
    add_model_arguments(embed, DEFAULT_MODEL)
    embed.add_argument("--show", choices=("vectors", "similarity"), default=None)
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--json", action="store_true", help="print JSON")
    embed.set_defaults(func=cmd_embed)

    for module in COMMAND_MODULES:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"bertfast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
