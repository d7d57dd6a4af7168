"""The server's OpenAPI 3.0 description (``GET /openapi.json``) and the page that shows it
(``GET /docs``): every route, request and response body and error, written from the same
limits the server enforces. The page is plain HTML rendered here, so it works offline."""

from __future__ import annotations

import html
import json
from typing import Any

from bertfast._version import __version__

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: dict, **limits: int) -> dict[str, Any]:
    return {"type": "array", "items": items, **limits}


def _nullable(schema: dict, **extra: Any) -> dict[str, Any]:
    return {**schema, "nullable": True, **extra}


STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
DIRECTION = _nullable(
    {"type": "string", "enum": ["right", "left", "Right", "Left", "RIGHT", "LEFT"]},
    default="right",
    description="which end of an over-long input `truncate` cuts",
)


def _schemas(router) -> dict[str, Any]:
    s, backend = router.settings, router.backend
    batch = s.max_client_batch_size
    vocab = len(backend.tokenizer)
    width = getattr(backend, "hidden_size", None)
    texts = _array(STRING, minItems=1, maxItems=batch)
    token_ids = _array({"type": "integer", "minimum": 0, "maximum": vocab - 1}, minItems=1)
    truncate = _nullable(
        BOOLEAN,
        default=s.auto_truncate,
        description=f"cut inputs over {backend.max_input_length} tokens instead of refusing "
        "them with 413",
    )
    prompt_name = _nullable(
        STRING, description="one of the model directory's sentence-transformers prompts"
    )
    dimensions = _nullable(
        {"type": "integer", "minimum": 1, **({"maximum": width} if width else {})},
        description="keep the first n values of each vector (renormalised when normalised)",
    )
    inputs = {
        "oneOf": [STRING, texts],
        "description": f"a text or a list of at most {batch} texts (--max-client-batch-size)",
    }
    pair = _array(STRING, minItems=1, maxItems=2)
    prediction = {
        "type": "object",
        "required": ["score", "label"],
        "properties": {"score": NUMBER, "label": STRING},
    }
    model = {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": STRING,
            "object": {"type": "string", "enum": ["model"]},
            "created": INTEGER,
            "owned_by": STRING,
        },
    }
    return {
        "ErrorResponse": {
            "type": "object",
            "required": ["error", "error_type"],
            "properties": {"error": STRING, "error_type": STRING},
            "description": "TEI's error body",
        },
        "OpenAIErrorResponse": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": STRING,
                        "type": STRING,
                        "param": _nullable(STRING),
                        "code": _nullable(STRING),
                    },
                }
            },
            "description": "OpenAI's error body (every /v1 route)",
        },
        "EmbedRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": inputs,
                "normalize": _nullable(BOOLEAN, default=True),
                "truncate": truncate,
                "truncation_direction": DIRECTION,
                "prompt_name": prompt_name,
                "dimensions": dimensions,
            },
        },
        "EmbedAllRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": inputs,
                "truncate": truncate,
                "truncation_direction": DIRECTION,
                "prompt_name": prompt_name,
            },
        },
        "OpenAIEmbeddingRequest": {
            "type": "object",
            "required": ["input"],
            "properties": {
                "input": {
                    "oneOf": [
                        STRING,
                        texts,
                        token_ids,
                        _array(token_ids, minItems=1, maxItems=batch),
                    ],
                    "description": "texts, or token ids of texts without special tokens",
                },
                "model": _nullable(STRING, description="a served model name (GET /v1/models)"),
                "encoding_format": _nullable(
                    {"type": "string", "enum": ["float", "base64"]}, default="float"
                ),
                "dimensions": dimensions,
                "user": _nullable(STRING),
                "truncate": truncate,
                "truncation_direction": DIRECTION,
                "prompt_name": prompt_name,
            },
        },
        "OpenAIEmbeddingResponse": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": _array(
                    {
                        "type": "object",
                        "required": ["object", "embedding", "index"],
                        "properties": {
                            "object": {"type": "string", "enum": ["embedding"]},
                            "embedding": {
                                "oneOf": [_array(NUMBER), STRING],
                                "description": "floats, or base64 of little-endian float32",
                            },
                            "index": INTEGER,
                        },
                    }
                ),
                "model": STRING,
                "usage": {
                    "type": "object",
                    "required": ["prompt_tokens", "total_tokens"],
                    "properties": {"prompt_tokens": INTEGER, "total_tokens": INTEGER},
                },
            },
        },
        "PredictRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": {
                    "oneOf": [STRING, pair, _array(pair, minItems=1, maxItems=batch)],
                    "description": "a text, a pair [text, text], or a batch of [text] / "
                    "[text, text]",
                },
                "raw_scores": _nullable(BOOLEAN, default=False),
                "truncate": truncate,
                "truncation_direction": DIRECTION,
            },
        },
        "Prediction": prediction,
        "PredictResponse": {
            "oneOf": [_array(_ref("Prediction")), _array(_array(_ref("Prediction")))]
        },
        "RerankRequest": {
            "type": "object",
            "required": ["query", "texts"],
            "properties": {
                "query": STRING,
                "texts": texts,
                "raw_scores": _nullable(BOOLEAN, default=False),
                "return_text": _nullable(BOOLEAN, default=False),
                "truncate": truncate,
                "truncation_direction": DIRECTION,
                "prompt_name": prompt_name,
            },
        },
        "Rank": {
            "type": "object",
            "required": ["index", "score"],
            "properties": {"index": INTEGER, "score": NUMBER, "text": STRING},
        },
        "SimilarityRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": {
                    "type": "object",
                    "required": ["source_sentence", "sentences"],
                    "properties": {
                        "source_sentence": STRING,
                        "sentences": _array(STRING, minItems=1, maxItems=max(1, batch - 1)),
                    },
                },
                "parameters": _nullable(
                    {
                        "type": "object",
                        "properties": {
                            "truncate": truncate,
                            "truncation_direction": DIRECTION,
                            "prompt_name": prompt_name,
                        },
                    }
                ),
            },
        },
        "TokenizeRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": inputs,
                "add_special_tokens": _nullable(BOOLEAN, default=True),
                "truncate": truncate,
                "truncation_direction": DIRECTION,
            },
        },
        "SimpleToken": {
            "type": "object",
            "required": ["id", "text", "special", "start", "stop"],
            "properties": {
                "id": INTEGER,
                "text": STRING,
                "special": BOOLEAN,
                "start": _nullable(INTEGER),
                "stop": _nullable(INTEGER),
            },
        },
        "DecodeRequest": {
            "type": "object",
            "required": ["ids"],
            "properties": {
                "ids": {"oneOf": [token_ids, _array(token_ids, minItems=1, maxItems=batch)]},
                "skip_special_tokens": _nullable(BOOLEAN, default=True),
            },
        },
        "Model": model,
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": _array(_ref("Model")),
            },
        },
        "Info": {
            "type": "object",
            "required": ["model_id", "model_type", "max_input_length", "version"],
            "properties": {
                "model_id": STRING,
                "model_type": {"type": "object"},
                "max_input_length": INTEGER,
                "version": STRING,
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": STRING},
        },
    }


