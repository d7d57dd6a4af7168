"""Drop-in: accelerate(), from_hf() and attn_implementation="bertfast" against transformers."""

import pytest
import torch

import bertfast
from bertfast import heads
from bertfast.model import BertModel
from tests.helpers import assert_close, max_abs_error, randomize_biases_and_norms

transformers = pytest.importorskip("transformers")
import bertfast.hf as bf_hf  # noqa: E402  (registers the attention with transformers)

SMALL = dict(
    vocab_size=99,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    max_position_embeddings=32,
    num_labels=3,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
CLASSES = list(bf_hf.SUPPORTED)


def hf_model(name, **overrides):
    torch.manual_seed(0)
    if name == "BertForQuestionAnswering":
        overrides = {"num_labels": 2, **overrides}  # start and end
    config = transformers.BertConfig(**{**SMALL, **overrides})
    model = getattr(transformers, name)._from_config(config, attn_implementation="eager").eval()
    return randomize_biases_and_norms(model)


def batch(padded=True):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
        mask[2, 2:] = 0
    return dict(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=torch.randint(0, 2, ids.shape, generator=g),
    )


def labels_for(name, inputs):
    ids = inputs["input_ids"]
    if name in ("BertForMaskedLM", "BertForTokenClassification"):
        high = 99 if name == "BertForMaskedLM" else 3
        labels = torch.randint(0, high, ids.shape)
        labels[inputs["attention_mask"] == 0] = -100
        return dict(labels=labels)
    if name == "BertForPreTraining":
        labels = torch.randint(0, 99, ids.shape)
        labels[inputs["attention_mask"] == 0] = -100
        return dict(labels=labels, next_sentence_label=torch.tensor([0, 1, 0]))
    if name == "BertForQuestionAnswering":
        return dict(start_positions=torch.tensor([1, 2, 0]), end_positions=torch.tensor([3, 4, 1]))
    if name in ("BertForSequenceClassification", "BertForNextSentencePrediction"):
        return dict(labels=torch.tensor([0, 1, 1]))
    return {}


def compare(ours, theirs, mask, what):
    assert type(ours) is type(theirs), what
    for key, value in theirs.items():
        if key == "loss":
            assert_close(ours[key], value, atol=1e-5, what=f"{what} loss")
        elif value.dim() >= 2 and value.shape[:2] == mask.shape:
            assert max_abs_error(ours[key], value, mask) <= 1e-4, f"{what} {key}"
        else:
            assert max_abs_error(ours[key], value) <= 1e-4, f"{what} {key}"


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("name", CLASSES)
def test_accelerate_matches_transformers(name, padded):
    model = hf_model(name)
    fast = bertfast.accelerate(model, backend="torch")
    inputs = {**batch(padded), **labels_for(name, batch(padded))}
    with torch.no_grad():
        expected = model(**inputs)
        got = fast(**inputs)
    compare(got, expected, inputs["attention_mask"].bool(), name)
    assert fast.config is model.config and fast.device == model.device and fast.dtype == model.dtype
    as_tuple = fast(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(expected.to_tuple())


@pytest.mark.parametrize("name", ["BertModel", "BertForMaskedLM", "BertForQuestionAnswering"])
def test_accelerate_on_triton_interpreter(name):
    model = hf_model(name)
    fast = bertfast.accelerate(model, backend="triton")
    assert fast.backend == "triton"
    inputs = {**batch(), **labels_for(name, batch())}
    with torch.no_grad():
        compare(fast(**inputs), model(**inputs), inputs["attention_mask"].bool(), name)


def test_hidden_states_to_and_eval():
    model = hf_model("BertModel")
    fast = bertfast.accelerate(model, backend="torch").eval()
    inputs = batch()
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True)
        got = fast(**inputs, output_hidden_states=True)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert max_abs_error(a, b, inputs["attention_mask"].bool()) <= 1e-4
    fast.to(torch.bfloat16)
    assert fast.dtype == torch.bfloat16
    assert fast(**inputs).last_hidden_state.dtype == torch.bfloat16
    assert model.dtype == torch.float32  # the original is left as it was


def test_from_hf_builds_the_native_class():
    for name in CLASSES:
        native = bertfast.from_hf(hf_model(name), backend="torch")
        expected = BertModel if name == "BertModel" else getattr(heads, name)
        assert type(native) is expected


def test_training_loss_and_gradients_on_torch_backend():
    model = hf_model("BertForSequenceClassification")
    native = bertfast.from_hf(model.train(), backend="torch")
    assert native.training
    inputs = {**batch(), "labels": torch.tensor([0, 2, 1])}
    ours = native(**inputs).loss
    theirs = model(**inputs).loss
    assert_close(ours, theirs, atol=1e-5)
    ours.backward()
    theirs.backward()
    assert_close(native.classifier.weight.grad, model.classifier.weight.grad, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(position_embedding_type="relative_key"), "position_embedding_type 'relative_key'"),
        (dict(is_decoder=True), "decoder"),
        (dict(is_decoder=True, add_cross_attention=True), "cross-attention"),
    ],
)
def test_unsupported_configs_are_refused(overrides, match):
    model = hf_model("BertModel", **overrides)
    with pytest.raises(ValueError, match=match):
        bertfast.accelerate(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output_attentions=True), "output_attentions=True"),
        (dict(head_mask=torch.ones(2, 2)), "head_mask"),
        (dict(inputs_embeds=torch.zeros(3, 11, 64)), "inputs_embeds"),
        (dict(encoder_hidden_states=torch.zeros(3, 5, 64)), "cross-attention"),
    ],
)
def test_unsupported_calls_are_refused(kwargs, match):
    fast = bertfast.accelerate(hf_model("BertModel"), backend="torch")
    with pytest.raises(NotImplementedError, match=match):
        fast(**batch(), **kwargs)


