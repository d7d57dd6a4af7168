"""Fine-tuning data: read JSON Lines / CSV / SQuAD JSON, check every record, encode per task.

Every problem is a ``DataError`` naming the file, the line (or record) and the field, raised
while reading, so a bad file fails before the first training step.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bertfast.data import IGNORE_INDEX


class DataError(ValueError):
    """A training or evaluation file that cannot be used as it is."""


@dataclass
class Record:
    """One input record: where it came from (for errors) and its fields."""

    path: str
    line: int
    fields: dict[str, Any]
    place: str | None = None  # where in a nested JSON file, when there are no lines

    def where(self, name: str | None = None) -> str:
        at = f"{self.path}, {self.place or f'line {self.line}'}"
        return f"{at}, field {name!r}" if name else at

    def get(self, name: str, kinds: tuple[type, ...], what: str, required: bool = True) -> Any:
        """The field ``name`` if present and of one of ``kinds`` (bool never counts as int)."""
        if name not in self.fields or self.fields[name] is None:
            if not required:
                return None
            raise DataError(f"{self.where(name)}: missing (fields present: {sorted(self.fields)})")
        value = self.fields[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise DataError(f"{self.where(name)}: expected {what}, got {type(value).__name__}")
        return value


def read_records(path: str | os.PathLike) -> list[Record]:
    """Records of a ``.csv`` file (a header row, then one record a row) or of JSON Lines (any
    other name: one JSON object a line, blank lines skipped)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no data file at {path!r}")
    records = []
    with open(path, encoding="utf-8-sig", newline="") as f:  # as embed, a byte-order mark is ok
        try:
            if path.lower().endswith(".csv"):
                reader = csv.DictReader(f)
                for row in reader:
                    fields = {k: v for k, v in row.items() if k is not None}
                    if None in row:
                        raise DataError(f"{path}, line {reader.line_num}: more cells than header")
                    records.append(Record(path, reader.line_num, fields))
            else:
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}, line {number}: not JSON ({exc.msg})") from None
                    if not isinstance(value, dict):
                        raise DataError(
                            f"{path}, line {number}: expected a JSON object, got "
                            f"{type(value).__name__}"
                        )
                    records.append(Record(path, number, value))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not records:
        raise DataError(f"{path}: empty file (no records)")
    return records


# Classification: text (+ text_pair) and label.


@dataclass
class ClassificationExample:
    text: str
    text_pair: str | None
    label: str
    record: Record


def read_classification(path: str | os.PathLike) -> list[ClassificationExample]:
    """``text`` (str), optional ``text_pair`` (str) and ``label`` (a name or an integer id; in
    CSV every cell is a name). One file uses one label type."""
    examples, label_kind = [], None
    for record in read_records(path):
        text = record.get("text", (str,), "a string")
        pair = record.get("text_pair", (str,), "a string", required=False)
        label = record.get("label", (str, int), "a label name (string) or integer")
        if label_kind is None:
            label_kind = (type(label), record.line)
        elif type(label) is not label_kind[0]:
            raise DataError(
                f"{record.where('label')}: {type(label).__name__} label, but line "
                f"{label_kind[1]} has a {label_kind[0].__name__} one; use one type per file"
            )
        if pair == "" and record.path.lower().endswith(".csv"):
            pair = None  # an empty CSV cell is an absent pair
        examples.append(ClassificationExample(text, pair, str(label), record))
    return examples


