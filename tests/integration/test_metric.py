"""A metric other than accuracy drives the search and the gate, by configuration alone.

Breast cancer cut to 8 % malignant (the positive class, second in sorted order) with
`DRIFTLOOP_METRIC=roc_auc`: two CSV files land, each training run's study maximises ROC AUC,
and the gate promotes the first model and compares the second with it in ROC AUC.
"""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

from driftloop.hpo import open_study
from driftloop.registry import CHAMPION, Registry
from driftloop.schema import load_schema
from driftloop.settings import Settings, load_settings
from tests.conftest import train
from tests.datasets import breast_cancer, imbalanced

pytestmark = pytest.mark.integration


def test_roc_auc_drives_the_search_the_gate_and_the_card(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_METRIC", "roc_auc")
    settings = load_settings()
    table = imbalanced(breast_cancer(), "malignant", share=0.08, seed=3)
    first, second = table.iloc[: len(table) * 3 // 5], table.iloc[len(table) * 3 // 5 :]
    settings.landing.write_frame("cancer-1.csv", first)
    assert train(settings).success

    schema = load_schema(settings.schema_path)
    assert schema is not None and schema.metric == "roc_auc" and schema.task == "binary"
    assert schema.labels == ("benign", "malignant")
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    champion = registry.by_alias(CHAMPION)
    assert champion is not None and champion.version == "1"

    # The search: a study named for the metric, maximising it; MLflow runs say so.
    study_name = champion.tags["driftloop.study"]
    assert "-roc_auc-" in study_name
    assert open_study(settings, study_name).direction == optuna.study.StudyDirection.MAXIMIZE
    client = MlflowClient(settings.mlflow_tracking_uri)
    parent = client.get_run(champion.run_id)
    assert parent.data.tags["driftloop.metric"] == "roc_auc"
    assert parent.data.tags["driftloop.metric_direction"] == "maximize"
    assert parent.data.metrics["best_cv_roc_auc"] == parent.data.metrics["best_cv_score"]
    trials = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{champion.run_id}'"
    )
    complete = [t for t in trials if t.data.tags["optuna.state"] == "COMPLETE"]
    assert complete and all("cv_roc_auc" in t.data.metrics for t in complete)
    assert 0.5 < parent.data.metrics["best_cv_roc_auc"] <= 1.0
    # Every holdout metric is logged; the primary one is the version's headline.
    assert {"holdout_roc_auc", "holdout_pr_auc", "holdout_accuracy"} <= set(parent.data.metrics)

    # The gate: the first model passes ROC AUC's floor, and the record names the metric.
    tags = champion.tags
    assert tags["driftloop.decision.metric"] == "roc_auc"
    assert tags["driftloop.decision.promote"] == "True"
    assert "first model: holdout roc_auc" in tags["driftloop.decision.reason"]
    assert tags["driftloop.metric"] == "roc_auc"
    assert float(tags["driftloop.holdout_score"]) == float(tags["driftloop.holdout_roc_auc"])
    # The card: the primary metric first, the others beside it.
    card = champion.description
    holdout = card.split("## Holdout")[1]
    assert holdout.index("**roc_auc") < holdout.index("accuracy")
    assert "(the primary metric, higher is better)" in holdout
    assert "best cross-validated roc_auc" in card

    # A second file: the challenger is judged against the champion in ROC AUC.
    settings.landing.write_frame("cancer-2.csv", second)
    assert train(settings).success
    challenger = registry.version("2")
    reason = challenger.tags["driftloop.decision.reason"]
    assert challenger.tags["driftloop.decision.metric"] == "roc_auc"
    assert "roc_auc" in reason and "vs champion v1" in reason and "higher is better" in reason
    assert "-roc_auc-" in challenger.tags["driftloop.study"]
