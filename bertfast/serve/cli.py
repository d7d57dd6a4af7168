"""``bertfast serve``: registered by bertfast.cli; the web stack is imported only when run."""

from __future__ import annotations

import argparse
import os

from bertfast.cli_options import add_model_arguments, add_num_threads_option, default_device
from bertfast.serve.settings import ServeSettings
from bertfast.weights import DEFAULT_MODEL


def cmd_serve(args: argparse.Namespace) -> int:
    from bertfast.serve.server import serve

    settings = ServeSettings(
        model=args.model,
        model_id=args.model_id,
        host=args.host,
        port=args.port,
        device=default_device(args.device),
        dtype=args.dtype,
        quantize=args.quantize,
        backend=args.backend,
        max_concurrent_requests=args.max_concurrent_requests,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_requests=args.max_batch_requests,
        max_client_batch_size=args.max_client_batch_size,
        payload_limit=args.payload_limit,
        auto_truncate=args.auto_truncate,
        tokenization_workers=args.tokenization_workers,
        cuda_graphs=args.cuda_graphs,
        num_threads=args.num_threads,
        log_level=args.log_level,
        timeout_body=args.timeout_body,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        timeout_keep_alive=args.timeout_keep_alive,
        max_connections=args.max_connections,
        log_format=args.log_format,
        # An empty --api-key (e.g. "$KEY" with KEY unset) reaches the settings' check and is
        # refused there; it must not mean "no key".
        api_key=args.api_key if args.api_key is not None else os.environ.get("API_KEY") or None,
        served_model_names=args.served_model_name,
    )
    return serve(settings)


def register(subparsers) -> None:
    d = ServeSettings()
    p = subparsers.add_parser(
        "serve",
        help="a TEI-compatible HTTP server: /embed, /predict, /rerank, /v1/embeddings ...",
        description="Serve a model over HTTP with text-embeddings-inference's routes and limits. "
        "Loopback only unless --host says otherwise.",
    )
    add_model_arguments(p, DEFAULT_MODEL)
    p.add_argument("--model-id", default=None, help="name reported by /info (default: dir name)")
    p.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="names /v1/embeddings and /v1/models answer to; the first is reported "
        "(default: the model id)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health (default: the "
        "API_KEY environment variable, which keeps the key out of the process list)",
    )
    p.add_argument("--host", default=d.host, help=f"address to bind (default: {d.host})")
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port (printed)")
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=d.max_concurrent_requests,
        help="inference requests in flight at once; more are answered 429",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=d.max_batch_tokens,
        help="tokens one forward computes at most (padding counted on the padded path)",
    )
    p.add_argument(
        "--max-batch-requests", type=int, default=None, help="inputs a forward (default: no limit)"
    )
    p.add_argument(
        "--max-client-batch-size",
        type=int,
        default=d.max_client_batch_size,
        help="inputs one request may carry; more are answered 422",
    )
    p.add_argument(
        "--payload-limit",
        type=int,
        default=d.payload_limit,
        help="request body bytes; larger bodies are answered 413",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help=f"open connections at once, busy or idle; more are answered 503 (default: "
        f"{d.max_connections})",
    )
    p.add_argument(
        "--timeout-body",
        type=float,
        default=d.timeout_body,
        metavar="SECONDS",
        help="time from a request's headers to the end of its body; slower uploads are "
        f"answered 408 (default: {d.timeout_body:g})",
    )
    p.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=d.timeout_graceful_shutdown,
        metavar="SECONDS",
        help="on SIGTERM / SIGINT, time given to requests in progress before they are "
        f"cancelled (default: {d.timeout_graceful_shutdown:g})",
    )
    p.add_argument(
        "--timeout-keep-alive",
        type=float,
        default=d.timeout_keep_alive,
        metavar="SECONDS",
        help=f"an idle keep-alive connection is closed after this (default: "
        f"{d.timeout_keep_alive:g}, uvicorn's)",
    )
    p.add_argument(
        "--auto-truncate",
        action="store_true",
        help="truncate over-long inputs when a request does not say (default: refuse them)",
    )
    p.add_argument(
        "--tokenization-workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="threads that tokenize requests, off the event loop",
    )
    p.add_argument(
        "--cuda-graphs",
        choices=("auto", "on", "off"),
        default=d.cuda_graphs,
        help="replay CUDA graphs on CUDA (auto: when the model can); off: run eagerly",
    )
    add_num_threads_option(p)
    p.add_argument(
        "--log-level",
        default=d.log_level,
        choices=("critical", "error", "warning", "info"),
        help=f"log level; info logs one access line a request (default: {d.log_level})",
    )
    p.add_argument(
        "--log-format",
        default=d.log_format,
        choices=("text", "json"),
        help="text lines, or one JSON object a line for log shippers (default: text)",
    )
    p.set_defaults(func=cmd_serve)
