"""The encoder against transformers.BertModel (fp32, CPU), bad inputs, dtypes and devices."""

import pytest
import torch

from bertfast import BertConfig, BertModel
from tests.helpers import max_abs_error, random_batch, random_hf_bert

transformers = pytest.importorskip("transformers")

PARITY_TOL = 1e-4


def _hf_outputs(hf, ids, types, mask):
    with torch.no_grad():
        return hf(input_ids=ids, token_type_ids=types, attention_mask=mask)


CONFIGS = {
    "head_dim_32": dict(hidden_size=64, num_attention_heads=2),
    "head_dim_64": dict(hidden_size=128, num_attention_heads=2, intermediate_size=256),
    "one_head": dict(hidden_size=32, num_attention_heads=1, intermediate_size=64),
    "gelu_new": dict(hidden_act="gelu_new"),
    "three_token_types": dict(type_vocab_size=3),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_checkpoint_parity(tmp_path, name):
    path, hf = random_hf_bert(tmp_path, **CONFIGS[name])
    model = BertModel.from_pretrained(path, backend="torch")
    ids, types, mask = random_batch(hf.config.vocab_size, type_vocab=hf.config.type_vocab_size)
    ours = model(ids, attention_mask=mask, token_type_ids=types)
    ref = _hf_outputs(hf, ids, types, mask)
    assert max_abs_error(ours.last_hidden_state, ref.last_hidden_state, mask) <= PARITY_TOL
    assert max_abs_error(ours.pooler_output, ref.pooler_output) <= PARITY_TOL


def test_minilm_parity(minilm_dir):
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    model = BertModel.from_pretrained("all-MiniLM-L6-v2", backend="torch")
    ids, types, mask = random_batch(hf.config.vocab_size, batch=4, seq=37)
    ours = model(ids, attention_mask=mask, token_type_ids=types)
    ref = _hf_outputs(hf, ids, types, mask)
    err = max_abs_error(ours.last_hidden_state, ref.last_hidden_state, mask)
    assert err <= PARITY_TOL, err
    assert max_abs_error(ours.pooler_output, ref.pooler_output) <= PARITY_TOL


@pytest.mark.parametrize("torch_threads", [1, 2], indirect=True)
@pytest.mark.parametrize("int8", [False, True])
def test_cpu_inference_packs_real_tokens_and_keeps_parity(tmp_path, int8, torch_threads):
    """In CPU inference the torch backend runs on the real tokens only: real positions equal
    transformers' (and the padded layout's), padded positions come back as zeros, and
    ``compute_padded_positions`` or grad enabled give transformers' padded positions; on one
    thread and on two (where the attention takes the math path)."""
    from bertfast.cpu_quantize import quantize_

    path, hf = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, backend="torch")
    if int8:
        quantize_(model, "int8")
    ids, types, mask = random_batch(hf.config.vocab_size, batch=5, seq=17)
    assert (mask == 0).any()
    ref = _hf_outputs(hf, ids, types, mask)
    pad = mask == 0
    with torch.inference_mode():
        packed = model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        padded = model(
            ids, attention_mask=mask, token_type_ids=types, compute_padded_positions=True
        )
    tol = 0.05 if int8 else PARITY_TOL  # int8: the real positions' error, not the layout's
    assert max_abs_error(packed.last_hidden_state, ref.last_hidden_state, mask) <= tol
    assert max_abs_error(packed.last_hidden_state, padded.last_hidden_state, mask) <= 1e-5
    assert packed.last_hidden_state[pad].abs().max() == 0
    assert max_abs_error(packed.pooler_output, padded.pooler_output) <= 1e-5
    for layer in packed.hidden_states[1:]:
        assert layer[pad].abs().max() == 0
    if not int8:
        assert max_abs_error(padded.last_hidden_state, ref.last_hidden_state) <= PARITY_TOL
        with torch.enable_grad():  # the reference layout: padded positions computed too
            grad_on = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        assert max_abs_error(grad_on, ref.last_hidden_state) <= PARITY_TOL


