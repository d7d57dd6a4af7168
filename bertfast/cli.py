"""The ``bertfast`` command: info, embed, and the task and benchmark commands."""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import math
import os
import platform
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

import torch

import bertfast
from bertfast.model_dirs import MINILM_NAMES
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

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUANTIZE_CHOICES = ("int8",)  # bertfast.cpu_quantize.QUANTIZE_MODES, without importing it
BACKEND_CHOICES = ("auto", "torch", "triton", "cuda")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            return f"{text} (default: %(default)s)"
        return text

    def _format_text(self, text: str) -> str:
        # argparse %-formats a description only when it holds "%(prog)", so a "%%" written as
        # in help strings would print doubled; here it prints "%" either way.
        if "%(prog)" not in text:
            text = text.replace("%%", "%")
        return super()._format_text(text)


# What argparse takes for a negative number rather than an option.
_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def did_you_mean(given: str, known: Sequence[str]) -> str | None:
    """The entry of ``known`` closest to a misspelled ``given``, if one is close."""
    close = difflib.get_close_matches(given, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


class ArgumentParser(argparse.ArgumentParser):
    """The bertfast parsers: every subcommand gets HelpFormatter unless it asks for another; an
    unknown option or a bad choice is answered with the nearest valid one."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized(extras))
        return namespace

    def unrecognized(self, extras: Sequence[str]) -> str:
        """argparse's message for arguments nobody took, with a suggestion for each option."""
        options = [o for action in self._actions for o in action.option_strings]
        hints = []
        for arg in extras:
            if arg.startswith("-"):
                name = arg.split("=", 1)[0]
                match = did_you_mean(name, options)
                if match:
                    hints.append((name, match))
        message = f"unrecognized arguments: {' '.join(extras)}"
        if len(hints) == 1:
            return f"{message}; did you mean {hints[0][1]}?"
        if hints:
            return f"{message}; did you mean " + ", ".join(f"{m} for {n}" for n, m in hints) + "?"
        return message

    def _check_value(self, action: argparse.Action, value: object) -> None:
        # argparse's "invalid choice" check (a private hook, stable since 3.2), plus the
        # nearest choice: "bertfast embedd" -> did you mean 'embed'?
        if action.choices is None or value in action.choices:
            return
        choices = ", ".join(repr(c) for c in action.choices)
        message = f"invalid choice: {value!r} (choose from {choices})"
        match = did_you_mean(str(value), [str(c) for c in action.choices])
        if match:
            message += f"; did you mean {match!r}?"
        raise argparse.ArgumentError(action, message)


class SubcommandParser(ArgumentParser):
    """A subcommand's parser. An argument it does not know is its own error, shown with its own
    usage: argparse hands it up to the top-level parser, whose usage says nothing about it."""

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._arg_strings = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized(extras))
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        # argparse reports a missing required option before the unknown ones, so "--trian"
        # would read as "--train is required": the misspelling comes first.
        unknown = self.unknown_options(getattr(self, "_arg_strings", []))
        if unknown and not message.startswith("unrecognized arguments"):
            message = f"{self.unrecognized(unknown)} (and {message})"
        super().error(message)

    def unknown_options(self, arg_strings: Sequence[str]) -> list[str]:
        """The arguments that look like options but name none of this parser's (nor a prefix of
        one, which argparse accepts)."""
        known = [o for action in self._actions for o in action.option_strings]
        unknown = []
        for arg in arg_strings:
            if arg == "--":
                break
            if not arg.startswith("-") or arg == "-" or _NUMBER.match(arg):
                continue
            name = arg.split("=", 1)[0]
            if name in known or (
                self.allow_abbrev
                and name.startswith("--")
                and any(o.startswith(name) for o in known)
            ):
                continue
            unknown.append(name)
        return unknown


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``"bf16"`` -> torch.bfloat16; None stays None (the model's default, fp32)."""
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
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKEND_CHOICES,
        help="kernels to run on: auto picks cuda, then triton, then torch on a GPU, "
        "torch on the CPU; an explicit one that cannot run here is an error",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: cuda if torch sees a GPU, else cpu)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES),
        help="weights and activations (default: fp32); on the CPU bf16 runs where it has "
        "AVX-512 BF16 or AMX (refused elsewhere) and fp16 runs slowly",
    )
    parser.add_argument(
        "--quantize",
        default=None,
        choices=QUANTIZE_CHOICES,
        help="int8: the encoder layers' GEMMs in int8 on the CPU (weights per output channel, "
        "activations per token; fp32 everywhere else) (default: none)",
    )


