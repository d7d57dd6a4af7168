"""The task heads against Hugging Face's, on random-initialised tiny checkpoints (fp32, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from bertfast import BertConfig, backend_report, heads  # noqa: E402
from bertfast.weights import CheckpointError  # noqa: E402
from tests import helpers  # noqa: E402
from tests.helpers import max_abs_error  # noqa: E402

VOCAB = 120
ATOL = 1e-4
HEAD_NAMES = [
    "BertForMaskedLM",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
]
# Outputs compared per head; token-level ones are compared on real tokens only.
OUTPUTS = {
    "BertForMaskedLM": {"logits": "token"},
    "BertForNextSentencePrediction": {"logits": "sequence"},
    "BertForPreTraining": {"prediction_logits": "token", "seq_relationship_logits": "sequence"},
    "BertForSequenceClassification": {"logits": "sequence"},
    "BertForTokenClassification": {"logits": "token"},
    "BertForQuestionAnswering": {"start_logits": "token", "end_logits": "token"},
}


def hf_config(**overrides) -> transformers.BertConfig:
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    kw.update(overrides)
    return transformers.BertConfig(**kw)


def tiny_config(**overrides) -> BertConfig:
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertConfig(**{**kw, **overrides})


def assert_close(actual, expected, atol: float = ATOL, what: str = "") -> None:
    """The shared comparison, printing the worst difference (seen with ``pytest -s``)."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    if actual.numel():
        print(f"{what}: max abs diff {max_abs_error(actual, expected):.3g}")
    helpers.assert_close(actual, expected, atol=atol, what=what)


def _build(name: str, config: transformers.BertConfig, path) -> transformers.PreTrainedModel:
    torch.manual_seed(1234)
    model = getattr(transformers, name)(config).eval()
    with torch.no_grad():  # HF zero-initialises biases and the MLM bias: make them count.
        for param in model.parameters():
            if param.dim() == 1:
                param.normal_(0.0, 0.1)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[transformers.PreTrainedModel, str]]:
    """One saved random HF model per head (3 labels for the classifiers)."""
    out = {}
    for name in HEAD_NAMES:
        classifier = name in ("BertForSequenceClassification", "BertForTokenClassification")
        labels = {"num_labels": 3} if classifier else {}
        path = tmp_path_factory.mktemp(name)
        out[name] = (_build(name, hf_config(**labels), path), str(path))
    return out