def test_output_hidden_states(tmp_path):
    path, hf = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, backend="torch")
    ids, types, mask = random_batch(99)
    ours = model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    with torch.no_grad():
        ref = hf(
            input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True
        )
    assert len(ours.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(ours.hidden_states, ref.hidden_states, strict=True):
        assert max_abs_error(a, b, mask) <= PARITY_TOL
    assert ours.hidden_states[-1] is ours.last_hidden_state


def test_padded_batch_equals_each_sequence_alone(tmp_path):
    path, hf = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, backend="torch")
    ids, types, mask = random_batch(hf.config.vocab_size, batch=4, seq=11)
    batched = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        alone = model(ids[i : i + 1, :n], token_type_ids=types[i : i + 1, :n]).last_hidden_state
        assert max_abs_error(batched[i, :n], alone[0]) <= 1e-5


def test_output_is_indexable_and_hf_keywords_work(tmp_path):
    path, hf = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path)
    ids = torch.randint(1, 99, (2, 5))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(5))
    assert out[0] is out.last_hidden_state and out[1] is out.pooler_output
    assert out["pooler_output"] is out.pooler_output
    assert len(model(ids, return_dict=False)) == 2
    assert model.backend == "torch"  # auto on CPU


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_rule(tmp_path, dtype):
    """Error vs fp32 reference <= 3x the error HF itself makes in the same dtype (testing.md)."""
    path, hf = random_hf_bert(tmp_path)
    ids, types, mask = random_batch(99)
    ref = _hf_outputs(hf, ids, types, mask).last_hidden_state
    hf_low = transformers.BertModel.from_pretrained(path, dtype=dtype).eval()
    hf_err = max_abs_error(_hf_outputs(hf_low, ids, types, mask).last_hidden_state, ref, mask)
    model = BertModel.from_pretrained(path, backend="torch", dtype=dtype)
    out = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert out.dtype == dtype
    assert max_abs_error(out, ref, mask) <= 3 * hf_err + 1e-6


def test_to_dtype_and_device(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path).to(torch.device("cpu"), torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    ids = torch.randint(1, 99, (2, 6))
    assert model(ids).last_hidden_state.dtype == torch.bfloat16


def test_presets():
    shapes = {
        "transformer-base": (6, 512, 8),
        "bert-base": (12, 768, 12),
        "bert-large": (24, 1024, 16),
    }
    for name, (layers, hidden, heads) in shapes.items():
        c = BertConfig.preset(name)
        assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (
            layers,
            hidden,
            heads,
        )
        assert c.intermediate_size == 4 * hidden
    with pytest.raises(ValueError, match="unknown preset 'bert-huge'"):
        BertConfig.preset("bert-huge")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=100, num_attention_heads=3), "not divisible by num_attention_heads"),
        (dict(position_embedding_type="relative_key"), "position_embedding_type 'relative_key'"),
        (dict(hidden_act="relu"), "hidden_act 'relu' is not supported"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    ],
)
def test_unsupported_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BertConfig(**kwargs)


def test_null_pad_token_id_is_accepted_and_bad_one_named():
    assert BertConfig(pad_token_id=None).pad_token_id is None
    BertModel(BertConfig(pad_token_id=None, num_hidden_layers=1), backend="torch")
    with pytest.raises(ValueError, match="pad_token_id must be null or an int in"):
        BertConfig(pad_token_id="0")


def test_config_from_hf_json(tmp_path):
    import json

    data = transformers.BertConfig(
        hidden_size=48, num_attention_heads=4, id2label={0: "neg", 1: "pos"}, hidden_act="gelu_new"
    ).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(data))
    c = BertConfig.from_pretrained(tmp_path)
    assert (c.hidden_size, c.head_dim, c.gelu_approximate) == (48, 12, "tanh")
    assert c.id2label == {0: "neg", 1: "pos"} and c.label2id == {"neg": 0, "pos": 1}
    decoder = dict(data, is_decoder=True)
    with pytest.raises(ValueError, match="decoder"):
        BertConfig.from_dict(decoder)


