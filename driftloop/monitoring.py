"""Monitoring: feature drift (Evidently) and null share of served traffic, live quality per
version in the primary metric, and change detection on the error stream (river ADWIN and
Page-Hinkley)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from river import drift
from scipy.stats import rankdata

from driftloop.data import BatchStore
from driftloop.logwindows import read_published, window_start
from driftloop.metrics import Metric, encode
from driftloop.schema import blank_to_null
from driftloop.storage import Folder


def read_log(
    log: Folder, since: datetime | None = None, window_s: int | None = None
) -> pd.DataFrame:
    """Published Parquet files of a serving log (in-progress files are hidden until whole,
    segments a window file already holds are left out), rows at or after `since`.

    With the writers' `window_s`, files whose window ended before `since` are not read: a
    record is written during its file's window, so none of theirs can be that recent. One
    extra window of slack covers clocks that disagree between writers and this reader.
    Files written before a column existed read with that column null (pandas aligns them).
    A file that does not read is skipped (a corrupt one quarantined), logged, and listed in
    `frame.attrs["skipped_files"]`: one bad file never fails the run reading the window.
    """
    oldest = None if since is None or window_s is None else since.timestamp() - 2 * window_s

    def wanted(name: str) -> bool:
        return oldest is None or (start := window_start(name)) is None or start >= oldest

    frames, skipped = read_published(log, wanted)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if since is not None and not frame.empty:
        frame = frame[frame["at"] >= pd.Timestamp(since)]
    frame = frame.reset_index(drop=True)
    frame.attrs["skipped_files"] = [vars(s) for s in skipped]
    return frame


def skipped_log_files(*frames: pd.DataFrame) -> dict[str, object]:
    """What the log reads behind `frames` left out, for a run's metadata: the count always
    (0 says every file read), and each file with its reason when there is one."""
    skipped = [s for frame in frames for s in frame.attrs.get("skipped_files", [])]
    found: dict[str, object] = {"skipped_log_files": len(skipped)}
    if skipped:
        found["skipped_log_file_reasons"] = "; ".join(
            f"{s['name']}: {s['reason']}" for s in skipped
        )
    return found


def model_frame(frame: pd.DataFrame, features: Sequence[str], text: Sequence[str]) -> pd.DataFrame:
    """`features` as the model sees them: text columns as `str` or None (a blank string is
    missing, as at ingest), every other column float64 with NaN (bool as 1.0/0.0).

    Served logs keep bools as bools (None where missing, so pandas reads them as objects)
    while training rows hold floats: one form for both makes drift and null share compare
    like with like.
    """
    frame = blank_to_null(frame[list(features)])
    columns = {}
    for name in features:
        column = frame[name]
        if name in text:
            columns[name] = column.astype(object).where(column.notna(), None)
        else:  # pd.NA (a nullable extension column read as objects) has no float()
            columns[name] = pd.to_numeric(column.where(column.notna(), np.nan)).astype("float64")
    return pd.DataFrame(columns, index=frame.index)


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
    unjudged: tuple[str, ...] = ()  # all null on one side: the null share speaks for them

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


# Served rows Evidently judges. Measured on 110k served loans: 2.4 s for the sample, 4.6 s
# for 100k, the same verdicts, and no distance moved by more than 0.008 (threshold 0.1).
DRIFT_SAMPLE_ROWS = 20_000


def drift_sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows of `frame`, drawn uniformly without replacement by a
    generator seeded with `seed` (the same frame and seed give the same rows), in their
    original order; `frame` itself when it is no larger.

    What it does to the drift verdict: Evidently chooses the test by the reference's size,
    so with more than 1,000 reference rows (`REFERENCE_ROWS` is 5,000) it measures a
    distance (normed Wasserstein, Jensen-Shannon) against a fixed threshold, not a
    p-value. Sampling only adds noise to that distance's estimate: its standard error
    scales with sqrt(1/reference + 1/current), 0.0158 at 5,000 + 20,000 rows against
    0.0145 at 5,000 + 100,000, so a shift well past the threshold is found as before and
    only one within about a standard error of it may flip. Below 1,000 reference rows
    (p-value tests), 20,000 served rows still detect far smaller shifts than the reference
    can resolve. The null shares are computed on the whole window, never on the sample.
    """
    if len(frame) <= max_rows:
        return frame
    rows = np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False)
    return frame.iloc[np.sort(rows)]


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: Sequence[str],
    categorical: Sequence[str],
    html: bool = True,
) -> DriftResult:
    """Evidently's DataDriftPreset of `current` against `reference`, frames as
    `model_frame` makes them; the column types are given, not guessed per frame.

    Without `html`, only the preset's per-column tests run (`ValueDrift`, each choosing
    its test and threshold as in the preset) and `html` is empty: the preset's dataset
    summary and its rendering are for the report a person reads.

    Evidently picks the test per column and size (p-values for small samples, distances
    for large ones); a p-value drifts below its threshold, a distance above it. It leaves
    nulls out of each test, and refuses a column with no values on one side (measured:
    "An empty column ... was provided"), so such a column is left unjudged here.
    """
    from evidently import DataDefinition, Dataset, Report  # slow import (~10 s)
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    order = [*numerical, *categorical]
    judged = [c for c in order if current[c].notna().any() and reference[c].notna().any()]
    if not judged:
        return DriftResult((), 0.0, len(current), len(reference), "", tuple(order))
    definition = DataDefinition(
        numerical_columns=[c for c in numerical if c in judged],
        categorical_columns=[c for c in categorical if c in judged],
    )

    def dataset(frame: pd.DataFrame) -> Dataset:
        return Dataset.from_pandas(frame[judged].reset_index(drop=True), definition)

    metrics = [DataDriftPreset(columns=judged)] if html else [ValueDrift(column=c) for c in judged]
    snapshot = Report(metrics).run(dataset(current), dataset(reference))
    results = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config["type"].endswith("ValueDrift"):
            continue
        method, score, threshold = config["method"], float(metric["value"]), config["threshold"]
        drifted = score < threshold if "p_value" in method else score > threshold
        results.append(ColumnDrift(config["column"], method, score, threshold, drifted))
    results.sort(key=lambda c: order.index(c.column))
    share = sum(c.drifted for c in results) / len(results) if results else 0.0
    return DriftResult(
        tuple(results),
        share,
        len(current),
        len(reference),
        snapshot.get_html_str(False) if html else "",
        tuple(c for c in order if c not in judged),
    )


