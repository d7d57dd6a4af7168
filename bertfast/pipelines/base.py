"""What every task pipeline shares: loading a head and its tokenizer, input checks, batching."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from bertfast.heads import BertPreTrainedHead
from bertfast.tokenizer import BertTokenizer
from bertfast.weights import resolve_model_dir

ModelSource = str | os.PathLike | BertPreTrainedHead


def check_text(value: Any, what: str = "text") -> str:
    """A non-empty string, or a TypeError / ValueError that says what was given."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def check_str(value: Any, what: str = "text") -> str:
    """A string (empty allowed, as where transformers handles it), or a TypeError."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def check_non_negative_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


def check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


class Pipeline:
    """A task head with its tokenizer; subclasses implement ``__call__``."""

    task: str = ""
    head_class: type[BertPreTrainedHead] = BertPreTrainedHead

    def __init__(
        self,
        model: BertPreTrainedHead,
        tokenizer: BertTokenizer,
        batch_size: int = 32,
    ):
        if not isinstance(model, self.head_class):
            raise TypeError(
                f"the {self.task} pipeline needs a {self.head_class.__name__}, "
                f"got {type(model).__name__}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = check_positive_int(batch_size, "batch_size")
        # The longest input the model takes: its position table, or the tokenizer's limit.
        self.max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)

    @classmethod
    def from_pretrained(
        cls,
        model: ModelSource,
        backend: str = "auto",
        device: torch.device | str | None = None,
        tokenizer: BertTokenizer | str | os.PathLike | None = None,
        dtype: torch.dtype | None = None,
        quantize: str | None = None,
        **kwargs: Any,
    ) -> Pipeline:
        """Load the head from a local checkpoint directory and the tokenizer beside it;
        on the CPU, ``quantize="int8"`` runs the encoder's GEMMs in int8 (bertfast.cpu_quantize)
        and bf16 needs a CPU with native bf16."""
        from bertfast import cpu_linear, cpu_quantize

        cpu_linear.check_cpu_dtype(dtype, device or "cpu")
        cpu_quantize.check_quantize(quantize, dtype, device)
        if isinstance(model, BertPreTrainedHead):
            if tokenizer is None:
                raise ValueError("pass tokenizer= (a BertTokenizer or its directory) with a model")
            head = model
        elif isinstance(model, (str, os.PathLike)):
            model_dir = resolve_model_dir(model)
            head = cls.head_class.from_pretrained(model_dir, backend, dtype, device)
            tokenizer = model_dir if tokenizer is None else tokenizer
        else:
            raise TypeError(
                f"model must be a model directory or a {cls.head_class.__name__}, "
                f"got {type(model).__name__}"
            )
        if not isinstance(tokenizer, BertTokenizer):
            tokenizer = BertTokenizer.from_pretrained(tokenizer)
        if quantize is not None:
            cpu_quantize.quantize_(head, quantize)
        return cls(head, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def check_length(self, ids: Sequence[int], index: int, hint: str = "shorten the text") -> None:
        if len(ids) > self.max_length:
            raise ValueError(
                f"input {index} has {len(ids)} tokens; the model takes at most "
                f"{self.max_length}: {hint}"
            )

    def batches(self, rows: list[tuple[list[int], list[int]]]):
        """Yield (start, padded model inputs) for (ids, token types) rows, batch_size at a time."""
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            length = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full(
                (len(chunk), length), self.tokenizer.pad_token_id or 0, dtype=torch.long
            )
            token_type_ids = torch.zeros(len(chunk), length, dtype=torch.long)
            attention_mask = torch.zeros(len(chunk), length, dtype=torch.long)
            for i, (ids, types) in enumerate(chunk):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                token_type_ids[i, : len(ids)] = torch.tensor(types)
                attention_mask[i, : len(ids)] = 1
            inputs = {
                "input_ids": input_ids.to(self.device),
                "attention_mask": attention_mask.to(self.device),
                "token_type_ids": token_type_ids.to(self.device),
            }
            yield start, inputs

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, "
            f"backend={self.model.backend!r}, device={str(self.device)!r})"
        )
