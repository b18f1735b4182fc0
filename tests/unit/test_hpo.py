"""The search: fold scoring in worker processes gives exactly what fitting in-process
gives, the study optimises the schema's metric in that metric's direction, and on large
data trials climb rungs of growing subsamples that successive halving prunes."""

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from driftloop.data import BATCH_COLUMN, build_training_set
from driftloop.hpo import fold_scorer, open_study, run_search
from driftloop.schema import infer_schema
from driftloop.settings import load_settings
from driftloop.simulate import LoanStream
from driftloop.training import Folds, Rungs, limited_threads, rung_sizes

PARAMS = {
    "family": "hist_gradient_boosting",
    "learning_rate": 0.1,
    "max_iter": 30,
    "max_leaf_nodes": 16,
    "min_samples_leaf": 20,
    "l2_regularization": 1e-3,
}


def test_pooled_folds_score_exactly_as_in_process() -> None:
    frame = LoanStream(seed=3).take_frame(900, "label")
    schema = infer_schema(frame, "label")
    folds = Folds(schema, frame[schema.feature_names], frame["label"], folds=3, seed=42)
    here = [folds.score(PARAMS, fold) for fold in range(len(folds))]
    with fold_scorer(folds, parallel=2, threads=1) as pooled:
        assert pooled is not folds and len(pooled) == 3
        assert [pooled.score(PARAMS, fold) for fold in range(3)] == here
    assert all(0.5 < score <= 1 for score in here)


def test_the_study_optimises_the_schema_metric_in_its_direction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path))
    for key, value in {"N_TRIALS": "3", "CV_FOLDS": "2", "HPO_PARALLEL": "1"}.items():
        monkeypatch.setenv(f"DRIFTLOOP_{key}", value)
    settings = load_settings()
    frame = LoanStream(seed=3).take_frame(600, "label").assign(**{BATCH_COLUMN: "b1"})
    schema = replace(infer_schema(frame.drop(columns=BATCH_COLUMN), "label"), metric="log_loss")
    training = build_training_set(frame, schema, 0.2, settings.seed)
    client = MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.create_experiment("hpo")
    result = run_search(training, settings, experiment, {}, lambda _: None)

    assert result.metric == "log_loss" and "-log_loss-" in result.study_name
    study = open_study(settings, result.study_name)  # a reader: loads, never creates
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in study.trials if t.value is not None]
    assert result.best_cv_score == min(values) and result.best_so_far[-1] == min(values)
    assert list(result.best_so_far) == sorted(result.best_so_far, reverse=True)
    parent = client.get_run(result.parent_run_id).data
    assert parent.tags["driftloop.metric_direction"] == "minimize"
    assert parent.metrics["best_cv_log_loss"] == parent.metrics["best_cv_score"] == min(values)
    trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(trials) == 3 and all("cv_log_loss" in run.data.metrics for run in trials)


def test_rungs_grow_by_the_factor_and_end_on_all_rows() -> None:
    assert rung_sizes(250_000, 10_000) == (10_000, 30_000, 250_000)
    assert rung_sizes(750_000, 10_000) == (10_000, 30_000, 90_000, 300_000)  # at most 300k
    assert rung_sizes(64_000, 10_000) == (10_000, 64_000)
    assert rung_sizes(29_999, 10_000) == ()  # small data: k-fold CV on all rows
    assert rung_sizes(750_000, 0) == ()  # rungs turned off


def test_trials_climb_nested_rungs_and_successive_halving_stops_most_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path))
    env = {"N_TRIALS": "8", "CV_FOLDS": "2", "HPO_PARALLEL": "1", "HPO_RUNG_ROWS": "150"}
    for key, value in env.items():
        monkeypatch.setenv(f"DRIFTLOOP_{key}", value)
    settings = load_settings()
    frame = LoanStream(seed=3).take_frame(2400, "label").assign(**{BATCH_COLUMN: "b1"})
    schema = infer_schema(frame.drop(columns=BATCH_COLUMN), "label")
    training = build_training_set(frame, schema, 0.2, settings.seed)
    rungs = Rungs(schema, *training.xy(training.train), 150, settings.seed)
    # validation: a fifth of the rows, apart from the nested fit rows of every rung
    assert len(rungs.validation) == int(0.2 * len(training.train))
    assert not set(rungs.validation) & set(rungs.pool)
    assert rungs.sizes == (150, 450, len(rungs.pool))
    client = MlflowClient(settings.mlflow_tracking_uri)
    result = run_search(training, settings, client.create_experiment("rungs"), {}, lambda _: None)

    assert result.study_name.endswith("-rungs150x3")
    trials = open_study(settings, result.study_name).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(complete) + len(pruned) == 8 and len(pruned) >= 2
    # every trial is judged at the rungs' rows; only a completed one was fitted on all rows
    assert all(set(t.intermediate_values) == {150, 450} for t in complete)
    assert all(set(t.intermediate_values) in ({150}, {150, 450}) for t in pruned)
    with limited_threads(1):  # the search fitted on one thread
        top = rungs.score(result.best_params, len(rungs) - 1)
    assert result.best_cv_score == pytest.approx(top, abs=1e-12)
