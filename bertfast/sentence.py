"""Sentence embeddings as a sentence-transformers directory describes them.

``modules.json`` lists the steps: Transformer (the BERT encoder and its tokenizer), Pooling,
then any of Dense, Dropout, LayerNorm and Normalize. Each is read from its own folder and
computed as sentence-transformers computes it; a module type we do not implement is refused
by name, never skipped, because skipping it would change every vector.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertfast.model import BertModel
from bertfast.model_dirs import DEFAULT_MODEL, resolve_model_dir
from bertfast.tokenizer import BertTokenizer

logger = logging.getLogger(__name__)

# sentence-transformers' pooling mode names, in the order it concatenates them.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Earlier bertfast name -> sentence-transformers' name.
_POOLING_ALIASES = {"mean_sqrt_len": "mean_sqrt_len_tokens", "last": "lasttoken"}
# Legacy boolean keys of a Pooling config.json, in sentence-transformers' concatenation order.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# The files sentence-transformers reads a Transformer module's settings from, first found wins.
TRANSFORMER_CONFIG_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json")
SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Dropout", "LayerNorm", "Normalize")
# sentence-transformers' similarity functions of single-vector models (SimilarityFunction values).
SIMILARITY_FN_NAMES = ("cosine", "dot", "euclidean", "manhattan")
# encode's output_value and precision choices, as sentence-transformers' encode takes them.
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path`` (``default`` when it does not exist); malformed JSON names the file."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _json_object(path: Path, default: dict | None = None) -> dict:
    data = read_json(path, default)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def pooling_modes_of(config: dict) -> tuple[str, ...]:
    """The pooling modes of a sentence-transformers Pooling config.json (current or legacy keys)."""
    if "pooling_mode" in config:
        modes = config["pooling_mode"]
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
    else:
        modes = tuple(m for key, m in _LEGACY_POOLING_KEYS.items() if config.get(key) is True)
        modes = modes or ("mean",)  # sentence-transformers' default
    return check_pooling_modes(modes)


def check_pooling_modes(modes: str | Sequence[str]) -> tuple[str, ...]:
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    modes = tuple(_POOLING_ALIASES.get(m, m) for m in modes)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise ValueError(
            f"pooling mode {bad or modes} is not supported; supported: {POOLING_MODES}"
        )
    return modes


def pooling_mode_of(config: dict) -> str:
    """The single pooling mode of a Pooling config (several concatenated modes: see Pooling)."""
    modes = pooling_modes_of(config)
    if len(modes) != 1:
        raise ValueError(f"pooling {list(modes)} concatenates several modes; use pooling_modes_of")
    return modes[0]


def exclude_prompt(mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """The mask with the first ``prompt_length`` real tokens of each row (CLS + prompt) zeroed."""
    mask = mask.clone()
    first_real = mask.to(torch.int32).argmax(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    mask[positions < (first_real + prompt_length).unsqueeze(1)] = 0
    return mask


def pool(
    hidden: torch.Tensor, mask: torch.Tensor, mode: str, pad_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool (batch, seq, hidden) over the tokens where ``mask`` is 1, in fp32, as
    sentence-transformers' Pooling does (also for rows whose mask is all zero)."""
    (mode,) = check_pooling_modes(mode)
    hidden = hidden.float()
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "cls":  # the first token the mask keeps (CLS, or the first after the prompt)
        first = mask.to(torch.int32).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).amax(dim=1)
    if mode == "lasttoken":
        values, index = mask.flip(1).max(1)
        index = torch.where(values == 0, hidden.shape[1] - 1, index)
        last = hidden.shape[1] - index - 1
        return (hidden * weights)[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "weightedmean":  # weight = position, counted from the row's first real token
        positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
        position_weights = positions.view(1, -1, 1)
        if pad_lengths is not None:
            position_weights = position_weights - pad_lengths.view(-1, 1, 1).to(hidden.dtype)
        weights = weights * position_weights
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1e-9)
    return total / (count if mode == "mean" else count.sqrt())


@dataclass(frozen=True)
class Pooling:
    """sentence-transformers' Pooling: one vector per text, modes concatenated in order."""

    modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", check_pooling_modes(self.modes))

    @classmethod
    def from_config(cls, config: dict) -> Pooling:
        include_prompt = config.get("include_prompt", True)
        if not isinstance(include_prompt, bool):
            raise ValueError(f"include_prompt must be true or false, got {include_prompt!r}")
        return cls(pooling_modes_of(config), include_prompt)

    def __call__(
        self, hidden: torch.Tensor, mask: torch.Tensor, prompt_length: int | None = None
    ) -> torch.Tensor:
        pad_lengths = mask.to(torch.int32).argmax(dim=1)  # left padding, as weightedmean counts
        if prompt_length and not self.include_prompt:
            mask = exclude_prompt(mask, prompt_length)
        return torch.cat([pool(hidden, mask, m, pad_lengths) for m in self.modes], dim=-1)


