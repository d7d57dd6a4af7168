"""Corpus input: plain text (a line a text), JSON Lines and CSV / TSV, one record at a time.

Every text keeps where it came from (file and line), so a bad line is reported by name, and
with ``skip_bad_lines`` counted instead, never dropped silently.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("auto", "text", "jsonl", "csv", "tsv")
# File name endings -> format, for --format auto; anything else is plain text.
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",
}
# Bad lines kept by name in the manifest (the count covers all of them).
MAX_REPORTED_BAD_LINES = 100


class BadInputError(ValueError):
    """An input file or line that cannot be embedded; the message names file and line."""


@dataclass(frozen=True)
class Record:
    """One text to embed and the id written beside its vector."""

    text: str
    id: str | int


@dataclass
class BadLines:
    """What ``skip_bad_lines`` left out: a count and the first few, by file and line."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_REPORTED_BAD_LINES:
            self.examples.append(message)


def input_format(path: str | os.PathLike, fmt: str = "auto") -> str:
    """The format of ``path``: ``fmt`` itself, or for ``auto`` the one its extension names."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; choose one of {FORMATS}")
    if fmt != "auto":
        return fmt
    return EXTENSIONS.get(Path(path).suffix.lower(), "text")


def check_input_file(path: str | os.PathLike) -> None:
    """Refuse a path that is missing, a directory, unreadable or empty, naming it."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"input {str(path)!r} does not exist")
    if path.is_dir():
        raise BadInputError(f"input {str(path)!r} is a directory; give a file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise BadInputError(f"input {str(path)!r} cannot be read: {exc.strerror}") from None
    if path.stat().st_size == 0:
        raise BadInputError(f"input {str(path)!r} is empty")


def _decoded_lines(path: Path, bad: BadLines | None) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending) of ``path``; a non-UTF-8 line is an error,
    or skipped and counted when ``bad`` collects them."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                _bad(
                    bad,
                    f"{path}:{number}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column "
                    f"{exc.start + 1}); give UTF-8 text",
                )
                continue
            yield number, line.rstrip("\r\n")


def _bad(bad: BadLines | None, message: str) -> None:
    if bad is None:
        raise BadInputError(message + " (or pass --skip-bad-lines to count and skip such lines)")
    bad.add(message)


def _text_of(value: Any, where: str, what: str, bad: BadLines | None) -> str | None:
    if not isinstance(value, str):
        _bad(bad, f"{where}: {what} is {type(value).__name__} {_short(value)}, not text")
        return None
    if not value.strip():
        _bad(bad, f"{where}: {what} is empty")
        return None
    problem = _not_unicode(value)
    if problem:
        _bad(bad, f"{where}: {what} {problem}")
        return None
    return value


