"""Real tables, by configuration alone: ingest → train → register → serve over HTTP →
feedback, for datasets that ship inside scikit-learn and river.

Each dataset gets a home of its own; one local Ray instance serves each home's champion in
turn. The champion must score within a few points of a plain scikit-learn model fitted on
the same split, and the served answers must be the registered pipeline's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.data import BatchStore, TrainingSet
from driftloop.metrics import metric_named
from driftloop.registry import CHAMPION, Registry
from driftloop.schema import DatasetSchema, load_schema
from driftloop.settings import Settings, load_settings
from driftloop.training import TRUSTED_TYPES
from serving import launch
from serving.app import ServeArgs
from tests.conftest import FAST_ENV, train
from tests.datasets import (
    TARGET,
    breast_cancer,
    phishing,
    plain_output,
    wine,
    with_gaps,
    with_roles,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The smallest of these tables has 36 holdout rows: one answer is 2.8 points of accuracy.
TOLERANCE = 0.04


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], pd.DataFrame]
    env: dict[str, str]


def _gappy_cancer() -> pd.DataFrame:
    frame = breast_cancer()
    gaps = ["mean_radius", "mean_texture", "worst_area", "worst_smoothness"]
    return with_roles(with_gaps(frame, gaps, share=0.15, seed=1), seed=2)


CASES = [
    Case(
        "breast_cancer_gaps_roles",
        _gappy_cancer,
        {"DRIFTLOOP_ID_COLUMNS": "case_id", "DRIFTLOOP_TIMESTAMP_COLUMN": "seen_at"},
    ),
    Case("wine", wine, {}),
    Case("phishing", phishing, {"DRIFTLOOP_METRIC": "roc_auc"}),
]


@pytest.fixture(scope="module")
def serve_port() -> Iterator[int]:
    """One port for the module's Ray instance, which serves each home in turn."""
    port = launch.free_port()
    yield port
    # Any home's settings find the node this module started.
    launch.stop(load_settings())


@pytest.fixture
def case_home(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    case: Case = request.param
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path / "home"))
    for key, value in {**FAST_ENV, "DRIFTLOOP_N_TRIALS": "8", **case.env}.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    settings.landing.write_bytes(f"{case.name}.csv", case.build().to_csv(index=False).encode())
    return settings


def _baseline_score(training: TrainingSet, schema: DatasetSchema) -> float:
    """A plain HistGradientBoosting at its defaults on the same train/holdout split."""
    hx, _ = training.xy(training.holdout)
    output = plain_output(*training.xy(training.train), hx, schema.task)
    return metric_named(schema.metric).score(training.xy(training.holdout)[1], *output)


@pytest.mark.parametrize("case_home", CASES, ids=[c.name for c in CASES], indirect=True)
def test_real_table_trains_serves_and_takes_feedback(
    case_home: Settings, serve_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = case_home
    result = train(settings)
    assert result.success
    schema = load_schema(settings.schema_path)
    assert schema is not None
    training: TrainingSet = result.output_for_node("training_dataset")
    if schema.timestamp_column is not None:  # the batch is dated by its newest row
        store = BatchStore(settings.batches)
        (key,) = store.keys()
        newest = pd.read_parquet(store.path(key))[schema.timestamp_column].max()
        assert store.path(key).stat().st_mtime_ns == newest.value
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    champion = registry.by_alias(CHAMPION)
    assert champion is not None, "the first model passing the floor becomes @champion"
    model = registry.load_verified(champion.version, TRUSTED_TYPES)

    metric = metric_named(schema.metric)
    hx, hy = training.xy(training.holdout)
    ours = metric.score(hy, model.predict_proba(hx), model.classes_)
    baseline = _baseline_score(training, schema)
    assert metric.gain(ours, baseline) >= -TOLERANCE, (schema.metric, ours, baseline)

    monkeypatch.setenv("DRIFTLOOP_SERVE_PORT", str(serve_port))
    served = load_settings()
    url = launch.start(served, ServeArgs(home=str(served.home)), num_cpus=2)
    rows = training.holdout.head(20)
    instances = [_instance(row, schema) for _, row in rows.iterrows()]
    for i, instance in enumerate(instances):
        instance["id"] = f"{served.model_name}-{i}"
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post(
            f"/v1/models/{served.model_name}:predict", json={"instances": instances}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_version"] == champion.version
        assert body["ids"] == [i["id"] for i in instances]
        expected = model.predict_proba(rows[schema.feature_names])
        np.testing.assert_allclose(body["probabilities"], expected, rtol=0, atol=1e-9)
        labels = [_json(v) for v in rows[TARGET]]
        feedback = [
            {"id": i["id"], "label": label} for i, label in zip(instances, labels, strict=True)
        ]
        sent = client.post("/v1/feedback", json=feedback)
        assert sent.status_code == 200, sent.text
        assert sent.json()["accepted"] == len(feedback)


def _instance(row: pd.Series, schema: DatasetSchema) -> dict[str, object]:
    """A JSON instance as a client sends it: nulls for gaps, true/false for bools."""
    instance: dict[str, object] = {}
    for spec in schema.features:
        value = row[spec.name]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            instance[spec.name] = None
        elif spec.dtype == "bool":
            instance[spec.name] = bool(value)
        elif spec.dtype == "int":
            instance[spec.name] = int(value)
        else:
            instance[spec.name] = _json(value)
    return instance


def _json(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def test_a_batch_with_an_emptied_column_is_quarantined_with_its_shares(
    home: Settings,
) -> None:
    frame = with_gaps(breast_cancer(), ["mean_radius"], share=0.1, seed=3)
    first, second = frame.iloc[:300], frame.iloc[300:].assign(mean_radius=np.nan)
    home.landing.write_bytes("first.csv", first.to_csv(index=False).encode())
    assert train(home).success
    home.landing.write_bytes("second.csv", second.to_csv(index=False).encode())
    assert train(home).success, "a bad new file must not stop training on the good ones"
    reasons = [p for p in os.listdir(home.home / "quarantine") if p.endswith(".reason.json")]
    assert len(reasons) == 1 and "second.csv" in reasons[0]
    text = (home.home / "quarantine" / reasons[0]).read_text()
    assert "mean_radius" in text and "100.0% null" in text and "allowed" in text