def label_names(labels: Sequence[str]) -> list[str]:
    """The distinct labels in a stable order: numerically when all are integers, else sorted."""
    distinct = set(labels)
    if all(_is_int(x) for x in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def check_labels(records: Sequence[tuple[Record, str, str]], label2id: dict[str, int]) -> None:
    """Each (record, field, label) must be a label the model knows."""
    for record, name, label in records:
        if label not in label2id:
            raise DataError(
                f"{record.where(name)}: unknown label {label!r}; the model's labels are "
                f"{sorted(label2id)}"
            )


@dataclass
class Feature:
    """One encoded model input; ``example`` indexes the example it came from (QA windows)."""

    input_ids: list[int]
    token_type_ids: list[int]
    targets: dict[str, Any] = field(default_factory=dict)
    example: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def encode_classification(
    tokenizer, examples: Sequence[ClassificationExample], label2id: dict[str, int], max_length: int
) -> list[Feature]:
    check_labels([(e.record, "label", e.label) for e in examples], label2id)
    features = []
    singles = [i for i, e in enumerate(examples) if e.text_pair is None]
    pairs = [i for i, e in enumerate(examples) if e.text_pair is not None]
    encoded: dict[int, tuple[list[int], list[int]]] = {}
    if singles:
        out = tokenizer([examples[i].text for i in singles], truncation=True, max_length=max_length)
        for i, ids, types in zip(singles, out["input_ids"], out["token_type_ids"], strict=True):
            encoded[i] = (ids, types)
    if pairs:
        out = tokenizer(
            [examples[i].text for i in pairs],
            [examples[i].text_pair for i in pairs],
            truncation=True,
            max_length=max_length,
        )
        for i, ids, types in zip(pairs, out["input_ids"], out["token_type_ids"], strict=True):
            encoded[i] = (ids, types)
    for i, example in enumerate(examples):
        ids, types = encoded[i]
        features.append(Feature(ids, types, {"labels": label2id[example.label]}, example=i))
    return features


# NER: tokens and tags, one tag per word.


@dataclass
class TaggedExample:
    tokens: list[str]
    tags: list[str]
    record: Record


def _string_list(record: Record, name: str) -> list[str]:
    value = record.get(name, (list,), "a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(
                f"{record.where(name)}: item {i} is {type(item).__name__}, expected a string"
            )
    return value


def read_tagged(path: str | os.PathLike) -> list[TaggedExample]:
    """JSON Lines with ``tokens`` (words) and ``tags`` (one label per word, e.g. B-PER)."""
    examples = []
    for record in read_records(path):
        tokens, tags = _string_list(record, "tokens"), _string_list(record, "tags")
        if len(tokens) != len(tags):
            raise DataError(
                f"{record.where('tags')}: {len(tags)} tags for {len(tokens)} tokens; give one "
                "tag per token"
            )
        if not tokens:
            raise DataError(f"{record.where('tokens')}: no tokens")
        examples.append(TaggedExample(tokens, tags, record))
    return examples


def tag_names(tags: Sequence[str]) -> list[str]:
    """The distinct tags, "O" first, then by entity type with B- before I-."""
    distinct = set(tags)
    rest = sorted(distinct - {"O"}, key=lambda t: (t[2:], t[:2]) if t[1:2] == "-" else (t, ""))
    return (["O"] if "O" in distinct else []) + rest


def encode_tagged(
    tokenizer, examples: Sequence[TaggedExample], label2id: dict[str, int], max_length: int
) -> list[Feature]:
    """[CLS] word pieces [SEP]; each word's tag on its first piece, -100 on the others (and on
    the special tokens). The sentence ends at the first word that does not fit in
    ``max_length`` (a later, shorter word packed after a gap would be scored against the
    wrong gold tag), so the kept words are always a prefix: ``extra["words"]`` holds their
    indices in the example and ``extra["starts"]`` their first pieces' positions."""
    check_labels([(e.record, "tags", t) for e in examples for t in e.tags], label2id)
    words = [w for e in examples for w in e.tokens]
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    unk = tokenizer.unk_token_id
    features, at = [], 0
    for n, example in enumerate(examples):
        ids, labels, starts = [tokenizer.cls_token_id], [IGNORE_INDEX], []
        first, at = at, at + len(example.tags)
        for w, tag in enumerate(example.tags):
            word = pieces[first + w] or [unk]  # a word the vocabulary drops (a control char)
            if len(ids) + len(word) > max_length - 1:
                break
            starts.append(len(ids))
            ids += word
            labels += [label2id[tag]] + [IGNORE_INDEX] * (len(word) - 1)
        ids.append(tokenizer.sep_token_id)
        labels.append(IGNORE_INDEX)
        features.append(
            Feature(
                ids,
                [0] * len(ids),
                {"labels": labels},
                example=n,
                extra={"starts": starts, "words": list(range(len(starts)))},
            )
        )
    return features


# Extractive QA: question, context and answers.


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, start character)
    record: Record


