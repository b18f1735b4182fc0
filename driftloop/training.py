"""Model families, their search spaces, cross-validation and evaluation: pure scikit-learn.

Every model is one `Pipeline` (encoding + estimator) so the registered artifact takes raw
feature columns, exactly what serving receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import optuna
import pandas as pd
from sklearn.base import is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from driftloop.metrics import all_scores, metric_named
from driftloop.schema import DatasetSchema

# Bump when a search space or pipeline changes: it is part of every study's name and lineage.
SEARCH_SPACE_VERSION = "4"

_BOOSTING_SPACE = {
    "learning_rate": "log-uniform [0.03, 0.3]",
    "max_iter": "int [50, 250]",
    "max_leaf_nodes": "int [8, 64]",
    "min_samples_leaf": "int [5, 100]",
    "l2_regularization": "log-uniform [1e-6, 1.0]",
}
# The families each task searches, with their spaces (as the model card shows them).
SEARCH_SPACES: dict[str, dict[str, dict[str, str]]] = {
    "classification": {
        "hist_gradient_boosting": _BOOSTING_SPACE,
        "logistic_regression": {"C": "log-uniform [1e-3, 100]"},
    },
    "regression": {
        "hist_gradient_boosting": _BOOSTING_SPACE,
        "ridge": {"alpha": "log-uniform [1e-3, 100]"},
    },
}

_BOOSTING_DEFAULTS: dict[str, Any] = {
    "family": "hist_gradient_boosting",
    "learning_rate": 0.1,
    "max_iter": 100,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 20,
    "l2_regularization": 1e-6,
}
# Every search first tries each family at scikit-learn's defaults (within the space): with a
# small budget, TPE's random start-up trials can all land in one family (a demo run's six
# trials were all logistic regression, 0.80 against 0.90 for boosting).
DEFAULT_TRIALS: dict[str, list[dict[str, Any]]] = {
    "classification": [_BOOSTING_DEFAULTS, {"family": "logistic_regression", "C": 1.0}],
    "regression": [_BOOSTING_DEFAULTS, {"family": "ridge", "alpha": 1.0}],
}


def task_kind(task: str) -> str:
    """`classification` or `regression`: the two sets of families, spaces and defaults."""
    return "regression" if task == "regression" else "classification"


# The types a registered pipeline may contain; skops refuses anything else on load.
TRUSTED_TYPES = [
    "functools.partial",  # ColumnTransformer's "passthrough" wraps check_array in a partial
    "sklearn.utils.validation.check_array",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.impute._base.SimpleImputer",
    "numpy.dtype",  # SimpleImputer keeps the dtype it was fitted on: a value, not code
    "sklearn.impute._base.MissingIndicator",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.pipeline.Pipeline",
]


def suggest_params(trial: optuna.Trial, task: str) -> dict[str, Any]:
    """One point of `task`'s search space (SEARCH_SPACES says the same in words)."""
    linear = "ridge" if task_kind(task) == "regression" else "logistic_regression"
    family = trial.suggest_categorical("family", ["hist_gradient_boosting", linear])
    if family == "hist_gradient_boosting":
        return {
            "family": family,
            "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.3, log=True),
            "max_iter": trial.suggest_int("max_iter", 50, 250),
            "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 8, 64),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 5, 100),
            "l2_regularization": trial.suggest_float("l2_regularization", 1e-6, 1.0, log=True),
        }
    if family == "ridge":
        return {"family": family, "alpha": trial.suggest_float("alpha", 1e-3, 100, log=True)}
    return {"family": family, "C": trial.suggest_float("C", 1e-3, 100, log=True)}


def limited_threads(threads: int) -> threadpool_limits:
    """Cap OpenMP/BLAS threads while fitting.

    Measured here: 8 HistGradientBoosting fits took 2.8 s on one thread and 58 s on two
    OpenMP threads while another process used the second core (spin-waiting threads
    oversubscribe), so one thread per process is the robust default on small machines.
    """
    return threadpool_limits(limits=threads)