class Dense(torch.nn.Module):
    """sentence-transformers' Dense: activation(linear(x)) (+ x, or a projection of x)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: torch.nn.Module | None = None,
        use_residual: bool = False,
    ):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, out_features, bias=bias)
        self.activation = torch.nn.Tanh() if activation is None else activation
        self.use_residual = use_residual
        if use_residual and in_features != out_features:
            self.residual = torch.nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out

    @classmethod
    def from_dir(cls, folder: Path) -> Dense:
        if not _has_config(folder):
            raise FileNotFoundError(f"Dense module without its config: no {folder / 'config.json'}")
        config = _json_object(folder / "config.json")
        for key in ("module_input_name", "module_output_name"):
            if config.get(key, "sentence_embedding") not in ("sentence_embedding", None):
                raise ValueError(
                    f"{folder / 'config.json'}: {key}={config[key]!r} is not supported; only "
                    "Dense on the pooled 'sentence_embedding' is"
                )
        try:
            dense = cls(
                int(config["in_features"]),
                int(config["out_features"]),
                bias=bool(config.get("bias", True)),
                activation=_activation(config.get("activation_function"), folder),
                use_residual=bool(config.get("use_residual", False)),
            )
        except KeyError as exc:
            raise ValueError(f"{folder / 'config.json'}: missing {exc.args[0]!r}") from None
        return _load_module_weights(dense, folder)


class LayerNorm(torch.nn.Module):
    """sentence-transformers' LayerNorm module on the sentence embedding."""

    def __init__(self, dimension: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dimension)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    @classmethod
    def from_dir(cls, folder: Path) -> LayerNorm:
        if not _has_config(folder):
            raise FileNotFoundError(f"LayerNorm module without its config: no {folder}/config.json")
        dimension = _json_object(folder / "config.json").get("dimension")
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise ValueError(f"{folder / 'config.json'}: dimension must be a positive int")
        return _load_module_weights(cls(dimension), folder)


def _load_module_weights(module: torch.nn.Module, folder: Path):
    """Fill ``module`` from the weights file in ``folder``; keys and shapes must all match."""
    from bertfast.weights import WEIGHT_FILES, CheckpointError, load_weights_file

    kind = type(module).__name__
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            state = load_weights_file(folder / name)
            break
    else:
        raise FileNotFoundError(f"{kind} module without weights: no model.safetensors in {folder}")
    expected = module.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        got = {k: tuple(v.shape) for k, v in state.items()}
        want = {k: tuple(v.shape) for k, v in expected.items()}
        raise CheckpointError(f"{folder}: {kind} weights {got} do not fit its config {want}")
    module.load_state_dict(state)
    return module.eval()