# Every error a POST route may answer (401 only with an API key, 404 only on /v1).
POST_ERRORS = {
    "400": "an empty input list",
    "408": "the body did not arrive within --timeout-body",
    "413": "a body over --payload-limit, or an input over the model's token limit",
    "422": "malformed JSON, a wrong type or value, too many inputs",
    "424": "the model failed, or cannot serve this route",
    "429": "more than --max-concurrent-requests requests in flight",
    "500": "a bug in the server",
    "503": "the server is stopping",
}

POST_ROUTES = {
    "/embed": ("Embed texts: one pooled vector each", "EmbedRequest", _array(_array(NUMBER))),
    "/embed_all": (
        "Embed texts: one vector per token",
        "EmbedAllRequest",
        _array(_array(_array(NUMBER))),
    ),
    "/v1/embeddings": (
        "OpenAI's embeddings API",
        "OpenAIEmbeddingRequest",
        _ref("OpenAIEmbeddingResponse"),
    ),
    "/predict": ("Classify texts or text pairs", "PredictRequest", _ref("PredictResponse")),
    "/rerank": ("Rank texts against a query", "RerankRequest", _array(_ref("Rank"))),
    "/similarity": (
        "Cosine similarity of a sentence with each of a list",
        "SimilarityRequest",
        _array(NUMBER),
    ),
    "/tokenize": (
        "Tokens with character offsets",
        "TokenizeRequest",
        _array(_array(_ref("SimpleToken"))),
    ),
    "/decode": ("Token ids back to text", "DecodeRequest", _array(STRING)),
}


def _json_content(schema: dict) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _error(description: str, openai: bool) -> dict[str, Any]:
    name = "OpenAIErrorResponse" if openai else "ErrorResponse"
    return {"description": description, "content": _json_content(_ref(name))}


