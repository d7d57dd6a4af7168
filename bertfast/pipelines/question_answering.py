"""question-answering: the best answer spans of a context, SQuAD style.

Long contexts are split into windows of ``max_seq_len`` tokens ([CLS] question [SEP] context
[SEP]) that overlap by ``doc_stride`` tokens. In each window the start and end logits of the
context tokens (and [CLS]) are turned into probabilities; a span's score is p(start) * p(end),
with start <= end and at most ``max_answer_len`` tokens; the best spans over all windows win.
The score of "no answer" is p_start([CLS]) * p_end([CLS]), the smallest over the windows. This
is the post-processing of transformers' QuestionAnsweringPipeline (removed from transformers 5).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bertfast.heads import BertForQuestionAnswering
from bertfast.pipelines.base import Pipeline, check_positive_int, check_text

Answer = dict[str, Any]
NO_ANSWER_SENTINEL = 1e6  # larger than any probability: "no null score seen yet"


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    allowed: np.ndarray,
    top_k: int,
    max_answer_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(starts, ends, scores, null score) of the ``top_k`` best spans of one window.

    ``allowed`` marks the tokens that may take probability mass: the context and [CLS].
    """
    start = np.where(allowed, start_logits, -10000.0)
    end = np.where(allowed, end_logits, -10000.0)
    start = np.exp(start - start.max())
    start = start / start.sum()
    end = np.exp(end - end.max())
    end = end / end.sum()
    null_score = float(start[0] * end[0])
    start[0] = end[0] = 0.0  # [CLS] is never a span
    # Spans with start <= end < start + max_answer_len.
    candidates = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        order = np.argpartition(-flat, top_k)[:top_k]
        order = order[np.argsort(-flat[order])]
    starts, ends = np.unravel_index(order, candidates.shape)
    keep = allowed[starts] & allowed[ends]
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[starts, ends], null_score


