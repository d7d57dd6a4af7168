"""The router: TEI's and OpenAI's routes, request validation, limits, errors, response
headers, the API key and access logs.

Every error is ``{"error": ..., "error_type": ...}`` with TEI's error types (on ``/v1/*``
OpenAI's ``{"error": {"message", "type", "param", "code"}}``):

===========================================================  ======  ===========
what                                                         status  error_type
===========================================================  ======  ===========
more than ``max_concurrent_requests`` inference requests     429     Overloaded
body over ``payload_limit`` bytes                            413     Validation
body not in within ``timeout_body`` seconds                  408     Timeout
malformed JSON, a wrong type or value, a lone surrogate      422     Validation
more than ``max_client_batch_size`` inputs                   422     Validation
an empty input list (as TEI)                                 400     Empty
an input over the model's token limit with truncate=false    413     Validation
tokenizer failure                                            422     Tokenizer
the model failed on the input, or cannot serve the route     424     Backend
server stopping or batcher down (/health)                    503     Unhealthy
a bug in the server (logged)                                 500     Internal
the client went away before its answer (work cancelled)     499     Dropped
no or a wrong API key (``api_key`` set)                      401     Unauthorized
unknown route, or a ``model`` that is not a served name      404     NotFound
===========================================================  ======  ===========
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the install
    from bertfast.serve.errors import missing_extra

    raise missing_extra(exc) from exc

from bertfast._version import __version__
from bertfast.serve import errors
from bertfast.serve.backend import (
    CLASSIFY,
    EMBED,
    EMBED_ALL,
    ClassifierBackend,
    ModelBackend,
    Sequence,
)
from bertfast.serve.batcher import Batcher
from bertfast.serve.errors import ServeError
from bertfast.serve.metrics import CONTENT_TYPE, Metrics
from bertfast.serve.settings import ServeSettings
from bertfast.serve.tokenization import DIRECTIONS, Tokenization

try:  # the serve extra brings it; json's float formatting is ~20x slower for vectors
    import orjson
except ImportError:  # pragma: no cover - depends on the install
    orjson = None

logger = logging.getLogger("bertfast.serve")
access_logger = logging.getLogger("bertfast.serve.access")

# POST routes that count against max_concurrent_requests and payload_limit.
INFERENCE_ROUTES = {
    "/embed": "embed",
    "/embed_all": "embed_all",
    "/v1/embeddings": "openai_embed",
    "/predict": "predict",
    "/rerank": "rerank",
    "/similarity": "similarity",
    "/tokenize": "tokenize",
    "/decode": "decode",
}
GET_ROUTES = ("/health", "/info", "/metrics", "/v1/models", "/v1/models/{model_id}")
# Routes that answer without the API key (a load balancer's probe has none).
PUBLIC_ROUTES = ("/health",)
# Requests of at most this many characters are tokenized on the event loop (tens of
# microseconds, less than handing them to a worker thread and back); longer ones on the pool,
# so that the loop keeps answering.
INLINE_TOKENIZATION_CHARS = 2048
# Where the scope carries what the access log reports of a request.
ACCESS_KEY = "bertfast.access"


class Answer(JSONResponse):
    """A JSON answer rendered by orjson where installed (a 384-float vector in ~20 us instead
    of ~400 us with json), else as Starlette renders it. The backend refuses non-finite model
    outputs before they get here (orjson would write NaN as null, json refuses it)."""

    def render(self, content: Any) -> bytes:
        if orjson is not None:
            try:
                return orjson.dumps(content)
            except TypeError:  # something orjson does not take (an int over 64 bits ...)
                pass
        return super().render(content)


def route_path(name: str) -> str:
    return next(path for path, route in INFERENCE_ROUTES.items() if route == name)


def is_openai(path: str) -> bool:
    """OpenAI's routes answer errors in OpenAI's shape; TEI's keep TEI's."""
    return path.startswith("/v1/") or path == "/v1"


def error_response(err: ServeError, openai: bool = False, **headers: str) -> Response:
    """The error's JSON answer. Serialised ASCII-only, so a message that echoes the client's
    text (a lone surrogate included) can always be encoded."""
    body = err.openai_body() if openai else err.body()
    return Response(
        json.dumps(body, ensure_ascii=True),
        status_code=err.status,
        headers=headers or None,
        media_type="application/json",
    )


class Timing:
    """What the response headers and the access log report (milliseconds, as TEI)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.tokenization = self.queue = self.inference = 0.0
        self.tokens = self.chars = self.inputs = 0
        self.method: str | None = None  # TEI's request label: "single" or "batch"
        self.task: str | None = None  # "embed" or "predict": the per-input metrics to count
        self.items: list = []  # the queued items (their queue and inference times)

    def access(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "tokens": self.tokens,
            "tokenization_time": self.tokenization,
            "queue_time": self.queue,
            "inference_time": self.inference,
        }

    def headers(self, compute_type: str) -> dict[str, str]:
        total = time.perf_counter() - self.start
        ms = lambda s: str(int(round(s * 1000)))
        return {
            "x-compute-type": compute_type,
            "x-compute-time": ms(total),
            "x-compute-characters": str(self.chars),
            "x-compute-tokens": str(self.tokens),
            "x-total-time": ms(total),
            "x-tokenization-time": ms(self.tokenization),
            "x-queue-time": ms(self.queue),
            "x-inference-time": ms(self.inference),
        }


