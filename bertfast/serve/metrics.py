"""Prometheus metrics under TEI's names (``te_*``), on a registry of the app's own."""

from __future__ import annotations

try:
    from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ImportError as exc:  # pragma: no cover - depends on the install
    from bertfast.serve.errors import missing_extra

    raise missing_extra(exc) from exc

# Seconds: from well under a millisecond (a short text on a GPU) to tens of seconds.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class Metrics:
    """Request, batch and queue metrics; ``render()`` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_count = Counter(
            "te_request_count", "Requests received", ["method"], registry=r
        )
        self.request_success = Counter(
            "te_request_success", "Requests answered successfully", ["method"], registry=r
        )
        self.request_failure = Counter(
            "te_request_failure", "Requests answered with an error", ["err"], registry=r
        )
        self.request_duration = Histogram(
            "te_request_duration", "Total request time (s)", buckets=DURATION_BUCKETS, registry=r
        )
        self.tokenization_duration = Histogram(
            "te_request_tokenization_duration",
            "Tokenization time per request (s)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "te_request_queue_duration",
            "Time a request's inputs waited in the queue (s)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "te_request_inference_duration",
            "Model time of a request's batch (s)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "te_request_input_length", "Tokens per input", buckets=TOKEN_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "te_batch_next_size", "Inputs per forward", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "te_batch_next_tokens",
            "Tokens computed per forward (padded ones included on the padded path)",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "te_batch_inference_duration",
            "Time of one forward (s)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.batch_failure = Counter("te_batch_failure", "Forwards that raised", registry=r)
        self.queue_size = Gauge("te_queue_size", "Inputs waiting in the queue", registry=r)
        self.in_flight = Gauge(
            "te_requests_in_flight", "Inference requests being handled", registry=r
        )
        self.reading = Gauge(
            "bertfast_requests_reading",
            "Requests whose body is still arriving (they hold no inference slot)",
            registry=r,
        )

    def observe_batch(self, size: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_tokens.observe(tokens)
        self.batch_duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "Metrics"]
