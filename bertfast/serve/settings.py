"""What ``bertfast serve`` is started with: model, device and the router's limits."""

from __future__ import annotations

from dataclasses import dataclass

from bertfast.weights import DEFAULT_MODEL


@dataclass
class ServeSettings:
    """Defaults are TEI's (512 concurrent requests, 32 inputs a request, 2,000,000-byte bodies,
    16384 tokens a batch)."""

    model: str = DEFAULT_MODEL
    model_id: str | None = None  # the name /info and /v1/embeddings report
    host: str = "127.0.0.1"
    port: int = 8080
    device: str = "cpu"
    dtype: str | None = None  # fp32, fp16, bf16 (None: fp32)
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
    log_level: str = "warning"

    def check(self) -> None:
        """Raise ValueError naming any limit that is out of range."""
        positive = {
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_batch_tokens": self.max_batch_tokens,
            "max_client_batch_size": self.max_client_batch_size,
            "payload_limit": self.payload_limit,
            "tokenization_workers": self.tokenization_workers,
        }
        if self.max_batch_requests is not None:
            positive["max_batch_requests"] = self.max_batch_requests
        if self.num_threads is not None:
            positive["num_threads"] = self.num_threads
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0: any free port), got {self.port}")
        if self.cuda_graphs not in ("auto", "on", "off"):
            raise ValueError(f"cuda_graphs must be auto, on or off, got {self.cuda_graphs!r}")
