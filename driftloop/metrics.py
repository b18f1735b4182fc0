"""Every metric driftloop scores models by, and its direction, in one place.

The search, the promotion gate, the canary, the live monitor and the model card take a
`Metric` from here and never compare two scores themselves: `gain(new, old) > 0` means
`new` is better, whichever way the metric points. scikit-learn computes every score.

A classification score takes the true labels, the predicted probabilities (one column per
class, in `classes` order) and the classes. Labels are matched to classes by `str()`, so
labels read back from a log as strings score against a schema's integer labels. Regression
metrics (rmse, mae, r2) fit the same record: `tasks=("regression",)`, the predictions (one
float per row) in place of the probabilities, and no classes: an empty `classes` means
regression everywhere (values read back from a log as strings are parsed as floats).

RMSE and MAE are in the target's units, so a fixed margin means nothing across tables (0.02
is nothing for a price, everything for a rate): their margins and drop thresholds are
fractions of the reference score (`relative`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.preprocessing import label_binarize

CLASSIFICATION = ("binary", "multiclass")
REGRESSION = ("regression",)
# Labels are imbalanced when the rarest class has under this fraction of an even share
# (binary: under 20 % of the rows; 3 classes: under 13 %); accuracy then mostly measures
# the majority class.
IMBALANCE_RATIO = 0.4

# Scores on encoded labels: (class index per row, probabilities, number of classes); for
# regression (true values, predictions, 0).
Scorer = Callable[[np.ndarray, np.ndarray, int], float]
RowScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """One way to score a model. `per_row` is set when the score is the mean of a per-row
    quantity (accuracy: correct or not; log loss: each row's loss), which lets the canary
    compare arms request by request; other metrics need the whole sample at once."""

    name: str
    greater_is_better: bool
    scorer: Scorer
    tasks: tuple[str, ...] = CLASSIFICATION
    # Ranking metrics: undefined unless each class is present; R²: unless the truth varies.
    needs_every_class: bool = False
    per_row: RowScorer | None = None
    # The default promotion floor where chance level does not depend on the data; None where
    # it does (PR AUC and F1 with the positive rate, log loss with the label balance, RMSE
    # and MAE with the target's scale).
    default_floor: float | None = None
    # Margins are fractions of the reference score: the metric is in the target's units.
    relative: bool = False
    # The canary's non-inferiority margin when none is configured. Per-request squared
    # errors vary about 1.4 times their mean, so 2 % of the champion's would need ~40,000
    # outcomes per arm to show; 10 % needs ~1,500, as 0.02 of accuracy near 0.9 does.
    default_canary_margin: float = 0.02

    def score(self, y_true: Sequence, output: np.ndarray, classes: Sequence) -> float:
        """The metric of `output` (probabilities, rows by classes; for regression, one
        prediction per row with no classes) against the truth; ValueError where it is not
        defined (no rows, one class for a ranking metric, one row for R²)."""
        if (len(classes) == 0) != (self.tasks == REGRESSION):
            kind = "regression (no classes)" if self.tasks == REGRESSION else "classification"
            raise ValueError(f"{self.name} scores {kind} only")
        truth, output = encode(y_true, output, classes)
        if not self.defined_on(truth, len(classes)):
            raise ValueError(f"{self.name} is not defined on {len(truth)} rows of these labels")
        return float(self.scorer(truth, output, len(classes)))

    def defined_on(self, truth: np.ndarray, n_classes: int) -> bool:
        """Whether the score exists on these encoded labels (or true values)."""
        if len(truth) == 0:
            return False
        if not self.needs_every_class:
            return True
        distinct = len(np.unique(truth))
        return distinct >= 2 if n_classes == 0 else distinct == n_classes

    def gain(self, new: float, old: float) -> float:
        """How much better `new` is than `old`, in the metric's units (> 0: better)."""
        return new - old if self.greater_is_better else old - new

    def margin_at(self, margin: float, reference: float) -> float:
        """A configured margin in the metric's units at `reference` (the champion's score):
        itself, or that fraction of the reference for a scale-dependent metric."""
        return margin * abs(reference) if self.relative else margin

    @property
    def direction(self) -> str:
        """Optuna's name for the direction."""
        return "maximize" if self.greater_is_better else "minimize"


def encode(
    y_true: Sequence, probabilities: np.ndarray, classes: Sequence
) -> tuple[np.ndarray, np.ndarray]:
    """Labels as indices into `classes` (compared as strings) and probabilities as a float
    matrix (a list of lists from a log is fine); ValueError for a label not in `classes`.
    Without classes (regression): true values and predictions as float vectors."""
    if len(classes) == 0:
        truth = np.asarray(y_true, dtype=float).ravel()
        predicted = np.asarray(probabilities, dtype=float).ravel()
        if predicted.shape != truth.shape:
            raise ValueError(f"{len(predicted)} predictions for {len(truth)} true values")
        return truth, predicted
    codes = label_codes(y_true, classes)
    if isinstance(probabilities, np.ndarray) and probabilities.ndim == 2:
        # already a matrix: `np.vstack` would split it into rows and stack them again
        # (0.2 s for 100k rows, measured)
        matrix = np.array(probabilities, dtype=float)
    else:
        matrix = np.asarray(
            np.vstack(probabilities) if len(probabilities) else np.empty((0, len(classes))),
            float,
        )
    if matrix.shape != (len(codes), len(classes)):
        raise ValueError(
            f"probabilities have shape {matrix.shape}, expected ({len(codes)}, {len(classes)})"
        )
    return codes, matrix


def label_codes(labels: Sequence, classes: Sequence) -> np.ndarray:
    """Each label's index in `classes`, compared as strings; ValueError for another label."""
    names = [str(c) for c in classes]
    index = {name: i for i, name in enumerate(names)}
    text = [str(v) for v in np.asarray(labels, dtype=object).ravel()]
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the classes {names}")
    return np.array([index[v] for v in text], dtype=int)


def _predicted(p: np.ndarray) -> np.ndarray:
    return p.argmax(axis=1)


def _accuracy(y: np.ndarray, p: np.ndarray, k: int) -> float:
    return accuracy_score(y, _predicted(p))


def _balanced_accuracy(y: np.ndarray, p: np.ndarray, k: int) -> float:
    # Mean recall over the classes present in `y`: `balanced_accuracy_score`'s number, without
    # its warnings about a short live window or a holdout slice of one class (expected here)
    # and without `catch_warnings`, which changes process-wide state under threads.
    return recall_score(y, _predicted(p), labels=np.unique(y), average="macro")


def _roc_auc(y: np.ndarray, p: np.ndarray, k: int) -> float:
    if k == 2:
        return roc_auc_score(y, p[:, 1])
    # One-vs-rest, each class weighted equally: a rare class counts as much as a common one.
    return roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k)))


