"""Monitoring: feature drift (Evidently), live quality per version, and change detection
on the error stream (river ADWIN and Page-Hinkley)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from river import drift

from driftloop.logwindows import window_start
from driftloop.storage import Folder


def read_log(
    log: Folder, since: datetime | None = None, window_s: int | None = None
) -> pd.DataFrame:
    """Published Parquet files of a serving log (in-progress files are hidden until whole),
    rows at or after `since`.

    With the writers' `window_s`, files whose window ended before `since` are not read: a
    record is written during its file's window, so none of theirs can be that recent. One
    extra window of slack covers clocks that disagree between writers and this reader.
    """
    names = [f.name for f in log.files((".parquet",))]
    if since is not None and window_s is not None:
        oldest = since.timestamp() - 2 * window_s
        names = [n for n in names if (start := window_start(n)) is None or start >= oldest]
    if not names:
        return pd.DataFrame()
    frame = pd.concat(log.read_parquet(names), ignore_index=True)
    if since is not None and not frame.empty:
        frame = frame[frame["at"] >= pd.Timestamp(since)]
    return frame.reset_index(drop=True)


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    columns: tuple[ColumnDrift, ...]
    share_drifted: float
    rows_current: int
    rows_reference: int
    html: str

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


def feature_drift(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]
) -> DriftResult:
    """Evidently's DataDriftPreset of `current` against `reference` on `columns`.

    Evidently picks the test per column and size (p-values for small samples, distances
    for large ones); a p-value drifts below its threshold, a distance above it.
    """
    from evidently import Report  # slow import (~10 s): only when drift is computed
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset(columns=columns)]).run(
        current[columns].reset_index(drop=True), reference[columns].reset_index(drop=True)
    )
    results = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config["type"].endswith("ValueDrift"):
            continue
        method, score, threshold = config["method"], float(metric["value"]), config["threshold"]
        drifted = score < threshold if "p_value" in method else score > threshold
        results.append(ColumnDrift(config["column"], method, score, threshold, drifted))
    results.sort(key=lambda c: columns.index(c.column))
    share = sum(c.drifted for c in results) / len(results) if results else 0.0
    return DriftResult(
        tuple(results), share, len(current), len(reference), snapshot.get_html_str(False)
    )


@dataclass(frozen=True)
class Quality:
    model_version: str
    count: int
    accuracy: float
    log_loss: float


def join_feedback(predictions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """Predictions with their later ground truth, in prediction time order."""
    if predictions.empty or feedback.empty:
        return predictions.iloc[0:0].assign(label=pd.Series(dtype=str))
    labels = feedback.drop_duplicates("request_id", keep="last")[["request_id", "label"]]
    joined = predictions.merge(labels, on="request_id", how="inner")
    return joined.sort_values("at", kind="stable").reset_index(drop=True)


def live_quality(joined: pd.DataFrame) -> list[Quality]:
    """Accuracy and binary log-loss per model version from predictions joined to labels.

    The log records the probability of the predicted class, so the probability of the true
    label is p when the prediction was right and 1 - p when it was wrong (two classes).
    """
    out = []
    for version, rows in joined.groupby("model_version", sort=True):
        correct = (rows["prediction"].astype(str) == rows["label"].astype(str)).to_numpy()
        p = rows["probability"].to_numpy(dtype=float)
        p_true = np.clip(np.where(correct, p, 1 - p), 1e-15, 1)
        out.append(
            Quality(str(version), len(rows), float(correct.mean()), float(-np.log(p_true).mean()))
        )
    return out


@dataclass(frozen=True)
class ChangePoints:
    """Index (0-based, in labelled samples) where each detector first fired, or None."""

    adwin: int | None
    page_hinkley: int | None
    samples: int

    @property
    def first(self) -> int | None:
        found = [i for i in (self.adwin, self.page_hinkley) if i is not None]
        return min(found) if found else None


def error_changes(errors: np.ndarray, rising_only: bool = True) -> ChangePoints:
    """Run both detectors over a 0/1 error stream; only a rise in errors counts by default."""
    adwin, hinkley = drift.ADWIN(), drift.PageHinkley(mode="up" if rising_only else "both")
    first: dict[str, int | None] = {"adwin": None, "page_hinkley": None}
    before_mean = 0.0
    for index, value in enumerate(errors.astype(float)):
        before_mean = adwin.estimation
        adwin.update(value)
        hinkley.update(value)
        rose = not rising_only or adwin.estimation > before_mean
        if adwin.drift_detected and rose and first["adwin"] is None:
            first["adwin"] = index
        if hinkley.drift_detected and first["page_hinkley"] is None:
            first["page_hinkley"] = index
    return ChangePoints(first["adwin"], first["page_hinkley"], len(errors))
