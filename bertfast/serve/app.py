"""The router: TEI's routes, request validation, limits, errors and response headers.

Every error is ``{"error": ..., "error_type": ...}`` with TEI's error types:

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
===========================================================  ======  ===========
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the install
    from bertfast.serve.errors import missing_extra

    raise missing_extra(exc) from exc

import bertfast
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

logger = logging.getLogger("bertfast.serve")

# POST routes that count against max_concurrent_requests and payload_limit.
INFERENCE_ROUTES = {
    "/embed": "embed",
    "/embed_all": "embed_all",
    "/v1/embeddings": "openai_embed",
    "/predict": "predict",
    "/rerank": "rerank",
    "/tokenize": "tokenize",
    "/decode": "decode",
}


def error_response(err: ServeError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


class Timing:
    """What the response headers report (milliseconds, as TEI)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.tokenization = self.queue = self.inference = 0.0
        self.tokens = self.chars = 0

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
        raise errors.validation(f"`{key}` must be a boolean, got {_type_name(value)}")
    return value


def _direction(body: dict) -> str:
    value = body.get("truncation_direction")
    if value is None:
        return "right"
    if not isinstance(value, str) or value.lower() not in DIRECTIONS:
        raise errors.validation(
            f"`truncation_direction` must be 'left' or 'right' (any case), got {value!r}"
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
        body = json.loads(raw)
    except RecursionError:
        raise errors.validation("malformed JSON body: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.validation(f"malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise errors.validation(f"the body must be a JSON object, got {_type_name(body)}")
    # A lone surrogate can only come from a \uD800-\uDFFF escape: skip the walk without one.
    if b"\\ud" in raw or b"\\uD" in raw:
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
        self.metrics = Metrics()
        self.tokenization = Tokenization(backend.tokenizer, backend.max_input_length)
        self.model_id = settings.model_id or str(settings.model).rstrip("/").split("/")[-1]
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
        if value is None:
            raise errors.validation(f"`{key}` is required: a string or a list of strings")
        if not isinstance(value, list):
            raise errors.validation(
                f"`{key}` must be a string or a list of strings, got {_type_name(value)}"
            )
        if not value:
            raise errors.empty(f"`{key}` cannot be empty")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise errors.validation(
                    f"`{key}` must be a string or a list of strings, got {_type_name(item)} "
                    f"at index {i}"
                )
        self._check_batch_size(len(value))
        return value, False

    def _check_batch_size(self, count: int) -> None:
        limit = self.settings.max_client_batch_size
        if count > limit:
            raise errors.validation(
                f"batch size {count} > maximum allowed batch size {limit} (--max-client-batch-size)"
            )

    def _needs(self, route: str, kinds: tuple[str, ...]) -> None:
        if self.backend.kind not in kinds:
            hint = "/predict or /rerank" if self.backend.kind == "classifier" else "/embed"
            raise errors.backend(
                f"{route} needs a model of kind {' or '.join(kinds)}; {self.model_id!r} is of "
                f"kind {self.backend.kind} (use {hint})"
            )

    async def _encode(
        self, texts: list, truncate: bool, direction: str, timing: Timing
    ) -> list[Sequence]:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        encoded = await loop.run_in_executor(
            self.tokenizer_pool, self.tokenization.encode, texts, truncate, direction
        )
        timing.tokenization = time.perf_counter() - start
        timing.tokens = sum(len(e.ids) for e in encoded)
        timing.chars = sum(e.chars for e in encoded)
        for e in encoded:
            self.metrics.input_tokens.observe(len(e.ids))
        return [Sequence("", e.ids, e.type_ids) for e in encoded]

    async def _infer(self, seqs: list[Sequence], timing: Timing) -> list[Any]:
        if self.batcher is None or not self.batcher.healthy:
            raise ServeError(503, errors.UNHEALTHY, "the batcher is not running")
        items = self.batcher.submit(seqs)
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
            raise errors.validation(f"`prompt_name` must be a string, got {_type_name(name)}")
        try:
            prompt = self.backend.prompt(name)
        except KeyError:
            known = sorted(self.backend.prompts)
            raise errors.validation(
                f"`prompt_name` {name!r} is not one of this model's prompts {known}"
            ) from None
        return (prompt, self.backend.prompt_length(prompt)) if prompt else ("", None)

    async def _embed(
        self, texts: list[str], body: dict, timing: Timing, task: str, normalize: bool
    ) -> list[Any]:
        truncate = _bool(body, "truncate", self.settings.auto_truncate)
        prompt, prompt_length = self._prompt(body)
        if prompt:
            texts = [prompt + t for t in texts]
        seqs = await self._encode(texts, truncate, _direction(body), timing)
        for s in seqs:
            s.task, s.normalize, s.prompt_length = task, normalize, prompt_length
        return await self._infer(seqs, timing)

    # -- routes: each takes the parsed body and returns the JSON answer

    async def embed(self, body: dict, timing: Timing) -> Any:
        self._needs("/embed", ("embedding",))
        texts, _ = self._texts(body.get("inputs"), "inputs")
        normalize = _bool(body, "normalize", True)
        return await self._embed(texts, body, timing, EMBED, normalize)

    async def embed_all(self, body: dict, timing: Timing) -> Any:
        self._needs("/embed_all", ("embedding",))
        texts, _ = self._texts(body.get("inputs"), "inputs")
        return await self._embed(texts, body, timing, EMBED_ALL, False)

    async def openai_embed(self, body: dict, timing: Timing) -> Any:
        self._needs("/v1/embeddings", ("embedding",))
        texts, _ = self._texts(body.get("input"), "input")
        fmt = body.get("encoding_format")
        fmt = "float" if fmt is None else fmt
        if fmt not in ("float", "base64"):
            raise errors.validation(f"`encoding_format` must be 'float' or 'base64', got {fmt!r}")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise errors.validation(f"`model` must be a string, got {_type_name(model)}")
        dims = body.get("dimensions")
        if dims is not None and dims != self.backend.hidden_size:
            raise errors.validation(
                f"`dimensions` {dims!r} is not supported: this model gives "
                f"{self.backend.hidden_size} (leave it out)"
            )
        vectors = await self._embed(texts, body, timing, EMBED, True)
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
            "model": model or self.model_id,
            "usage": {"prompt_tokens": timing.tokens, "total_tokens": timing.tokens},
        }

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
        self._check_batch_size(len(inputs))
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
        query = body.get("query")
        if not isinstance(query, str):
            raise errors.validation(f"`query` must be a string, got {_type_name(query)}")
        texts = body.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise errors.validation("`texts` must be a list of strings")
        if not texts:
            raise errors.empty("`texts` cannot be empty")
        self._check_batch_size(len(texts))
        raw = _bool(body, "raw_scores", False)
        return_text = _bool(body, "return_text", False)
        truncate = _bool(body, "truncate", self.settings.auto_truncate)
        direction = _direction(body)
        if self.backend.kind == "classifier":
            backend: ClassifierBackend = self.backend  # type: ignore[assignment]
            if not backend.is_reranker:
                raise errors.backend(
                    f"/rerank needs a cross-encoder (a classifier with one label); "
                    f"{self.model_id!r} has {backend.num_labels} labels (use /predict)"
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
        texts, _ = self._texts(body.get("inputs"), "inputs")
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
        return tokens

    async def decode(self, body: dict, timing: Timing) -> Any:
        ids = body.get("ids")
        what = "`ids` must be a list of token ids or a list of such lists"
        if not isinstance(ids, list):
            raise errors.validation(f"{what}, got {_type_name(ids)}")
        if not ids:
            raise errors.empty("`ids` cannot be empty")
        batch = ids if isinstance(ids[0], list) else [ids]
        self._check_batch_size(len(batch))
        vocab = len(self.backend.tokenizer)
        for row in batch:
            if not isinstance(row, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in row
            ):
                raise errors.validation(f"{what}, each id an integer in [0, {vocab})")
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
                "version": bertfast.__version__,
            }
        )

    async def metrics_route(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    # -- the wrapper every POST route goes through

    def endpoint(self, name: str, route: Callable) -> Callable:
        async def handle(request: Request) -> Response:
            timing = Timing()
            self.metrics.request_count.labels(name).inc()
            try:
                body = parse_body(await request.body())
                answer = await self._unless_disconnected(request, route(body, timing))
                response = JSONResponse(answer, headers=timing.headers(self.compute_type))
            except ServeError as err:
                self.metrics.request_failure.labels(err.error_type).inc()
                return error_response(err)
            except Exception as exc:  # a bug, not the client's doing: still a JSON answer
                logger.exception("%s failed", name)
                self.metrics.request_failure.labels("Internal").inc()
                err = ServeError(500, "Internal", f"internal error: {type(exc).__name__}: {exc}")
                return error_response(err)
            m = self.metrics
            m.request_success.labels(name).inc()
            m.request_duration.observe(time.perf_counter() - timing.start)
            m.tokenization_duration.observe(timing.tokenization)
            m.queue_duration.observe(timing.queue)
            m.inference_duration.observe(timing.inference)
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
            metrics.request_count.labels(INFERENCE_ROUTES[path]).inc()
            metrics.request_failure.labels(err.error_type).inc()
            response = error_response(err)
            response.headers.update(headers or {})
            await response(scope, receive, send)

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


def build_app(backend: ModelBackend, settings: ServeSettings):
    """The ASGI app for a loaded backend: Starlette routes wrapped in the limits middleware."""
    router = Router(backend, settings)
    routes = [
        Route(path, router.endpoint(name, getattr(router, name)), methods=["POST"])
        for path, name in INFERENCE_ROUTES.items()
    ]
    routes += [
        Route("/health", router.health, methods=["GET"]),
        Route("/info", router.info, methods=["GET"]),
        Route("/metrics", router.metrics_route, methods=["GET"]),
    ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        known = ", ".join(sorted([*INFERENCE_ROUTES, "/health", "/info", "/metrics"]))
        message = f"{request.method} {request.url.path}: {exc.detail}; routes: {known}"
        return JSONResponse(
            {"error": message, "error_type": errors.VALIDATION}, status_code=exc.status_code
        )

    app = Starlette(
        routes=routes, lifespan=router.lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.router = router
    return LimitsMiddleware(app, router)
