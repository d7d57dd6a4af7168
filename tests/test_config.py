"""config.json validation: refusals where loading would guess, one-line errors naming the file."""

import json

import pytest
import torch

from bertfast.config import BertConfig
from bertfast.heads import BertForSequenceClassification
from bertfast.model import BertModel
from tests.helpers import random_hf_bert

TINY = dict(
    vocab_size=99, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
)


def write_config(tmp_path, data) -> str:
    (tmp_path / "config.json").write_text(json.dumps(data))
    return str(tmp_path)


def test_architectures_decide_when_model_type_is_missing(tmp_path):
    transformers = pytest.importorskip("transformers")
    path, _ = random_hf_bert(tmp_path)
    config = json.loads((path / "config.json").read_text())
    del config["model_type"]
    config["architectures"] = ["RobertaModel"]
    write_config(path, config)
    with pytest.raises(ValueError):  # transformers refuses it too
        transformers.AutoConfig.from_pretrained(str(path))
    with pytest.raises(ValueError, match=r"no model_type and architectures \['RobertaModel'\]"):
        BertModel.from_pretrained(path, backend="torch")
    config["architectures"] = ["BertModel"]
    write_config(path, config)
    assert BertModel.from_pretrained(path, backend="torch").config.hidden_size == 64


def test_num_labels_without_id2label_is_honoured(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    reference = transformers.BertForSequenceClassification(
        transformers.BertConfig(**TINY, num_labels=3)
    ).eval()
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["id2label"], config["label2id"]
    config["num_labels"] = 3
    write_config(tmp_path, config)
    reference = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    ours = BertForSequenceClassification.from_pretrained(tmp_path, backend="torch")
    ids = torch.randint(1, 99, (2, 7))
    expected = reference(input_ids=ids).logits
    got = ours(input_ids=ids).logits
    assert got.shape == expected.shape == (2, 3)
    assert (got - expected).abs().max().item() < 1e-5
    assert ours.config.id2label == reference.config.id2label


def test_num_labels_contradicting_id2label(tmp_path):
    with pytest.raises(ValueError, match="num_labels is 3 but id2label/label2id has 2 labels"):
        BertConfig.from_dict({**TINY, "num_labels": 3, "id2label": {"0": "a", "1": "b"}})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("layer_norm_eps", -1.0, "layer_norm_eps must be a number in \\(0, 1\\), got -1.0"),
        ("layer_norm_eps", "1e-12", "layer_norm_eps must be a number in \\(0, 1\\), got '1e-12'"),
        ("layer_norm_eps", 0, "layer_norm_eps must be a number in \\(0, 1\\)"),
        ("hidden_dropout_prob", 1.5, "hidden_dropout_prob must be a number in \\[0, 1\\]"),
        ("attention_probs_dropout_prob", "0.1", "attention_probs_dropout_prob must be a number"),
        ("classifier_dropout", -0.1, "classifier_dropout must be a number in \\[0, 1\\]"),
        ("initializer_range", "0.02", "initializer_range must be a non-negative number"),
        ("hidden_size", "64", "hidden_size must be a positive integer, got '64'"),
        ("max_position_embeddings", 0, "max_position_embeddings must be a positive integer"),
        ("type_vocab_size", 2.0, "type_vocab_size must be a positive integer"),
        ("num_hidden_layers", True, "num_hidden_layers must be a positive integer"),
        ("pad_token_id", "0", "pad_token_id must be null or an int"),
        ("hidden_act", 3, "hidden_act must be a string"),
        ("num_labels", "3", "num_labels must be a positive integer"),
        ("id2label", ["NEG", "POS"], "id2label must be an object such as .*, got a list"),
        ("id2label", {"zero": "NEG"}, "id2label entry 'zero'"),
        ("label2id", {"NEG": "zero"}, "label2id entry 'NEG'"),
    ],
)
def test_every_field_is_checked(tmp_path, field, value, message):
    path = write_config(tmp_path, {**TINY, "model_type": "bert", field: value})
    with pytest.raises(ValueError, match=message) as info:
        BertConfig.from_pretrained(path)
    assert str(tmp_path / "config.json") in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "a config must be a JSON object, got list"),
        ('{"hidden_size": 64,', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_unreadable_config_names_the_file(tmp_path, content, message):
    file = tmp_path / "config.json"
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message) as info:
        BertModel.from_pretrained(tmp_path, backend="torch")
    assert str(file) in str(info.value)
    assert "\n" not in str(info.value)
