"""Monitoring numbers as Prometheus gauges, pushed to a Pushgateway.

Drift share and live accuracy are computed by Dagster runs that come and go, so Prometheus
cannot scrape them; the Pushgateway keeps each monitor's last values for it (Prometheus'
documented pattern for batch jobs). One group per monitor, so the two never overwrite each
other.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

JOB = "driftloop"
DRIFT_SHARE = "driftloop_drift_share"
LIVE_ACCURACY = "driftloop_live_accuracy"


def push_drift_share(url: str, share: float) -> None:
    registry = CollectorRegistry()
    Gauge(
        DRIFT_SHARE,
        "Share of features Evidently finds drifted in recent traffic.",
        registry=registry,
    ).set(share)
    _push(url, "feature_drift", registry)


def push_live_accuracy(url: str, accuracy_by_version: Mapping[str, float]) -> None:
    registry = CollectorRegistry()
    gauge = Gauge(
        LIVE_ACCURACY,
        "Accuracy of served predictions against later feedback, per model version.",
        ["model_version"],
        registry=registry,
    )
    for version, accuracy in accuracy_by_version.items():
        gauge.labels(version).set(accuracy)
    _push(url, "live_quality", registry)


def _push(url: str, monitor: str, registry: CollectorRegistry) -> None:
    push_to_gateway(url, job=JOB, grouping_key={"monitor": monitor}, registry=registry, timeout=5)
