"""Run the app on uvicorn: bind, announce, and stop gracefully on SIGTERM / SIGINT."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading

from bertfast.serve.errors import missing_extra
from bertfast.serve.settings import ServeSettings

try:
    import uvicorn
except ImportError as exc:  # pragma: no cover - depends on the install
    raise missing_extra(exc) from exc

READY = "bertfast serve: listening on"
STOPPED = "bertfast serve: stopped;"


class GracefulServer(uvicorn.Server):
    """uvicorn's server, but a SIGTERM / SIGINT is a normal stop (exit 0), not re-raised.

    On the signal uvicorn stops accepting connections, lets every request already
    received finish, then runs the app's shutdown (which drains the batcher).
    """

    def __init__(self, config: uvicorn.Config, on_ready=None, on_signal=None):
        super().__init__(config)
        self._on_ready = on_ready
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        if self._on_signal is not None:
            self._on_signal()

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0), so asyncio sets TCP_NODELAY on accepted connections: without
    # it the body write waits behind the header write for the client's delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def build_server(app, settings: ServeSettings, on_ready=None, on_signal=None) -> GracefulServer:
    """The uvicorn server for ``app`` with the settings' timeouts and connection bound."""
    from bertfast.serve.logs import log_config

    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level, settings.log_format),
        access_log=False,  # the app logs each request itself (AccessLogMiddleware)
        lifespan="on",
        # Requests in progress get this long after a signal; then they are cancelled.
        timeout_graceful_shutdown=settings.timeout_graceful_shutdown,
        timeout_keep_alive=settings.timeout_keep_alive,
        # uvicorn counts the arriving connection too: with N it serves N - 1.
        limit_concurrency=settings.max_connections + 1,
    )
    return GracefulServer(config, on_ready=on_ready, on_signal=on_signal)


def serve(settings: ServeSettings) -> int:
    """Load the model, serve until a signal, return 0 once every accepted request is answered."""
    import torch

    from bertfast.serve.app import build_app
    from bertfast.serve.backend import load_backend

    settings.check()
    # Requests are tokenized a few texts at a time on the server's own worker threads; the
    # tokenizer's rayon pool would only add spinning threads on the cores the model needs.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, None: None}
    if settings.dtype not in dtypes:
        raise ValueError(f"unknown dtype {settings.dtype!r}; choose one of fp32, fp16, bf16")
    # Bound before the model loads, so a taken port fails at once; nobody can connect until
    # uvicorn listens on it.
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        raise RuntimeError(f"cannot bind {settings.host}:{settings.port}: {exc.strerror}") from None
    backend = load_backend(
        settings.model,
        device=settings.device,
        dtype=dtypes[settings.dtype],
        backend=settings.backend,
        quantize=settings.quantize,
        cuda_graphs=settings.cuda_graphs,
    )
    app = build_app(backend, settings)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host

    def say(message: str) -> None:
        # On stdout whatever the log level, so scripts can wait for it; a JSON object in json
        # format, so a log shipper reads every line.
        if settings.log_format == "json":
            message = json.dumps({"level": "INFO", "target": "bertfast.serve", "message": message})
        print(message, flush=True)

    def announce() -> None:
        say(
            f"{READY} http://{url_host}:{port} ({backend.kind} model {settings.model}, "
            f"{backend.device}, {backend.backend_name} backend)"
        )

    def draining() -> None:  # /health answers 503 from the signal on
        app.router.stopping = True

    server = build_server(app, settings, on_ready=announce, on_signal=draining)
    server.run(sockets=[sock])  # on uvicorn's choice of event loop (uvloop when installed)
    if not server.started:
        print("bertfast serve: the server did not start", file=sys.stderr)
        return 1
    answered = app.router.answered
    say(f"{STOPPED} {answered} inference requests answered")
    return 0
