"""text-classification: labels of texts or text pairs (sentiment, MNLI ...), with the output
forms of ``transformers.pipeline("text-classification")``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bertfast.heads import BertForSequenceClassification
from bertfast.pipelines.base import Pipeline, check_non_negative_int, check_str

FUNCTIONS = ("softmax", "sigmoid", "none")
_UNSET = object()  # top_k not given: transformers' "legacy" output forms


def label_name(config, index: int) -> str:
    return config.id2label.get(index, f"LABEL_{index}")


def np_softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class TextClassificationPipeline(Pipeline):
    """Classify a text, or a pair given as ``{"text": ..., "text_pair": ...}``.

    ``function_to_apply`` defaults as in transformers: none for regression, sigmoid for
    multi-label or single-output models, softmax otherwise. Without ``truncation`` an input
    longer than the model's limit is an error; with it, the tokenizer's strategy applies
    (True = longest first).
    """

    task = "text-classification"
    head_class = BertForSequenceClassification

    def default_function(self) -> str:
        config = self.model.config
        problem_type = config.extra.get("problem_type")
        if problem_type == "regression":
            return "none"
        if problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def _encode(self, item: Any, index: int, truncation) -> tuple[list[int], list[int]]:
        if isinstance(item, dict):
            unknown = set(item) - {"text", "text_pair"}
            if "text" not in item or unknown:
                raise ValueError(
                    f"input {index}: a pair is a dict with keys 'text' and 'text_pair', "
                    f"got keys {sorted(item)}"
                )
            text = check_str(item["text"], f"input {index} text")
            pair = item.get("text_pair")
            if pair is not None:
                check_str(pair, f"input {index} text_pair")
        elif isinstance(item, str):
            text, pair = check_str(item, f"input {index}"), None
        elif isinstance(item, (list, tuple)):
            raise ValueError(
                "The pipeline received invalid inputs: to send a text pair, pass a dictionary "
                '{"text": "My text", "text_pair": "My pair"}'
            )
        else:
            raise TypeError(f"input {index} must be a str or a dict, got {type(item).__name__}")
        max_length = self.max_length if truncation else None
        encoded = self.tokenizer(text, pair, truncation=truncation or None, max_length=max_length)
        ids = encoded["input_ids"]
        self.check_length(ids, index, "pass truncation=True, or shorten the text")
        return ids, encoded["token_type_ids"]

    def __call__(
        self,
        inputs: str | dict[str, str] | list[str | dict[str, str]],
        top_k: int | None = _UNSET,
        function_to_apply: str | None = None,
        truncation: bool | str = False,
    ) -> list[dict[str, Any]] | dict[str, Any] | list[list[dict[str, Any]]]:
        """``{"label", "score"}`` results in transformers' forms.

        Without ``top_k``: a str gives ``[best]``, a dict gives ``best``, a list gives one
        ``best`` per item. With ``top_k`` (None = all labels): the ``top_k`` best, sorted, for
        one input, and a list of such lists for a list of inputs.
        """
        legacy = top_k is _UNSET
        if not legacy and top_k is not None:
            check_non_negative_int(top_k, "top_k")  # 0 gives [] as in transformers
        function = function_to_apply or self.default_function()
        if not isinstance(function, str) or function.lower() not in FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {FUNCTIONS}, got {function!r}")
        function = function.lower()
        batched = isinstance(inputs, list)
        items = inputs if batched else [inputs]
        if not items:
            raise ValueError("inputs is an empty list")
        rows = [self._encode(item, i, truncation) for i, item in enumerate(items)]
        logits = []
        with torch.inference_mode():
            for _, batch in self.batches(rows):
                logits.append(self.model(**batch).logits.float().cpu())
        scores = torch.cat(logits).numpy()
        if function == "softmax":
            scores = np_softmax(scores)
        elif function == "sigmoid":
            scores = np_sigmoid(scores)
        results = [self._postprocess(s, top_k, legacy) for s in scores]
        if batched:
            return results
        return [results[0]] if legacy and isinstance(inputs, str) else results[0]

    def _postprocess(self, scores: np.ndarray, top_k, legacy: bool):
        config = self.model.config
        if legacy:
            best = int(scores.argmax())
            return {"label": label_name(config, best), "score": scores[best].item()}
        ranked = [
            {"label": label_name(config, i), "score": score.item()}
            for i, score in enumerate(scores)
        ]
        ranked.sort(key=lambda x: x["score"], reverse=True)
        return ranked if top_k is None else ranked[:top_k]