# -- validation ------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _bool(body: dict, key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise errors.validation(f"`{key}` must be a boolean, got {_type_name(value)}", param=key)
    return value


def _direction(body: dict) -> str:
    value = body.get("truncation_direction")
    if value is None:
        return "right"
    if not isinstance(value, str) or value.lower() not in DIRECTIONS:
        raise errors.validation(
            f"`truncation_direction` must be 'left' or 'right' (any case), got {value!r}",
            param="truncation_direction",
        )
    return value.lower()


def _lone_surrogate(value: Any) -> str | None:
    """Where a string holding a lone surrogate is in a parsed JSON body (e.g. ``inputs[2]``),
    or None. Such a string is not Unicode: it can be neither tokenized nor echoed as UTF-8."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:  # iterative: bodies nest as deep as json.loads allows
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or "the body"
        elif isinstance(item, dict):
            for key, sub in item.items():
                stack.append((key, f"a key of {where or 'the body'}"))
                stack.append((sub, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list):
            stack.extend((sub, f"{where}[{i}]") for i, sub in enumerate(item))
    return None


def parse_body(raw: bytes) -> dict:
    """The request's JSON object, or a 422 naming what is wrong with it."""
    try:
        # JSON over HTTP is UTF-8 (RFC 8259): json.loads(bytes) would also take UTF-16 and
        # UTF-32, where the surrogate check below cannot see the escapes.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise errors.validation(f"the body is not UTF-8, as JSON must be: {exc}") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise errors.validation("malformed JSON body: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.validation(f"malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise errors.validation(f"the body must be a JSON object, got {_type_name(body)}")
    # A lone surrogate can only come from a \uD800-\uDFFF escape: skip the walk without one.
    if "\\ud" in text or "\\uD" in text:
        where = _lone_surrogate(body)
        if where is not None:
            raise errors.validation(
                f"`{where}` holds a lone surrogate (a \\uD800-\\uDFFF escape without its pair), "
                "which is not valid Unicode"
            )
    return body