def available_devices() -> list[str]:
    """The devices torch can run on here: cpu, then cuda:0 ..., then mps."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(name: str) -> torch.device:
    """The device ``name`` if it is usable here, else ValueError naming the devices that are."""
    available = available_devices()
    where = f"available here: {', '.join(available)}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r} is not a device name; {where}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) is built without CUDA"
                if torch.version.cuda is None
                else "torch sees no CUDA GPU"
            )
            raise ValueError(f"device {name!r} is not available ({why}); {where}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} is not available; {where}")
        return device
    if device.type == "mps" and "mps" in available:
        return device  # the torch backend's plain ops run there
    raise ValueError(f"device {name!r} is not available; {where}")


def check_backend(backend: str, device: torch.device) -> None:
    """Refuse an explicit backend that cannot run on ``device``, with the device reason first."""
    if backend == "auto":
        return
    if backend == "cuda" and device.type != "cuda":
        raise RuntimeError(
            f"backend 'cuda' cannot run on {device}: the CUDA kernels need a CUDA device "
            "(use --backend torch or auto here)"
        )
    reason = bertfast.backend_report(device).get(backend)
    if reason is not None:
        raise RuntimeError(f"backend {backend!r} cannot run on {device}: {reason}")


def check_dtype(name: str | None, device: torch.device) -> None:
    """Refuse a dtype the device cannot compute in, saying why."""
    if name is None or name == "fp32":
        return
    dtype = DTYPES[name]
    if device.type == "cpu" and dtype == torch.bfloat16:
        from bertfast.cpu_linear import check_cpu_dtype

        check_cpu_dtype(dtype, device)  # native bf16 or a refusal saying what is missing
        return
    if device.type == "cuda" and dtype == torch.bfloat16:
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            major, minor = torch.cuda.get_device_capability(device)
            raise ValueError(
                f"dtype bf16 cannot run on {device} (compute capability {major}.{minor}; "
                "bf16 needs 8.0 or newer); use fp16 or fp32"
            )
        return
    # Probe the ops a BERT layer needs: some CPU builds of torch lack half-precision kernels.
    try:
        x = torch.ones(2, 4, device=device, dtype=dtype)
        torch.nn.functional.layer_norm(x @ x.T, (2,))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"dtype {name} cannot run on {device}: {first}; use fp32") from None


def resolve_model_options(args: argparse.Namespace) -> str:
    """Check --device, --backend and --dtype of a model command; returns the device to use.

    Errors come in that order, so a backend refused on the CPU says "CPU" before "not built".
    """
    device = check_device(default_device(args.device))
    check_backend(args.backend, device)
    check_dtype(args.dtype, device)
    if getattr(args, "quantize", None) is not None:
        from bertfast.cpu_quantize import check_quantize

        check_quantize(args.quantize, parse_dtype(args.dtype), device)
    if args.dtype == "fp16" and device.type == "cpu":
        backend = bertfast.resolve_backend(args.backend, device)
        print(
            f"bertfast {args.command}: running fp16 on the {backend} backend on cpu "
            "(slower than fp32 there: CPUs have no fast fp16 matmul)",
            file=sys.stderr,
        )
    return str(device)


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
    devices = [d for d in available_devices() if d != "mps"]
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
    from bertfast.corpus.cli import check_sentence_mode, run_corpus
    from bertfast.sentence import SentenceEncoder

    if args.input is not None:  # corpus mode: files in, shards of vectors out
        return run_corpus(args)
    check_sentence_mode(args)
    texts = list(args.texts)
    if not texts:
        from bertfast.pipelines.cli import read_lines

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


def _nulls_for_non_finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nulls_for_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls_for_non_finite(v) for v in value]
    return value


def finite_json(data, **dumps_kwargs) -> str:
    """JSON with every NaN / infinity written as null: bare NaN and Infinity are not JSON."""
    return json.dumps(_nulls_for_non_finite(data), allow_nan=False, **dumps_kwargs)


def has_non_finite(data) -> bool:
    """Whether a JSON-ready value holds a NaN or an infinity anywhere."""
    if isinstance(data, float):
        return not math.isfinite(data)
    if isinstance(data, dict):
        return any(has_non_finite(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return any(has_non_finite(v) for v in data)
    return False


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
    parser.add_argument("--version", action="version", version=f"bertfast {bertfast.__version__}")
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


def main(argv: Sequence[str] | None = None) -> int:
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
