"""What ``bertfast serve`` is started with: model, device and the router's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from bertfast.weights import DEFAULT_MODEL


@dataclass
class ServeSettings:
    """Defaults are TEI's (512 concurrent requests, 32 inputs a request, 2,000,000-byte bodies,
    16384 tokens a batch); the timeouts and the connection bound are ours (TEI has none; uvicorn
    waits forever on shutdown by default)."""

    model: str = DEFAULT_MODEL
    model_id: str | None = None  # the name /info and /v1/embeddings report
    host: str = "127.0.0.1"
    port: int = 8080
    device: str = "cpu"
    dtype: str | None = None  # fp32, fp16, bf16 (None: fp32)
    quantize: str | None = None  # int8: the encoder's GEMMs in int8 (CPU)
    backend: str = "auto"
    max_concurrent_requests: int = 512
    max_batch_tokens: int = 16384
    max_batch_requests: int | None = None  # None: only the token budget bounds a batch
    max_client_batch_size: int = 32
    payload_limit: int = 2_000_000
    auto_truncate: bool = False  # the default of ``truncate`` when a request leaves it out
    tokenization_workers: int = 2
    cuda_graphs: str = "auto"  # auto (on for CUDA devices), on, off
    num_threads: int | None = None  # torch's intra-op threads (None: torch's default)
    log_level: str = "info"  # TEI's default: one access line a request
    log_format: str = "text"  # text, or json (one object a line, for log shippers)
    # Every route but /health needs ``Authorization: Bearer <api_key>``; kept out of repr()
    # so it cannot reach a log line.
    api_key: str | None = field(default=None, repr=False)
    # Names /v1/embeddings and /v1/models answer to (None: the model id alone).
    served_model_names: list[str] | None = None
    # Seconds from a request's headers to the last byte of its body; a slower upload is
    # answered 408, so a trickling client holds neither a connection nor shutdown for long.
    timeout_body: float = 30.0
    # Seconds SIGTERM waits for requests in progress before cancelling them: under the 30 s
    # after which Kubernetes (by default) kills a pod, so the server still exits by itself.
    timeout_graceful_shutdown: float = 20.0
    timeout_keep_alive: float = 5.0  # an idle keep-alive connection closes after it (uvicorn's)
    # Open connections at once (uvicorn's limit_concurrency; more are answered 503), apart from
    # max_concurrent_requests, which bounds requests whose body has arrived.
    max_connections: int = 1000

    def check(self) -> None:
        """Raise ValueError naming any limit that is out of range."""
        positive = {
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_batch_tokens": self.max_batch_tokens,
            "max_client_batch_size": self.max_client_batch_size,
            "payload_limit": self.payload_limit,
            "tokenization_workers": self.tokenization_workers,
            "max_connections": self.max_connections,
        }
        if self.max_batch_requests is not None:
            positive["max_batch_requests"] = self.max_batch_requests
        if self.num_threads is not None:
            positive["num_threads"] = self.num_threads
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        timeouts = {
            "timeout_body": self.timeout_body,
            "timeout_graceful_shutdown": self.timeout_graceful_shutdown,
            "timeout_keep_alive": self.timeout_keep_alive,
        }
        for name, value in timeouts.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0: any free port), got {self.port}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")
        if self.api_key is not None and (not self.api_key or self.api_key != self.api_key.strip()):
            raise ValueError("api_key must be non-empty, without surrounding whitespace")
        if self.served_model_names is not None and not all(self.served_model_names):
            raise ValueError("served_model_names cannot hold an empty name")
        if self.cuda_graphs not in ("auto", "on", "off"):
            raise ValueError(f"cuda_graphs must be auto, on or off, got {self.cuda_graphs!r}")