def test_not_a_bert_is_refused():
    with pytest.raises(TypeError, match="cannot accelerate torch.nn.modules.linear.Linear"):
        bertfast.accelerate(torch.nn.Linear(2, 2))


def test_attention_interface_with_padding(tmp_path):
    model = hf_model("BertModel")
    inputs = batch()
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
        unmasked = model(**{**inputs, "attention_mask": None}).last_hidden_state
        model.set_attn_implementation("bertfast")
        got = model(**inputs).last_hidden_state
    assert model.config._attn_implementation == "bertfast"
    assert max_abs_error(got, expected, mask) <= 1e-5
    # The padding really is applied: without the mask the padded rows' neighbours change.
    assert max_abs_error(unmasked, expected, mask) > 1e-3
    model.save_pretrained(tmp_path)
    loaded = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="bertfast").eval()
    with torch.no_grad():
        assert max_abs_error(loaded(**inputs).last_hidden_state, expected, mask) <= 1e-5


def test_attention_interface_refuses_causal_masks():
    model = hf_model("BertModel", is_decoder=True)
    model.set_attn_implementation("bertfast")
    with pytest.raises(NotImplementedError, match="bidirectional"):
        model(**batch())


@pytest.mark.parametrize("normalize", [True, False])
def test_sentence_transformer_encode(minilm_dir, normalize):
    st = pytest.importorskip("sentence_transformers")
    texts = ["A man is eating food.", "A man rides a horse.", "短い文", "x " * 300]
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu")
    expected = torch.from_numpy(
        reference.encode(texts, normalize_embeddings=normalize, batch_size=3)
    )
    fast = bertfast.accelerate(
        st.SentenceTransformer(str(minilm_dir), device="cpu"), backend="torch"
    )
    assert isinstance(fast[0].auto_model, bf_hf.AcceleratedModel)
    got = torch.from_numpy(fast.encode(texts, normalize_embeddings=normalize, batch_size=3))
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=1)
    assert cosine.min().item() >= 0.99999
    assert (got.norm(dim=1) - expected.norm(dim=1)).abs().max().item() < 1e-4
    tensors = fast.encode(texts, convert_to_tensor=True, normalize_embeddings=normalize)
    assert torch.is_tensor(tensors) and tensors.shape == (4, 384)


def _grads_as_hf(native) -> dict[str, torch.Tensor]:
    """The native model's parameter gradients under transformers' names."""
    from bertfast.weights import bertfast_to_hf

    grads = {n: p.grad for n, p in native.named_parameters() if p.grad is not None}
    if isinstance(native, BertModel):
        return bertfast_to_hf(grads)
    encoder = {n[len("bert.") :]: g for n, g in grads.items() if n.startswith("bert.")}
    head = {n: g for n, g in grads.items() if not n.startswith("bert.")}
    return {**bertfast_to_hf(encoder, prefix="bert."), **head}


# Each head trains for seconds under the interpreter. The default run trains pre-training (the
# pooled NSP and per-token MLM outputs) and QA (per-token spans); the others are marked slow.
TRAINED_BY_DEFAULT = ("BertForPreTraining", "BertForQuestionAnswering")


@pytest.mark.parametrize(
    "name",
    [
        n if n in TRAINED_BY_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
        for n in CLASSES
        if n != "BertModel"
    ],
)
def test_accelerated_heads_train_on_the_triton_kernels(name):
    """An accelerate()d transformers head on backend='triton' trains with a plain optimizer
    loop: its loss and the gradient of every parameter equal transformers' (dropout off), and
    two AdamW steps keep the losses in lockstep. One encoder layer: the interpreter runs each
    kernel, and the layers' own gradients are checked in tests/test_triton_training.py."""
    model = hf_model(name, num_hidden_layers=1).train()
    fast = bertfast.accelerate(model, backend="triton")
    assert fast.training and fast.backend == "triton"
    inputs = {**batch(), **labels_for(name, batch())}
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (fast, model)]
    for step in range(2):
        losses = []
        for m, opt in zip((fast, model), optimizers):
            opt.zero_grad()
            loss = m(**inputs).loss
            loss.backward()
            losses.append(loss.detach())
        assert_close(losses[0], losses[1], atol=2e-5, rtol=1e-5, what=f"{name} loss {step}")
        if step == 0:
            ours = _grads_as_hf(fast.model)
            theirs = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            assert ours.keys() == theirs.keys(), set(ours) ^ set(theirs)
            for key, expected in theirs.items():
                assert_close(ours[key], expected, atol=1e-4, rtol=1e-4, what=f"{name} d{key}")
        for opt in optimizers:
            opt.step()