def _inputs(batch: int = 3, seq: int = 11, padded: bool = True):
    input_ids = torch.randint(5, VOCAB, (batch, seq))
    token_type_ids = torch.randint(0, 2, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padded:  # mixed lengths, and one row with a single real token
        lengths = torch.tensor([seq, seq - 4, 1][:batch])
        mask = (torch.arange(seq)[None] < lengths[:, None]).long()
        input_ids = input_ids.masked_fill(mask == 0, 0)
    return input_ids, mask, token_type_ids


def backends() -> list:
    """torch everywhere; triton where it can run here (the interpreter on a CPU machine)."""
    reason = backend_report("cpu")["triton"]
    return [
        "torch",
        pytest.param("triton", marks=pytest.mark.skipif(bool(reason), reason=str(reason))),
    ]


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("backend", backends())
def test_outputs_match_transformers(checkpoints, name, padded, backend):
    hf_model, path = checkpoints[name]
    model = getattr(heads, name).from_pretrained(path, backend=backend)
    assert model.backend == backend
    input_ids, mask, token_type_ids = _inputs(padded=padded)
    with torch.no_grad():
        expected = hf_model(input_ids, attention_mask=mask, token_type_ids=token_type_ids)
        actual = model(input_ids, attention_mask=mask, token_type_ids=token_type_ids)
    real = mask.bool()
    for field, level in OUTPUTS[name].items():
        a, e = getattr(actual, field), getattr(expected, field)
        if level == "token":
            assert a.shape == e.shape
            a, e = a[real], e[real]
        assert_close(a, e, what=f"{name}.{field} {backend} padded={padded}")
    assert actual.loss is None


def _labels_for(name: str, input_ids: torch.Tensor, mask: torch.Tensor) -> dict:
    batch, seq = input_ids.shape
    if name in ("BertForMaskedLM", "BertForPreTraining"):
        labels = torch.randint(0, VOCAB, (batch, seq))
        labels[torch.rand(batch, seq) < 0.6] = -100
        labels[mask == 0] = -100
        labels[0, 0] = 7  # at least one labelled position
        kw = {"labels": labels}
        if name == "BertForPreTraining":
            kw["next_sentence_label"] = torch.tensor([0, 1, 1][:batch])
        return kw
    if name == "BertForNextSentencePrediction":
        return {"labels": torch.tensor([0, 1, 0][:batch])}
    if name == "BertForSequenceClassification":
        return {"labels": torch.tensor([2, 0, 1][:batch])}
    if name == "BertForTokenClassification":
        labels = torch.randint(0, 3, (batch, seq))
        labels[mask == 0] = -100
        return {"labels": labels}
    # QA: one position past the end (clamped and ignored) and one in range
    return {
        "start_positions": torch.tensor([1, 40, 0][:batch]),
        "end_positions": torch.tensor([[3], [2], [0]][:batch]),
    }


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_loss_and_gradients_match_transformers(checkpoints, name):
    """Training on backend='torch': same loss and same gradients as Hugging Face."""
    _, path = checkpoints[name]
    hf_model = getattr(transformers, name).from_pretrained(path).train()
    model = getattr(heads, name).from_pretrained(path, backend="torch").train()
    input_ids, mask, token_type_ids = _inputs()
    labels = _labels_for(name, input_ids, mask)
    expected = hf_model(input_ids, attention_mask=mask, token_type_ids=token_type_ids, **labels)
    actual = model(input_ids, attention_mask=mask, token_type_ids=token_type_ids, **labels)
    expected.loss.backward()
    actual.loss.backward()
    assert_close(actual.loss, expected.loss, what=f"{name} loss")
    hf_grads = dict(hf_model.named_parameters())
    ours = model.bert.embeddings.word_embeddings.weight.grad
    theirs = hf_grads["bert.embeddings.word_embeddings.weight"].grad
    # The padding row is checked by test_padding_row_gets_no_embedding_gradient.
    rows = torch.arange(VOCAB) != hf_model.config.pad_token_id
    assert_close(ours[rows], theirs[rows], what=f"{name} word embedding grad")
    for key, param in model.named_parameters():
        if not key.startswith("bert."):
            assert_close(param.grad, hf_grads[key].grad, what=f"{name} {key} grad")


def test_padding_row_gets_no_embedding_gradient(checkpoints):
    _, path = checkpoints["BertForQuestionAnswering"]
    model = heads.BertForQuestionAnswering.from_pretrained(path, backend="torch").train()
    input_ids, mask, _ = _inputs()  # QA logits at padded positions enter the softmax
    loss = model(
        input_ids,
        mask,
        start_positions=torch.tensor([1, 2, 0]),
        end_positions=torch.tensor([3, 2, 0]),
    ).loss
    loss.backward()
    pad_row = model.bert.embeddings.word_embeddings.weight.grad[model.config.pad_token_id]
    assert torch.count_nonzero(pad_row) == 0


@pytest.fixture(scope="module")
def regression_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("regression")
    return _build("BertForSequenceClassification", hf_config(num_labels=1), path), str(path)


@pytest.mark.parametrize(
    "kind", ["regression", "single_label_classification", "multi_label_classification"]
)
def test_sequence_classification_problem_types(checkpoints, regression_checkpoint, kind):
    hf_model, path = (
        regression_checkpoint
        if kind == "regression"
        else checkpoints["BertForSequenceClassification"]
    )
    model = heads.BertForSequenceClassification.from_pretrained(path, backend="torch")
    input_ids, mask, _ = _inputs()
    labels = {
        "regression": torch.randn(3),
        "single_label_classification": torch.tensor([0, 2, 1]),
        "multi_label_classification": torch.randint(0, 2, (3, 3)).float(),
    }[kind]
    hf_model.config.problem_type = None
    with torch.no_grad():
        expected = hf_model(input_ids, attention_mask=mask, labels=labels)
        actual = model(input_ids, attention_mask=mask, labels=labels)
    assert hf_model.config.problem_type == kind
    assert model.config.extra["problem_type"] == kind
    assert_close(actual.loss, expected.loss, what=f"{kind} loss")


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_masked_lm_positions_only_logits(tmp_path, hidden_act):
    hf_model = _build("BertForMaskedLM", hf_config(hidden_act=hidden_act), tmp_path)
    model = heads.BertForMaskedLM.from_pretrained(tmp_path, backend="torch")
    input_ids, mask, _ = _inputs()
    with torch.no_grad():
        full = model(input_ids, attention_mask=mask).logits
        assert_close(
            full[mask.bool()], hf_model(input_ids, attention_mask=mask).logits[mask.bool()]
        )
        chosen = torch.zeros_like(mask, dtype=torch.bool)
        chosen[0, [1, 5, 9]] = True
        chosen[1, 2] = True
        by_mask = model(input_ids, attention_mask=mask, logits_positions=chosen).logits
        pairs = torch.tensor([[1, 2], [0, 9], [0, 1]])
        by_index = model(input_ids, attention_mask=mask, logits_positions=pairs).logits
    assert by_mask.shape == (4, VOCAB) and by_index.shape == (3, VOCAB)
    assert_close(by_mask, full[chosen], atol=1e-5, what="bool-mask positions")
    assert_close(by_index, full[pairs[:, 0], pairs[:, 1]], atol=1e-5, what="index positions")
    # The loss over the labelled positions only equals the full loss.
    labels = torch.full_like(input_ids, -100)
    labels[chosen] = torch.randint(0, VOCAB, (4,))
    with torch.no_grad():
        loss_full = model(input_ids, attention_mask=mask, labels=labels).loss
        loss_sel = model(input_ids, mask, labels=labels, logits_positions=labels != -100).loss
    assert_close(loss_sel, loss_full, atol=1e-5, what="positions-only loss")
    with pytest.raises(ValueError, match="logits_positions"):
        model(input_ids, logits_positions=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside the batch"):
        model(input_ids, logits_positions=torch.tensor([[3, 0]]))


@pytest.mark.parametrize("name", ["BertForMaskedLM", "BertForPreTraining"])
def test_decoder_tied_to_word_embeddings(checkpoints, name):
    _, path = checkpoints[name]
    for model in (
        getattr(heads, name).from_pretrained(path, backend="torch"),
        getattr(heads, name)(tiny_config(), backend="torch"),
    ):
        embeddings = model.bert.embeddings.word_embeddings.weight
        assert model.cls.predictions.decoder.weight is embeddings
        assert "cls.predictions.decoder.weight" not in model.hf_state_dict()
        assert model.cls.predictions.bias.shape == (VOCAB,)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_save_pretrained_round_trip_through_transformers(checkpoints, tmp_path, name):
    hf_model, path = checkpoints[name]
    model = getattr(heads, name).from_pretrained(path, backend="torch")
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    original = load_file(f"{path}/model.safetensors")
    assert set(saved) == set(original)
    for key, value in original.items():
        assert torch.equal(saved[key], value), key
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [name]
    reloaded = getattr(transformers, name).from_pretrained(tmp_path).eval()
    input_ids, mask, token_type_ids = _inputs()
    with torch.no_grad():
        a = reloaded(input_ids, attention_mask=mask, token_type_ids=token_type_ids)
        e = hf_model(input_ids, attention_mask=mask, token_type_ids=token_type_ids)
    for field in OUTPUTS[name]:
        assert torch.equal(getattr(a, field), getattr(e, field)), field


def test_fresh_head_saves_what_transformers_loads(tmp_path):
    """A head built here (not loaded) round-trips too, with the labels of its config."""
    config = tiny_config(id2label={0: "NEG", 1: "NEU", 2: "POS"})
    model = heads.BertForSequenceClassification(config, backend="torch").eval()
    model.save_pretrained(tmp_path)
    hf_model = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf_model.config.id2label == {0: "NEG", 1: "NEU", 2: "POS"}
    input_ids, mask, _ = _inputs()
    with torch.no_grad():
        assert_close(model(input_ids, mask).logits, hf_model(input_ids, mask).logits)


def test_pretraining_checkpoint_loads_into_masked_lm_and_nsp(checkpoints):
    """As in Hugging Face, the sibling head's weights of a pre-training checkpoint are unused."""
    hf_model, path = checkpoints["BertForPreTraining"]
    input_ids, mask, _ = _inputs()
    with torch.no_grad():
        expected = hf_model(input_ids, attention_mask=mask)
        mlm = heads.BertForMaskedLM.from_pretrained(path, backend="torch")
        nsp = heads.BertForNextSentencePrediction.from_pretrained(path, backend="torch")
        assert mlm.bert.pooler is None
        real = mask.bool()
        assert_close(mlm(input_ids, mask).logits[real], expected.prediction_logits[real])
        assert_close(nsp(input_ids, mask).logits, expected.seq_relationship_logits)


def _rewrite_checkpoint(src: str, dst, edit) -> None:
    state = load_file(f"{src}/model.safetensors")
    edit(state)
    dst.mkdir(exist_ok=True)
    save_file(state, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(open(f"{src}/config.json").read())


def test_legacy_checkpoint_with_stored_decoder(checkpoints, tmp_path):
    """Checkpoints from older transformers store decoder.weight and decoder.bias too."""
    hf_model, path = checkpoints["BertForMaskedLM"]

    def add_decoder(state):
        embeddings = state["bert.embeddings.word_embeddings.weight"]
        state["cls.predictions.decoder.weight"] = embeddings.clone()
        state["cls.predictions.decoder.bias"] = state.pop("cls.predictions.bias")

    _rewrite_checkpoint(path, tmp_path, add_decoder)
    model = heads.BertForMaskedLM.from_pretrained(tmp_path, backend="torch")
    input_ids, mask, _ = _inputs(padded=False)
    with torch.no_grad():
        assert_close(model(input_ids).logits, hf_model(input_ids).logits)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.pop("cls.predictions.transform.dense.bias"), r"missing keys.*transform"),
        (lambda s: s.update(extra=torch.zeros(2)), r"unexpected BertForMaskedLM keys.*extra"),
        (
            lambda s: s.update({"cls.predictions.bias": torch.zeros(VOCAB + 1)}),
            r"shape mismatches.*cls\.predictions\.bias",
        ),
        (lambda s: s.pop("bert.encoder.layer.1.output.dense.weight"), r"missing keys.*layers\.1"),
    ],
    ids=["missing", "unexpected", "mis-shaped", "missing-encoder"],
)
def test_bad_checkpoints_name_the_keys(checkpoints, tmp_path, edit, match):
    _, path = checkpoints["BertForMaskedLM"]
    _rewrite_checkpoint(path, tmp_path, edit)
    with pytest.raises(CheckpointError, match=match):
        heads.BertForMaskedLM.from_pretrained(tmp_path, backend="torch")


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_encoder_only_checkpoint_is_refused_clearly(tmp_path_factory, name):
    path = tmp_path_factory.mktemp("encoder_only")
    transformers.BertModel(hf_config()).save_pretrained(path)
    with pytest.raises(CheckpointError, match=f"no {name} head weights.*BertModel"):
        getattr(heads, name).from_pretrained(path, backend="torch")


def test_wrong_head_checkpoint_is_refused(checkpoints):
    _, path = checkpoints["BertForTokenClassification"]
    with pytest.raises(CheckpointError, match="no BertForQuestionAnswering head weights"):
        heads.BertForQuestionAnswering.from_pretrained(path, backend="torch")


def test_tuple_and_key_access(checkpoints):
    _, path = checkpoints["BertForQuestionAnswering"]
    model = heads.BertForQuestionAnswering.from_pretrained(path, backend="torch")
    input_ids, mask, _ = _inputs()
    with torch.no_grad():
        out = model(input_ids, mask)
        start, end = model(input_ids, mask, return_dict=False)
    assert torch.equal(out[0], start) and torch.equal(out["end_logits"], end)
    with pytest.raises(KeyError):
        out["loss"]
