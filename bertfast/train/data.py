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

    def where(self, name: str | None = None) -> str:
        at = f"{self.path}, line {self.line}"
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
    with open(path, encoding="utf-8", newline="") as f:
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


__all__ = [
    "IGNORE_INDEX",
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