def make_model(params: dict[str, Any], schema: DatasetSchema, seed: int) -> Pipeline:
    """Build the pipeline for one point of the search space.

    Missing values are handled inside the pipeline, so the registered model takes rows with
    gaps as they come: HistGradientBoosting has native missing-value branches; logistic
    regression gets a median imputer plus missing indicators. Rare categories beyond
    `schema.max_categories` share one "infrequent" level, which keeps the encoders (and
    HistGradientBoosting's 255-bin limit) bounded on high-cardinality columns. A regression
    schema gets the regressor of each family (squared error; Ridge for the linear one).
    """
    hyper = {k: v for k, v in params.items() if k != "family"}
    levels = schema.max_categories
    if params["family"] == "hist_gradient_boosting":
        encode = ColumnTransformer(
            [
                (
                    "categorical",
                    OrdinalEncoder(
                        handle_unknown="use_encoded_value", unknown_value=-1, max_categories=levels
                    ),
                    schema.categorical,
                ),
                ("numeric", "passthrough", schema.numeric),
            ]
        )
        # Ordinal codes first, so the first len(categorical) columns are categories; unseen
        # categories become -1, which the model treats as missing instead of failing.
        mask = [True] * len(schema.categorical) + [False] * len(schema.numeric)
        boosting = (
            HistGradientBoostingRegressor
            if schema.task == "regression"
            else HistGradientBoostingClassifier
        )
        estimator = boosting(
            **hyper, categorical_features=mask or None, early_stopping=False, random_state=seed
        )
    else:
        numeric = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                ("scale", StandardScaler()),
            ]
        )
        encode = ColumnTransformer(
            [
                (
                    "categorical",
                    OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=levels),
                    schema.categorical,
                ),
                ("numeric", numeric, schema.numeric),
            ]
        )
        estimator = (
            Ridge(**hyper)
            if schema.task == "regression"
            else LogisticRegression(**hyper, max_iter=500)
        )
    return Pipeline([("encode", encode), ("model", estimator)])


class Folds:
    """Folds of one training set, stratified by class for classification (each fold keeps
    the label balance) and plain shuffled folds for regression; a trial scores them one at
    a time so that pruning can stop it after any fold."""

    def __init__(
        self, schema: DatasetSchema, x: pd.DataFrame, y: pd.Series, folds: int, seed: int
    ) -> None:
        self.schema, self.x, self.y, self.seed = schema, x, y, seed
        splitter = (
            KFold(n_splits=folds, shuffle=True, random_state=seed)
            if schema.task == "regression"
            else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        )
        self.splits = list(splitter.split(x, y))

    def __len__(self) -> int:
        return len(self.splits)

    def score(self, params: dict[str, Any], fold: int) -> float:
        """The schema's primary metric on fold `fold` of a model fitted on the other folds."""
        fit_rows, val_rows = self.splits[fold]
        model = make_model(params, self.schema, self.seed)
        model.fit(self.x.iloc[fit_rows], self.y.iloc[fit_rows])
        metric = metric_named(self.schema.metric)
        output = model_output(model, self.x.iloc[val_rows])
        return metric.score(self.y.iloc[val_rows], output, classes_of(model))


class FoldScorer(Protocol):
    def __len__(self) -> int: ...

    def score(self, params: dict[str, Any], fold: int) -> float: ...


def cross_validate(
    params: dict[str, Any],
    folds: FoldScorer,
    report: Callable[[float, int], None] | None = None,
) -> float:
    """Mean fold score (the folds' metric) over the folds; `report(mean_so_far, fold)` may
    raise to prune."""
    scores: list[float] = []
    for fold in range(len(folds)):
        scores.append(folds.score(params, fold))
        if report is not None:
            report(float(np.mean(scores)), fold)
    return float(np.mean(scores))


RUNG_FACTOR = 3  # successive halving's eta: each rung has 3x the rows, keeps ~1/3 of trials
VALIDATION_SHARE = 0.2  # of the training rows, scored at every rung (as one of 5 CV folds)
VALIDATION_ROWS = 50_000  # at most: a score on 50k rows varies by ~0.002 AUC, fits get costly
# The top rung's rows at most: the ranking of trials settles long before (a fit on 750k rows
# costs ~2.5x one on 300k), and the candidate is refit on all rows anyway.
RUNG_MAX_ROWS = 300_000


def rung_sizes(
    rows: int, first: int, factor: int = RUNG_FACTOR, cap: int = RUNG_MAX_ROWS
) -> tuple[int, ...]:
    """Fit rows of each rung for a pool of `rows`: `first`, `first * factor`, ... while the
    next rung still fits, then the top, all `rows` up to `cap`; () when not even two rungs
    fit (`first` 0, or small data), which means k-fold CV on all rows instead.

    The geometric sizes are the steps `SuccessiveHalvingPruner(min_resource=first,
    reduction_factor=factor)` judges at; the top is between `factor` and `factor**2` times
    the rung before it.
    """
    top = min(rows, cap)
    if first <= 0 or first * factor > top:
        return ()
    sizes = [first]
    while sizes[-1] * factor * factor <= top:
        sizes.append(sizes[-1] * factor)
    return (*sizes, top)


