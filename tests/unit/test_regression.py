"""Regression through the core: the task inferred from the target, the metrics against
scikit-learn's, the gate, the canary and the error-stream detectors on real models'
predictions (scikit-learn's diabetes table and its Friedman generator)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.model_selection import train_test_split

from driftloop.canary import Arm, CanaryPolicy, analyse
from driftloop.metrics import METRICS, all_scores, default_metric, metric_named
from driftloop.monitoring import error_changes, error_stream, quality_drop
from driftloop.promotion import decide, floor_of
from driftloop.schema import ColumnRules, infer_schema, validate_batch
from driftloop.training import DEFAULT_TRIALS, Folds, cross_validate, evaluate, make_model
from tests.datasets import TARGET, diabetes, friedman

RMSE, MAE, R2 = (metric_named(m) for m in ("rmse", "mae", "r2"))


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = friedman(3000, seed=0)
    return train_test_split(frame, test_size=0.3, random_state=0)


def test_a_float_target_with_many_values_is_a_regression() -> None:
    schema = infer_schema(diabetes(), TARGET)
    assert schema.task == "regression" and schema.is_regression
    assert schema.labels == () and schema.metric == "rmse"
    # a numeric target with few values stays a set of classes
    ratings = diabetes().assign(**{TARGET: lambda f: (f[TARGET] // 100).astype(int)})
    assert infer_schema(ratings, TARGET).task == "multiclass"
    # ...unless the team says it is a regression
    forced = infer_schema(ratings, TARGET, ColumnRules(task="regression"))
    assert forced.task == "regression"


def test_a_task_or_metric_that_does_not_fit_the_target_is_refused() -> None:
    text = diabetes().assign(**{TARGET: lambda f: np.where(f[TARGET] > 140, "high", "low")})
    with pytest.raises(ValueError, match="not numeric"):
        infer_schema(text, TARGET, ColumnRules(task="regression"))
    with pytest.raises(ValueError, match="does not score a regression task"):
        infer_schema(diabetes(), TARGET, ColumnRules(metric="accuracy"))
    with pytest.raises(ValueError, match="does not score a binary task"):
        infer_schema(text, TARGET, ColumnRules(metric="rmse"))
    with pytest.raises(ValueError, match="DRIFTLOOP_TASK=binary"):
        infer_schema(diabetes(), TARGET, ColumnRules(task="binary"))


def test_a_later_batch_needs_a_finite_numeric_target() -> None:
    frame = diabetes()
    schema = infer_schema(frame, TARGET)
    checks = {c.name: c for c in validate_batch(frame, schema, min_rows=10)}
    assert checks["label_set"].passed
    bad = frame.assign(**{TARGET: frame[TARGET].astype(object).where(frame.index > 3, "n/a")})
    checks = {c.name: c for c in validate_batch(bad, schema, min_rows=10)}
    assert not checks["label_set"].passed and "numeric" in checks["label_set"].detail
    infinite = frame.assign(**{TARGET: frame[TARGET].where(frame.index > 0, np.inf)})
    checks = {c.name: c for c in validate_batch(infinite, schema, min_rows=10)}
    assert checks["label_set"].detail == "1 non-finite target values"


def test_regression_metrics_are_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(100, 20, 500)
    p = y + rng.normal(0, 5, 500)
    scores = all_scores([str(v) for v in y], p.tolist(), ())  # as read back from a log
    assert scores == pytest.approx(
        {
            "rmse": root_mean_squared_error(y, p),
            "mae": mean_absolute_error(y, p),
            "r2": r2_score(y, p),
        }
    )
    assert set(scores) == {n for n, m in METRICS.items() if "regression" in m.tasks}
    assert default_metric("regression", {}) == "rmse"
    assert [RMSE.direction, MAE.direction, R2.direction] == ["minimize", "minimize", "maximize"]
    with pytest.raises(ValueError, match="regression"):
        RMSE.score(y, p, ["a", "b"])
    with pytest.raises(ValueError, match="not defined"):
        R2.score([3.0, 3.0], [2.0, 4.0], ())  # no variance to explain


def test_search_folds_and_families_fit_a_regression(split) -> None:
    train, _ = split
    schema = infer_schema(train, TARGET)
    folds = Folds(schema, train[schema.feature_names], train[TARGET], folds=3, seed=0)
    scores = {p["family"]: cross_validate(p, folds) for p in DEFAULT_TRIALS["regression"]}
    # Friedman #1 is non-linear: boosting beats the linear model clearly
    assert scores["hist_gradient_boosting"] < 0.8 * scores["ridge"]


def _fitted(split, params: dict) -> tuple:
    train, holdout = split
    schema = infer_schema(train, TARGET)
    model = make_model(params, schema, seed=0).fit(train[schema.feature_names], train[TARGET])
    return model, evaluate(model, holdout[schema.feature_names], holdout[TARGET], "rmse")


def test_the_gate_promotes_a_better_regressor_and_refuses_a_worse_one(split) -> None:
    boosting, ridge = DEFAULT_TRIALS["regression"]
    _, good = _fitted(split, boosting)
    _, weak = _fitted(split, ridge)
    assert good.value < weak.value
    better = decide("2", (good, None), "1", (weak, None), margin=0.002, floor=None)
    assert better.promote and "0.20% of the champion's" in better.reason
    worse = decide("3", (weak, None), "2", (good, None), margin=0.002, floor=None)
    assert not worse.promote
    # The margin is relative: a 1 % gain passes 0.5 % and fails 2 %.
    close = type(good)({**good.scores, "rmse": weak.value * 0.99}, "rmse", good.rows)
    assert decide("4", (close, None), "1", (weak, None), 0.005, None).promote
    assert not decide("4", (close, None), "1", (weak, None), 0.02, None).promote
    # A first model: no floor for RMSE (its scale is the target's); R² must beat the mean.
    assert floor_of(RMSE, None) is None and floor_of(R2, None) == 0.0
    assert decide("1", (good, None), None, None, 0.002, None).promote


def test_the_canary_judges_regressors_on_per_request_loss(split) -> None:
    _, holdout = split
    boosting, ridge = DEFAULT_TRIALS["regression"]
    good_model, _ = _fitted(split, boosting)
    weak_model, _ = _fitted(split, ridge)
    features, truth = holdout.drop(columns=[TARGET]), holdout[TARGET].to_numpy()
    half = len(holdout) // 2
    arms = {
        name: (
            Arm(truth[:half].tolist(), model.predict(features.iloc[:half])),
            Arm(truth[half:].tolist(), model.predict(features.iloc[half:])),
        )
        for name, model in (("good", good_model), ("weak", weak_model))
    }
    for metric in (RMSE, MAE, R2):
        # 450 outcomes per arm: per-request squared errors are too noisy for the default
        # margin (10 % of the champion's mean loss) to be shown this early, 30 % is
        policy = CanaryPolicy(
            min_samples=100, margin=0.3 if metric.relative else 0.05, mode="welch"
        )
        # the same model on two halves of the traffic: not worse
        same = analyse(arms["good"][0], arms["good"][1], policy, metric, ())
        assert same.verdict == "advance", (metric.name, same.reason)
        worse = analyse(arms["weak"][0], arms["good"][1], policy, metric, ())
        assert worse.verdict == "rollback" and worse.difference < 0, (metric.name, worse.reason)
    squared = analyse(arms["weak"][0], arms["good"][1], CanaryPolicy(), RMSE, ())
    champion = arms["good"][1]
    assert squared.champion_score == pytest.approx(
        np.mean((np.asarray(champion.labels) - champion.outputs) ** 2)
    )
    assert "inconclusive" not in squared.reason  # significantly worse at any margin


def test_an_injected_error_increase_is_detected_within_hundreds_of_samples(split) -> None:
    _, holdout = split
    boosting, _ = DEFAULT_TRIALS["regression"]
    model, evaluation = _fitted(split, boosting)
    features, truth = holdout.drop(columns=[TARGET]), holdout[TARGET].to_numpy()
    predicted = model.predict(features)
    rng = np.random.default_rng(1)
    change = 450
    # after the change the world moves: the truth is off the model by 2.5 typical errors
    sign = np.where(np.arange(len(truth)) >= change, rng.choice([-1, 1], len(truth)), 0)
    shifted = truth + sign * 2.5 * evaluation.scores["mae"]
    # as the serving log holds them: strings that round-trip the floats
    rows = pd.DataFrame(
        {"prediction": [repr(float(v)) for v in predicted], "label": shifted.astype(str)}
    )
    errors = error_stream(rows, (), evaluation.scores["mae"])
    assert errors.min() >= 0 and errors.max() <= 1
    found = error_changes(errors)
    assert found.first is not None and change <= found.first < change + 300, found
    drop = quality_drop(rows, found.first, RMSE, ())
    assert drop.metric == "rmse" and drop.after > drop.before and drop.drop > 0.5
    # the same predictions against the unshifted truth: no change
    calm = rows.assign(label=truth.astype(str))
    assert error_changes(error_stream(calm, (), evaluation.scores["mae"])).first is None


def test_ridge_sees_categories_and_gaps(split) -> None:
    train, holdout = split
    _, ridge = DEFAULT_TRIALS["regression"]
    model, evaluation = _fitted(split, ridge)
    plain = Ridge().fit(train[["x0", "x3", "x4"]], train[TARGET])
    baseline = root_mean_squared_error(holdout[TARGET], plain.predict(holdout[["x0", "x3", "x4"]]))
    assert evaluation.value < baseline  # it used the region and the columns with gaps
    assert np.isfinite(model.predict(holdout.drop(columns=[TARGET]).assign(x1=np.nan))).all()
