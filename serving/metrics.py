"""Prometheus metrics of one serving replica, exposed at `GET /metrics`.

A registry of our own (not the process default) so Ray's and MLflow's collectors stay out
of the scrape and tests can read the values back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class ServingMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "driftloop_requests",
            "Predict requests answered.",
            ["model_version", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "driftloop_request_latency_seconds",
            "Time in the replica from validated request to answer.",
            ["model_version", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "driftloop_batch_rows", "Rows per model call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.swaps = Counter(
            "driftloop_model_swaps",
            "Model loads by alias and outcome.",
            ["alias", "outcome"],
            registry=r,
        )
        self.swap_seconds = Gauge(
            "driftloop_last_swap_seconds",
            "Alias change seen to first answer from the new version.",
            registry=r,
        )
        self.canary_weight = Gauge(
            "driftloop_canary_weight", "Share of traffic sent to the challenger.", registry=r
        )
        self.shadow = Gauge("driftloop_shadow_mode", "1 when shadow mode is on.", registry=r)
        self.alerts = Counter(
            "driftloop_serving_alerts", "Events needing a person, by kind.", ["kind"], registry=r
        )
        self.unseen = Counter(
            "driftloop_unseen_categories",
            "Answered instances whose categorical feature had a value training never saw.",
            ["feature"],
            registry=r,
        )
        self.shed = Counter(
            "driftloop_shed_requests",
            "Requests answered 503 with Retry-After because the replica was full, by reason.",
            ["reason"],
            registry=r,
        )
        self.log_dropped = Counter(
            "driftloop_prediction_log_dropped",
            "Records dropped because the log queue was full or a write failed.",
            ["kind"],
            registry=r,
        )
        cache = Counter(
            "driftloop_prediction_cache",
            "Instances looked up in the prediction cache, by outcome (hit or miss).",
            ["outcome"],
            registry=r,
        )
        self.cache_hits, self.cache_misses = cache.labels("hit"), cache.labels("miss")
        ingress = Counter(
            "driftloop_predict_ingress",
            "Predict requests by who read them: the fast path (`serving/fast_ingress.py`), or "
            "FastAPI (a body the fast path could not take, any refusal).",
            ["path"],
            registry=r,
        )
        self.ingress = {True: ingress.labels("fast"), False: ingress.labels("fastapi")}
        self.cache_entries = Gauge(
            "driftloop_prediction_cache_entries",
            "Answers the prediction cache holds (expired ones until the next store).",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