def _has_config(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _activation(name: Any, folder: Path) -> torch.nn.Module:
    """The activation a Dense config names, as sentence-transformers resolves it."""
    if name is None:
        return torch.nn.Tanh()
    if not isinstance(name, str) or not name.startswith("torch."):
        # sentence-transformers does the same without trust_remote_code (and warns).
        logger.warning("%s: activation %r is not a torch class; using Tanh", folder, name)
        return torch.nn.Tanh()
    module_name, _, class_name = name.rpartition(".")
    try:
        activation = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ValueError(f"{folder / 'config.json'}: unknown activation {name!r}") from None
    if not (isinstance(activation, type) and issubclass(activation, torch.nn.Module)):
        raise ValueError(f"{folder / 'config.json'}: activation {name!r} is not a torch.nn.Module")
    return activation()


class Normalize:
    """sentence-transformers' Normalize: unit L2 norm."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, p=2, dim=-1)

    def __repr__(self) -> str:
        return "Normalize()"


class Dropout:
    """sentence-transformers' Dropout: nothing at inference."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __repr__(self) -> str:
        return "Dropout()"


SentenceModule = Pooling | Dense | LayerNorm | Normalize | Dropout


def module_kind(type_name: str) -> str:
    """'Pooling' for 'sentence_transformers.models.Pooling' and its newer module paths."""
    return type_name.rsplit(".", 1)[-1]


@dataclass
class SentenceTransformersDir:
    """What a sentence-transformers directory says, read and checked."""

    encoder_dir: Path
    modules: list[SentenceModule]
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] | None = None
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None

    @classmethod
    def read(cls, model_dir: Path) -> SentenceTransformersDir:
        modules_file = model_dir / "modules.json"
        entries = read_json(modules_file)
        if entries is None:  # a bare BERT directory: sentence-transformers' default, mean pooling
            return cls(model_dir, [Pooling(("mean",))], **cls._transformer_settings(model_dir))
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"{modules_file}: expected a list of module objects")
        kinds = [module_kind(str(e.get("type", ""))) for e in entries]
        unsupported = [e.get("type") for e, k in zip(entries, kinds) if k not in SUPPORTED_MODULES]
        if unsupported:
            raise ValueError(
                f"{modules_file}: module type {unsupported} is not supported; bertfast runs "
                f"{', '.join(SUPPORTED_MODULES)} (refused rather than skipped: skipping a module "
                "changes every embedding)"
            )
        if not kinds or kinds[0] != "Transformer" or "Transformer" in kinds[1:]:
            raise ValueError(f"{modules_file}: expected one Transformer module, first; got {kinds}")
        if kinds.count("Pooling") != 1 or kinds.index("Pooling") != 1:
            raise ValueError(
                f"{modules_file}: expected one Pooling module right after the Transformer, "
                f"got {kinds}"
            )
        folders = [_module_folder(model_dir, e, modules_file) for e in entries]
        modules: list[SentenceModule] = []
        for kind, folder in zip(kinds[1:], folders[1:]):
            if kind == "Pooling":
                if not _has_config(folder):  # sentence-transformers fails here too (no dimension)
                    raise FileNotFoundError(
                        f"{modules_file} names a Pooling module at {folder} without its "
                        "config.json; sentence-transformers refuses it too"
                    )
                modules.append(Pooling.from_config(_json_object(folder / "config.json")))
            elif kind == "Dense":
                modules.append(Dense.from_dir(folder))
            elif kind == "LayerNorm":
                modules.append(LayerNorm.from_dir(folder))
            elif kind == "Normalize":
                config = _json_object(folder / "config.json", {}) if _has_config(folder) else {}
                if config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
                    raise ValueError(f"{folder}: Normalize of {config['module_input_name']!r}")
                modules.append(Normalize())
            else:
                modules.append(Dropout())
        st_config = _json_object(model_dir / "config_sentence_transformers.json", {})
        prompts = st_config.get("prompts") or {}
        if not isinstance(prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
        ):
            raise ValueError(f"{model_dir / 'config_sentence_transformers.json'}: bad prompts")
        similarity = st_config.get("similarity_fn_name")
        if similarity is not None and similarity not in SIMILARITY_FN_NAMES:
            # sentence-transformers ignores a name it cannot score single vectors with (maxsim).
            logger.warning(
                "%s: similarity_fn_name %r is not one of %s; using cosine, as "
                "sentence-transformers does",
                model_dir / "config_sentence_transformers.json",
                similarity,
                SIMILARITY_FN_NAMES,
            )
            similarity = None
        return cls(
            folders[0],
            modules,
            prompts=prompts,
            default_prompt_name=st_config.get("default_prompt_name"),
            similarity_fn_name=similarity,
            **cls._transformer_settings(folders[0]),
        )

    @staticmethod
    def _transformer_settings(folder: Path) -> dict[str, Any]:
        for name in TRANSFORMER_CONFIG_FILES:
            config = _json_object(folder / name, {})
            if config:
                break
        max_len = config.get("max_seq_length")
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int)):
            raise ValueError(f"{folder / name}: max_seq_length must be an int, got {max_len!r}")
        lower = config.get("do_lower_case", False)
        if not isinstance(lower, bool):
            raise ValueError(f"{folder / name}: do_lower_case must be true or false, got {lower!r}")
        return {"max_seq_length": max_len, "do_lower_case": lower}


def _module_folder(model_dir: Path, entry: dict, modules_file: Path) -> Path:
    """The module's folder, which must stay inside the model directory."""
    relative = str(entry.get("path", ""))
    folder = (model_dir / relative).resolve()
    if not folder.is_relative_to(model_dir.resolve()):
        raise ValueError(f"{modules_file}: module path {relative!r} leaves the model directory")
    return folder


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def _check_truncate_dim(truncate_dim: Any, width: int) -> int | None:
    """None, or a width in 1..``width`` (sentence-transformers slices whatever it is given; a
    zero, negative or over-wide value is refused here rather than sliced into nonsense)."""
    if truncate_dim is None:
        return None
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or truncate_dim < 1:
        raise ValueError(f"truncate_dim must be a positive int or None, got {truncate_dim!r}")
    if truncate_dim > width:
        raise ValueError(
            f"truncate_dim {truncate_dim} is wider than the model's {width}-dimensional "
            f"embeddings; give at most {width}"
        )
    return truncate_dim