class Router:
    """State shared by the routes: backend, tokenization, batcher, limits, metrics."""

    def __init__(self, backend: ModelBackend, settings: ServeSettings):
        self.backend = backend
        self.settings = settings
        self.metrics = Metrics(backend.max_input_length)
        self.tokenization = Tokenization(backend.tokenizer, backend.max_input_length)
        self.model_id = settings.model_id or str(settings.model).rstrip("/").split("/")[-1]
        # The names /v1/* answers to (the first is reported when a request names none).
        self.served_names = list(settings.served_model_names or [self.model_id])
        self.created = int(time.time())
        self.compute_type = backend.device.type
        self.batcher: Batcher | None = None
        self.tokenizer_pool: ThreadPoolExecutor | None = None
        self.in_flight = 0  # requests with their body in, until answered
        self.reading = 0  # requests whose body is still arriving
        self.answered = 0  # inference requests answered, errors included (reported at exit)
        self.stopping = False

    # -- lifecycle (the app's lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        s = self.settings
        self.tokenizer_pool = ThreadPoolExecutor(
            max_workers=s.tokenization_workers, thread_name_prefix="bertfast-tokenizer"
        )
        # Every accepted request fits in the queue at once, so admission (max_concurrent_requests)
        # is the only limit a client meets: a request queues at most max_client_batch_size
        # inputs plus one (/rerank's query, /similarity's source sentence).
        self.batcher = Batcher(
            self.backend,
            s.max_batch_tokens,
            s.max_batch_requests,
            max_queue=s.max_concurrent_requests * (s.max_client_batch_size + 1),
            metrics=self.metrics,
        )
        await self.batcher.start()
        try:
            yield
        finally:
            # uvicorn runs this after every accepted request has been answered.
            self.stopping = True
            await self.batcher.stop()
            self.tokenizer_pool.shutdown(wait=True)

    # -- helpers

    def _texts(self, value: Any, key: str) -> tuple[list[str], bool]:
        """A string or a non-empty list of strings (at most max_client_batch_size)."""
        if isinstance(value, str):
            return [value], True
        what = f"`{key}` must be a string or a list of strings"
        if value is None:
            raise errors.validation(
                f"`{key}` is required: a string or a list of strings", param=key
            )
        if not isinstance(value, list):
            raise errors.validation(f"{what}, got {_type_name(value)}", param=key)
        if not value:
            raise errors.empty(f"`{key}` cannot be empty", param=key)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise errors.validation(f"{what}, got {_type_name(item)} at index {i}", param=key)
        self._check_batch_size(len(value), key)
        return value, False

    def _check_batch_size(self, count: int, param: str | None = None) -> None:
        limit = self.settings.max_client_batch_size
        if count > limit:
            raise ServeError(
                422,
                errors.VALIDATION,
                f"batch size {count} > maximum allowed batch size {limit} "
                "(--max-client-batch-size)",
                param=param,
                reason="batch_size",
            )

    def _needs(self, route: str, kinds: tuple[str, ...]) -> None:
        if self.backend.kind not in kinds:
            hint = "/predict or /rerank" if self.backend.kind == "classifier" else "/embed"
            raise errors.backend(
                f"{route} needs a model of kind {' or '.join(kinds)}; {self.model_id!r} is of "
                f"kind {self.backend.kind} (use {hint})",
                reason="model_type",
            )

    async def _encode(
        self, texts: list, truncate: bool, direction: str, timing: Timing
    ) -> list[Sequence]:
        start = time.perf_counter()
        chars = sum(len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in texts)
        if chars <= INLINE_TOKENIZATION_CHARS:  # cheaper here than a hop to a worker thread
            encoded = self.tokenization.encode(texts, truncate, direction)
        else:
            encoded = await asyncio.get_running_loop().run_in_executor(
                self.tokenizer_pool, self.tokenization.encode, texts, truncate, direction
            )
        timing.tokenization = time.perf_counter() - start
        return self._sequences(encoded, timing)

    def _sequences(self, encoded: list, timing: Timing) -> list[Sequence]:
        timing.tokens = sum(len(e.ids) for e in encoded)
        timing.chars = sum(e.chars for e in encoded)
        timing.inputs = len(encoded)
        for e in encoded:
            self.metrics.input_tokens.observe(len(e.ids))
        return [Sequence("", e.ids, e.type_ids) for e in encoded]

    async def _infer(self, seqs: list[Sequence], timing: Timing) -> list[Any]:
        if self.batcher is None or not self.batcher.healthy:
            raise ServeError(503, errors.UNHEALTHY, "the batcher is not running")
        items = self.batcher.submit(seqs)
        timing.task = "predict" if seqs[0].task == CLASSIFY else "embed"
        timing.items = items
        self.metrics.per_input[timing.task]["count"].inc(len(items))
        results = await asyncio.gather(*(it.future for it in items), return_exceptions=True)
        timing.queue = max(it.queue_time for it in items)
        timing.inference = max(it.inference_time for it in items)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def _prompt(self, body: dict) -> tuple[str, int | None]:
        """The prompt to prepend (TEI's ``prompt_name``; else the directory's default)."""
        name = body.get("prompt_name")
        if name is not None and not isinstance(name, str):
            raise errors.validation(
                f"`prompt_name` must be a string, got {_type_name(name)}", param="prompt_name"
            )
        try:
            prompt = self.backend.prompt(name)
        except KeyError:
            known = sorted(self.backend.prompts)
            raise errors.validation(
                f"`prompt_name` {name!r} is not one of this model's prompts {known}",
                param="prompt_name",
            ) from None
        return (prompt, self.backend.prompt_length(prompt)) if prompt else ("", None)

    async def _embed(
        self,
        texts: list[str],
        body: dict,
        timing: Timing,
        task: str,
        normalize: bool,
        token_ids: list[list[int]] | None = None,
    ) -> list[Any]:
        """Embed ``texts`` (or, with ``token_ids``, inputs given as ids) with the request's
        truncation and prompt."""
        truncate = _bool(body, "truncate", self.settings.auto_truncate)
        direction = _direction(body)
        prompt, prompt_length = self._prompt(body)
        if token_ids is not None:
            loop = asyncio.get_running_loop()
            start = time.perf_counter()
            encoded = await loop.run_in_executor(
                self.tokenizer_pool, self.tokenization.encode_ids, token_ids, truncate,
                direction, prompt,
            )  # fmt: skip
            timing.tokenization = time.perf_counter() - start
            seqs = self._sequences(encoded, timing)
        else:
            if prompt:
                texts = [prompt + t for t in texts]
            seqs = await self._encode(texts, truncate, direction, timing)
        for s in seqs:
            s.task, s.normalize, s.prompt_length = task, normalize, prompt_length
        return await self._infer(seqs, timing)

    def _dimensions(self, body: dict) -> int | None:
        """``dimensions``: keep the first n of each vector (a Matryoshka cut), 1 to the
        model's width."""
        dims = body.get("dimensions")
        if dims is None:
            return None
        width = self.backend.hidden_size
        if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= width:
            raise errors.validation(
                f"`dimensions` must be an integer from 1 to {width} (this model's width), "
                f"got {dims!r}",
                param="dimensions",
            )
        return dims

    @staticmethod
    def _cut(vectors: list[list[float]], dims: int | None, normalize: bool) -> Any:
        """The first ``dims`` of each vector, unit length again when ``normalize``, as
        sentence-transformers' ``truncate_dim`` with ``normalize_embeddings``."""
        if dims is None:
            return vectors
        cut = np.asarray(vectors, dtype=np.float32)[:, :dims]
        if normalize:
            norms = np.linalg.norm(cut, axis=1, keepdims=True)
            cut = cut / np.maximum(norms, 1e-12)
        return cut.tolist()

    # -- routes: each takes the parsed body and returns the JSON answer

    async def embed(self, body: dict, timing: Timing) -> Any:
        self._needs("/embed", ("embedding",))
        texts, single = self._texts(body.get("inputs"), "inputs")
        timing.method = "single" if single else "batch"
        normalize = _bool(body, "normalize", True)
        dims = self._dimensions(body)
        vectors = await self._embed(texts, body, timing, EMBED, normalize)
        return self._cut(vectors, dims, normalize)

    async def embed_all(self, body: dict, timing: Timing) -> Any:
        self._needs("/embed_all", ("embedding",))
        texts, single = self._texts(body.get("inputs"), "inputs")
        timing.method = "single" if single else "batch"
        return await self._embed(texts, body, timing, EMBED_ALL, False)

    def _openai_input(self, value: Any) -> tuple[list[str], list[list[int]] | None, bool]:
        """OpenAI's ``input``: a string, a list of strings, one input as token ids (a list
        of ints) or several (a list of such lists). Returns (texts, token_ids, single)."""
        what = (
            "`input` must be a string, a list of strings, a list of token ids or a list of "
            "lists of token ids"
        )
        is_id = lambda x: isinstance(x, int) and not isinstance(x, bool)
        if isinstance(value, list) and value and all(is_id(x) for x in value):
            rows, single = [value], True
        elif isinstance(value, list) and value and all(isinstance(x, list) for x in value):
            rows, single = value, False
            self._check_batch_size(len(rows), "input")
        else:
            if isinstance(value, list) and value and not all(isinstance(x, str) for x in value):
                raise errors.validation(f"{what}; the list mixes types", param="input")
            if value is not None and not isinstance(value, (str, list)):
                raise errors.validation(f"{what}, got {_type_name(value)}", param="input")
            texts, single = self._texts(value, "input")
            return texts, None, single
        vocab = len(self.backend.tokenizer)
        for i, row in enumerate(rows):
            if not row or not all(is_id(x) and 0 <= x < vocab for x in row):
                raise errors.validation(
                    f"{what}; input {i} must be a non-empty list of token ids, each an "
                    f"integer in [0, {vocab})",
                    param="input",
                )
        return [], rows, single

    def _served_name(self, body: dict) -> str:
        """The model name the request asks for: one of the served names, or none."""
        model = body.get("model")
        if model is None:
            return self.served_names[0]
        if not isinstance(model, str):
            raise errors.validation(
                f"`model` must be a string, got {_type_name(model)}", param="model"
            )
        if model not in self.served_names:
            names = ", ".join(self.served_names)
            raise ServeError(
                404,
                errors.NOT_FOUND,
                f"The model `{model}` does not exist; this server serves: {names}",
                param="model",
                code="model_not_found",
            )
        return model

    async def openai_embed(self, body: dict, timing: Timing) -> Any:
        texts, token_ids, single = self._openai_input(body.get("input"))
        timing.method = "single" if single else "batch"
        model = self._served_name(body)
        self._needs("/v1/embeddings", ("embedding",))
        fmt = body.get("encoding_format")
        fmt = "float" if fmt is None else fmt
        if fmt not in ("float", "base64"):
            raise errors.validation(
                f"`encoding_format` must be 'float' or 'base64', got {fmt!r}",
                param="encoding_format",
            )
        user = body.get("user")
        if user is not None and not isinstance(user, str):
            raise errors.validation(
                f"`user` must be a string, got {_type_name(user)}", param="user"
            )
        dims = self._dimensions(body)
        vectors = await self._embed(texts, body, timing, EMBED, True, token_ids)
        vectors = self._cut(vectors, dims, True)
        if fmt == "base64":
            encode = lambda v: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        else:
            encode = lambda v: v
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "embedding": encode(v), "index": i}
                for i, v in enumerate(vectors)
            ],
            "model": model,
            "usage": {"prompt_tokens": timing.tokens, "total_tokens": timing.tokens},
        }

    async def similarity(self, body: dict, timing: Timing) -> Any:
        """TEI's sentence similarity: the cosine of ``source_sentence`` with each sentence."""
        self._needs("/similarity", ("embedding",))
        inputs = body.get("inputs")
        what = "`inputs` must be an object {source_sentence: string, sentences: [string]}"
        if not isinstance(inputs, dict):
            raise errors.validation(f"{what}, got {_type_name(inputs)}", param="inputs")
        source, sentences = inputs.get("source_sentence"), inputs.get("sentences")
        if not isinstance(source, str):
            raise errors.validation(
                f"{what}; source_sentence is {_type_name(source)}", param="inputs"
            )
        if not isinstance(sentences, list) or not all(isinstance(t, str) for t in sentences):
            raise errors.validation(f"{what}; sentences is not a list of strings", param="inputs")
        if not sentences:
            raise errors.empty("`inputs.sentences` cannot be empty", param="inputs")
        self._check_batch_size(len(sentences) + 1, "inputs")  # the source counts, as in TEI
        parameters = body.get("parameters")
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            raise errors.validation(
                f"`parameters` must be an object, got {_type_name(parameters)}",
                param="parameters",
            )
        timing.method = "batch"
        vectors = await self._embed([source, *sentences], parameters, timing, EMBED, True)
        vectors = np.asarray(vectors, dtype=np.float64)
        return [float(x) for x in vectors[1:] @ vectors[0]]

    def _scores(self, logits: list[list[float]], raw: bool) -> np.ndarray:
        scores = np.asarray(logits, dtype=np.float64)
        if raw:
            return scores
        function = self.backend.default_function()
        if function == "softmax":
            shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
            return shifted / shifted.sum(axis=-1, keepdims=True)
        if function == "sigmoid":
            return 1.0 / (1.0 + np.exp(-scores))
        return scores

    @staticmethod
    def _predict_inputs(value: Any) -> tuple[list[str | tuple[str, str]], bool]:
        """TEI's forms: "text", ["text", "pair"], or a batch [["text"], ["text", "pair"], ...]."""
        shape = (
            "`inputs` must be a string, a pair [string, string], or a batch of "
            "[string] / [string, string] lists"
        )

        def sequence(item: Any, where: str) -> str | tuple[str, str]:
            if not isinstance(item, list) or not 1 <= len(item) <= 2:
                raise errors.validation(f"{shape}; got {_type_name(item)} {where}")
            for text in item:
                if not isinstance(text, str):
                    raise errors.validation(f"{shape}; got {_type_name(text)} {where}")
            return item[0] if len(item) == 1 else (item[0], item[1])

        if isinstance(value, str):
            return [value], True
        if not isinstance(value, list):
            raise errors.validation(f"{shape}; got {_type_name(value)}")
        if not value:
            raise errors.empty("`inputs` cannot be empty")
        if isinstance(value[0], str):
            return [sequence(value, "")], True
        return [sequence(item, f"at index {i}") for i, item in enumerate(value)], False

    async def predict(self, body: dict, timing: Timing) -> Any:
        self._needs("/predict", ("classifier",))
        inputs, single = self._predict_inputs(body.get("inputs"))
        timing.method = "single" if single else "batch"
        self._check_batch_size(len(inputs), "inputs")
        raw = _bool(body, "raw_scores", False)
        truncate = _bool(body, "truncate", self.settings.auto_truncate)
        seqs = await self._encode(inputs, truncate, _direction(body), timing)
        for s in seqs:
            s.task = CLASSIFY
        scores = self._scores(await self._infer(seqs, timing), raw)
        backend: ClassifierBackend = self.backend  # type: ignore[assignment]
        answers = []
        for row in scores:
            ranked = [{"score": float(s), "label": backend.label(i)} for i, s in enumerate(row)]
            ranked.sort(key=lambda p: p["score"], reverse=True)
            answers.append(ranked)
        return answers[0] if single else answers

    async def rerank(self, body: dict, timing: Timing) -> Any:
        self._needs("/rerank", ("classifier", "embedding"))
        timing.method = "batch"
        query = body.get("query")
        if not isinstance(query, str):
            raise errors.validation(
                f"`query` must be a string, got {_type_name(query)}", param="query"
            )
        texts = body.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise errors.validation("`texts` must be a list of strings", param="texts")
        if not texts:
            raise errors.empty("`texts` cannot be empty", param="texts")
        self._check_batch_size(len(texts), "texts")
        raw = _bool(body, "raw_scores", False)
        return_text = _bool(body, "return_text", False)
        truncate = _bool(body, "truncate", self.settings.auto_truncate)
        direction = _direction(body)
        if self.backend.kind == "classifier":
            backend: ClassifierBackend = self.backend  # type: ignore[assignment]
            if not backend.is_reranker:
                raise errors.backend(
                    f"/rerank needs a cross-encoder (a classifier with one label); "
                    f"{self.model_id!r} has {backend.num_labels} labels (use /predict)",
                    reason="model_type",
                )
            seqs = await self._encode([(query, t) for t in texts], truncate, direction, timing)
            for s in seqs:
                s.task = CLASSIFY
            logits = await self._infer(seqs, timing)
            scores = self._scores(logits, raw)[:, 0]
        else:
            # An embedding model ranks by the cosine similarity of the unit vectors.
            prompt, prompt_length = self._prompt(body)
            inputs = [prompt + t for t in (query, *texts)]
            seqs = await self._encode(inputs, truncate, direction, timing)
            for s in seqs:
                s.task, s.normalize, s.prompt_length = EMBED, True, prompt_length
            vectors = np.asarray(await self._infer(seqs, timing), dtype=np.float64)
            scores = vectors[1:] @ vectors[0]
        ranks = []
        for i, score in enumerate(scores):
            rank: dict[str, Any] = {"index": i, "score": float(score)}
            if return_text:
                rank["text"] = texts[i]
            ranks.append(rank)
        ranks.sort(key=lambda r: r["score"], reverse=True)
        return ranks

    async def tokenize(self, body: dict, timing: Timing) -> Any:
        texts, single = self._texts(body.get("inputs"), "inputs")
        timing.method = "single" if single else "batch"
        add_special = _bool(body, "add_special_tokens", True)
        # The limits of /embed: an input over the model's length is refused or cut.
        truncate = _bool(body, "truncate", self.settings.auto_truncate)
        direction = _direction(body)
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(
            self.tokenizer_pool, self.tokenization.tokens, texts, add_special, truncate, direction
        )
        timing.tokens = sum(len(row) for row in tokens)
        timing.chars = sum(len(t) for t in texts)
        timing.inputs = len(texts)
        return tokens

    async def decode(self, body: dict, timing: Timing) -> Any:
        ids = body.get("ids")
        what = "`ids` must be a list of token ids or a list of such lists"
        if not isinstance(ids, list):
            raise errors.validation(f"{what}, got {_type_name(ids)}", param="ids")
        if not ids:
            raise errors.empty("`ids` cannot be empty", param="ids")
        batch = ids if isinstance(ids[0], list) else [ids]
        timing.method = "batch" if isinstance(ids[0], list) else "single"
        timing.inputs = len(batch)
        self._check_batch_size(len(batch), "ids")
        vocab = len(self.backend.tokenizer)
        for row in batch:
            if not isinstance(row, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in row
            ):
                raise errors.validation(f"{what}, each id an integer in [0, {vocab})", param="ids")
        skip = _bool(body, "skip_special_tokens", True)
        tokenizer = self.backend.tokenizer
        return [tokenizer.decode(row, skip_special_tokens=skip) for row in batch]

    # -- GET routes

    async def health(self, request: Request) -> Response:
        if self.stopping or self.batcher is None or not self.batcher.healthy:
            err = ServeError(503, errors.UNHEALTHY, "the server is stopping or its batcher is down")
            return error_response(err)
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request) -> Response:
        b, s = self.backend, self.settings
        return JSONResponse(
            {
                "model_id": self.model_id,
                "model_dir": str(s.model),
                "model_dtype": str(b.dtype).removeprefix("torch."),
                "model_device": str(b.device),
                "model_type": b.info(),
                "backend": b.backend_name,
                "cuda_graphs": b.uses_cuda_graphs,
                "max_concurrent_requests": s.max_concurrent_requests,
                "max_input_length": b.max_input_length,
                "max_batch_tokens": s.max_batch_tokens,
                "max_batch_requests": s.max_batch_requests,
                "max_client_batch_size": s.max_client_batch_size,
                "payload_limit": s.payload_limit,
                "auto_truncate": s.auto_truncate,
                "tokenization_workers": s.tokenization_workers,
                "max_connections": s.max_connections,
                "timeout_body": s.timeout_body,
                "timeout_graceful_shutdown": s.timeout_graceful_shutdown,
                "timeout_keep_alive": s.timeout_keep_alive,
                "version": __version__,
            }
        )

    async def metrics_route(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "bertfast"}

    async def models(self, request: Request) -> Response:
        """OpenAI's model list: the served names (one model, its aliases)."""
        cards = [self._model_card(name) for name in self.served_names]
        return JSONResponse({"object": "list", "data": cards})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model_id"]
        if name not in self.served_names:
            err = ServeError(
                404,
                errors.NOT_FOUND,
                f"The model `{name}` does not exist; this server serves: "
                + ", ".join(self.served_names),
                param="model",
                code="model_not_found",
            )
            return error_response(err, openai=True)
        return JSONResponse(self._model_card(name))

    # -- the wrapper every POST route goes through

    def endpoint(self, name: str, route: Callable) -> Callable:
        openai = is_openai(route_path(name))

        async def handle(request: Request) -> Response:
            timing = Timing()
            m = self.metrics
            try:
                try:
                    body = parse_body(await request.body())
                    answer = await self._unless_disconnected(request, route(body, timing))
                    response = Answer(answer, headers=timing.headers(self.compute_type))
                finally:
                    # Counted once the route knew the request's shape, as TEI counts after
                    # parsing; the access log reports what the request carried.
                    if timing.method is not None:
                        m.request_count.labels(timing.method).inc()
                    request.scope[ACCESS_KEY] = timing.access()
            except ServeError as err:
                m.request_failure.labels(err.reason).inc()
                return error_response(err, openai)
            except Exception as exc:  # a bug, not the client's doing: still a JSON answer
                logger.exception("%s failed", name)
                m.request_failure.labels(errors.FAILURE_REASONS[errors.INTERNAL]).inc()
                err = ServeError(
                    500, errors.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
                )
                return error_response(err, openai)
            total = time.perf_counter() - timing.start
            m.request_success.labels(timing.method or "batch").inc()
            m.request_duration.observe(total)
            m.tokenization_duration.observe(timing.tokenization)
            m.queue_duration.observe(timing.queue)
            m.inference_duration.observe(timing.inference)
            if timing.task is not None:
                m.observe_inputs(
                    timing.task, len(timing.items), total, timing.tokenization, timing.items
                )
            return response

        handle.__name__ = name
        return handle

    @staticmethod
    async def _unless_disconnected(request: Request, work) -> Any:
        """Run a route's work, cancelling it when the client goes away: cancelling drops its
        queued inputs (the batcher skips cancelled futures), so nobody computes for a
        departed client. The body is read already, so the next receive() is the disconnect."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(request.receive())
        try:
            while not task.done():
                await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
                if task.done() or not watch.done():
                    continue
                if watch.exception() is None and watch.result()["type"] != "http.disconnect":
                    watch = asyncio.ensure_future(request.receive())  # not a disconnect
                    continue
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ServeError(499, errors.DROPPED, "the client closed the connection")
        finally:
            watch.cancel()
            if not task.done():  # this handler was cancelled (shutdown): drop its inputs too
                task.cancel()
        return task.result()


class LimitsMiddleware:
    """Before a route runs: 413 over payload_limit, 408 for a body slower than timeout_body,
    then 429 over max_concurrent_requests.

    A request takes an inference slot only once its whole body has arrived, so slow uploads
    cannot lock real clients out; open connections are bounded apart (uvicorn's
    limit_concurrency, ``max_connections``), and the body deadline frees them.
    """

    def __init__(self, app, router: Router):
        self.app = app
        self.router = router

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in INFERENCE_ROUTES:
            await self.app(scope, receive, send)
            return
        router, s = self.router, self.router.settings
        metrics = router.metrics

        async def refuse(err: ServeError, headers: dict[str, str] | None = None) -> None:
            metrics.request_failure.labels(err.reason).inc()
            await error_response(err, is_openai(path), **(headers or {}))(scope, receive, send)

        router.reading += 1
        metrics.reading.set(router.reading)
        try:
            body = await asyncio.wait_for(
                self._read_body(scope, receive, s.payload_limit), s.timeout_body
            )
        except (asyncio.TimeoutError, TimeoutError):
            body = ServeError(
                408,
                errors.TIMEOUT,
                f"the request body did not arrive within {s.timeout_body:g} s (--timeout-body)",
            )
        finally:
            router.reading -= 1
            metrics.reading.set(router.reading)
        if isinstance(body, ServeError):
            # The rest of an unread body would be taken for the next request: close instead.
            close = {"connection": "close"} if body.status in (408, 413) else None
            await refuse(body, close)
            return
        if router.in_flight >= s.max_concurrent_requests:
            await refuse(
                errors.overloaded(
                    f"model is overloaded: {router.in_flight} requests in flight, at most "
                    f"{s.max_concurrent_requests} (--max-concurrent-requests)"
                )
            )
            router.answered += 1
            return
        router.in_flight += 1
        metrics.in_flight.set(router.in_flight)
        try:
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            router.in_flight -= 1
            router.answered += 1
            metrics.in_flight.set(router.in_flight)

    @staticmethod
    async def _read_body(scope, receive, limit: int) -> bytes | ServeError:
        too_large = lambda size: errors.validation(
            f"payload of {size} bytes is over the limit of {limit} bytes (--payload-limit)",
            status=413,
        )
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                return too_large(int(value))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return errors.validation("the client disconnected", status=400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_large(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class AuthMiddleware:
    """With an API key, every route but /health needs ``Authorization: Bearer <key>``.

    The key is compared in constant time (``hmac.compare_digest``) and never logged or echoed.
    """

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    def authorized(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                # Compared whatever the scheme, so the time does not tell which part was wrong.
                same = hmac.compare_digest(token.strip(), self.key)
                return same and scheme.lower() == b"bearer"
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_ROUTES or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        err = ServeError(
            401,
            errors.UNAUTHORIZED,
            "missing or wrong API key: send the header `Authorization: Bearer <key>`",
            code="invalid_api_key",
        )
        response = error_response(
            err, is_openai(scope.get("path", "")), **{"www-authenticate": "Bearer"}
        )
        await response(scope, receive, send)


class AccessLogMiddleware:
    """One line a request at info level, as TEI logs its spans: method, route, status, time,
    and for inference routes the inputs, tokens and time in each stage (no body, no headers)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not access_logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app fails before it answers

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            fields: dict[str, Any] = {
                "method": scope["method"],
                "route": scope.get("path", ""),
                "status": status,
                "total_time": time.perf_counter() - start,
            }
            fields.update(scope.get(ACCESS_KEY) or {})
            client = scope.get("client")
            if client:
                fields["client"] = f"{client[0]}:{client[1]}"
            access_logger.info(
                "%s %s %s", fields["method"], fields["route"], status, extra={"fields": fields}
            )