def prediction_drift(reference: pd.Series, served: pd.Series, numeric: bool) -> ColumnDrift | None:
    """Evidently's drift test of the served predictions against the model's own on the
    reference rows: a numeric test for a regressor's values, a categorical one for the
    predicted classes. It moves when the inputs move in directions the model cares about,
    whichever features carry it; None when either side has no prediction."""
    frames = [
        pd.DataFrame({"prediction": side.reset_index(drop=True)}) for side in (reference, served)
    ]
    kinds = (["prediction"], []) if numeric else ([], ["prediction"])
    result = feature_drift(frames[0], frames[1], *kinds, html=False)
    return result.columns[0] if result.columns else None


@dataclass(frozen=True)
class NullShares:
    """Share of missing values per feature in training and in served traffic."""

    training: dict[str, float]
    served: dict[str, float]
    tolerance: float

    @property
    def jumps(self) -> list[str]:
        """Features whose served null share exceeds training's by more than the tolerance."""
        return [c for c, share in self.served.items() if share > self.training[c] + self.tolerance]


def null_shares(
    training: pd.DataFrame, served: pd.DataFrame, columns: Sequence[str], tolerance: float
) -> NullShares:
    """Null share per column of both frames (as `model_frame` makes them)."""

    def shares(frame: pd.DataFrame) -> dict[str, float]:
        return {c: float(frame[c].isna().mean()) if len(frame) else 0.0 for c in columns}

    return NullShares(shares(training), shares(served), tolerance)


