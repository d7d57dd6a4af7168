"""The command line, run as a user runs it."""

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args, stdin=None):
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "bertfast", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
        timeout=300,
    )


def test_info_json():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backends"]["cpu"]["torch"] is None
    assert report["backends"]["cpu"]["cuda"]  # "not built", or "CUDA devices only" once built


def test_embed_similarity_json(minilm_dir):
    result = run_cli("embed", "A cat sits.", "A cat is sitting.", "Markets fell.", "--json")
    assert result.returncode == 0, result.stderr
    sims = json.loads(result.stdout)["cosine_similarity"]
    assert sims[0][0] == pytest.approx(1.0, abs=1e-5)
    assert sims[0][1] > sims[0][2]


def test_embed_vectors_from_stdin(minilm_dir):
    result = run_cli("embed", "--show", "vectors", "--json", stdin="hello world\n")
    assert result.returncode == 0, result.stderr
    (vector,) = json.loads(result.stdout)["embeddings"]
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
