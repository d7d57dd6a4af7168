"""Prometheus metrics under the names and labels TEI's router exposes, so TEI dashboards work.

TEI's exporter writes a counter under its own name (``te_request_count``, no ``_total``) and
no ``_created`` series; ``render`` writes the exposition the same way. Series TEI does not
have are named ``bertfast_*``.
"""

from __future__ import annotations

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # pragma: no cover - depends on the install
    from bertfast.serve.errors import missing_extra

    raise missing_extra(exc) from exc

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Powers of two: durations from 61 us to 32 s; sizes up to 4096 inputs and 2**20 tokens.
DURATION_BUCKETS = tuple(2.0**k for k in range(-14, 6))
SIZE_BUCKETS = tuple(2**k for k in range(13))
TOKEN_BUCKETS = tuple(2**k for k in range(21))


def _input_length_buckets(max_input_length: int) -> tuple[int, ...]:
    return tuple(2**k for k in range(21) if 2**k <= max_input_length) or (1,)


class Metrics:
    """Request, per-input, batch and queue metrics; ``render()`` is the /metrics body."""

    def __init__(self, max_input_length: int = 512) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        d = DURATION_BUCKETS

        def histogram(name: str, doc: str, buckets=d) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=r)

        # Per request, as TEI's router: method is "single" (one input) or "batch".
        self.request_count = Counter("te_request_count", "Requests", ["method"], registry=r)
        self.request_success = Counter(
            "te_request_success", "Requests answered", ["method"], registry=r
        )
        self.request_failure = Counter(
            "te_request_failure", "Requests failed, by reason", ["err"], registry=r
        )
        self.request_duration = histogram("te_request_duration", "Request time (s)")
        self.tokenization_duration = histogram(
            "te_request_tokenization_duration", "Tokenization time of a request (s)"
        )
        self.queue_duration = histogram(
            "te_request_queue_duration", "Longest queue wait of a request's inputs (s)"
        )
        self.inference_duration = histogram(
            "te_request_inference_duration", "Model time of a request's batches (s)"
        )
        self.input_tokens = histogram(
            "te_request_input_length", "Tokens per input", _input_length_buckets(max_input_length)
        )
        # Per input, as TEI's inference core: te_embed_* for embeddings, te_predict_* for a
        # classifier's logits.
        self.per_input: dict[str, dict[str, Counter | Histogram]] = {}
        for task in ("embed", "predict"):
            self.per_input[task] = {
                "count": Counter(f"te_{task}_count", f"Inputs queued ({task})", registry=r),
                "success": Counter(f"te_{task}_success", f"Inputs answered ({task})", registry=r),
                "duration": histogram(f"te_{task}_duration", f"Time of an input ({task}, s)"),
                "tokenization": histogram(
                    f"te_{task}_tokenization_duration", f"Tokenization of an input ({task}, s)"
                ),
                "queue": histogram(f"te_{task}_queue_duration", f"Queue wait ({task}, s)"),
                "inference": histogram(
                    f"te_{task}_inference_duration", f"Model time of an input's batch ({task}, s)"
                ),
            }
        self.batch_size = histogram("te_batch_next_size", "Inputs per forward", SIZE_BUCKETS)
        self.batch_tokens = histogram(
            "te_batch_next_tokens",
            "Tokens computed per forward (padded ones included on the padded path)",
            TOKEN_BUCKETS,
        )
        self.queue_size = Gauge("te_queue_size", "Inputs waiting in the queue", registry=r)
        # Ours.
        self.batch_duration = histogram("bertfast_batch_inference_duration", "One forward (s)")
        self.batch_failure = Counter("bertfast_batch_failure", "Forwards that raised", registry=r)
        self.in_flight = Gauge(
            "bertfast_requests_in_flight",
            "Requests with their body in, until answered (bounded by --max-concurrent-requests)",
            registry=r,
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

    def observe_inputs(
        self, task: str, count: int, total: float, tokenization: float, items
    ) -> None:
        """A request's inputs answered: ``task`` "embed" or "predict", ``items`` the queued
        items (their queue and inference times)."""
        m = self.per_input[task]
        m["success"].inc(count)
        for item in items:
            m["duration"].observe(total)
            m["tokenization"].observe(tokenization)
            m["queue"].observe(item.queue_time)
            m["inference"].observe(item.inference_time)

    def render(self) -> bytes:
        """The text exposition, counters under their own names (no ``_total``, no
        ``_created``), as TEI's exporter writes them."""
        lines: list[str] = []
        for family in self.registry.collect():
            kind = family.type
            lines.append(f"# HELP {family.name} {family.documentation}")
            lines.append(f"# TYPE {family.name} {kind}")
            for sample in family.samples:
                name = sample.name
                if name.endswith("_created"):
                    continue
                if kind == "counter" and name.endswith("_total"):
                    name = family.name
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
                text = f"{name}{{{labels}}}" if labels else name
                lines.append(f"{text} {floatToGoString(sample.value)}")
        return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


__all__ = ["CONTENT_TYPE", "Metrics"]