def _pr_auc(y: np.ndarray, p: np.ndarray, k: int) -> float:
    if k == 2:
        return average_precision_score(y, p[:, 1])
    return average_precision_score(label_binarize(y, classes=list(range(k))), p, average="macro")


def _f1(y: np.ndarray, p: np.ndarray, k: int) -> float:
    if k == 2:  # of the positive class, classes[1]
        return f1_score(y, _predicted(p), pos_label=1, average="binary", zero_division=0.0)
    return f1_score(y, _predicted(p), labels=list(range(k)), average="macro", zero_division=0.0)


def _log_loss(y: np.ndarray, p: np.ndarray, k: int) -> float:
    return log_loss(y, p, labels=list(range(k)))


def _correct(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return (_predicted(p) == y).astype(float)


def _row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each row's loss, clipped as scikit-learn's `log_loss` clips (its mean is the score)."""
    eps = np.finfo(p.dtype).eps
    return -np.log(np.clip(p[np.arange(len(y)), y], eps, 1 - eps))


def _rmse(y: np.ndarray, p: np.ndarray, k: int) -> float:
    return root_mean_squared_error(y, p)


def _mae(y: np.ndarray, p: np.ndarray, k: int) -> float:
    return mean_absolute_error(y, p)


def _r2(y: np.ndarray, p: np.ndarray, k: int) -> float:
    return r2_score(y, p)


def _squared_error(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return (y - p) ** 2


def _absolute_error(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.abs(y - p)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", True, _accuracy, per_row=_correct, default_floor=0.6),
        Metric("balanced_accuracy", True, _balanced_accuracy, default_floor=0.6),
        Metric("roc_auc", True, _roc_auc, needs_every_class=True, default_floor=0.6),
        Metric("pr_auc", True, _pr_auc, needs_every_class=True),
        Metric("f1", True, _f1),
        Metric("log_loss", False, _log_loss, per_row=_row_log_loss),
        # The canary compares RMSE arms by each request's squared error (its mean is the
        # MSE, which orders arms as RMSE does) and MAE arms by each absolute error.
        Metric(
            "rmse",
            False,
            _rmse,
            REGRESSION,
            per_row=_squared_error,
            relative=True,
            default_canary_margin=0.1,
        ),
        Metric(
            "mae",
            False,
            _mae,
            REGRESSION,
            per_row=_absolute_error,
            relative=True,
            default_canary_margin=0.1,
        ),
        # R² needs two distinct true values (a variance); chance (the mean) scores 0.
        Metric("r2", True, _r2, REGRESSION, needs_every_class=True, default_floor=0.0),
    )
}


def metric_named(name: str) -> Metric:
    """The metric called `name`; ValueError naming the choices."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}") from None


def default_metric(task: str, label_counts: Mapping[object, int]) -> str:
    """The primary metric when `DRIFTLOOP_METRIC` is unset, from the task and label balance.

    Balanced labels: accuracy, the number a person reads without explanation. When the
    rarest class holds under `IMBALANCE_RATIO` of an even share of the rows, accuracy
    rewards predicting the majority (95 % "accurate" at a 5 % fraud rate by never flagging
    fraud), so a binary task is judged by ROC AUC (threshold-free, chance is 0.5 whatever
    the positive rate) and a multiclass one by balanced accuracy (mean recall per class, a
    rare class counts as much as a common one).
    """
    if task == "regression":
        return "rmse"  # in the target's units: the typical size of an error
    if task not in CLASSIFICATION:
        raise ValueError(f"no default metric for task {task!r}")
    counts = [int(c) for c in label_counts.values()]
    imbalanced = sum(counts) > 0 and min(counts) * len(counts) / sum(counts) < IMBALANCE_RATIO
    if task == "binary":
        return "roc_auc" if imbalanced else "accuracy"
    return "balanced_accuracy" if imbalanced else "accuracy"


def all_scores(y_true: Sequence, output: np.ndarray, classes: Sequence) -> dict[str, float]:
    """Every metric of the task that is defined here, by name: classification metrics of
    the probabilities, or (no classes) regression metrics of the predictions."""
    codes, matrix = encode(y_true, output, classes)
    k = len(classes)
    task = "regression" if k == 0 else "binary" if k == 2 else "multiclass"
    return {
        name: float(metric.scorer(codes, matrix, len(classes)))
        for name, metric in METRICS.items()
        if task in metric.tasks and metric.defined_on(codes, len(classes))
    }
