"""Monitoring numbers as Prometheus gauges, pushed to a Pushgateway.

Drift share, null share and live quality are computed by Dagster runs that come and go, so
Prometheus cannot scrape them; the Pushgateway keeps each monitor's last values for it
(Prometheus' documented pattern for batch jobs). One group per monitor, so the two never
overwrite each other; a push replaces its whole group, so each monitor pushes all of its
gauges at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

JOB = "driftloop"
DRIFT_SHARE = "driftloop_drift_share"
NULL_SHARE = "driftloop_null_share"
LIVE_ACCURACY = "driftloop_live_accuracy"
LIVE_METRIC = "driftloop_live_metric"
ESTIMATED_ACCURACY = "driftloop_estimated_accuracy"


def push_feature_drift(url: str, share: float, null_share: Mapping[str, float]) -> None:
    """The drift monitor's verdict: drifted share of features, null share per feature."""
    registry = CollectorRegistry()
    Gauge(
        DRIFT_SHARE,
        "Share of features Evidently finds drifted in recent traffic.",
        registry=registry,
    ).set(share)
    nulls = Gauge(
        NULL_SHARE,
        "Share of recent served values that are missing, per feature.",
        ["feature"],
        registry=registry,
    )
    for feature, value in null_share.items():
        nulls.labels(feature).set(value)
    _push(url, "feature_drift", registry)


def push_live_quality(
    url: str,
    metric: str,
    accuracy: Mapping[str, float],
    score: Mapping[str, float],
    estimated: Mapping[str, float],
) -> None:
    """Accuracy and the primary metric (`metric`) per model version, and the accuracy
    estimated without labels."""
    registry = CollectorRegistry()
    _per_version(
        registry,
        LIVE_ACCURACY,
        "Accuracy of served predictions against later feedback, per model version.",
        accuracy,
    )
    scores = Gauge(
        LIVE_METRIC,
        "The primary metric of served predictions against later feedback, per model version.",
        ["model_version", "metric"],
        registry=registry,
    )
    for version, value in score.items():
        scores.labels(version, metric).set(value)
    _per_version(
        registry,
        ESTIMATED_ACCURACY,
        "Accuracy of served predictions estimated from calibrated confidence, without labels.",
        estimated,
    )
    _push(url, "live_quality", registry)


def _per_version(
    registry: CollectorRegistry, name: str, documentation: str, values: Mapping[str, float]
) -> None:
    gauge = Gauge(name, documentation, ["model_version"], registry=registry)
    for version, value in values.items():
        gauge.labels(version).set(value)


def _push(url: str, monitor: str, registry: CollectorRegistry) -> None:
    push_to_gateway(url, job=JOB, grouping_key={"monitor": monitor}, registry=registry, timeout=5)