class QuestionAnsweringPipeline(Pipeline):
    """Extract answers to a question from a context: ``{score, start, end, answer}``.

    Call with ``question=`` and ``context=``, or a dict with those keys, or a list of dicts.
    ``top_k`` = 1 gives one answer dict, more give a list sorted by score. With
    ``handle_impossible_answer`` the empty answer (start = end = 0) competes with its score.
    ``align_to_words`` widens a span to the whole words it touches.
    """

    task = "question-answering"
    head_class = BertForQuestionAnswering

    def _examples(self, inputs, question, context) -> tuple[list[tuple[str, str]], bool]:
        if inputs is None:
            if question is None or context is None:
                raise ValueError("pass question= and context= (or a dict / list of dicts)")
            inputs = {"question": question, "context": context}
        elif question is not None or context is not None:
            raise ValueError("pass either inputs or question= and context=, not both")
        single = isinstance(inputs, dict)
        items = [inputs] if single else inputs
        if not isinstance(items, (list, tuple)) or not items:
            raise TypeError(
                "inputs must be a dict with 'question' and 'context' or a non-empty list of "
                f"them, got {type(inputs).__name__}"
            )
        examples = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not {"question", "context"} <= set(item):
                raise TypeError(f"example {i} must be a dict with 'question' and 'context'")
            examples.append(
                (
                    check_text(item["question"], f"example {i} question"),
                    check_text(item["context"], f"example {i} context"),
                )
            )
        return examples, single

    def __call__(
        self,
        inputs: dict[str, str] | list[dict[str, str]] | None = None,
        *,
        question: str | None = None,
        context: str | None = None,
        top_k: int = 1,
        doc_stride: int | None = None,
        max_answer_len: int = 15,
        max_seq_len: int | None = None,
        handle_impossible_answer: bool = False,
        align_to_words: bool = True,
    ) -> Answer | list[Answer] | list[Answer | list[Answer]]:
        top_k = check_positive_int(top_k, "top_k")
        max_answer_len = check_positive_int(max_answer_len, "max_answer_len")
        if max_seq_len is None:
            max_seq_len = min(self.max_length, 384)
        check_positive_int(max_seq_len, "max_seq_len")
        if max_seq_len > self.max_length:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's {self.max_length}")
        stride_given = doc_stride is not None
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if isinstance(doc_stride, bool) or not isinstance(doc_stride, int) or doc_stride < 0:
            raise ValueError(f"doc_stride must be a non-negative int, got {doc_stride!r}")
        examples, single = self._examples(inputs, question, context)

        windows = []  # (example index, Encoding)
        for i, (q, c) in enumerate(examples):
            question_len = len(self.tokenizer(q, add_special_tokens=False)["input_ids"])
            room = max_seq_len - question_len - 3  # [CLS] q [SEP] context [SEP]
            if room < 1:
                raise ValueError(
                    f"example {i}: the question has {question_len} tokens, which leaves no room "
                    f"for the context in max_seq_len={max_seq_len}; shorten the question"
                )
            if doc_stride >= room and not stride_given:
                # The default stride only fails because the question leaves little room.
                raise ValueError(
                    f"example {i}: the question alone is too long: its {question_len} tokens "
                    f"leave {room} context tokens per window in max_seq_len={max_seq_len}, fewer "
                    f"than the default doc_stride ({doc_stride}) needs; shorten the question or "
                    f"pass a larger max_seq_len (or a doc_stride below {room})"
                )
            if doc_stride >= room:
                raise ValueError(
                    f"example {i}: doc_stride ({doc_stride}) must be smaller than the context "
                    f"tokens per window ({room} = max_seq_len - question tokens - 3)"
                )
            encodings = self.tokenizer.encode_with_offsets(
                q,
                c,
                truncation="only_second",
                max_length=max_seq_len,
                stride=doc_stride,
                return_overflowing_tokens=True,
            )
            windows += [(i, enc) for enc in encodings]

        per_example: list[list[Answer]] = [[] for _ in examples]
        null_scores = [NO_ANSWER_SENTINEL] * len(examples)
        rows = [(enc.ids, enc.type_ids) for _, enc in windows]
        with torch.inference_mode():
            for start, batch in self.batches(rows):
                out = self.model(**batch)
                starts_logits = out.start_logits.float().cpu().numpy()
                ends_logits = out.end_logits.float().cpu().numpy()
                for j in range(len(starts_logits)):
                    i, enc = windows[start + j]
                    n = len(enc.ids)
                    allowed = np.array([s == 1 for s in enc.sequence_ids])
                    allowed |= np.array(enc.ids) == self.tokenizer.cls_token_id
                    s_idx, e_idx, scores, null = best_spans(
                        starts_logits[j, :n], ends_logits[j, :n], allowed, top_k, max_answer_len
                    )
                    null_scores[i] = min(null_scores[i], null)
                    context_text = examples[i][1]
                    for s, e, score in zip(s_idx, e_idx, scores, strict=True):
                        char_start, char_end = self._char_span(enc, int(s), int(e), align_to_words)
                        per_example[i].append(
                            {
                                "score": score.item(),
                                "start": char_start,
                                "end": char_end,
                                "answer": context_text[char_start:char_end],
                            }
                        )
        results = []
        for answers, null in zip(per_example, null_scores, strict=True):
            if handle_impossible_answer:
                answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
            answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
            results.append(answers[0] if top_k == 1 else answers)
        return results[0] if single else results

    @staticmethod
    def _char_span(enc, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
        """Character span of tokens s..e in the context, widened to whole words if asked."""
        if align_to_words:
            start_word, end_word = enc.token_to_word(s), enc.token_to_word(e)
            if start_word is not None and end_word is not None:
                return (
                    enc.word_to_chars(start_word, sequence_index=1)[0],
                    enc.word_to_chars(end_word, sequence_index=1)[1],
                )
        return enc.offsets[s][0], enc.offsets[e][1]
