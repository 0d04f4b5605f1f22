"""What the server counts, in Prometheus' format: requests and errors by route and status, texts, batch sizes, and
where a request's time goes (waiting in the queue, tokenising, the encoder and head). One registry per app, so that
tests and several apps in one process never share counters."""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
TEXTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("serve_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.errors = Counter("serve_errors", "Requests answered with a 4xx or 5xx", ["route", "status"], registry=r)
        self.texts = Counter("serve_texts", "Texts classified or embedded", registry=r)
        self.request_seconds = Histogram("serve_request_seconds", "Request latency, arrival to answer", ["route"],
                                         buckets=SECONDS, registry=r)
        self.queue_seconds = Histogram("serve_queue_seconds", "Time a request waited for its batch", buckets=SECONDS,
                                       registry=r)
        self.tokenize_seconds = Histogram("serve_tokenize_seconds", "Tokenising a request (to fill batches)",
                                          buckets=SECONDS, registry=r)
        self.inference_seconds = Histogram("serve_inference_seconds", "Encoder and head time of one batch",
                                           buckets=SECONDS, registry=r)
        self.batch_texts = Histogram("serve_batch_texts", "Texts per batch", buckets=TEXTS, registry=r)
        self.batch_requests = Histogram("serve_batch_requests", "Requests merged into one batch", buckets=TEXTS,
                                        registry=r)
        self.queued = Gauge("serve_queued_requests", "Requests waiting or in the running batch", registry=r)

    def answered(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
