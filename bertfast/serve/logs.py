"""The server's log lines: text as TEI writes them (time, level, target, message, fields), or
one JSON object a line (``--log-format json``) for log shippers; uvicorn's own lines too."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

TEXT_FORMATTER = "bertfast.serve.logs.TextFormatter"
JSON_FORMATTER = "bertfast.serve.logs.JsonFormatter"


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.created % 1 * 1e6):06d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return dict(getattr(record, "fields", None) or {})


def _is_duration(key: str) -> bool:
    return key.endswith("_time")


class TextFormatter(logging.Formatter):
    """``2025-01-01T12:00:00.000000Z  INFO bertfast.serve.access: POST /embed 200
    total_time="5.1ms" ... inputs=2``: TEI's layout, durations in ms."""

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            if key in ("method", "route", "status"):
                continue  # already in the message
            if _is_duration(key):
                value = f'"{value * 1000:.2f}ms"'
            elif isinstance(value, str):
                value = json.dumps(value)
            parts.append(f"{key}={value}")
        line = f"{_timestamp(record)} {record.levelname:>5} {record.name}: {record.getMessage()}"
        if parts:
            line += " " + " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: timestamp, level, target, message and the fields (durations
    as ``*_ms`` numbers)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            if _is_duration(key):
                entry[key.removesuffix("_time") + "_time_ms"] = round(value * 1000, 3)
            else:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's loggers and the server's, on stderr."""
    formatter = JSON_FORMATTER if fmt == "json" else TEXT_FORMATTER
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
    }
    logger = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": logger,
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {**logger, "level": "WARNING"},  # ours replaces uvicorn's
            "bertfast.serve": logger,
        },
    }