def _check_device(device: torch.device | str | int) -> torch.device:
    """The device as tensors name it (``cuda`` -> ``cuda:0``), or ValueError saying why not."""
    if isinstance(device, (list, tuple)):
        raise ValueError(
            f"device= takes one device, got {list(device)}; encoding over several devices "
            "(sentence-transformers' multi-process pool) is not supported"
        )
    try:
        return torch.empty(0, device=device).device
    except (RuntimeError, AssertionError, NotImplementedError) as exc:
        here = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"device {device!r} cannot be used here ({reason}); available: {', '.join(here)}"
        ) from None


# ----------------------------------------------------------------------------- similarity
# sentence-transformers' util.similarity functions on dense embeddings, computed with the same
# torch calls so that scores and shapes are equal to theirs.


def _as_tensor(a: Any) -> torch.Tensor:
    """Embeddings as one tensor (a list is stacked); floats below 32 bits become float32, since
    a half-precision matmul would round nearby scores into ties."""
    if isinstance(a, list):
        if a and all(isinstance(x, torch.Tensor) for x in a):
            a = torch.stack(a)
        elif a and all(isinstance(x, np.ndarray) for x in a):
            a = torch.stack([torch.as_tensor(x) for x in a])
        else:
            a = torch.tensor(a)
    elif isinstance(a, np.ndarray):
        a = torch.from_numpy(a) if a.flags.writeable else torch.tensor(a)
    elif not isinstance(a, torch.Tensor):
        a = torch.tensor(a)
    if a.is_floating_point() and torch.finfo(a.dtype).bits < 32:
        a = a.float()
    return a


def _as_batch(a: Any) -> torch.Tensor:
    a = _as_tensor(a)
    return a.unsqueeze(0) if a.dim() == 1 else a