def landed_labels(
    store: BatchStore, id_columns: Sequence[str], target: str, since: float
) -> pd.DataFrame:
    """Labels of the batches accepted at or after `since` (epoch seconds), keyed by id.

    One row per labelled row and id column: `id` (as a string, as serving logs it), `at`
    (when the batch was accepted: the label was known then), `label` (a string) and `key`
    (the batch row, so a row with two id columns is one label). Batches without an id
    column (landed before ids were configured) have nothing to join.
    """
    parts = []
    for batch in store.keys():  # noqa: SIM118 - a BatchStore, not a dict
        path = store.path(batch)
        accepted = path.stat().st_mtime
        if accepted < since:
            continue
        present = [c for c in id_columns if c in pq.read_schema(path).names]
        if not present:
            continue
        rows = pd.read_parquet(path, columns=[*present, target]).dropna(subset=[target])
        for column in present:
            parts.append(
                pd.DataFrame(
                    {
                        "id": _id_strings(rows[column]),
                        "at": pd.Timestamp(accepted, unit="s", tz="UTC"),
                        "label": rows[target].astype(str),
                        "key": [f"{batch}:{i}" for i in rows.index],
                    }
                ).dropna(subset=["id"])
            )
    if not parts:
        return pd.DataFrame(columns=["id", "at", "label", "key"])
    return pd.concat(parts, ignore_index=True)


def _id_strings(column: pd.Series) -> pd.Series:
    """Ids as the strings serving echoes: 17, not 17.0, for an integer id stored as float."""
    values = column.dropna()
    if pd.api.types.is_float_dtype(column) and np.all(values == np.round(values)):
        column = column.astype("Int64")
    return (
        column.astype(object)
        .where(column.notna(), None)
        .map(lambda v: None if v is None else str(v))
    )


@dataclass(frozen=True)
class LabelJoin:
    """Predictions with their ground truth (`label`, and `label_source`: which source it
    came from), in prediction time order, how many labels matched no prediction, and how
    many were a later label for an already labelled prediction (ignored)."""

    rows: pd.DataFrame
    unmatched: int
    repeated: int = 0


def join_labels(predictions: pd.DataFrame, sources: Mapping[str, pd.DataFrame]) -> LabelJoin:
    """Join labels (`request_id`, `id`, `at`, `label`; a missing column is null) to served
    predictions.

    A label with a `request_id` labels that request's predictions. A label with only an
    `id` labels the most recent prediction served with that id at or before the label's
    time: a business id can be scored again later, and the label answers the decision that
    stood when it was known. Each prediction keeps one label: one from an earlier source in
    `sources` wins, then the earliest. A label that matches no prediction in `predictions`
    (an id never served, or served before the window read) is counted, never an error.
    """
    parts = [_ranked(rank, name, f) for rank, (name, f) in enumerate(sources.items()) if len(f)]
    labels = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if labels.empty or predictions.empty:
        empty = predictions.iloc[0:0].assign(
            label=pd.Series(dtype=str), label_source=pd.Series(dtype=str)
        )
        return LabelJoin(empty, _distinct(labels), 0)
    served = _with(predictions, ("request_id", "id")).reset_index(drop=True)
    served = served.assign(_row=np.arange(len(served)), _at=_utc(served["at"]))
    labels = labels.assign(_at=_utc(labels["at"]))
    by_request = labels[labels["request_id"].notna()].merge(
        served[["_row", "request_id"]], on="request_id"
    )
    keyed = labels[labels["request_id"].isna() & labels["id"].notna()]
    with_id = served[served["id"].notna()]
    if keyed.empty or with_id.empty:
        by_id = by_request.iloc[0:0]
    else:
        by_id = pd.merge_asof(
            keyed.drop(columns=["request_id"]).sort_values("_at"),
            with_id[["_row", "id", "_at"]].sort_values("_at"),
            on="_at",
            by="id",
            direction="backward",
        ).dropna(subset=["_row"])
    matches = pd.concat([by_request, by_id], ignore_index=True)
    unmatched = _distinct(labels) - _distinct(matches)
    first = matches.sort_values(["_rank", "_at"], kind="stable").drop_duplicates("_row")
    # A second label for a prediction from the same source is counted, never applied: the
    # first one stands, so a flood of later (possibly forged) labels cannot rewrite history.
    repeated = len(matches) - len(matches.drop_duplicates(["_row", "_rank"]))
    first = first.assign(_row=first["_row"].astype(int))[["_row", "label", "source"]]
    joined = served.merge(first.rename(columns={"source": "label_source"}), on="_row")
    joined = joined.sort_values("_at", kind="stable").drop(columns=["_row", "_at"])
    return LabelJoin(joined.reset_index(drop=True), unmatched, repeated)


