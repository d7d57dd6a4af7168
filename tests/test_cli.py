"""The command line: main() as ``python -m bertfast`` calls it, and a real process where the
whole process's output is what is checked (one-line errors). tests/test_pipelines_cli.py runs
the ``python -m bertfast`` entry point itself."""

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def run_cli(*args):
    """``python -m bertfast ARGS`` in a new process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bertfast", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )


def run_main(argv, capsys):
    """bertfast's main() in this process: (exit code, stdout, stderr)."""
    from bertfast.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_json(capsys):
    code, out, err = run_main(["info", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["backends"]["cpu"]["torch"] is None
    assert report["backends"]["cpu"]["cuda"]  # "not built", or "CUDA devices only" once built


def test_embed_similarity_json(minilm_dir, capsys):
    argv = ["embed", "A cat sits.", "A cat is sitting.", "Markets fell.", "--json"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    sims = json.loads(out)["cosine_similarity"]
    assert sims[0][0] == pytest.approx(1.0, abs=1e-5)
    assert sims[0][1] > sims[0][2]


def test_embed_vectors_from_stdin(minilm_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"hello world\n")))
    code, out, err = run_main(["embed", "--show", "vectors", "--json"], capsys)
    assert code == 0, err
    (vector,) = json.loads(out)["embeddings"]
    assert len(vector) == 384 and sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (("embed", "hi", "--model", "/no/such/dir"), "no model directory at '/no/such/dir'"),
        (
            ("embed", "hi", "--backend", "cuda", "--device", "cpu"),
            "backend 'cuda' cannot run on cpu",
        ),
    ],
)
def test_errors_are_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_command_prints_the_usage_to_stderr_and_exits_2(capsys):
    # python -m bertfast with no command, as argparse answers a missing argument
    code, out, err = run_main([], capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: bertfast")
    for command in ("info", "embed", "fill-mask", "qa", "bench"):
        assert f"    {command}" in err
    assert err.rstrip().endswith(
        "bertfast: error: give a command (bertfast COMMAND --help for its options)"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "graphics"])
def test_unavailable_device_is_one_line_naming_the_available(device, capsys):
    code, out, err = run_main(["embed", "hi", "--device", device], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"bertfast embed: error: {device!r} is not a device name") or (
        f"device {device!r} is not available" in err
    )
    assert "available here: cpu" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_on_cpu_only_torch_says_so(capsys):
    if torch.version.cuda is not None:
        pytest.skip("this torch is built with CUDA")
    _, _, err = run_main(["embed", "hi", "--device", "cuda"], capsys)
    assert "is built without CUDA" in err


def test_cuda_backend_on_cpu_gives_the_device_reason_first(capsys):
    code, _, err = run_main(["embed", "hi", "--backend", "cuda", "--device", "cpu"], capsys)
    assert code == 2
    assert "backend 'cuda' cannot run on cpu: the CUDA kernels need a CUDA device" in err
    assert "not built" not in err


def test_bench_refuses_an_unavailable_device_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    code, _, err = run_main(["bench", "--device", "cuda", "--quick"], capsys)
    assert code == 2
    assert "device 'cuda' is not available" in err and len(err.strip().splitlines()) == 1


def _options(parser, path=()):
    """(command path, action) for every option and positional of the parser tree."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action


HELP_CHECKED = (
    "info",
    "embed",
    "fill-mask",
    "nsp",
    "classify",
    "ner",
    "qa",
    "bench",
    "serve",
    "finetune",
    "pretrain",
)


def test_every_option_says_what_it_does_and_its_default():
    from bertfast.cli import build_parser

    parser = build_parser()
    actions = [(path, a) for path, a in _options(parser) if not path or path[0] in HELP_CHECKED]
    commands = {path[0] for path, _ in actions if path}
    assert set(HELP_CHECKED) == commands
    for path, action in actions:
        where = f"{' '.join(path)} {action.option_strings or action.dest}"
        assert action.help, f"{where} has no help text"
        sub = parser
        for name in path:
            sub = next(
                a for a in sub._actions if isinstance(a, argparse._SubParsersAction)
            ).choices[name]
        shown = sub.formatter_class("x")._get_help_string(action) % {"default": action.default}
        flag = action.nargs == 0  # store_true: off unless given
        if not (flag or action.required or (not action.option_strings and action.nargs is None)):
            assert "default" in shown, f"{where}: help does not give its default: {shown!r}"


def test_help_shows_defaults(capsys):
    from bertfast.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["qa", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--backend" in text and "(default: auto)" in text
    assert "(default: 15)" in text  # --max-answer-len
    assert "--doc-stride" in text and "half of --max-seq-len" in text


def test_low_precision_on_cpu_says_what_ran(minilm_dir, capsys):
    # fp16 runs, slowly, with a note; bf16 needs native bf16 (tests/test_cpu_precision.py).
    argv = ["embed", "hello", "--dtype", "fp16", "--device", "cpu", "--show", "vectors"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert "embeddings (torch backend, fp16, cpu):" in out
    assert "running fp16 on the torch backend on cpu" in err


def test_a_dtype_the_device_cannot_run_is_refused(monkeypatch):
    from bertfast.cli_options import check_dtype

    def no_half_layer_norm(x, *args, **kwargs):
        if x.dtype == torch.float16:
            raise RuntimeError("\"LayerNormKernelImpl\" not implemented for 'Half'")
        return torch.ones_like(x)

    monkeypatch.setattr(torch.nn.functional, "layer_norm", no_half_layer_norm)
    with pytest.raises(ValueError, match=r"dtype fp16 cannot run on cpu: .*'Half'.*; use fp32"):
        check_dtype("fp16", torch.device("cpu"))
    check_dtype("fp32", torch.device("cpu"))  # fp32 is never probed


def test_bench_writes_outside_the_committed_results_by_default(monkeypatch, tmp_path):
    from bertfast.bench import cli as bench_cli
    from bertfast.bench import suite

    written = []
    monkeypatch.setattr(suite, "run_suite", lambda settings, output: written.append(output))
    monkeypatch.chdir(tmp_path)
    assert bench_cli.main(["--device", "cpu", "--quick", "--no-kernels"]) == 0
    assert written == [Path("bertfast-bench-results") / "cpu"]


def test_compile_report_is_a_subcommand_that_forwards_its_arguments(monkeypatch, capsys):
    from bertfast import compile_report
    from bertfast.cli import build_parser, main

    seen = []
    monkeypatch.setattr(compile_report, "main", lambda argv: seen.append(argv) or 0)
    assert main(["compile-report", "--matrix", "default", "--check", "--no-write"]) == 0
    assert main(["compile-report", "--help"]) == 0  # the report's own parser answers
    assert seen == [["--matrix", "default", "--check", "--no-write"], ["--help"]]
    assert "compile-report" in build_parser().format_help()