def _unit(a: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(a, p=2, dim=-1)


def cos_sim(a: Any, b: Any) -> torch.Tensor:
    """(n, m) cosine similarities of the rows of ``a`` and ``b`` (a 1-D input is one row)."""
    return torch.mm(_unit(_as_batch(a)), _unit(_as_batch(b)).transpose(0, 1))


def dot_score(a: Any, b: Any) -> torch.Tensor:
    """(n, m) dot products."""
    return torch.mm(_as_batch(a), _as_batch(b).transpose(0, 1))


def euclidean_sim(a: Any, b: Any) -> torch.Tensor:
    """(n, m) negative euclidean distances."""
    return -torch.cdist(_as_batch(a), _as_batch(b), p=2.0)


def manhattan_sim(a: Any, b: Any) -> torch.Tensor:
    """(n, m) negative manhattan distances."""
    return -torch.cdist(_as_batch(a), _as_batch(b), p=1.0)


def pairwise_cos_sim(a: Any, b: Any) -> torch.Tensor:
    """(n,) cosine similarity of ``a[i]`` and ``b[i]``."""
    return (_unit(_as_tensor(a)) * _unit(_as_tensor(b))).sum(dim=-1)


def pairwise_dot_score(a: Any, b: Any) -> torch.Tensor:
    return (_as_tensor(a) * _as_tensor(b)).sum(dim=-1)


def pairwise_euclidean_sim(a: Any, b: Any) -> torch.Tensor:
    diff = _as_tensor(a) - _as_tensor(b)
    if not diff.is_floating_point():
        return -diff.square().sum(dim=-1).sqrt()
    return -torch.linalg.vector_norm(diff, dim=-1)


def pairwise_manhattan_sim(a: Any, b: Any) -> torch.Tensor:
    return -torch.sum(torch.abs(_as_tensor(a) - _as_tensor(b)), dim=-1)


SIMILARITY_FNS = {
    "cosine": (cos_sim, pairwise_cos_sim),
    "dot": (dot_score, pairwise_dot_score),
    "euclidean": (euclidean_sim, pairwise_euclidean_sim),
    "manhattan": (manhattan_sim, pairwise_manhattan_sim),
}


def _check_similarity_fn_name(name: Any) -> str:
    name = getattr(name, "value", name)  # sentence-transformers' SimilarityFunction enum
    if name not in SIMILARITY_FN_NAMES:
        raise ValueError(
            f"similarity_fn_name {name!r} is not supported; use one of {SIMILARITY_FN_NAMES}"
        )
    return name


# ----------------------------------------------------------------------------- quantization


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()


def quantization_ranges(
    embeddings: np.ndarray, precision: str, calibration_embeddings: np.ndarray | None = None
) -> np.ndarray:
    """(2, dim): each dimension's minimum and maximum over ``calibration_embeddings``, else over
    ``embeddings`` themselves (at least two of them), as sentence-transformers calibrates."""
    if calibration_embeddings is None:
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise ValueError(
                f"cannot compute {precision} quantization ranges from a single embedding; "
                "pass ranges= or calibration_embeddings= (quantize_embeddings) from a "
                "representative set of embeddings"
            )
        if embeddings.shape[0] < 100:
            logger.warning(
                "computing %s quantization ranges from %d embeddings; ranges from more "
                "embeddings (calibration_embeddings=) are more stable",
                precision,
                embeddings.shape[0],
            )
        calibration_embeddings = embeddings
    return np.vstack((calibration_embeddings.min(axis=0), calibration_embeddings.max(axis=0)))


def quantize_embeddings(
    embeddings: torch.Tensor | np.ndarray | list,
    precision: str,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray | list[np.ndarray]:
    """sentence-transformers' ``quantize_embeddings``: the same numbers, dtypes and rules.

    int8 / uint8: each dimension's range (``ranges``, else the min and max over
    ``calibration_embeddings``, else over the embeddings themselves) cut into 256 buckets;
    binary / ubinary: one bit per dimension (> 0), packed 8 to a byte (int8 offset by -128, or
    uint8). A list of (tokens, dim) matrices is quantized with one set of ranges for all.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; use one of {PRECISIONS}")
    if isinstance(embeddings, torch.Tensor):
        embeddings = _to_numpy(embeddings)
    elif isinstance(embeddings, list):
        if not embeddings:
            return []
        embeddings = [_to_numpy(e) if isinstance(e, torch.Tensor) else e for e in embeddings]
        if isinstance(embeddings[0], np.ndarray) and embeddings[0].ndim == 2:
            # Token embeddings: calibrate once, so every text shares the buckets.
            if precision.endswith("int8") and ranges is None:
                data = (
                    np.concatenate(embeddings, axis=0)
                    if calibration_embeddings is None
                    else calibration_embeddings
                )
                if len(data):
                    ranges = quantization_ranges(data, precision, calibration_embeddings)
            return [
                quantize_embeddings(m, precision, ranges, calibration_embeddings)
                for m in embeddings
            ]
        embeddings = np.array(embeddings)
    if embeddings.dtype in (np.uint8, np.int8):
        raise TypeError(f"embeddings to quantize must be floats, got {embeddings.dtype}")
    if embeddings.ndim == 2 and embeddings.shape[0] == 0:
        dim = embeddings.shape[1]
        signed = precision in ("int8", "binary")
        width = dim if precision.endswith("int8") else (dim + 7) // 8
        return np.zeros((0, width), dtype=np.int8 if signed else np.uint8)
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision.endswith("int8"):
        if ranges is None:
            ranges = quantization_ranges(embeddings, precision, calibration_embeddings)
        ranges = ranges.astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    packed = np.packbits(embeddings > 0, axis=-1)
    return packed if precision == "ubinary" else (packed - 128).astype(np.int8)


class SentenceEncoder:
    """Text in, one vector per text out, equal to sentence-transformers' ``encode``."""

    def __init__(
        self,
        model: BertModel,
        tokenizer: BertTokenizer,
        pooling: str | Sequence[str] | None = None,
        normalize: bool | None = None,
        max_seq_length: int | None = None,
        *,
        modules: Sequence[SentenceModule] | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        truncate_dim: int | None = None,
    ):
        """``modules`` (Pooling, then Dense / Dropout / LayerNorm / Normalize) is what follows the
        encoder; without it, ``pooling`` (default mean) and ``normalize`` (default True).
        ``similarity_fn_name`` (default cosine) is what ``similarity`` computes; ``truncate_dim``
        cuts every embedding ``encode`` returns to its first dimensions."""
        if modules is None:
            modules = [Pooling(check_pooling_modes(pooling or "mean"))]
            if normalize is None or normalize:
                modules.append(Normalize())
        elif pooling is not None or normalize is not None:
            raise ValueError("pass either modules= or pooling=/normalize=, not both")
        modules = list(modules)
        if not modules or not isinstance(modules[0], Pooling):
            raise ValueError(f"modules must start with a Pooling, got {modules}")
        if any(isinstance(m, Pooling) for m in modules[1:]):
            raise ValueError("only one Pooling module is supported")
        self.model = model
        self.tokenizer = tokenizer
        self.modules = modules
        self.prompts = dict(prompts or {})
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise ValueError(
                f"default prompt name {default_prompt_name!r} is not among the prompts "
                f"{sorted(self.prompts)}"
            )
        self.default_prompt_name = default_prompt_name
        limit = model.config.max_position_embeddings
        # sentence-transformers: max_seq_length, else the tokenizer's limit, within the positions.
        wanted = tokenizer.model_max_length if max_seq_length is None else max_seq_length
        if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
            raise ValueError(f"max_seq_length must be a positive int, got {wanted!r}")
        self.max_seq_length = min(wanted, limit)
        self._prompt_lengths: dict[str, int] = {}
        self.similarity_fn_name = similarity_fn_name
        self.truncate_dim = truncate_dim

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_MODEL,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        truncate_dim: int | None = None,
        quantize: str | None = None,
    ) -> SentenceEncoder:
        """Load a sentence-transformers directory (modules.json) or a bare BERT one.

        ``prompts`` are added to the directory's (a name given here wins); ``default_prompt_name``
        and ``similarity_fn_name`` given here replace the directory's. On the CPU, bf16 needs
        native bf16 (AVX-512 BF16 or AMX; refused elsewhere) and ``quantize="int8"`` runs the
        encoder's GEMMs in int8 (``bertfast.cpu_quantize``)."""
        model, tokenizer, settings = _load(
            name_or_path,
            backend,
            device,
            dtype,
            prompts,
            default_prompt_name,
            similarity_fn_name,
            quantize,
        )
        encoder = cls.__new__(cls)  # SentenceTransformer's own constructor loads by name
        SentenceEncoder.__init__(encoder, model, tokenizer, truncate_dim=truncate_dim, **settings)
        return encoder

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: torch.device | str) -> SentenceEncoder:
        """Move the encoder and its modules to ``device``; returns self."""
        device = _check_device(device)
        self.model.to(device)
        self.modules = [m.to(device) if isinstance(m, torch.nn.Module) else m for m in self.modules]
        return self

    @property
    def pooling(self) -> str:
        """The pooling mode (modes joined by '+' when several are concatenated)."""
        return "+".join(self.modules[0].modes)

    @property
    def normalize(self) -> bool:
        """Whether the module pipeline ends in unit vectors."""
        return any(isinstance(m, Normalize) for m in self.modules)

    @property
    def similarity_fn_name(self) -> str:
        """What ``similarity`` computes: cosine, dot, euclidean or manhattan (default cosine,
        else the directory's ``config_sentence_transformers.json``)."""
        return self._similarity_fn_name or "cosine"

    @similarity_fn_name.setter
    def similarity_fn_name(self, name: str | None) -> None:
        self._similarity_fn_name = None if name is None else _check_similarity_fn_name(name)

    @property
    def truncate_dim(self) -> int | None:
        """The width ``encode`` cuts sentence embeddings to (None: the model's full width)."""
        return self._truncate_dim

    @truncate_dim.setter
    def truncate_dim(self, truncate_dim: int | None) -> None:
        self._truncate_dim = _check_truncate_dim(truncate_dim, self._full_dimension())

    def _full_dimension(self) -> int:
        width = len(self.modules[0].modes) * self.model.config.hidden_size
        for m in self.modules:
            if isinstance(m, Dense):
                width = m.linear.out_features
        return width

    def get_sentence_embedding_dimension(self) -> int:
        """The width of encode's vectors (``truncate_dim`` when set, as sentence-transformers)."""
        return self.truncate_dim or self._full_dimension()

    def get_embedding_dimension(self) -> int:
        """sentence-transformers 6's name for ``get_sentence_embedding_dimension``."""
        return self.get_sentence_embedding_dimension()

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """(n, m) scores of every row of ``embeddings1`` against every row of ``embeddings2``
        (tensors, numpy arrays or lists of either; a 1-D input is one row) with
        ``similarity_fn_name``, as sentence-transformers computes them."""
        return SIMILARITY_FNS[self.similarity_fn_name][0](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """(n,) scores of ``embeddings1[i]`` against ``embeddings2[i]``."""
        return SIMILARITY_FNS[self.similarity_fn_name][1](embeddings1, embeddings2)

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        if prompt is not None:
            if prompt_name is not None:
                logger.warning("both prompt and prompt_name given: prompt_name is ignored")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"prompt_name {prompt_name!r} is not among the prompts {sorted(self.prompts)}"
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts[self.default_prompt_name]
        return None

    def prompt_length(self, prompt: str) -> int:
        """Tokens of the prompt with CLS, without its trailing SEP (what pooling may exclude)."""
        if prompt not in self._prompt_lengths:
            ids = self.tokenizer(prompt, truncation=True, max_length=self.max_seq_length)
            ids = ids["input_ids"]
            special = set(self.tokenizer.all_special_ids)
            self._prompt_lengths[prompt] = len(ids) - (1 if ids and ids[-1] in special else 0)
        return self._prompt_lengths[prompt]

    def encode_query(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """``encode`` with the directory's "query" prompt (none if it has none: the default
        prompt does not apply), unless ``prompt`` or ``prompt_name`` is given."""
        if prompt is None and prompt_name is None:
            prompt = self.prompts.get("query", "")
        return self.encode(sentences, prompt_name, prompt, **kwargs)

    def encode_document(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """``encode`` with the directory's "document" prompt (none if it has none: the default
        prompt does not apply), unless ``prompt`` or ``prompt_name`` is given."""
        if prompt is None and prompt_name is None:
            # sentence-transformers always holds a "document" prompt ("" unless saved), so its
            # fallbacks "passage" and "corpus" are never reached; the same here.
            prompt = self.prompts.get("document", "")
        return self.encode(sentences, prompt_name, prompt, **kwargs)

    @torch.inference_mode()
    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: torch.device | str | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
    ) -> np.ndarray | torch.Tensor | list:
        """Embeddings with sentence-transformers' defaults, keywords and return types.

        A (n, dim) float32 numpy array by default; one tensor on the model's device with
        ``convert_to_tensor``; a list of tensors when both conversions are off; (dim,) for a
        single string. The directory's Normalize module always runs;
        ``normalize_embeddings=True`` normalises once more at the end, as there.

        - ``output_value="token_embeddings"``: a list of (tokens, hidden) tensors, the encoder's
          output for each text's real tokens; ``None``: a list of dicts holding the batch's
          ``input_ids``, ``token_type_ids``, ``attention_mask``, ``token_embeddings`` (padded
          to the batch), ``sentence_embedding`` and, with a prompt, ``prompt_length`` (its
          tokens, CLS included). Neither is converted to numpy or stacked.
        - ``precision``: float32, or int8 / uint8 / binary / ubinary as ``quantize_embeddings``
          computes them, int8 and uint8 calibrated on this call's embeddings (a single text
          cannot be: quantize float32 output with ``quantize_embeddings(..., ranges=...)``).
        - ``truncate_dim``: the first dimensions of each sentence embedding (default: the
          encoder's ``truncate_dim``), cut before ``normalize_embeddings``.
        - ``device``: move the encoder there first (it stays there), as sentence-transformers.
        """
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"sentences must be strings, got {type(t).__name__}")
        batch_size = _check_batch_size(batch_size)
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value {output_value!r} is not one of {OUTPUT_VALUES}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported; use one of {PRECISIONS}")
        if precision != "float32" and output_value is None:
            raise ValueError(
                f"precision={precision!r} quantizes sentence or token embeddings; "
                "output_value=None returns every output and cannot be quantized"
            )
        if truncate_dim is None:
            truncate_dim = self.truncate_dim
        truncate_dim = _check_truncate_dim(truncate_dim, self._full_dimension())
        if device is not None and _check_device(device) != self.device:
            self.to(device)
        if convert_to_tensor:
            convert_to_numpy = False
        if output_value != "sentence_embedding":  # lists of per-text outputs, as there
            convert_to_numpy = convert_to_tensor = False
        prompt = self._resolve_prompt(prompt, prompt_name)
        if not texts:  # sentence-transformers' empty results
            if convert_to_tensor:
                return torch.tensor([], device=self.device)
            return np.array([]) if convert_to_numpy else []
        prompt_length = self.prompt_length(prompt) if prompt else None
        # Longest first, as sentence-transformers does, so each batch pads little.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        batches = range(0, len(texts), batch_size)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        if show_progress_bar:
            try:
                from tqdm.auto import tqdm
            except ImportError as exc:
                raise ImportError("show_progress_bar needs tqdm: pip install tqdm") from exc
            batches = tqdm(batches, desc="Batches")
        chunks = []
        for start in batches:
            batch = [texts[i] for i in order[start : start + batch_size]]
            if prompt:
                batch = [prompt + t for t in batch]
            # Every output (None) includes the padded token embeddings, as sentence-transformers
            # computes them; the rest skip the padding.
            features = self._forward(batch, prompt_length, output_value is None)
            if truncate_dim is not None:
                features["sentence_embedding"] = features["sentence_embedding"][..., :truncate_dim]
            if output_value == "token_embeddings":
                chunks.extend(
                    tokens[mask.bool()]
                    for tokens, mask in zip(
                        features["token_embeddings"], features["attention_mask"], strict=True
                    )
                )
            elif output_value is None:
                for i in range(len(batch)):
                    item = {k: v[i] for k, v in features.items()}
                    if prompt_length is not None:
                        item["prompt_length"] = prompt_length
                    chunks.append(item)
            else:
                vectors = features["sentence_embedding"]
                if normalize_embeddings:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                chunks.append(vectors.cpu() if convert_to_numpy else vectors)
        restore = np.argsort(order)
        if output_value != "sentence_embedding":
            out: Any = [chunks[i] for i in restore]
        else:
            out = torch.cat(chunks)[torch.from_numpy(restore).to(chunks[0].device)]
        if precision != "float32":
            out = quantize_embeddings(out, precision)  # numpy, whatever the device
            if convert_to_tensor:
                out = torch.as_tensor(out)
            elif not convert_to_numpy and output_value == "sentence_embedding":
                out = list(torch.from_numpy(out))
        elif convert_to_numpy:
            out = out.numpy()
        elif not convert_to_tensor and output_value == "sentence_embedding":
            out = list(out)
        return out[0] if single else out

    def _forward(
        self, texts: list[str], prompt_length: int | None, padded_positions: bool = False
    ) -> dict[str, torch.Tensor]:
        """The batch's inputs, ``token_embeddings`` (the encoder's output; at padded positions
        only with ``padded_positions``, else zeros there) and ``sentence_embedding`` (the
        modules' output), as sentence-transformers' features."""
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation="longest_first",
            max_length=self.max_seq_length,
            return_tensors="pt",
        )
        features = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(
            **features, compute_padded_positions=padded_positions, compute_pooler_output=False
        )
        hidden = hidden.last_hidden_state
        features["token_embeddings"] = hidden
        features["sentence_embedding"] = self.apply_modules(
            hidden, features["attention_mask"], prompt_length
        )
        return features

    def apply_modules(
        self, hidden: torch.Tensor, mask: torch.Tensor, prompt_length: int | None = None
    ) -> torch.Tensor:
        """The directory's Pooling, Dense, ... Normalize on (batch, seq, hidden) encoder output;
        ``prompt_length`` tokens (CLS included) are left out where Pooling excludes the prompt."""
        vectors = self.modules[0](hidden, mask, prompt_length)
        for module in self.modules[1:]:
            vectors = module(vectors)
        return vectors