@pytest.fixture(scope="module")
def tiny_model():
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        type_vocab_size=2,
    )
    return BertModel(config, backend="torch").eval()


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: dict(input_ids=torch.tensor([[1, 50]])), ValueError, r"input_ids contains 50; allowed range is \[0, 50\)"),
        (lambda: dict(input_ids=torch.tensor([[1, -3]])), ValueError, "input_ids contains -3"),
        (lambda: dict(input_ids=torch.ones(1, 17, dtype=torch.long)), ValueError, "sequence length 17 exceeds max_position_embeddings"),
        (lambda: dict(input_ids=torch.ones(1, 4, dtype=torch.long), token_type_ids=torch.full((1, 4), 2)), ValueError, "token_type_ids contains 2"),
        (lambda: dict(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5)), ValueError, r"attention_mask has shape \(2, 5\)"),
        (lambda: dict(input_ids=torch.ones(2, 4)), TypeError, "input_ids must be an integer tensor.*torch.float32"),
        (lambda: dict(input_ids=torch.ones(4, dtype=torch.long)), ValueError, r"input_ids must be \(batch, seq\)"),
        (lambda: dict(input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=torch.full((1, 4), 2)), ValueError, "only 0 and 1"),
        (lambda: dict(input_ids=torch.ones(1, 4, dtype=torch.long), position_ids=torch.tensor([0, 1, 2, 16])), ValueError, "position_ids contains 16"),
        (lambda: dict(input_ids=torch.ones(1, 4, dtype=torch.long), token_type_ids=torch.zeros(1, 3, dtype=torch.long)), ValueError, r"token_type_ids has shape \(1, 3\)"),
    ],
)  # fmt: skip
def test_bad_inputs(tiny_model, make, error, match):
    with pytest.raises(error, match=match):
        tiny_model(**make())


def test_unknown_and_unavailable_backend(monkeypatch):
    config = BertConfig.preset("transformer-base", num_hidden_layers=1)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        BertModel(config, backend="fast")
    with pytest.raises(
        RuntimeError, match="backend 'cuda' cannot run on cpu: the CUDA kernels run on CUDA devices"
    ):
        BertModel(config, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(
        RuntimeError, match="backend 'triton' cannot run on cpu: .*TRITON_INTERPRET=1"
    ):
        BertModel(config, backend="triton")


def test_pooler_can_be_skipped_and_left_padding_then_stays_packed(tmp_path):
    """``compute_pooler_output=False`` returns no pooler output and the same hidden states; with
    left padding the pooler's input (position 0) is padding, which otherwise makes the CPU path
    compute padded positions: skipping the pooler keeps them zeros (packed)."""
    path, hf = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, backend="torch")
    ids, types, mask = random_batch(hf.config.vocab_size, batch=3, seq=9)
    left = mask.flip(1)  # real tokens at the end of each row
    ids, types = ids.flip(1), types.flip(1)
    assert (left[:, 0] == 0).any()
    ref = _hf_outputs(hf, ids, types, left)
    with torch.inference_mode():
        full = model(ids, attention_mask=left, token_type_ids=types)
        bare = model(ids, attention_mask=left, token_type_ids=types, compute_pooler_output=False)
    assert bare.pooler_output is None and full.pooler_output is not None
    assert len(bare.to_tuple()) == 1
    assert max_abs_error(bare.last_hidden_state, ref.last_hidden_state, left) <= PARITY_TOL
    assert bare.last_hidden_state[left == 0].abs().max() == 0  # packed: padding skipped
    # With the pooler, position 0 is computed as transformers does (the pooler reads it).
    assert max_abs_error(full.pooler_output, ref.pooler_output) <= PARITY_TOL
