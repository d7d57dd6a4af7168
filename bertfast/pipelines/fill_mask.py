"""fill-mask: the most likely tokens at each [MASK], as ``transformers.pipeline("fill-mask")``."""

from __future__ import annotations

import logging
from typing import Any

import torch

from bertfast.heads import BertForMaskedLM
from bertfast.pipelines.base import Pipeline, check_non_negative_int, check_text, softmax
from bertfast.tokenizer import BertTokenizer

logger = logging.getLogger(__name__)

Prediction = dict[str, Any]


class FillMaskPipeline(Pipeline):
    """Predict the token at every mask; vocabulary logits are computed at the masks only."""

    task = "fill-mask"
    head_class = BertForMaskedLM

    def __init__(self, model: BertForMaskedLM, tokenizer: BertTokenizer, batch_size: int = 32):
        super().__init__(model, tokenizer, batch_size)
        if tokenizer.mask_token_id is None:
            raise ValueError(f"the tokenizer has no mask token ({tokenizer.mask_token!r})")

    def target_ids(self, targets: str | list[str]) -> list[int]:
        """Vocabulary ids of ``targets``; a word outside the vocabulary becomes its first piece
        (with a warning), as in transformers."""
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise TypeError("targets must be a str or a list of str")
        vocab = self.tokenizer.get_vocab()
        ids = []
        for target in targets:
            id_ = vocab.get(target)
            if id_ is None:
                pieces = self.tokenizer(target, add_special_tokens=False)["input_ids"]
                if not pieces:
                    logger.warning("target %r has no token in the vocabulary; ignoring it", target)
                    continue
                id_ = pieces[0]
                logger.warning(
                    "target %r is not in the vocabulary; using %r instead",
                    target,
                    self.tokenizer.convert_ids_to_tokens(id_),
                )
            ids.append(id_)
        # transformers deduplicates through a set, which also fixes the order of ties.
        ids = list(set(ids))
        if not ids:
            raise ValueError("none of the targets maps to a vocabulary token")
        return ids

    def __call__(
        self,
        inputs: str | list[str],
        top_k: int = 5,
        targets: str | list[str] | None = None,
    ) -> list[Prediction] | list[list[Prediction]] | list[Any]:
        """Predictions sorted by score: ``{score, token, token_str, sequence}`` dicts.

        One mask gives a list of predictions, several masks a list per mask; a list of texts
        gives a list of those (a list of one text gives its result alone, as transformers).
        """
        top_k = check_non_negative_int(top_k, "top_k")  # 0 gives [] as in transformers
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, (list, tuple)) or not texts:
            raise TypeError(f"inputs must be a str or a non-empty list of str, got {inputs!r:.80}")
        texts = [check_text(t, f"input {i}") for i, t in enumerate(texts)]
        target_ids = None if targets is None else torch.tensor(self.target_ids(targets))
        if target_ids is not None:
            top_k = min(top_k, len(target_ids))
        mask_id = self.tokenizer.mask_token_id
        encoded = self.tokenizer(texts)
        rows = list(zip(encoded["input_ids"], encoded["token_type_ids"], strict=True))
        for i, (ids, _) in enumerate(rows):
            if mask_id not in ids:
                raise ValueError(
                    f"no mask token ({self.tokenizer.mask_token}) found in input {i}: "
                    f"{texts[i]!r:.80}"
                )
            self.check_length(ids, i)
        results = []
        with torch.inference_mode():
            for start, batch in self.batches(rows):
                positions = torch.nonzero(batch["input_ids"] == mask_id)
                logits = self.model(**batch, logits_positions=positions).logits
                probs = softmax(logits).cpu()
                positions = positions.cpu()
                for i in range(batch["input_ids"].shape[0]):
                    ids = rows[start + i][0]
                    rows_of_i = probs[positions[:, 0] == i]
                    results.append(self._postprocess(ids, rows_of_i, top_k, target_ids))
        return results[0] if len(results) == 1 else results

    def _postprocess(self, ids, probs, top_k, target_ids):
        """transformers' FillMaskPipeline.postprocess, for one input."""
        if target_ids is not None:
            probs = probs[..., target_ids]
        values, predictions = probs.topk(top_k)
        masked_index = [i for i, t in enumerate(ids) if t == self.tokenizer.mask_token_id]
        single_mask = len(masked_index) == 1
        pad = self.tokenizer.pad_token_id
        result = []
        for position, scores, tokens in zip(
            masked_index, values.tolist(), predictions.tolist(), strict=True
        ):
            row = []
            for score, token in zip(scores, tokens, strict=True):
                if target_ids is not None:
                    token = int(target_ids[token])
                filled = list(ids)
                filled[position] = token
                filled = [t for t in filled if t != pad]
                row.append(
                    {
                        "score": score,
                        "token": token,
                        "token_str": self.tokenizer.decode([token]),
                        "sequence": self.tokenizer.decode(filled, skip_special_tokens=single_mask),
                    }
                )
            result.append(row)
        return result[0] if single_mask else result
