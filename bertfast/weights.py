"""Hugging Face checkpoints: find, read, rename (and back), write.

Renaming is a small table of rules; the query/key/value weights are concatenated into the
fused ``qkv`` projection on load and split again on save.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from bertfast.config import BertConfig
from bertfast.model_dirs import DEFAULT_MODEL, MINILM_NAMES, resolve_model_dir

__all__ = [
    "DEFAULT_MODEL",
    "MINILM_NAMES",
    "resolve_model_dir",
]  # re-exported: loaders import them here

# (Hugging Face name without the "bert." prefix, bertfast name); {i} is the layer index.
_LAYER = r"encoder\.layer\.(\d+)\."
RENAME_RULES: list[tuple[str, str]] = [
    (r"embeddings\.word_embeddings\.weight", "embeddings.word_embeddings.weight"),
    (r"embeddings\.position_embeddings\.weight", "embeddings.position_embeddings.weight"),
    (r"embeddings\.token_type_embeddings\.weight", "embeddings.token_type_embeddings.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"embeddings.layer_norm.\1"),
    (_LAYER + r"attention\.output\.dense\.(weight|bias)", r"layers.\1.attention_output.\2"),
    (_LAYER + r"attention\.output\.LayerNorm\.(weight|bias)", r"layers.\1.attention_norm.\2"),
    (_LAYER + r"intermediate\.dense\.(weight|bias)", r"layers.\1.intermediate.\2"),
    (_LAYER + r"output\.dense\.(weight|bias)", r"layers.\1.output.\2"),
    (_LAYER + r"output\.LayerNorm\.(weight|bias)", r"layers.\1.output_norm.\2"),
    (r"pooler\.dense\.(weight|bias)", r"pooler.\1"),
]
_QKV = re.compile(_LAYER + r"attention\.self\.(query|key|value)\.(weight|bias)")
# Buffers some checkpoints carry that hold no learned state.
IGNORED_ENCODER_KEYS = re.compile(r"embeddings\.(position_ids|token_type_ids)")
ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names the keys at fault."""


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def load_weights_file(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one .safetensors or pickle file; a corrupt or refused file is a
    CheckpointError naming it, not a library traceback."""
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(
                f"{file}: not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from None
    import pickle

    try:
        # weights_only: a pickle from the internet must not run code.
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{file}: refused: this pickle holds more than tensors and loading it could run "
            f"code ({first_line}); convert the checkpoint to model.safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable PyTorch checkpoint: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: expected a dict of tensors, got {type(state).__name__}")
    return state


def shard_files(model_dir: Path, index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names: inside ``model_dir``, each tensor in one."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index}: not valid JSON ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{index}: expected a 'weight_map' object of tensor name -> shard file name"
        )
    root = model_dir.resolve()
    shards = []
    for name in sorted(set(weight_map.values())):
        shard = (model_dir / name).resolve()
        if Path(name).is_absolute() or shard.parent != root:
            raise CheckpointError(
                f"{index}: shard {name!r} is not a file name inside {model_dir}; shard paths "
                "must stay in the model directory"
            )
        shards.append(shard)
    return shards


def load_state_dict(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of a Hugging Face model directory (single file or sharded)."""
    model_dir = Path(model_dir)
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            return load_weights_file(model_dir / name)
    for name in INDEX_FILES:
        index = model_dir / name
        if index.is_file():
            state: dict[str, torch.Tensor] = {}
            source: dict[str, Path] = {}
            for shard in shard_files(model_dir, index):
                for key, value in load_weights_file(shard).items():
                    if key in state:
                        raise CheckpointError(
                            f"{index}: tensor {key!r} is in two shards, {source[key].name} and "
                            f"{shard.name}; which one is meant is ambiguous"
                        )
                    state[key], source[key] = value, shard
            return state
    raise FileNotFoundError(
        f"no weights in {str(model_dir)!r}: looked for model.safetensors, pytorch_model.bin "
        "and their sharded .index.json forms"
    )


def _normalise_legacy(key: str) -> str:
    """Old TensorFlow-converted checkpoints call LayerNorm's weight/bias gamma/beta."""
    return re.sub(
        r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    )


def split_encoder_keys(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder weights without the "bert." prefix, everything else: the heads' weights)."""
    state = {_normalise_legacy(k): v for k, v in state.items()}
    prefixed = any(k.startswith("bert.") for k in state)
    encoder, rest = {}, {}
    for key, value in state.items():
        if prefixed and key.startswith("bert."):
            encoder[key[len("bert.") :]] = value
        elif not prefixed and key.startswith(ENCODER_ROOTS):
            encoder[key] = value
        else:
            rest[key] = value
    return encoder, rest


def hf_to_bertfast(
    encoder_state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename Hugging Face encoder weights; returns (renamed, keys no rule matched)."""
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, value in encoder_state.items():
        if IGNORED_ENCODER_KEYS.fullmatch(key):
            continue
        m = _QKV.fullmatch(key)
        if m:
            layer, part, kind = m.groups()
            qkv_parts.setdefault((layer, kind), {})[part] = value
            continue
        for pattern, repl in RENAME_RULES:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unexpected.append(key)
    for (layer, kind), parts in qkv_parts.items():
        missing = [p for p in ("query", "key", "value") if p not in parts]
        if missing:
            raise CheckpointError(
                f"layer {layer} lacks attention.self.{'/'.join(missing)}.{kind} in the checkpoint"
            )
        out[f"layers.{layer}.qkv.{kind}"] = torch.cat([parts[p] for p in ("query", "key", "value")])
    return out, unexpected


def bertfast_to_hf(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The inverse of ``hf_to_bertfast``: Hugging Face names, query/key/value split again."""
    inverse = [
        (r"embeddings\.layer_norm\.(weight|bias)", r"embeddings.LayerNorm.\1"),
        (r"layers\.(\d+)\.attention_output\.", r"encoder.layer.\1.attention.output.dense."),
        (r"layers\.(\d+)\.attention_norm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
        (r"layers\.(\d+)\.intermediate\.", r"encoder.layer.\1.intermediate.dense."),
        (r"layers\.(\d+)\.output\.", r"encoder.layer.\1.output.dense."),
        (r"layers\.(\d+)\.output_norm\.", r"encoder.layer.\1.output.LayerNorm."),
        (r"pooler\.", "pooler.dense."),
    ]
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"layers\.(\d+)\.qkv\.(weight|bias)", key)
        if m:
            layer, kind = m.groups()
            for part, chunk in zip(("query", "key", "value"), value.chunk(3), strict=True):
                out[f"{prefix}encoder.layer.{layer}.attention.self.{part}.{kind}"] = (
                    chunk.contiguous()
                )
            continue
        new = key
        for pattern, repl in inverse:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                break
        out[prefix + new] = value.contiguous()
    return out


def check_state_dict(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    unexpected: list[str],
    what: str,
) -> None:
    """Raise CheckpointError naming missing, unexpected or mis-shaped keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(unexpected) | (set(state) - set(expected)))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected {what} keys: {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise CheckpointError(f"checkpoint does not fit the {what}: " + "; ".join(problems))


def load_pretrained_encoder(
    cls: Callable,
    name_or_path: str | os.PathLike,
    backend: str,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
):
    """Build ``cls`` (a BertModel) from a Hugging Face directory."""
    from bertfast.ops import load_kernels, resolve_backend

    load_kernels(resolve_backend(backend, device))  # fail before reading weights if it cannot run
    model_dir = resolve_model_dir(name_or_path)
    config = BertConfig.from_pretrained(model_dir)
    return encoder_from_hf_state_dict(
        cls, config, load_state_dict(model_dir), backend, dtype, device
    )


def encoder_from_hf_state_dict(
    cls: Callable,
    config: BertConfig,
    hf_state: dict[str, torch.Tensor],
    backend: str,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
):
    """Build ``cls`` (a BertModel) from Hugging Face-named weights (head keys are ignored)."""
    from bertfast.ops import load_kernels, resolve_backend

    load_kernels(resolve_backend(backend, device, config.head_dim))
    encoder_state, _head_state = split_encoder_keys(hf_state)
    renamed, unexpected = hf_to_bertfast(encoder_state)
    # Checkpoints saved from heads that have no pooler (masked LM) load without one.
    has_pooler = any(k.startswith("pooler.") for k in renamed)
    model = cls(config, backend=backend, add_pooling_layer=has_pooler, device="meta")
    check_state_dict(model, renamed, unexpected, "encoder")
    return finish_loading(model, renamed, dtype, device)


def finish_loading(model, state, dtype, device):
    """Materialise a meta-device model from ``state`` on the target device and dtype."""
    model.to_empty(device=device or "cpu")
    model.load_state_dict(state, strict=True)
    model.to(dtype=dtype or torch.float32)
    model.eval()
    return model


def save_pretrained(
    path: str | os.PathLike,
    config: BertConfig,
    hf_state: dict[str, torch.Tensor],
    architectures: list[str],
) -> None:
    """Write config.json and model.safetensors in Hugging Face's layout."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path, architectures)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in hf_state.items()}
    # Written beside, then renamed: a kill mid-write leaves the previous file whole (training
    # rewrites it at each checkpoint). safetensors creates files 0600; the umask decides.
    target = os.path.join(path, "model.safetensors")
    tmp = os.path.join(path, f".model.safetensors.{os.getpid()}.tmp")
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