def _load(
    name_or_path: str | os.PathLike,
    backend: str,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    prompts: dict[str, str] | None,
    default_prompt_name: str | None,
    similarity_fn_name: str | None,
    quantize: str | None = None,
) -> tuple[BertModel, BertTokenizer, dict[str, Any]]:
    """The encoder, tokenizer and SentenceEncoder settings a model directory describes."""
    from bertfast.cpu_linear import check_cpu_dtype

    check_cpu_dtype(dtype, device or "cpu")  # bf16 on a CPU that would only emulate it
    spec = SentenceTransformersDir.read(resolve_model_dir(name_or_path))
    model = BertModel.from_pretrained(
        spec.encoder_dir, backend=backend, dtype=dtype, device=device, quantize=quantize
    )
    tokenizer = BertTokenizer.from_pretrained(spec.encoder_dir)
    if spec.do_lower_case:
        tokenizer.lowercase_inputs()
    modules = [m.to(model.device) if isinstance(m, torch.nn.Module) else m for m in spec.modules]
    return (
        model,
        tokenizer,
        {
            "max_seq_length": spec.max_seq_length,
            "modules": modules,
            "prompts": {**(spec.prompts or {}), **(prompts or {})},
            "default_prompt_name": default_prompt_name or spec.default_prompt_name,
            "similarity_fn_name": similarity_fn_name or spec.similarity_fn_name,
        },
    )


class SentenceTransformer(SentenceEncoder):
    """SentenceEncoder behind sentence-transformers' constructor, for code written against
    ``sentence_transformers.SentenceTransformer``: ``SentenceTransformer("all-MiniLM-L6-v2")``.

    A local directory or the bundled model's name (no hub); ``device`` defaults to cuda when
    torch sees a GPU, as there. ``backend`` and ``dtype`` are bertfast's (``from_pretrained``).
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        truncate_dim: int | None = None,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
    ):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tokenizer, settings = _load(
            model_name_or_path,
            backend,
            device,
            dtype,
            prompts,
            default_prompt_name,
            similarity_fn_name,
        )
        super().__init__(model, tokenizer, truncate_dim=truncate_dim, **settings)
