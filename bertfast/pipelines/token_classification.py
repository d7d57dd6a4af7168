"""token-classification (NER): a label per token, optionally grouped into entities, with the
results of ``transformers.pipeline("token-classification", aggregation_strategy=...)``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bertfast.heads import BertForTokenClassification
from bertfast.pipelines.base import Pipeline, check_str
from bertfast.pipelines.text_classification import label_name, np_softmax
from bertfast.tokenizer import BertTokenizer

AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")
Entity = dict[str, Any]


def split_tag(label: str) -> tuple[str, str]:
    """("B" | "I", tag): B-PER -> (B, PER), I-PER and PER -> (I, PER)."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


class TokenClassificationPipeline(Pipeline):
    """Label tokens; ``aggregation_strategy`` merges them into words and entities.

    - none: one result per token (``entity``, ``score``, ``index``, ``word``, ``start``, ``end``);
    - simple: adjacent tokens with the same tag (B- starts a new one) form an ``entity_group``;
    - first / average / max: as simple, but a word takes one label, from its first token, the
      average of its tokens' scores, or its most confident token.

    Results whose label is in ``ignore_labels`` (default ``["O"]``) are dropped. Texts longer
    than the model's limit are truncated, as in transformers.
    """

    task = "token-classification"
    head_class = BertForTokenClassification

    def __init__(
        self,
        model: BertForTokenClassification,
        tokenizer: BertTokenizer,
        batch_size: int = 32,
        aggregation_strategy: str = "none",
    ):
        super().__init__(model, tokenizer, batch_size)
        self.aggregation_strategy = self._check_strategy(aggregation_strategy)

    @staticmethod
    def _check_strategy(strategy: Any) -> str:
        if not isinstance(strategy, str) or strategy.lower() not in AGGREGATION_STRATEGIES:
            raise ValueError(
                f"aggregation_strategy must be one of {AGGREGATION_STRATEGIES}, got {strategy!r}"
            )
        return strategy.lower()

    def __call__(
        self,
        inputs: str | list[str],
        aggregation_strategy: str | None = None,
        ignore_labels: list[str] | None = None,
    ) -> list[Entity] | list[list[Entity]]:
        strategy = self._check_strategy(aggregation_strategy or self.aggregation_strategy)
        ignore = ["O"] if ignore_labels is None else list(ignore_labels)
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, (list, tuple)) or not texts:
            raise TypeError(f"inputs must be a str or a non-empty list of str, got {inputs!r:.80}")
        texts = [check_str(t, f"input {i}") for i, t in enumerate(texts)]  # "" gives []
        encodings = self.tokenizer.encode_with_offsets(
            texts, truncation=True, max_length=self.max_length
        )
        rows = [(e.ids, e.type_ids) for e in encodings]
        results = []
        with torch.inference_mode():
            for start, batch in self.batches(rows):
                logits = self.model(**batch).logits.float().cpu().numpy()
                for i, row_logits in enumerate(logits):
                    enc = encodings[start + i]
                    scores = np_softmax(row_logits[: len(enc.ids)])
                    entities = self._aggregate(
                        self._pre_entities(texts[start + i], enc, scores), strategy
                    )
                    results.append(
                        [
                            e
                            for e in entities
                            if e.get("entity") not in ignore and e.get("entity_group") not in ignore
                        ]
                    )
        return results[0] if single else results

    def _pre_entities(self, text: str, enc, scores: np.ndarray) -> list[dict]:
        """Non-special tokens with their scores, offsets and whether they continue a word."""
        out = []
        unk = self.tokenizer.unk_token_id
        for idx, token_scores in enumerate(scores):
            if enc.special_tokens_mask[idx]:
                continue
            word = self.tokenizer.convert_ids_to_tokens(enc.ids[idx])
            start, end = enc.offsets[idx]
            word_ref = text[start:end]
            # WordPiece: a "##" piece is longer than its text (transformers' test).
            is_subword = len(word) != len(word_ref)
            if enc.ids[idx] == unk:
                word, is_subword = word_ref, False
            out.append(
                {
                    "word": word,
                    "scores": token_scores,
                    "start": start,
                    "end": end,
                    "index": idx,
                    "is_subword": is_subword,
                }
            )
        return out

    def _tokens_to_string(self, tokens: list[str]) -> str:
        return self.tokenizer.backend_tokenizer.decoder.decode(tokens)

    def _aggregate(self, pre_entities: list[dict], strategy: str) -> list[Entity]:
        config = self.model.config
        if strategy in ("none", "simple"):
            entities = []
            for pre in pre_entities:
                best = int(pre["scores"].argmax())
                entities.append(
                    {
                        "entity": label_name(config, best),
                        "score": float(pre["scores"][best]),
                        "index": pre["index"],
                        "word": pre["word"],
                        "start": pre["start"],
                        "end": pre["end"],
                    }
                )
            if strategy == "none":
                return entities
        else:
            entities = self._aggregate_words(pre_entities, strategy)
        return self._group_entities(entities)

    def _aggregate_word(self, tokens: list[dict], strategy: str) -> Entity:
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(scores.argmax())
        return {
            "entity": label_name(self.model.config, best),
            "score": float(scores[best]),
            "word": self._tokens_to_string([t["word"] for t in tokens]),
            "start": tokens[0]["start"],
            "end": tokens[-1]["end"],
        }

    def _aggregate_words(self, pre_entities: list[dict], strategy: str) -> list[Entity]:
        words, group = [], []
        for pre in pre_entities:
            if group and not pre["is_subword"]:
                words.append(self._aggregate_word(group, strategy))
                group = []
            group.append(pre)
        if group:
            words.append(self._aggregate_word(group, strategy))
        return words

    def _group(self, entities: list[Entity]) -> Entity:
        return {
            "entity_group": entities[0]["entity"].split("-", 1)[-1],
            "score": float(np.mean(np.nanmean([e["score"] for e in entities]))),
            "word": self._tokens_to_string([e["word"] for e in entities]),
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def _group_entities(self, entities: list[Entity]) -> list[Entity]:
        """Merge adjacent entities of one tag; a B- label starts a new group."""
        groups, current = [], []
        for entity in entities:
            if current:
                bi, tag = split_tag(entity["entity"])
                _, last_tag = split_tag(current[-1]["entity"])
                if tag != last_tag or bi == "B":
                    groups.append(self._group(current))
                    current = []
            current.append(entity)
        if current:
            groups.append(self._group(current))
        return groups
