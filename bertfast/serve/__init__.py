"""``bertfast serve``: a text-embeddings-inference (TEI) compatible HTTP server.

The router (``app``: HTTP, validation, limits; ``tokenization``; ``batcher``: queue and
token-budget batching; ``metrics``) is kept apart from the model side (``backend``), as TEI
keeps its router apart from its backends. This package imports the model, never the reverse.
Its web dependencies are optional: ``pip install -e ".[serve]"``.
"""

from __future__ import annotations

from bertfast.serve.errors import ServeError
from bertfast.serve.settings import ServeSettings

__all__ = ["ServeError", "ServeSettings"]
