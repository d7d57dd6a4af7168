"""Errors the server answers with: an HTTP status and TEI's ``{"error", "error_type"}`` body."""

from __future__ import annotations

# TEI's error types, spelled as TEI serialises them.
UNHEALTHY = "Unhealthy"
BACKEND = "Backend"
OVERLOADED = "Overloaded"
VALIDATION = "Validation"
TOKENIZER = "Tokenizer"
EMPTY = "Empty"
# Ours: a client that went away before its answer (499, as nginx logs it), and a body that did
# not arrive in time (408).
DROPPED = "Dropped"
TIMEOUT = "Timeout"


class ServeError(Exception):
    """A request that cannot be answered: ``status`` and ``error_type`` go to the client."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


def validation(message: str, status: int = 422) -> ServeError:
    """Malformed JSON, wrong types, bad values: 422 (413 for an input over the token limit)."""
    return ServeError(status, VALIDATION, message)


def empty(message: str) -> ServeError:
    """An empty input list: 400, as TEI answers it."""
    return ServeError(400, EMPTY, message)


def overloaded(message: str) -> ServeError:
    return ServeError(429, OVERLOADED, message)


def backend(message: str) -> ServeError:
    """A failure inside the model, or a route this model cannot serve: 424, as TEI."""
    return ServeError(424, BACKEND, message)


def missing_extra(exc: ImportError) -> ImportError:
    """The error for a missing web dependency, naming the extra that brings it."""
    return ImportError(
        f"bertfast serve needs {exc.name or 'its web dependencies'}: "
        'pip install -e ".[serve]" (or pip install "bertfast[serve]")'
    )