class Rungs:
    """Growing nested subsamples of one training set, every model scored on the same
    validation rows: rung `i` fits on the first `sizes[i]` rows of a seeded shuffle of the
    rest. A trial pays for the top rung only if it beat its peers on the smaller ones.

    Validation is one seeded random share of the rows (`VALIDATION_SHARE`, capped at
    `VALIDATION_ROWS`), not k folds: on this much data one split's noise is small next to
    the differences the search resolves, and k fits per rung would cost k times as much.
    """

    def __init__(
        self, schema: DatasetSchema, x: pd.DataFrame, y: pd.Series, first: int, seed: int
    ) -> None:
        self.schema, self.x, self.y, self.seed = schema, x, y, seed
        order = np.random.default_rng(seed).permutation(len(x))
        validation = min(VALIDATION_ROWS, int(VALIDATION_SHARE * len(x)))
        self.validation, self.pool = order[:validation], order[validation:]
        self.first = first
        self.sizes = rung_sizes(len(self.pool), first)

    def __len__(self) -> int:
        return len(self.sizes)

    def score(self, params: dict[str, Any], rung: int) -> float:
        """The schema's primary metric on the validation rows of a model fitted on rung
        `rung`'s rows."""
        rows = self.pool[: self.sizes[rung]]
        model = make_model(params, self.schema, self.seed)
        model.fit(self.x.iloc[rows], self.y.iloc[rows])
        x, y = self.x.iloc[self.validation], self.y.iloc[self.validation]
        return metric_named(self.schema.metric).score(y, model_output(model, x), classes_of(model))


def climb_rungs(
    params: dict[str, Any],
    rungs: FoldScorer,
    sizes: tuple[int, ...],
    report: Callable[[float, int], None] | None = None,
) -> float:
    """The top rung's score, climbing from the smallest; `report(score, rows)` after each
    rung but the top may raise to prune (the pruner's step is the rung's rows). The top is
    not reported: a trial that paid for the full data completes with its score."""
    for rung, rows in enumerate(sizes[:-1]):
        score = rungs.score(params, rung)
        if report is not None:
            report(score, rows)
    return rungs.score(params, len(sizes) - 1)


@dataclass(frozen=True)
class Evaluation:
    """Every metric defined on the judged rows, and the primary one (`metric`) that decides."""

    scores: dict[str, float]
    metric: str
    rows: int

    @property
    def value(self) -> float | None:
        """The primary metric; None where it is not defined here (ROC AUC on one class)."""
        return self.scores.get(self.metric)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{name}": value for name, value in self.scores.items()}


def model_output(model: Any, x: pd.DataFrame) -> np.ndarray:
    """What the metrics score: class probabilities (rows by classes) from a classifier,
    predictions (float64, one per row) from a regressor."""
    if is_classifier(model):
        return model.predict_proba(x)
    return np.asarray(model.predict(x), dtype=float)


def classes_of(model: Any) -> tuple[Any, ...]:
    """A classifier's classes in its column order; () for a regressor (the metrics' sign)."""
    return tuple(model.classes_) if is_classifier(model) else ()


def evaluate(model: Any, x: pd.DataFrame, y: pd.Series, metric: str) -> Evaluation | None:
    """Score a fitted model by every metric of its task, `metric` the primary one; None for
    an empty frame (nothing to judge on)."""
    if len(x) == 0:
        return None
    scores = all_scores(y, model_output(model, x), classes_of(model))
    return Evaluation(scores=scores, metric=metric, rows=len(x))


def slice_scores(
    model: Any, x: pd.DataFrame, y: pd.Series, feature: str, metric: str
) -> dict[str, dict[str, float]]:
    """Holdout scores per value of one categorical feature, for the model card: the primary
    metric where a slice defines it (a slice of one class has no ROC AUC), and accuracy
    (mean absolute error for regression) beside it."""
    output, classes = model_output(model, x), classes_of(model)
    second = "accuracy" if classes else "mae"
    levels = x[feature].map(level_name)
    out = {}
    for level in sorted(levels.unique()):
        rows = (levels == level).to_numpy()
        scores = all_scores(y[rows], output[rows], classes)
        shown = dict.fromkeys((metric, second))  # the primary first, once
        out[level] = {name: scores[name] for name in shown if name in scores}
    return out


def level_name(value: Any) -> str:
    """A category as the card shows it: integer codes stored as floats read 3, not 3.0."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "(missing)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
