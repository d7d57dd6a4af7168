"""Pre-training data: masked-LM masking (per token or whole word) and next-sentence pairs.

Both follow BERT's recipe (Devlin et al. 2019, and Google's ``create_pretraining_data.py``):
15 % of the maskable tokens are chosen; of those 80 % become [MASK], 10 % a random token and
10 % stay as they are; a next-sentence pair is [CLS] A [SEP] B [SEP] where B follows A half of
the time and is a sentence of another document otherwise.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

IGNORE_INDEX = -100  # label of positions the loss skips (CrossEntropyLoss's default)


class VocabularyTokenizer(Protocol):
    """What the data helpers need from a tokenizer (``bertfast.BertTokenizer`` has it)."""

    mask_token_id: int | None
    pad_token_id: int | None
    cls_token_id: int | None
    sep_token_id: int | None
    all_special_ids: list[int]

    def get_vocab(self) -> dict[str, int]: ...

    def __call__(self, text: Any, add_special_tokens: bool = True) -> Mapping[str, Any]: ...


def _check_probability(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


class MaskedLMCollator:
    """Pad examples into a batch and mask it for the masked-LM objective.

    Tokens are chosen independently with probability ``mlm_probability`` among the maskable
    ones (not special, not padding). With ``whole_word_mask`` the choice is made per word (a
    token plus the ``##`` pieces that follow it) and covers every token of a chosen word. Each
    chosen token then becomes [MASK] with probability ``mask_replace_prob``, a random
    non-special vocabulary token with probability ``random_replace_prob``, and stays unchanged
    otherwise. ``labels`` hold the original id at chosen positions and -100 elsewhere.
    """

    def __init__(
        self,
        tokenizer: VocabularyTokenizer,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        whole_word_mask: bool = False,
        pad_to_multiple_of: int | None = None,
        generator: torch.Generator | None = None,
    ):
        for name, value in (
            ("mlm_probability", mlm_probability),
            ("mask_replace_prob", mask_replace_prob),
            ("random_replace_prob", random_replace_prob),
        ):
            _check_probability(name, value)
        if mask_replace_prob + random_replace_prob > 1:
            raise ValueError(
                f"mask_replace_prob + random_replace_prob must be <= 1, got "
                f"{mask_replace_prob} + {random_replace_prob}"
            )
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer must define a mask token and a pad token")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.whole_word_mask = whole_word_mask
        self.pad_to_multiple_of = pad_to_multiple_of
        self.generator = generator
        self.mask_token_id = tokenizer.mask_token_id
        self.pad_token_id = tokenizer.pad_token_id
        vocab = tokenizer.get_vocab()
        self.vocab_size = max(vocab.values()) + 1
        special = torch.zeros(self.vocab_size, dtype=torch.bool)
        special[list(tokenizer.all_special_ids)] = True
        self.is_special = special
        continuation = torch.zeros(self.vocab_size, dtype=torch.bool)
        continuation[[i for token, i in vocab.items() if token.startswith("##")]] = True
        self.is_continuation = continuation
        self.random_candidates = torch.nonzero(~special).flatten()

    def mask_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input_ids, labels) for a (batch, seq) id tensor; the input is not modified."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a (batch, seq) tensor")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {self.vocab_size}) (the vocabulary)")
        g = generator if generator is not None else self.generator
        ids = input_ids.cpu().long()
        maskable = ~self.is_special[ids]
        if attention_mask is not None:
            maskable &= attention_mask.cpu().bool()
        if self.whole_word_mask:
            chosen = self._choose_words(ids, maskable, g)
        else:
            chosen = (torch.rand(ids.shape, generator=g) < self.mlm_probability) & maskable
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
        action = torch.rand(ids.shape, generator=g)
        to_mask = chosen & (action < self.mask_replace_prob)
        to_random = (
            chosen
            & (action >= self.mask_replace_prob)
            & (action < self.mask_replace_prob + self.random_replace_prob)
        )
        picks = torch.randint(len(self.random_candidates), ids.shape, generator=g)
        masked = torch.where(to_mask, torch.full_like(ids, self.mask_token_id), ids)
        masked = torch.where(to_random, self.random_candidates[picks], masked)
        return masked.to(input_ids.device, input_ids.dtype), labels.to(input_ids.device)

    def _choose_words(
        self, ids: torch.Tensor, maskable: torch.Tensor, g: torch.Generator | None
    ) -> torch.Tensor:
        """Choose whole words: a word starts at a maskable token that is not a ``##`` piece (or
        follows a non-maskable one) and takes the maskable ``##`` pieces after it."""
        previous = torch.zeros_like(maskable)
        previous[:, 1:] = maskable[:, :-1]
        starts = maskable & (~self.is_continuation[ids] | ~previous)
        word = torch.cumsum(starts.flatten(), 0) - 1  # word index of every token
        num_words = int(starts.sum())
        picked = torch.rand(num_words, generator=g) < self.mlm_probability
        chosen = torch.zeros(ids.numel(), dtype=torch.bool)
        inside = maskable.flatten() & (word >= 0)
        chosen[inside] = picked[word[inside]]
        return chosen.view(ids.shape)

    def __call__(
        self,
        examples: Sequence[Sequence[int] | Mapping[str, Any]],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pad a list of examples (id lists, or dicts with ``input_ids`` and optionally
        ``token_type_ids`` and ``next_sentence_label``) and mask them.

        Returns ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` (and
        ``next_sentence_label`` when the examples carry it) as tensors.
        """
        if not isinstance(examples, Sequence) or isinstance(examples, str) or not examples:
            raise ValueError("examples must be a non-empty list of id lists or dicts")
        rows = [e if isinstance(e, Mapping) else {"input_ids": e} for e in examples]
        for i, row in enumerate(rows):
            if "input_ids" not in row:
                raise ValueError(f"example {i} has no 'input_ids'")
            if len(row["input_ids"]) == 0:
                raise ValueError(f"example {i} is empty")
        length = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros(batch, length, dtype=torch.long)
        attention_mask = torch.zeros(batch, length, dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            attention_mask[i, :n] = 1
            if "token_type_ids" in row:
                if len(row["token_type_ids"]) != n:
                    raise ValueError(f"example {i}: token_type_ids and input_ids differ in length")
                token_type_ids[i, :n] = torch.as_tensor(row["token_type_ids"], dtype=torch.long)
        masked, labels = self.mask_tokens(input_ids, attention_mask, generator)
        out = {
            "input_ids": masked,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "labels": labels,
        }
        if all("next_sentence_label" in r for r in rows):
            out["next_sentence_label"] = torch.tensor(
                [int(r["next_sentence_label"]) for r in rows], dtype=torch.long
            )
        return out


def _token_ids(
    documents: Sequence[Sequence[str | Sequence[int]]], tokenizer: VocabularyTokenizer
) -> list[list[list[int]]]:
    """Every sentence as token ids (strings are tokenized; id lists are kept)."""
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise TypeError("documents must be a list of documents, each a list of sentences")
    texts, places = [], []
    out: list[list[list[int]]] = []
    for d, doc in enumerate(documents):
        if isinstance(doc, str) or not isinstance(doc, Sequence):
            raise TypeError(f"document {d} must be a list of sentences, got {type(doc).__name__}")
        out.append([])
        for s, sentence in enumerate(doc):
            if isinstance(sentence, str):
                texts.append(sentence)
                places.append((d, s))
                out[d].append([])
            elif isinstance(sentence, Sequence) and all(isinstance(t, int) for t in sentence):
                out[d].append(list(sentence))
            else:
                raise TypeError(
                    f"document {d} sentence {s} must be a str or a list of token ids, "
                    f"got {type(sentence).__name__}"
                )
    if texts:
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for (d, s), ids in zip(places, encoded, strict=True):
            out[d][s] = list(ids)
    for d, doc in enumerate(out):
        for s, ids in enumerate(doc):
            if not ids:
                raise ValueError(f"document {d} sentence {s} is empty (no tokens)")
    return out


def truncate_pair(a: list[int], b: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer side (B on a tie) until both fit together."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()
    return a, b


def build_next_sentence_pairs(
    documents: Sequence[Sequence[str | Sequence[int]]],
    tokenizer: VocabularyTokenizer,
    max_length: int = 128,
    random_next_prob: float = 0.5,
    rng: random.Random | int | None = None,
) -> list[dict[str, Any]]:
    """Next-sentence examples from a corpus (a list of documents, each a list of sentences).

    For every sentence A that has a successor in its document, B is that successor
    (``next_sentence_label`` 0) or, with probability ``random_next_prob``, a random sentence of
    a different document (label 1). Each example is ``[CLS] A [SEP] B [SEP]`` with segment ids
    0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``, at most ``max_length`` tokens: the longer
    side loses tokens from its end. Sentences are strings (tokenized here) or lists of ids.
    Returns dicts with ``input_ids``, ``token_type_ids`` and ``next_sentence_label``, which
    ``MaskedLMCollator`` batches and masks.
    """
    _check_probability("random_next_prob", random_next_prob)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 5:
        raise ValueError(
            f"max_length must be an int >= 5 ([CLS] A [SEP] B [SEP]), got {max_length}"
        )
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError("the tokenizer must define [CLS] and [SEP] tokens")
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    corpus = _token_ids(documents, tokenizer)
    non_empty = [d for d, doc in enumerate(corpus) if doc]
    if not any(len(doc) >= 2 for doc in corpus):
        raise ValueError("no document has two sentences: there is no next sentence to learn")
    if random_next_prob > 0 and len(non_empty) < 2:
        raise ValueError("random next sentences need at least two non-empty documents")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    examples = []
    for d, doc in enumerate(corpus):
        for i in range(len(doc) - 1):
            if rng.random() < random_next_prob:
                other = rng.choice(non_empty[:-1])  # a document other than d, uniformly
                other = non_empty[-1] if other == d else other
                b, label = rng.choice(corpus[other]), 1
            else:
                b, label = doc[i + 1], 0
            a, b = truncate_pair(doc[i], b, max_length - 3)
            examples.append(
                {
                    "input_ids": [cls, *a, sep, *b, sep],
                    "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                    "next_sentence_label": label,
                }
            )
    return examples
