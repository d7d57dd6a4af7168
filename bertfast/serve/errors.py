"""Errors the server answers with: an HTTP status and TEI's ``{"error", "error_type"}`` body,
or OpenAI's ``{"error": {"message", "type", "param", "code"}}`` on ``/v1/*``."""

from __future__ import annotations

# TEI's error types, spelled as TEI serialises them.
UNHEALTHY = "Unhealthy"
BACKEND = "Backend"
OVERLOADED = "Overloaded"
VALIDATION = "Validation"
TOKENIZER = "Tokenizer"
EMPTY = "Empty"
# Ours: a client that went away before its answer (499, as nginx logs it), a body that did not
# arrive in time (408), a missing or wrong API key (401), an unknown model or route (404), a
# bug (500).
DROPPED = "Dropped"
TIMEOUT = "Timeout"
UNAUTHORIZED = "Unauthorized"
NOT_FOUND = "NotFound"
INTERNAL = "Internal"

# te_request_failure's ``err`` label for each type, with TEI's values where TEI has the case.
FAILURE_REASONS = {
    VALIDATION: "validation",
    EMPTY: "validation",
    NOT_FOUND: "validation",
    TOKENIZER: "tokenization",
    OVERLOADED: "overloaded",
    BACKEND: "inference",
    DROPPED: "dropped",
    TIMEOUT: "timeout",
    UNHEALTHY: "unhealthy",
    UNAUTHORIZED: "unauthorized",
    INTERNAL: "internal",
}


def _openai_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 and status != 424 else "server_error"


class ServeError(Exception):
    """A request that cannot be answered: ``status`` and ``error_type`` go to the client.

    ``param`` names the request field at fault and ``code`` is OpenAI's machine-readable code
    (both for the /v1 shape); ``reason`` is the te_request_failure label (by default the
    type's, see FAILURE_REASONS; TEI's "batch_size" and "model_type" are set where they apply).
    """

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        param: str | None = None,
        code: str | None = None,
        reason: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.param = param
        self.code = code or error_type.lower()
        self.reason = reason or FAILURE_REASONS.get(error_type, error_type.lower())

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}

    def openai_body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": _openai_type(self.status),
                "param": self.param,
                "code": self.code,
            }
        }


def validation(message: str, status: int = 422, param: str | None = None) -> ServeError:
    """Malformed JSON, wrong types, bad values: 422 (413 for an input over the token limit)."""
    return ServeError(status, VALIDATION, message, param=param)


def empty(message: str, param: str | None = None) -> ServeError:
    """An empty input list: 400, as TEI answers it."""
    return ServeError(400, EMPTY, message, param=param)


def overloaded(message: str) -> ServeError:
    return ServeError(429, OVERLOADED, message)


def backend(message: str, reason: str | None = None) -> ServeError:
    """A failure inside the model, or a route this model cannot serve: 424, as TEI."""
    return ServeError(424, BACKEND, message, reason=reason)


def missing_extra(exc: ImportError) -> ImportError:
    """The error for a missing web dependency, naming the extra that brings it."""
    return ImportError(
        f"bertfast serve needs {exc.name or 'its web dependencies'}: "
        'pip install -e ".[serve]" (or pip install "bertfast[serve]")'
    )