def openapi_spec(router) -> dict[str, Any]:
    """The OpenAPI 3.0 document for this server: its model's limits and its API key."""
    secured = bool(router.settings.api_key)
    paths: dict[str, Any] = {}
    for path, (summary, request, response) in POST_ROUTES.items():
        openai = path.startswith("/v1/")
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": _json_content(response)}
        }
        for status, description in POST_ERRORS.items():
            responses[status] = _error(description, openai)
        if openai:
            responses["404"] = _error("`model` is not a served model name", openai)
        if secured:
            responses["401"] = _error("missing or wrong API key", openai)
        paths[path] = {
            "post": {
                "summary": summary,
                "operationId": path.strip("/").replace("/", "_"),
                "requestBody": {"required": True, "content": _json_content(_ref(request))},
                "responses": dict(sorted(responses.items())),
            }
        }

    def get(path: str, summary: str, ok: dict, errors: dict[str, str], **extra) -> None:
        openai = path.startswith("/v1/")
        responses = {"200": {"description": "OK", **ok}}
        for status, description in errors.items():
            responses[status] = _error(description, openai)
        if secured and path != "/health":
            responses["401"] = _error("missing or wrong API key", openai)
        operation = {
            "summary": summary,
            "operationId": "get_" + (path.strip("/").replace("/", "_").strip("{}") or "root"),
            "responses": dict(sorted(responses.items())),
            **extra,
        }
        if secured and path == "/health":
            operation["security"] = []
        paths[path] = {"get": operation}

    get("/health", "200 while the server can answer", {"content": _json_content(_ref("Health"))},
        {"503": "stopping, or the batcher is down"})  # fmt: skip
    get("/info", "The model and the server's limits", {"content": _json_content(_ref("Info"))}, {})
    get(
        "/metrics",
        "Prometheus metrics (TEI's names)",
        {"content": {"text/plain": {"schema": STRING}}},
        {},
    )
    get("/v1/models", "OpenAI's model list: the served names",
        {"content": _json_content(_ref("ModelList"))}, {})  # fmt: skip
    get(
        "/v1/models/{model_id}",
        "One served model name",
        {"content": _json_content(_ref("Model"))},
        {"404": "not a served model name"},
        parameters=[{"name": "model_id", "in": "path", "required": True, "schema": STRING}],
    )
    get("/openapi.json", "This document", {"content": _json_content({"type": "object"})}, {})
    get("/docs", "This document as a page", {"content": {"text/html": {"schema": STRING}}}, {})
    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "bertfast serve",
            "version": __version__,
            "description": "text-embeddings-inference (TEI) and OpenAI compatible routes for "
            f"the {router.backend.kind} model {router.model_id!r}",
        },
        "paths": paths,
        "components": {"schemas": _schemas(router)},
    }
    if secured:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
    return spec


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2rem; }
.op { border: 1px solid #ddd; border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
.method { font-weight: bold; text-transform: uppercase; margin-right: .5rem; }
.post { color: #2a7d2a; } .get { color: #1f5fa8; }
pre { background: #f6f6f6; padding: .5rem; overflow-x: auto; font-size: .85rem; }
table { border-collapse: collapse; } td { padding: .1rem .6rem; vertical-align: top; }
"""


def _schema_html(schema: dict) -> str:
    text = html.escape(json.dumps(schema, indent=2))
    # Each reference links to its schema further down.
    for name in sorted({part for part in _refs(schema)}, key=len, reverse=True):
        quoted = html.escape(f'"#/components/schemas/{name}"')
        text = text.replace(quoted, f'"<a href="#schema-{name}">{name}</a>"')
    return f"<pre>{text}</pre>"


def _refs(schema: Any) -> set[str]:
    found: set[str] = set()
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                found.add(ref.rsplit("/", 1)[-1])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def docs_page(spec: dict[str, Any]) -> str:
    """The OpenAPI document as one self-contained HTML page (no script, no CDN)."""
    e = html.escape
    info = spec["info"]
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(info['title'])} {e(info['version'])}</title><style>{STYLE}</style>",
        "</head><body>",
        f"<h1>{e(info['title'])} <small>{e(info['version'])}</small></h1>",
        f"<p>{e(info['description'])}. Machine-readable: <a href='/openapi.json'>/openapi.json"
        "</a>.</p>",
    ]
    if spec.get("security"):
        out.append("<p>Every route but <code>/health</code> needs "
                   "<code>Authorization: Bearer &lt;key&gt;</code>.</p>")  # fmt: skip
    out.append("<h2>Routes</h2>")
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            out.append(f"<div class='op' id='{e(op['operationId'])}'>")
            out.append(
                f"<p><span class='method {method}'>{method}</span><code>{e(path)}</code> "
                f"— {e(op['summary'])}</p>"
            )
            body = op.get("requestBody")
            if body:
                schema = body["content"][JSON]["schema"]
                out.append("<p>Request body:</p>" + _schema_html(schema))
            out.append("<table>")
            for status, response in op["responses"].items():
                content = response.get("content", {})
                kinds = ", ".join(
                    f"{kind} " + ", ".join(
                        f"<a href='#schema-{r}'>{r}</a>" for r in sorted(_refs(c["schema"]))
                    )
                    for kind, c in content.items()
                )  # fmt: skip
                out.append(
                    f"<tr><td><b>{e(status)}</b></td><td>{e(response['description'])}</td>"
                    f"<td>{kinds}</td></tr>"
                )
            out.append("</table></div>")
    out.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        out.append(f"<h3 id='schema-{e(name)}'>{e(name)}</h3>{_schema_html(schema)}")
    out.append("</body></html>")
    return "\n".join(out)
