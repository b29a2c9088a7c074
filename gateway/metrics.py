"""Prometheus metrics, in a registry of their own (one per app, so tests do not share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "memefly_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "memefly_request_seconds",
            "HTTP request latency by route and status",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decoder_rows = Histogram(
            "memefly_decoder_batch_rows", "Rows (beams) per decoder step call", buckets=_ROW_BUCKETS, registry=r
        )
        self.encoder_images = Histogram(
            "memefly_encoder_batch_images", "Images per encoder call", buckets=_ROW_BUCKETS[:7], registry=r
        )
        self.searches = Gauge("memefly_decoder_searches", "Searches (requests' decodes) in flight", registry=r)
        self.queue = Gauge("memefly_encoder_queue", "Images waiting for an encoder call", registry=r)
        self.refused = Counter(
            "memefly_admission_refused",
            "requests refused at once (503) by admission control, by the queue that would have made them late",
            ["queue"],
            registry=r,
        )
        self.cache_hits = Counter("memefly_template_cache_hits", "template_probs served from the cache", registry=r)
        self.cache_misses = Counter(
            "memefly_template_cache_misses", "template_probs computed by the encoder", registry=r
        )
        self.ready = Gauge("memefly_ready", "1 when the gateway can serve", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
