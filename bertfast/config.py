"""BertConfig: the encoder's shape, read from a Hugging Face ``config.json`` or a preset."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

# hidden_act name -> the GELU form our kernels compute ("none" = exact erf, "tanh" = approximation)
GELU_FORMS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}

PRESETS: dict[str, dict[str, int]] = {
    # Vaswani et al. base size, in BERT's encoder form
    "transformer-base": dict(
        num_hidden_layers=6, hidden_size=512, num_attention_heads=8, intermediate_size=2048
    ),
    "bert-base": dict(
        num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072
    ),
    "bert-large": dict(
        num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096
    ),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _label_map(name: str, value: Any, key_type: type, value_type: type) -> dict:
    """id2label / label2id as a dict with typed keys and values; anything else names itself."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        example = '{"0": "NEGATIVE", "1": "POSITIVE"}' if name == "id2label" else '{"NEGATIVE": 0}'
        raise ValueError(
            f"{name} must be an object such as {example}, got a {type(value).__name__}"
        )
    out = {}
    for k, v in value.items():
        try:
            if isinstance(v, bool) or (value_type is int and not isinstance(v, (int, str))):
                raise ValueError
            out[key_type(k)] = value_type(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} entry {k!r}: {v!r} does not map a {key_type.__name__} to a "
                f"{value_type.__name__}"
            ) from None
    return out


@dataclass
class BertConfig:
    """Shape and hyper-parameters of a BERT encoder, with Hugging Face's field names."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0  # None: no padding row (its embedding gets gradients)
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    id2label: dict[int, str] = field(default_factory=dict)
    label2id: dict[str, int] = field(default_factory=dict)
    # Keys of config.json we do not interpret, kept so save_pretrained writes them back.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.id2label = _label_map("id2label", self.id2label, int, str)
        self.label2id = _label_map("label2id", self.label2id, str, int)
        if self.id2label and not self.label2id:
            self.label2id = {v: k for k, v in self.id2label.items()}
        if self.label2id and not self.id2label:
            self.id2label = {v: k for k, v in self.label2id.items()}
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the setting when the encoder cannot honour it."""
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is None and name == "classifier_dropout":
                continue
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not _is_number(self.initializer_range) or self.initializer_range < 0:
            raise ValueError(
                f"initializer_range must be a non-negative number, got {self.initializer_range!r}"
            )
        if not _is_number(self.layer_norm_eps) or not 0 < self.layer_norm_eps < 1:
            raise ValueError(
                f"layer_norm_eps must be a number in (0, 1), got {self.layer_norm_eps!r}"
            )
        for name in ("hidden_act", "position_embedding_type"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}); each head must get an equal share"
            )
        if self.hidden_act not in GELU_FORMS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; supported: {sorted(GELU_FORMS)}"
            )
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported; "
                "only 'absolute' (learned) position embeddings are"
            )
        if self.extra.get("is_decoder") or self.extra.get("add_cross_attention"):
            raise ValueError(
                "decoder / cross-attention BERT configs are not supported (is_decoder or "
                "add_cross_attention is set); bertfast runs encoders only"
            )
        pad = self.pad_token_id
        if pad is not None and (not isinstance(pad, int) or not 0 <= pad < self.vocab_size):
            raise ValueError(
                f"pad_token_id must be null or an int in [0, {self.vocab_size}), got {pad!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def gelu_approximate(self) -> str:
        """'none' for BERT's exact erf GELU, 'tanh' for gelu_new."""
        return GELU_FORMS[self.hidden_act]

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        """A named size: ``transformer-base``, ``bert-base`` or ``bert-large``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        """Build from the fields of a Hugging Face config.json; unknown keys are kept in extra."""
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type")
        if model_type is None:
            # No model_type: the architectures say what the checkpoint is, as transformers reads.
            architectures = data.get("architectures") or []
            if not isinstance(architectures, list):
                raise ValueError(f"architectures must be a list, got {architectures!r}")
            foreign = [a for a in architectures if not str(a).startswith("Bert")]
            if foreign:
                raise ValueError(
                    f"config has no model_type and architectures {foreign} are not BERT; "
                    "bertfast loads BERT checkpoints only (model_type 'bert')"
                )
        elif model_type != "bert":
            raise ValueError(f"model_type {model_type!r} is not supported; expected 'bert'")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "num_labels"}
        if known.get("classifier_dropout") is None:
            known.pop("classifier_dropout", None)
        num_labels = data.get("num_labels")
        if num_labels is not None:
            if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
                raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
            given = known.get("id2label") or known.get("label2id")
            if not given:  # transformers names them LABEL_0, LABEL_1, ...
                known["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
            elif isinstance(given, dict) and len(given) != num_labels:
                raise ValueError(
                    f"num_labels is {num_labels} but id2label/label2id has {len(given)} labels"
                )
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> BertConfig:
        """Read a config.json; any problem with it is a ValueError that names the file."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{os.fspath(path)}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{os.fspath(path)}: a config must be a JSON object, got {type(data).__name__}"
            )
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> BertConfig:
        """Read ``config.json`` from a local model directory (or the file itself)."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no config.json at {path!r}")
        return cls.from_json_file(file)

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face config.json fields."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["model_type"] = "bert"
        if not self.id2label:
            del out["id2label"], out["label2id"]
        return out

    def save_pretrained(self, path: str | os.PathLike, architectures: list[str] | None = None):
        os.makedirs(path, exist_ok=True)
        data = self.to_dict()
        if architectures:
            data["architectures"] = architectures
        with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