def join_feedback(predictions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """Predictions with their later feedback (by request id or id), in prediction time order."""
    return join_labels(predictions, {"feedback": feedback}).rows


def _ranked(rank: int, name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """One source's labels with its rank and name, each with a `key` (its row unless the
    source gives one: a batch row stands behind one entry per id column)."""
    frame = _with(frame, ("request_id", "id", "key")).reset_index(drop=True)
    key = frame["key"].where(frame["key"].notna(), frame.index.astype(str))
    return frame.assign(key=key, _rank=rank, source=name)


def _with(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`frame` with each of `columns` it lacks, all null (logs written before they existed)."""
    return frame.assign(**{c: None for c in columns if c not in frame.columns})


def _utc(at: pd.Series) -> pd.Series:
    """One timestamp unit for both sides: merge_asof refuses keys of different resolutions."""
    return pd.to_datetime(at, utc=True).astype("datetime64[ns, UTC]")


def _distinct(labels: pd.DataFrame) -> int:
    """How many labels (a source's rank and key) `labels` holds, repeats counted once; a
    hash table's count (two sets of 100k Python tuples took 0.6 s under the profiler)."""
    return len(labels[["_rank", "key"]].drop_duplicates()) if len(labels) else 0


def served_output(rows: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """What each logged prediction served, as the metrics take it: class probabilities
    (columns in `classes` order) or, without classes (regression), the predicted value;
    NaN where the log cannot tell.

    Logs written before `probabilities` existed hold only the predicted class's
    probability, which determines both for two classes and not for more.
    """
    if len(classes) == 0:
        return _floats(rows["prediction"])
    logged = _with(rows, ("probabilities",))["probabilities"].tolist()
    if set(map(type, logged)) <= {list, np.ndarray}:  # every row logged them: one copy
        try:
            whole_matrix = np.array(logged, dtype=float)
        except ValueError:  # a row of another length
            whole_matrix = None
        if whole_matrix is not None and whole_matrix.shape == (len(rows), len(classes)):
            return whole_matrix
    out = np.full((len(rows), len(classes)), np.nan)
    # NaN, not None, where pandas aligned a file written before the column existed. One
    # check per row, then one copy: assigning row by row took ~1 s (profiled) of the four
    # calls a live-quality run makes on 100k rows.
    whole = np.fromiter(
        (isinstance(p, list | np.ndarray) and len(p) == len(classes) for p in logged),
        dtype=bool,
        count=len(logged),
    )
    if whole.any():
        out[whole] = np.array([p for p, w in zip(logged, whole, strict=True) if w], dtype=float)
    if len(classes) == 2:
        predicted = rows["prediction"].astype(str).to_numpy()
        top = rows["probability"].to_numpy(dtype=float)
        for chosen, name in enumerate(classes):
            rebuilt = ~whole & (predicted == name)
            out[rebuilt, chosen], out[rebuilt, 1 - chosen] = top[rebuilt], 1 - top[rebuilt]
    return out


def _floats(values: pd.Series) -> np.ndarray:
    """Logged numbers (strings in the log, as labels are) as floats; NaN where not one."""
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def usable_rows(rows: pd.DataFrame, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows a metric can score (a mask), and what each served: a known output
    and a label among the classes (regression: a finite prediction and a finite value)."""
    output = served_output(rows, classes)
    if len(classes) == 0:
        usable = np.isfinite(output) & np.isfinite(_floats(rows["label"]))
    else:
        known = np.isfinite(output).all(axis=1)
        usable = known & rows["label"].astype(str).isin(classes).to_numpy()
    return usable, output


def score(metric: Metric, rows: pd.DataFrame, classes: Sequence[str]) -> float:
    """`metric` on labelled rows; NaN where it is not defined (no rows with known
    outputs and labels, or a metric such as ROC AUC on labels of one class)."""
    usable, output = usable_rows(rows, classes)
    if not usable.any():
        return math.nan
    labels = rows["label"].astype(str)[usable].tolist()
    try:
        return float(metric.score(labels, output[usable], classes))
    except ValueError:  # Metric.score's answer where it is undefined (one class for AUC)
        return math.nan


def accuracy(rows: pd.DataFrame, classes: Sequence[str]) -> float:
    """Share of served decisions that the label confirms; NaN for regression (no decision
    is right or wrong there)."""
    if rows.empty or len(classes) == 0:
        return math.nan
    return float((rows["prediction"].astype(str) == rows["label"].astype(str)).mean())


def error_stream(rows: pd.DataFrame, classes: Sequence[str], typical_error: float) -> np.ndarray:
    """Each labelled prediction's error for the change detectors, in [0, 1]: wrong (1) or
    right (0) for classification; for regression the absolute error over 3 times the
    `typical_error` (the champion's holdout MAE), capped at 1.

    ADWIN and Page-Hinkley are tuned for a bounded stream of about a 0/1 error's spread
    (Page-Hinkley's threshold of 50 is in the stream's units): raw errors in a price's units
    would fire on noise, and one outlier would dominate. Scaled, a typical error reads about
    0.3 and a doubled error 0.6, which both detectors see within a few hundred samples.
    """
    if len(classes):
        return (rows["prediction"].astype(str) != rows["label"].astype(str)).to_numpy(float)
    absolute = np.abs(_floats(rows["label"]) - _floats(rows["prediction"]))
    scale = 3 * typical_error if typical_error > 0 else 1.0
    return np.clip(np.nan_to_num(absolute / scale, nan=0.0), 0.0, 1.0)


@dataclass(frozen=True)
class Quality:
    model_version: str
    count: int
    metric: str  # the primary metric
    score: float
    accuracy: float


def live_quality(joined: pd.DataFrame, metric: Metric, classes: Sequence[str]) -> list[Quality]:
    """The primary metric and accuracy per model version from predictions joined to labels."""
    if joined.empty:  # no labelled predictions, perhaps no predictions (and no columns)
        return []
    return [
        Quality(
            str(version),
            len(rows),
            metric.name,
            score(metric, rows, classes),
            accuracy(rows, classes),
        )
        for version, rows in joined.groupby("model_version", sort=True)
    ]


@dataclass(frozen=True)
class QualityDrop:
    """How much worse the labelled predictions after a change point are than before it."""

    metric: str
    before: float
    after: float
    # > 0: worse after, in the metric's own direction (a fraction of `before` for RMSE and
    # MAE); NaN if not measurable
    drop: float


def quality_drop(
    rows: pd.DataFrame, change_at: int, metric: Metric, classes: Sequence[str]
) -> QualityDrop:
    """The drop at `change_at` (a row of `rows`, in time order) in the primary metric (for
    RMSE and MAE as a fraction of the score before).

    Accuracy answers when the primary metric cannot be computed on both segments (ROC AUC
    of a segment whose labels are one class, a log without probabilities): a drop the
    sensor cannot read would hide the change.
    """
    before, after = rows.iloc[:change_at], rows.iloc[change_at:]
    primary = score(metric, before, classes), score(metric, after, classes)
    if all(math.isfinite(value) for value in primary):
        # gain(new, old) > 0 when `new` is better: before better than after is a drop
        drop = metric.gain(*primary)
        if metric.relative:  # RMSE 40 -> 44 is a drop of 0.1 (10 %), whatever the units
            drop = drop / abs(primary[0]) if primary[0] else math.nan
        return QualityDrop(metric.name, *primary, drop)
    old, new = accuracy(before, classes), accuracy(after, classes)
    return QualityDrop("accuracy", old, new, old - new)


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
    """Run both detectors over an error stream in [0, 1] (`error_stream`); only a rise in
    errors counts by default. Each detector stops at its first change: only that is
    reported, and the detectors are independent."""
    values = np.asarray(errors, dtype=float)
    return ChangePoints(
        _adwin_first(values, rising_only), _page_hinkley_first(values, rising_only), len(values)
    )


def _adwin_first(values: np.ndarray, rising_only: bool) -> int | None:
    """The first sample at which river's ADWIN detects a change (with `rising_only`, one
    whose recent window's mean is above the mean of the window before the sample).

    Reading `ADWIN.estimation` around every update was 0.25 s of a 100k-sample stream
    (measured); it is only needed at a detection, and there it is known without asking:
    ADWIN drops samples only when it detects a change, and river starts a fresh window on
    the update after a detection, so before sample i the window holds exactly the samples
    since the last detection (0/1 errors: an exact mean; scaled regression errors: equal
    up to summation order, and the test compares it with a mean after a significant cut).
    """
    adwin = drift.ADWIN()
    start, cut_mean, previous = 0, 0.0, -2
    for index, value in enumerate(values.tolist()):
        adwin.update(value)
        if not adwin.drift_detected:
            continue
        if previous == index - 1:  # the window before was the one cut at `previous`
            before = cut_mean
        else:
            before = float(np.mean(values[start:index])) if index > start else 0.0
        cut_mean = adwin.estimation
        if not rising_only or cut_mean > before:
            return index
        start, previous = index + 1, index
    return None


def _page_hinkley_first(values: np.ndarray, rising_only: bool) -> int | None:
    """The first sample at which river's `PageHinkley` (default parameters) fires: its own
    arithmetic, operation for operation (river's incremental `stats.Mean`, the faded
    cumulative sums, the running extremes), in one loop of local floats instead of its
    `update` per sample (with ADWIN's reads above: 0.6 s to 0.08 s for both detectors on
    100k samples, measured). `test_error_changes_match_river` holds it to river's own."""
    reference = drift.PageHinkley()
    alpha, delta, threshold = reference.alpha, reference.delta, reference.threshold
    min_instances = reference.min_instances
    n, mean = 0.0, 0.0
    sum_increase, sum_decrease = 0.0, 0.0
    min_increase, max_decrease = math.inf, -1.0
    for index, x in enumerate(values.tolist()):
        n += 1.0
        mean += (1.0 / n) * (x - mean)
        dev = x - mean
        sum_increase = alpha * sum_increase + dev - delta
        sum_decrease = alpha * sum_decrease + dev + delta
        if sum_increase < min_increase:
            min_increase = sum_increase
        if sum_decrease > max_decrease:
            max_decrease = sum_decrease
        if n >= min_instances and (
            sum_increase - min_increase > threshold
            or (not rising_only and max_decrease - sum_decrease > threshold)
        ):
            return index
    return None


@dataclass(frozen=True)
class HoldoutDrop:
    """The champion's live score against its own holdout score. `drop` > 0 is worse, in
    the metric's direction (a fraction of the holdout score for RMSE and MAE); `bound` is
    two standard errors of that difference: the live score's by bootstrap over its rows,
    the holdout's from the same per-row spread at the holdout's size."""

    metric: str
    holdout: float
    live: float
    drop: float
    bound: float
    rows: int

    def beyond(self, margin: float) -> bool:
        """Worse than the holdout by more than chance allows and by more than `margin`."""
        return self.drop > max(self.bound, margin)


HOLDOUT_BOOTSTRAP = 50
HOLDOUT_BOOTSTRAP_ROWS = 2_000  # resampled at most; the error is scaled to all the rows
MIN_HOLDOUT_ROWS = 100  # fewer labelled rows than this: no judgement against the holdout


def holdout_drop(
    rows: pd.DataFrame,
    metric: Metric,
    classes: Sequence[str],
    holdout: float,
    holdout_rows: int | None,
    seed: int,
) -> HoldoutDrop | None:
    """Is the champion's live metric below what its holdout promised, beyond chance? Unlike
    a drop at a change point this needs no detector to fire: a subtle, steady drop (0.945 to
    0.915) shows here once enough labels have come back. None below `MIN_HOLDOUT_ROWS`."""
    usable, output = usable_rows(rows, classes)
    if usable.sum() < MIN_HOLDOUT_ROWS:
        return None
    truth, encoded = encode(rows["label"].astype(str)[usable].tolist(), output[usable], classes)
    if not metric.defined_on(truth, len(classes)):
        return None
    live = float(metric.scorer(truth, encoded, len(classes)))
    live_error = _standard_error(metric, truth, encoded, len(classes), live, seed)
    # The holdout's own error, from the same per-row spread at its size (unknown: none).
    holdout_error = live_error * math.sqrt(len(truth) / holdout_rows) if holdout_rows else 0.0
    scale = abs(holdout) if metric.relative and holdout else 1.0
    return HoldoutDrop(
        metric=metric.name,
        holdout=holdout,
        live=live,
        drop=metric.gain(holdout, live) / scale,
        bound=2 * math.hypot(live_error, holdout_error) / scale,
        rows=len(truth),
    )


def _standard_error(
    metric: Metric, truth: np.ndarray, output: np.ndarray, n_classes: int, score: float, seed: int
) -> float:
    """A mean of per-row scores (accuracy, log loss, MAE) has its textbook error; any other
    metric a bootstrap's, on at most `HOLDOUT_BOOTSTRAP_ROWS` rows scaled to them all (the
    monitor runs on a sensor's cadence: this stays well under a second)."""
    if metric.per_row is not None:
        per_row = metric.per_row(truth, output)
        if math.isclose(float(per_row.mean()), score, rel_tol=1e-9, abs_tol=1e-12):
            return float(per_row.std(ddof=1)) / math.sqrt(len(per_row))
    rng = np.random.default_rng(seed)
    size = min(len(truth), HOLDOUT_BOOTSTRAP_ROWS)
    picks = np.stack([rng.integers(0, len(truth), size) for _ in range(HOLDOUT_BOOTSTRAP)])
    resampled = _resampled_scores(metric, truth, output, n_classes, picks)
    if len(resampled) < 2:
        return math.inf
    return float(np.std(resampled, ddof=1)) * math.sqrt(size / len(truth))


def _resampled_scores(
    metric: Metric, truth: np.ndarray, output: np.ndarray, n_classes: int, picks: np.ndarray
) -> list[float]:
    """`metric` on each resample (a row of `picks`) where it is defined (one class drawn:
    no ROC AUC). Binary ROC AUC from ranks, every resample at once: the Mann-Whitney
    statistic, ties counted half, is the area scikit-learn integrates under the ROC curve,
    equal to rounding (its 50 `roc_auc_score` calls were ~0.3 s of a live-quality run)."""
    if metric.name == "roc_auc" and n_classes == 2:
        labels = truth[picks]
        positives = labels.sum(axis=1)
        negatives = labels.shape[1] - positives
        defined = (positives > 0) & (negatives > 0)
        ranks = rankdata(output[picks, 1], axis=1)  # tied scores share their mean rank
        above = (ranks * labels).sum(axis=1) - positives * (positives + 1) / 2
        return (above[defined] / (positives[defined] * negatives[defined])).tolist()
    return [
        float(metric.scorer(truth[pick], output[pick], n_classes))
        for pick in picks
        if metric.defined_on(truth[pick], n_classes)
    ]
