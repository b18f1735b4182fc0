"""Review before traffic: is a challenger worse for some group, though better on average?

The gate's overall metric can hide a model that is much worse for one region, one age
band or one product line. Two checks on the gate's holdout rows:

- **slices**: the primary metric of challenger and champion on each level (with enough
  rows) of each slice column; a level where the challenger loses more than the margin is
  named, and the gate refuses (or, under the manual policy, flags) the challenger;
- **disparity** for sensitive columns, reported, not gated: fairlearn's demographic
  parity and equalized odds differences for a binary task, accuracy's spread across
  groups for multiclass, and the mean absolute error's spread for regression.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftloop.metrics import Metric
from driftloop.schema import DatasetSchema
from driftloop.training import level_name

# A categorical feature with at most this many levels is a slice column by default.
MAX_SLICE_LEVELS = 10


@dataclass(frozen=True)
class SliceGap:
    """Both models' primary metric on one slice; `gain` > 0: the challenger is better."""

    column: str
    level: str
    rows: int
    challenger: float
    champion: float
    gain: float
    allowed: float  # the loss the margin tolerates here, in the metric's units

    @property
    def worse(self) -> bool:
        return self.gain < -self.allowed


@dataclass(frozen=True)
class Disparity:
    """One fairness number of the challenger across the groups of a sensitive column."""

    column: str
    name: str
    value: float
    by_group: dict[str, float]


@dataclass(frozen=True)
class Review:
    metric: str
    min_rows: int
    slices: tuple[SliceGap, ...]
    disparities: tuple[Disparity, ...]

    @property
    def worse(self) -> tuple[SliceGap, ...]:
        return tuple(gap for gap in self.slices if gap.worse)

    def reason(self) -> str:
        """One sentence naming each slice where the challenger loses beyond the margin."""
        return "; ".join(
            f"{self.metric} on {g.column}={g.level} ({g.rows} rows) {g.challenger:.4f} vs "
            f"champion {g.champion:.4f} (gain {g.gain:+.4f}, allowed -{g.allowed:.4f})"
            for g in self.worse
        )

    def markdown(self) -> str:
        """The tables the model card shows."""
        lines = [
            f"| slice | rows | challenger {self.metric} | champion | gain | worse |",
            "|---|---:|---:|---:|---:|---|",
            *(
                f"| {g.column}={g.level} | {g.rows} | {g.challenger:.4f} | {g.champion:.4f} "
                f"| {g.gain:+.4f} | {'**yes**' if g.worse else 'no'} |"
                for g in self.slices
            ),
        ]
        if not self.slices:
            lines = [f"no slice column has a level with {self.min_rows}+ holdout rows"]
        for d in self.disparities:
            groups = ", ".join(f"{k} {v:.4f}" for k, v in d.by_group.items())
            lines.append(f"\n- {d.column}: {d.name} {d.value:.4f} ({groups})")
        return "\n".join(lines)

    def as_tags(self) -> dict[str, str]:
        tags = {f"driftloop.review.{d.column}.{d.name}": f"{d.value:.6f}" for d in self.disparities}
        tags["driftloop.review.worse_slices"] = self.reason() or "none"
        return tags


def slice_columns(schema: DatasetSchema, x: pd.DataFrame, configured: Sequence[str]) -> list[str]:
    """`DRIFTLOOP_SLICE_COLUMNS`, or the categorical features with few levels here."""
    if configured:
        unknown = sorted(set(configured) - set(schema.feature_names))
        if unknown:
            raise ValueError(f"slice columns {unknown} are not features of this model")
        return list(configured)
    return [c for c in schema.categorical if x[c].nunique(dropna=False) <= MAX_SLICE_LEVELS]


def review(
    x: pd.DataFrame,
    y: pd.Series,
    outputs: tuple[np.ndarray, np.ndarray],
    classes: Sequence,
    metric: Metric,
    columns: Sequence[str],
    sensitive: Sequence[str],
    min_rows: int,
    margin: float,
) -> Review:
    """Slice gaps between the challenger's and the champion's `outputs` (what the metrics
    take: probabilities, or predictions) on the same rows, and the challenger's disparities.

    `margin` is in the metric's units (a fraction of the champion's slice score for RMSE
    and MAE); a slice where the metric is not defined (one class for ROC AUC) is skipped.
    """
    ours, theirs = outputs
    gaps = []
    for column in columns:
        levels = _levels(x[column])
        for level in sorted(levels.unique()):
            rows = (levels == level).to_numpy()
            if rows.sum() < min_rows:
                continue
            try:
                mine = metric.score(y[rows], ours[rows], classes)
                reigning = metric.score(y[rows], theirs[rows], classes)
            except ValueError:
                continue
            gain = metric.gain(mine, reigning)
            allowed = metric.margin_at(margin, reigning)
            gaps.append(SliceGap(column, level, int(rows.sum()), mine, reigning, gain, allowed))
    disparities = tuple(
        d for column in sensitive for d in _disparities(x[column], y, ours, classes)
    )
    return Review(metric.name, min_rows, tuple(gaps), disparities)


def _disparities(
    groups: pd.Series, y: pd.Series, output: np.ndarray, classes: Sequence
) -> list[Disparity]:
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
    )

    column, levels = str(groups.name), _levels(groups).to_numpy()
    if len(classes) == 0:
        frame = MetricFrame(
            metrics=lambda t, p: float(np.mean(np.abs(t - p))),
            y_true=y.to_numpy(dtype=float),
            y_pred=output,
            sensitive_features=levels,
        )
        return [Disparity(column, "mae_spread", float(frame.difference()), _groups(frame))]
    predicted = np.asarray(classes)[output.argmax(axis=1)]
    truth = y.astype(str).to_numpy()
    predicted = predicted.astype(str)
    frame = MetricFrame(
        metrics=lambda t, p: float(np.mean(t == p)),
        y_true=truth,
        y_pred=predicted,
        sensitive_features=levels,
    )
    found = [Disparity(column, "accuracy_spread", float(frame.difference()), _groups(frame))]
    if len(classes) == 2:  # fairlearn's parity metrics are defined for a binary decision
        positive = str(classes[1])
        t, p = truth == positive, predicted == positive
        selection = MetricFrame(
            metrics=lambda _, q: float(np.mean(q)), y_true=t, y_pred=p, sensitive_features=levels
        )
        found.append(
            Disparity(
                column,
                "demographic_parity_difference",
                float(demographic_parity_difference(t, p, sensitive_features=levels)),
                _groups(selection),
            )
        )
        found.append(
            Disparity(
                column,
                "equalized_odds_difference",
                float(equalized_odds_difference(t, p, sensitive_features=levels)),
                {},
            )
        )
    return found


def _groups(frame: object) -> dict[str, float]:
    return {str(k): float(v) for k, v in frame.by_group.items()}  # type: ignore[attr-defined]


def _levels(column: pd.Series) -> pd.Series:
    """Levels as the model card shows them (`(missing)` for a gap, 3 for a code 3.0)."""
    return column.map(level_name)