def _answers(record: Record, context: str) -> list[tuple[str, int]]:
    value = record.get("answers", (list, dict), "a list of {text, answer_start}")
    if isinstance(value, dict):  # the datasets layout: {"text": [...], "answer_start": [...]}
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(
                f"{record.where('answers')}: expected text and answer_start lists of one length"
            )
        value = [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=True)]
    answers = []
    for i, answer in enumerate(value):
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise DataError(
                f"{record.where('answers')}: answer {i} needs a string 'text' and an integer "
                f"'answer_start', got {answer!r}"
            )
        if context[start : start + len(text)] != text:
            raise DataError(
                f"{record.where('answers')}: answer {i} {text!r} is not at character {start} "
                f"of the context (found {context[start : start + len(text)]!r})"
            )
        answers.append((text, start))
    if not answers:
        raise DataError(f"{record.where('answers')}: no answer (SQuAD v1 needs one)")
    return answers


def _squad_records(path: str, data: Any) -> list[Record]:
    """The questions of a SQuAD JSON file as records with question, context, answers, id."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected SQuAD JSON ({{'data': [articles]}}) or JSON Lines")
    records = []
    for a, article in enumerate(data["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context")
            for q, qa in enumerate(paragraph.get("qas", [])):
                place = f"data[{a}].paragraphs[{p}].qas[{q}]"
                fields = {"context": context, **qa}
                records.append(Record(path, 0, fields, place))
    if not records:
        raise DataError(f"{path}: empty file (no questions)")
    return records


def read_qa(path: str | os.PathLike) -> list[QAExample]:
    """SQuAD v1 JSON, or JSON Lines with ``question``, ``context``, ``answers`` (and ``id``)."""
    path = str(path)
    records = None
    if path.lower().endswith(".json") and os.path.isfile(path):
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
        if not text.strip():
            raise DataError(f"{path}: empty file (no records)")
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # not one JSON document: read it as JSON Lines
        # A one-record JSON Lines file is one JSON document too: SQuAD's has "data".
        if not (isinstance(document, dict) and "question" in document):
            records = None if document is None else _squad_records(path, document)
    if records is None:
        records = read_records(path)
    examples = []
    for n, record in enumerate(records):
        question = record.get("question", (str,), "a string")
        context = record.get("context", (str,), "a string")
        qid = record.get("id", (str, int), "a string", required=False)
        answers = _answers(record, context)
        examples.append(
            QAExample(str(n if qid is None else qid), question, context, answers, record)
        )
    return examples


def encode_qa(
    tokenizer, examples: Sequence[QAExample], max_length: int, stride: int
) -> list[Feature]:
    """[CLS] question [SEP] context window [SEP] for each window of each context (windows
    overlap by ``stride`` tokens). Targets: the first answer's token span in the window, or
    (0, 0) on [CLS] when the window does not hold it all. ``extra["offsets"]`` maps context
    tokens to characters (None elsewhere) for decoding predictions."""
    if not examples:
        return []
    encodings = tokenizer.encode_with_offsets(
        [e.question for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
    )
    features = []
    for n, (example, encoding) in enumerate(zip(examples, encodings, strict=True)):
        for window in (encoding, *encoding.overflowing):
            sequence = window.sequence_ids
            offsets = [
                tuple(o) if s == 1 else None for o, s in zip(window.offsets, sequence, strict=True)
            ]
            context = [i for i, o in enumerate(offsets) if o is not None]
            if not context:
                raise DataError(
                    f"{example.record.where('question')}: the question leaves no room for the "
                    f"context in --max-length {max_length}"
                )
            text, start_char = example.answers[0]
            end_char = start_char + len(text)
            start = end = 0
            if offsets[context[0]][0] <= start_char and offsets[context[-1]][1] >= end_char:
                start = next(i for i in context if offsets[i][1] > start_char)
                end = next(i for i in reversed(context) if offsets[i][0] < end_char)
            features.append(
                Feature(
                    list(window.ids),
                    list(window.type_ids),
                    {"start_positions": start, "end_positions": end},
                    example=n,
                    extra={"offsets": offsets},
                )
            )
    return features


__all__ = [
    "IGNORE_INDEX",
    "QAExample",
    "TaggedExample",
    "encode_qa",
    "encode_tagged",
    "read_qa",
    "read_tagged",
    "tag_names",
    "ClassificationExample",
    "DataError",
    "Feature",
    "Record",
    "check_labels",
    "encode_classification",
    "label_names",
    "read_classification",
    "read_records",
]
