"""Sentence embeddings: encoder + pooling (+ L2 normalisation), as a sentence-transformers
model directory describes them in ``modules.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from bertfast.model import BertModel
from bertfast.tokenizer import BertTokenizer
from bertfast.weights import DEFAULT_MODEL, resolve_model_dir

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool (batch, seq, hidden) over real tokens in fp32."""
    hidden = hidden.float()
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).amax(dim=1)
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1e-9)
    return total / (count.sqrt() if mode == "mean_sqrt_len" else count)


# sentence-transformers' pooling names (current and legacy boolean keys) -> ours
_ST_POOLING = {
    "mean": "mean",
    "cls": "cls",
    "max": "max",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}


def pooling_mode_of(config: dict) -> str:
    """Our pooling mode for a sentence-transformers Pooling config; unsupported ones raise."""
    if "pooling_mode" in config:
        modes = config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        modes = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    if not modes:
        return "mean"  # sentence-transformers' default
    if len(modes) != 1 or modes[0] not in _ST_POOLING:
        raise ValueError(
            f"pooling {modes} is not supported; supported: a single one of "
            "mean, cls, max, mean_sqrt_len_tokens"
        )
    return _ST_POOLING[modes[0]]


class SentenceEncoder:
    """Text in, one vector per text out, equal to sentence-transformers' ``encode``."""

    def __init__(
        self,
        model: BertModel,
        tokenizer: BertTokenizer,
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int | None = None,
    ):
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling {pooling!r} is not supported; supported: {POOLING_MODES}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = min(
            max_seq_length or model.config.max_position_embeddings,
            model.config.max_position_embeddings,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_MODEL,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SentenceEncoder:
        """Load a sentence-transformers directory (modules.json, 1_Pooling/) or a bare BERT one."""
        model_dir = resolve_model_dir(name_or_path)
        model = BertModel.from_pretrained(model_dir, backend=backend, dtype=dtype, device=device)
        tokenizer = BertTokenizer.from_pretrained(model_dir)
        modules = _read_json(model_dir / "modules.json") or []
        types = [m.get("type", "") for m in modules]
        pooling = "mean"
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                pooling = pooling_mode_of(_read_json(model_dir / m.get("path", "") / "config.json"))
        normalize = any(t.endswith("Normalize") for t in types)
        max_len = _read_json(model_dir / "sentence_bert_config.json").get("max_seq_length")
        return cls(model, tokenizer, pooling, normalize, max_len)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def encode(
        self,
        sentences: str | list[str],
        batch_size: int = 32,
        normalize_embeddings: bool | None = None,
    ) -> torch.Tensor:
        """(n, hidden) fp32 CPU tensor, or (hidden,) for a single string."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if not texts:
            raise ValueError("encode needs at least one sentence")
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"sentences must be strings, got {type(t).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        normalize = self.normalize if normalize_embeddings is None else normalize_embeddings
        # Longest first, as sentence-transformers does, so each batch pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.model.config.hidden_size)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            )
            enc = {k: v.to(self.device) for k, v in enc.items()}
            hidden = self.model(**enc).last_hidden_state
            vectors = pool(hidden, enc["attention_mask"], self.pooling)
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            out[idx] = vectors.cpu()
        return out[0] if single else out