def _not_unicode(value: str) -> str | None:
    """Why ``value`` cannot be tokenized or written as UTF-8 (a lone surrogate, as JSON's
    "\\ud800" gives), or None."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"holds a lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start + 1}, "
            "which is not valid Unicode"
        )
    return None


def _id_of(value: Any, where: str, id_field: str, bad: BadLines | None) -> str | int | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        _bad(
            bad,
            f"{where}: id field {id_field!r} is {type(value).__name__} {_short(value)}; "
            "ids must be strings or integers",
        )
        return None
    problem = _not_unicode(value) if isinstance(value, str) else None
    if problem:
        _bad(bad, f"{where}: id field {id_field!r} {problem}")
        return None
    return value


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_text(path: Path, bad: BadLines | None) -> Iterator[Record]:
    for number, line in _decoded_lines(path, bad):
        where = f"{path}:{number}"
        text = _text_of(line, where, "the line", bad)
        if text is not None:
            yield Record(text, where)


def _read_jsonl(
    path: Path, text_field: str, id_field: str | None, bad: BadLines | None
) -> Iterator[Record]:
    for number, line in _decoded_lines(path, bad):
        where = f"{path}:{number}"
        if not line.strip():
            _bad(bad, f"{where}: blank line; JSON Lines holds one JSON object a line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad(bad, f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            _bad(bad, f"{where}: expected a JSON object, got {type(obj).__name__}")
            continue
        if text_field not in obj:
            _bad(bad, f"{where}: no field {text_field!r} (fields: {sorted(obj)[:10]})")
            continue
        text = _text_of(obj[text_field], where, f"field {text_field!r}", bad)
        if text is None:
            continue
        record_id: str | int | None = where
        if id_field is not None:
            if id_field not in obj:
                _bad(bad, f"{where}: no id field {id_field!r} (fields: {sorted(obj)[:10]})")
                continue
            record_id = _id_of(obj[id_field], where, id_field, bad)
            if record_id is None:
                continue
        yield Record(text, record_id)


def _read_csv(
    path: Path, delimiter: str, text_field: str, id_field: str | None, bad: BadLines | None
) -> Iterator[Record]:
    # The csv module reads a text stream opened with newline="": a quoted field may hold line
    # breaks, which it keeps as they are. Bytes that are not UTF-8 come through as lone
    # surrogates (surrogateescape), so such a record is named by its line rather than ending
    # the file's decoding.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise BadInputError(f"{path}: no header row") from None
        except csv.Error as exc:
            raise BadInputError(
                f"{path}:{reader.line_num}: header is not valid CSV ({exc})"
            ) from None
        for name in (text_field, id_field):
            if name is not None and name not in header:
                raise BadInputError(
                    f"{path}:{reader.line_num}: header has no column {name!r} (columns: "
                    f"{header}); name the text column with --field and the id column with "
                    "--id-field"
                )
        text_col = header.index(text_field)
        id_col = None if id_field is None else header.index(id_field)
        while True:
            first = reader.line_num + 1  # a record is named by its first line
            where = f"{path}:{first}"
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                _bad(bad, f"{where}: not valid CSV ({exc})")
                continue
            if not row:
                _bad(bad, f"{where}: blank line")
                continue
            if len(row) != len(header):
                _bad(bad, f"{where}: {len(row)} columns, the header has {len(header)}")
                continue
            problem = _not_utf8(row)
            if problem:
                _bad(bad, f"{where}: {problem}")
                continue
            text = _text_of(row[text_col], where, f"column {text_field!r}", bad)
            if text is None:
                continue
            yield Record(text, where if id_col is None else row[id_col])


def _not_utf8(row: list[str]) -> str | None:
    """What is wrong with a row read with surrogateescape, or None when it is all UTF-8."""
    joined = "".join(row)
    if joined.isascii():
        return None
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(joined[exc.start])
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape keeps it
            return f"not valid UTF-8 (byte {code - 0xDC00:#04x}); give UTF-8 text"
        return f"holds a lone surrogate U+{code:04X}, which is not valid Unicode"
    return None


def read_records(
    paths: Sequence[str | os.PathLike],
    text_field: str = "text",
    id_field: str | None = None,
    fmt: str = "auto",
    bad: BadLines | None = None,
) -> Iterator[Record]:
    """Every record of ``paths`` in order. A bad line raises BadInputError naming file and
    line, unless ``bad`` is given: then it is counted there and skipped. A file that cannot
    be read, is empty or holds no text is an error either way."""
    if not paths:
        raise BadInputError("no input files given")
    for path in paths:
        check_input_file(path)
    for path in map(Path, paths):
        kind = input_format(path, fmt)
        if kind == "text":
            records = _read_text(path, bad)
        elif kind == "jsonl":
            records = _read_jsonl(path, text_field, id_field, bad)
        else:
            records = _read_csv(path, "," if kind == "csv" else "\t", text_field, id_field, bad)
        count = 0
        for record in records:
            count += 1
            yield record
        if count == 0:
            raise BadInputError(f"input {str(path)!r} holds no text to embed (every line is bad)")