def build_app(backend: ModelBackend, settings: ServeSettings):
    """The ASGI app for a loaded backend: Starlette routes inside the limits, API-key and
    access-log middleware."""
    from bertfast.serve.openapi import docs_page, openapi_spec

    router = Router(backend, settings)
    routes = [
        Route(path, router.endpoint(name, getattr(router, name)), methods=["POST"])
        for path, name in INFERENCE_ROUTES.items()
    ]
    spec = openapi_spec(router)
    spec_body = json.dumps(spec).encode()
    page = docs_page(spec)

    async def openapi_json(request: Request) -> Response:
        return Response(spec_body, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(page)

    routes += [
        Route("/health", router.health, methods=["GET"]),
        Route("/info", router.info, methods=["GET"]),
        Route("/metrics", router.metrics_route, methods=["GET"]),
        Route("/v1/models", router.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", router.model, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
    known = ", ".join(sorted([*INFERENCE_ROUTES, *GET_ROUTES[:-1], "/openapi.json", "/docs"]))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {exc.detail}; routes: {known}"
        error_type = errors.NOT_FOUND if exc.status_code == 404 else errors.VALIDATION
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        err = ServeError(exc.status_code, error_type, message, code=code)
        return error_response(err, is_openai(request.url.path))

    app = Starlette(
        routes=routes, lifespan=router.lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.router = router
    outer = LimitsMiddleware(app, router)
    if settings.api_key:
        outer = AuthMiddleware(outer, settings.api_key)
    outer = AccessLogMiddleware(outer)
    outer.router = router  # what tests and the server reach through the wrapped app
    return outer
