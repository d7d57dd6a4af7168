"""next-sentence: how likely sentence B follows sentence A (BERT's pre-training task)."""

from __future__ import annotations

from typing import Any

import torch

from bertfast.heads import BertForNextSentencePrediction
from bertfast.pipelines.base import Pipeline, check_text, softmax

Pair = tuple[str, str] | list[str] | dict[str, str]


class NextSentencePipeline(Pipeline):
    """``{"is_next": p, "not_next": 1 - p}`` for a pair (label 0 of the head = IsNext).

    A pair is ``(a, b)``, ``[a, b]`` or ``{"text": a, "text_pair": b}``; a list of pairs gives
    a list of results. Pairs longer than the model's limit lose tokens from the longer side.
    """

    task = "next-sentence"
    head_class = BertForNextSentencePrediction

    @staticmethod
    def _is_pair(value: Any) -> bool:
        return (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and all(isinstance(v, str) for v in value)
        ) or isinstance(value, dict)

    def _pair(self, value: Any, index: int) -> tuple[str, str]:
        if isinstance(value, dict):
            if set(value) != {"text", "text_pair"}:
                raise ValueError(
                    f"pair {index}: a dict pair needs exactly the keys 'text' and 'text_pair', "
                    f"got {sorted(value)}"
                )
            value = (value["text"], value["text_pair"])
        elif not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise TypeError(
                f"pair {index} must be (sentence_a, sentence_b) or a dict with 'text' and "
                f"'text_pair', got {type(value).__name__}"
            )
        a, b = value
        return check_text(a, f"pair {index} sentence A"), check_text(b, f"pair {index} sentence B")

    def __call__(self, inputs: Pair | list[Pair]) -> dict[str, float] | list[dict[str, float]]:
        single = self._is_pair(inputs)
        items = [inputs] if single else inputs
        if not isinstance(items, (list, tuple)) or not items:
            raise TypeError(
                "inputs must be a pair (sentence_a, sentence_b), a dict with 'text' and "
                f"'text_pair', or a non-empty list of pairs; got {type(inputs).__name__}"
            )
        pairs = [self._pair(item, i) for i, item in enumerate(items)]
        encoded = self.tokenizer(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            truncation="longest_first",
            max_length=self.max_length,
        )
        rows = list(zip(encoded["input_ids"], encoded["token_type_ids"], strict=True))
        probs = []
        with torch.inference_mode():
            for _, batch in self.batches(rows):
                probs.append(softmax(self.model(**batch).logits).cpu())
        results = [{"is_next": p[0], "not_next": p[1]} for p in torch.cat(probs).tolist()]
        return results[0] if single else results
