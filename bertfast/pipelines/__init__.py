"""Task pipelines: text in, answers out, in the forms of ``transformers.pipeline``.

>>> fill = pipeline("fill-mask", model="path/to/bert-base-uncased")
>>> fill("Love is like the [MASK]. You can't see it but you can feel it")
"""

from __future__ import annotations

import os
from typing import Any

import torch

from bertfast.heads import BertPreTrainedHead
from bertfast.pipelines.base import Pipeline
from bertfast.pipelines.fill_mask import FillMaskPipeline
from bertfast.pipelines.next_sentence import NextSentencePipeline
from bertfast.pipelines.question_answering import QuestionAnsweringPipeline
from bertfast.pipelines.text_classification import TextClassificationPipeline
from bertfast.pipelines.token_classification import TokenClassificationPipeline
from bertfast.tokenizer import BertTokenizer

TASKS: dict[str, type[Pipeline]] = {
    "fill-mask": FillMaskPipeline,
    "next-sentence": NextSentencePipeline,
    "text-classification": TextClassificationPipeline,
    "token-classification": TokenClassificationPipeline,
    "question-answering": QuestionAnsweringPipeline,
}
ALIASES = {
    "next-sentence-prediction": "next-sentence",
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
}

__all__ = [
    "TASKS",
    "FillMaskPipeline",
    "NextSentencePipeline",
    "Pipeline",
    "QuestionAnsweringPipeline",
    "TextClassificationPipeline",
    "TokenClassificationPipeline",
    "pipeline",
]


def pipeline(
    task: str,
    model: str | os.PathLike | BertPreTrainedHead,
    backend: str = "auto",
    device: torch.device | str | None = None,
    tokenizer: BertTokenizer | str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> Pipeline:
    """The pipeline of ``task`` on a local checkpoint directory (or a loaded head).

    ``model`` must hold the task's head weights (e.g. a ``BertForMaskedLM`` checkpoint for
    fill-mask); the tokenizer is read from the same directory unless given. Extra keyword
    arguments go to the pipeline (``batch_size``; ``aggregation_strategy`` for NER).
    """
    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {sorted(TASKS)}, aliases: {ALIASES}")
    return TASKS[name].from_pretrained(
        model, backend=backend, device=device, tokenizer=tokenizer, dtype=dtype, **kwargs
    )
