"""``bertfast embed --json`` stays valid JSON, and fails loudly, when the model gives NaN."""

import json

import pytest
from safetensors.torch import load_file, save_file

from bertfast.cli import main
from tests.sentence_fixtures import tiny_bert_dir

COMMON = ["--backend", "torch", "--device", "cpu", "--json"]


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, minilm_dir):
    """A bare BERT directory whose embedding of 'hello' is NaN (other words are fine)."""
    path = tiny_bert_dir(tmp_path_factory.mktemp("nan") / "model", minilm_dir)
    state = load_file(str(path / "model.safetensors"))
    state["embeddings.word_embeddings.weight"][7592] = float("nan")  # "hello"
    save_file(state, str(path / "model.safetensors"))
    return str(path)


@pytest.mark.parametrize("show", ["vectors", "similarity"])
def test_non_finite_embeddings_give_valid_json_and_exit_1(capsys, nan_model, show):
    code = main(["embed", "hello there", "good morning", "--model", nan_model, *COMMON,
                 "--show", show])  # fmt: skip
    out, err = capsys.readouterr()
    data = strict_json(out)
    key = "embeddings" if show == "vectors" else "cosine_similarity"
    assert data[key][0][0] is None and all(v is not None for v in data[key][1][1:])
    assert code == 1 and "non-finite values (NaN or infinity) for text(s) [0]" in err


def test_finite_embeddings_exit_0(capsys, nan_model):
    code = main(["embed", "good morning", "--model", nan_model, *COMMON])
    out, err = capsys.readouterr()
    assert code == 0 and len(strict_json(out)["embeddings"][0]) == 32 and err == ""
