"""What every ``bertfast`` command shares, defined once: the parser classes (the nearest
valid name for a misspelled option or choice), the model options (--model, --backend,
--device, --dtype, --quantize) and the other common ones (--num-threads, --max-length,
--output), the checks of device, backend and dtype, and input / JSON output helpers.

The commands (``bertfast.cli``, ``serve``, ``train``, ``corpus``, ``pipelines``, ``bench``)
import this module; it imports none of them.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUANTIZE_CHOICES = ("int8",)  # bertfast.cpu_quantize.QUANTIZE_MODES, without importing it
BACKEND_CHOICES = ("auto", "torch", "triton", "cuda")
TRAIN_BACKEND_CHOICES = ("torch", "triton")  # those with every backward


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


# The options below are defined once, here, so that every command spells, explains and
# defaults them alike. ``parser`` may be an argument group.
Container = argparse._ActionsContainer


def add_model_option(parser: Container, default_model: str | None) -> None:
    """--model: the checkpoint a command loads; required where ``default_model`` is None."""
    parser.add_argument(
        "--model",
        default=default_model,
        required=default_model is None,
        help="local Hugging Face model directory, or the bundled model's name"
        + (f" (default: {default_model})" if default_model else ""),
    )


def add_backend_option(parser: Container, training: bool = False) -> None:
    """--backend: the kernels a model runs on; training offers those with a backward."""
    if training:
        default, choices = "torch", TRAIN_BACKEND_CHOICES
        help_text = "kernels to train on: torch, or triton (the fused kernels, dropout included)"
    else:
        default, choices = "auto", BACKEND_CHOICES
        help_text = (
            "kernels to run on: auto picks cuda, then triton, then torch on a GPU, torch on the "
            "CPU; an explicit one that cannot run here is an error"
        )
    parser.add_argument("--backend", default=default, choices=choices, help=help_text)


def add_device_option(parser: Container) -> None:
    """--device: where the command runs (``default_device`` fills it in)."""
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: cuda if torch sees a GPU, else cpu)",
    )


def add_dtype_option(parser: Container) -> None:
    """--dtype: the weights' and activations' dtype (``parse_dtype`` reads it)."""
    parser.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES),
        help="weights and activations (default: fp32); on the CPU bf16 runs where it has "
        "AVX-512 BF16 or AMX (refused elsewhere) and fp16 runs slowly",
    )


def add_quantize_option(parser: Container) -> None:
    """--quantize: int8 GEMMs on the CPU."""
    parser.add_argument(
        "--quantize",
        default=None,
        choices=QUANTIZE_CHOICES,
        help="int8: the encoder layers' GEMMs in int8 on the CPU (weights per output channel, "
        "activations per token; fp32 everywhere else) (default: none)",
    )


def add_model_arguments(parser: Container, default_model: str | None) -> None:
    """--model, --backend, --device, --dtype, --quantize: every command that loads a model for
    inference (embed, serve, the task commands)."""
    add_model_option(parser, default_model)
    add_backend_option(parser)
    add_device_option(parser)
    add_dtype_option(parser)
    add_quantize_option(parser)


def add_num_threads_option(parser: Container) -> None:
    """--num-threads: torch's intra-op CPU threads."""
    parser.add_argument(
        "--num-threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )


def add_max_length_option(parser: Container, default: int | None, default_text: str) -> None:
    """--max-length: tokens per sequence; ``default_text`` says what None (or the default)
    means for this command."""
    parser.add_argument(
        "--max-length",
        type=int,
        default=default,
        help=f"tokens per sequence at most (default: {default_text})",
    )


def add_output_option(
    parser: Container, holds: str, required: bool = False, default_text: str | None = None
) -> None:
    """--output DIR: the directory a command writes ``holds`` into."""
    help_text = f"directory for {holds}"
    if default_text is not None:
        help_text += f" (default: {default_text})"
    parser.add_argument("--output", metavar="DIR", default=None, required=required, help=help_text)


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
    from bertfast.ops import backend_report

    if backend == "auto":
        return
    if backend == "cuda" and device.type != "cuda":
        raise RuntimeError(
            f"backend 'cuda' cannot run on {device}: the CUDA kernels need a CUDA device "
            "(use --backend torch or auto here)"
        )
    reason = backend_report(device).get(backend)
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
        from bertfast.ops import resolve_backend

        backend = resolve_backend(args.backend, device)
        print(
            f"bertfast {args.command}: running fp16 on the {backend} backend on cpu "
            "(slower than fp32 there: CPUs have no fast fp16 matmul)",
            file=sys.stderr,
        )
    return str(device)


def default_device(device: str | None) -> str:
    """``--device`` as given, else cuda when torch sees a GPU, else cpu."""
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


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


def read_lines(stream: Any, where: str = "stdin") -> list[str]:
    """The non-blank lines of a text or byte stream, decoded as UTF-8; a line that is not
    UTF-8 is a ValueError naming it."""
    raw = getattr(stream, "buffer", stream)
    lines = []
    for number, line in enumerate(raw, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{where} line {number} is not valid UTF-8 (byte {line[exc.start]:#04x} at "
                    f"column {exc.start + 1}); give UTF-8 text"
                ) from None
        line = line.rstrip("\r\n")
        if line.strip():
            lines.append(line)
    return lines
