"""Change detection on the champion's error stream, one labelled outcome at a time.

ADWIN and Page-Hinkley (river) and a one-sided CUSUM watch the errors `error_stream`
makes (0/1 for a classifier, the scaled absolute error for a regressor). Their state is
JSON, never a pickle: the errors (and prediction times) since the detectors were last
reset, which fresh detectors replay at load. All three are deterministic, so a reloaded
set gives the verdicts an uninterrupted one would. The tail is bounded: at `max_tail`
samples the detectors are rebuilt from the newest `keep_tail` (a rebase), the same way
live and on replay, which caps the state at a few kilobytes and ADWIN's window at
`max_tail` samples.

`advance` is one incremental step: the feedback published since the last one (through
`driftloop.logcursor`), joined to its predictions, the champion's errors fed in
prediction time order. `save_state`/`load_state` keep a step's state as a JSON file.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
from river import drift

from driftloop.logcursor import LogCursor, has_new, read_new
from driftloop.logwindows import SkippedFile
from driftloop.monitoring import error_stream, join_labels, read_log
from driftloop.storage import Folder

logger = logging.getLogger(__name__)

ADWIN, PAGE_HINKLEY, CUSUM = "adwin", "page_hinkley", "cusum"
DETECTORS = (ADWIN, PAGE_HINKLEY, CUSUM)
STATE_VERSION = 1
# Errors are kept (and fed) as multiples of 1/255: one byte each in the state, far finer
# than any change worth a retrain, and exact for 0/1 errors.
LEVELS = 255


@dataclass(frozen=True)
class DetectorConfig:
    """The detectors' parameters, in units of an error in [0, 1].

    ADWIN checks for a cut on every sample (`clock=1`; river's default of 32 adds up to 31
    samples of delay for no saving that matters at feedback rates). Page-Hinkley keeps
    river's defaults, which the batch monitor uses. CUSUM is standardised by the mean and
    spread of the first `cusum_warmup` errors after a reset; `cusum_k` and `cusum_h` are in
    those standard deviations (k = 0.5 is tuned to a shift of one standard deviation).
    0/1 errors are skewed (at a 10 % error rate a miss adds 2.5 to S): h = 12 raised 1.1
    false alarms per 10,000 stationary samples, h = 20 0.03 (30 seeds of 10,000).
    See scripts/bench_detectors.py for what these cost and find.
    """

    adwin_delta: float = 0.002
    adwin_clock: int = 1
    ph_delta: float = 0.005
    ph_threshold: float = 50.0
    ph_alpha: float = 1 - 0.0001
    ph_min_instances: int = 30
    cusum_k: float = 0.5
    cusum_h: float = 20.0
    cusum_warmup: int = 500
    cusum_min_sd: float = 0.05  # a near-perfect model's spread would make every error loud
    max_tail: int = 4000
    keep_tail: int = 2000
    detectors: tuple[str, ...] = DETECTORS  # which may raise an alarm (all run)


@dataclass(frozen=True)
class Alarm:
    """A detector saw the errors rise.

    `samples` is how many labelled samples since the last reset it took to fire,
    `change_sample` the estimated first sample of the new regime (same count, 0-based) and
    `change_at` that sample's prediction time (epoch seconds). CUSUM's is the sample after
    its statistic was last 0 (Page's estimate). ADWIN's and Page-Hinkley's is the split of
    what they saw since their reset that best separates two means (`mean_shift_split`, the
    likelihood-ratio change point of a shift in mean): ADWIN's own cut drops whole buckets
    (powers of two; measured 1,000-1,700 samples early at the first alarm), and the argmin
    of Page-Hinkley's cumulative deviation drifts with its running mean and `delta`
    (measured 15-1,950 samples early).
    `before`/`after` are the mean errors on either side, in the tail the detectors hold.
    """

    detector: str
    samples: int
    change_sample: int
    change_at: float
    before: float
    after: float

    @property
    def delay(self) -> int:
        """Labelled samples from the estimated change to the alarm."""
        return self.samples - self.change_sample


class Cusum:
    """One-sided (upper) CUSUM of standardised errors: S = max(0, S + z - k), alarm at S > h.

    Before a baseline is known it gathers the first `warmup` values as one. The change
    point estimate is the sample after S was last 0 (Page 1954).
    """

    def __init__(self, config: DetectorConfig, baseline: tuple[float, float] | None) -> None:
        self.config = config
        self.baseline = baseline
        self._warm: list[float] = []
        self.statistic = 0.0
        self.start = 0  # index (the caller's) of the first sample of the current excursion
        self.drift_detected = False

    def update(self, value: float, index: int) -> None:
        if self.drift_detected:
            self.statistic, self.drift_detected = 0.0, False
        if self.baseline is None:
            self._warm.append(value)
            if len(self._warm) >= self.config.cusum_warmup:
                warm = np.asarray(self._warm)
                self.baseline = (float(warm.mean()), float(warm.std()))
                self._warm = []
            self.start = index + 1
            return
        mean, sd = self.baseline
        z = (value - mean) / max(sd, self.config.cusum_min_sd)
        self.statistic = max(0.0, self.statistic + z - self.config.cusum_k)
        if self.statistic == 0.0:
            self.start = index + 1
        self.drift_detected = self.statistic > self.config.cusum_h


def mean_shift_split(values: np.ndarray) -> int:
    """The k that best splits `values` into two runs of different means: the argmax of
    (S_k - k * mean)^2 / (k (n - k) / n), the likelihood-ratio statistic of one shift in
    the mean of a Gaussian series (and a fair one for 0/1 errors at these lengths)."""
    n = len(values)
    if n < 2:
        return 0
    k = np.arange(1, n)
    partial = np.cumsum(values)[:-1]
    statistic = (partial - k * values.mean()) ** 2 / (k * (n - k) / n)
    return int(np.argmax(statistic)) + 1


class ErrorDetectors:
    """ADWIN, Page-Hinkley and CUSUM on one error stream, with a JSON state."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.offset = 0  # samples since the reset that rebases dropped from the tail
        self._times: list[int] = []  # milliseconds: what the state keeps
        self._errors: list[int] = []  # in 1/LEVELS
        self._carried: tuple[float, float] | None = None  # CUSUM's baseline over a rebase
        self._build()

    @property
    def seen(self) -> int:
        """Labelled samples since the last reset."""
        return self.offset + len(self._errors)

    def update(self, at: float, error: float) -> Alarm | None:
        """Feed one labelled outcome (its prediction time, its error in [0, 1]); on an
        alarm the detectors reset, so the next sample starts a new regime."""
        self._times.append(round(at * 1000))
        self._errors.append(round(min(max(error, 0.0), 1.0) * LEVELS))
        alarm = self._feed(len(self._errors) - 1)
        if alarm is not None:
            self.reset()
        elif len(self._errors) >= self.config.max_tail:
            self._rebase()
        return alarm

    def update_many(self, at: np.ndarray, errors: np.ndarray) -> list[Alarm]:
        # Python floats: numpy scalars make each update several times slower
        pairs = zip(np.asarray(at).tolist(), np.asarray(errors).tolist(), strict=True)
        return [alarm for t, e in pairs if (alarm := self.update(t, e))]

    def reset(self) -> None:
        """Forget the regime: after an alarm, or for another model's errors."""
        self.offset, self._times, self._errors, self._carried = 0, [], [], None
        self._build()

    def to_json(self) -> dict[str, Any]:
        times = np.asarray(self._times, dtype=np.int64)
        deltas = np.diff(times, prepend=np.int64(0))
        return {
            "version": STATE_VERSION,
            "offset": self.offset,
            "cusum_baseline": list(self._carried) if self._carried is not None else None,
            "errors": _pack(np.asarray(self._errors, dtype=np.uint8).tobytes()),
            "times_ms": _pack(deltas.astype("<i8").tobytes()),
        }

    @classmethod
    def from_json(
        cls, state: dict[str, Any], config: DetectorConfig | None = None
    ) -> ErrorDetectors:
        """Fresh detectors that replay the saved tail (a state of another version: fresh)."""
        detectors = cls(config)
        if state.get("version") != STATE_VERSION:
            return detectors
        errors = np.frombuffer(_unpack(state["errors"]), dtype=np.uint8).astype(int)
        times = np.cumsum(np.frombuffer(_unpack(state["times_ms"]), dtype="<i8"))
        baseline = state.get("cusum_baseline")
        detectors.offset = int(state["offset"])
        detectors._carried = tuple(baseline) if baseline is not None else None  # type: ignore[assignment]
        detectors._replay(times.tolist(), errors.tolist())
        return detectors

    def _build(self) -> None:
        c = self.config
        self._adwin = drift.ADWIN(delta=c.adwin_delta, clock=c.adwin_clock)
        self._hinkley = drift.PageHinkley(
            min_instances=c.ph_min_instances,
            delta=c.ph_delta,
            threshold=c.ph_threshold,
            alpha=c.ph_alpha,
            mode="up",
        )
        self._cusum = Cusum(c, self._carried)
        self._starts = {ADWIN: 0, PAGE_HINKLEY: 0}  # tail index where each was last reset

    def _replay(self, times: list[int], errors: list[int]) -> None:
        """Rebuild the detectors from a tail; alarms while replaying are not raised (the
        live feed reset at each of its alarms, so only a rebase's replay can meet one)."""
        self._times, self._errors = times, errors
        self._build()
        for index in range(len(errors)):
            self._feed(index)

    def _rebase(self) -> None:
        keep = self.config.keep_tail
        self._carried = self._cusum.baseline
        self.offset += len(self._errors) - keep
        self._replay(self._times[-keep:], self._errors[-keep:])

    def _split(self, name: str, index: int) -> int:
        start = self._starts[name]
        return start + mean_shift_split(np.asarray(self._errors[start : index + 1]) / LEVELS)

    def _feed(self, index: int) -> Alarm | None:
        """Update all three with tail sample `index`; the first alarm among them, if any."""
        value = self._errors[index] / LEVELS
        for name, detector in ((ADWIN, self._adwin), (PAGE_HINKLEY, self._hinkley)):
            if detector.drift_detected:  # river resets it inside this update
                self._starts[name] = index
        before = self._adwin.estimation
        self._adwin.update(value)
        self._hinkley.update(value)
        self._cusum.update(value, index)
        found: list[tuple[str, int]] = []
        # ADWIN also cuts when errors fall (its window restarts; nothing to retrain for).
        if self._adwin.drift_detected and self._adwin.estimation > before:
            found.append((ADWIN, self._split(ADWIN, index)))
        if self._hinkley.drift_detected:
            found.append((PAGE_HINKLEY, self._split(PAGE_HINKLEY, index)))
        if self._cusum.drift_detected:
            found.append((CUSUM, self._cusum.start))
        found = [(name, change) for name, change in found if name in self.config.detectors]
        if not found:
            return None
        name, change = found[0]
        change = int(min(max(change, 0), index))
        errors = np.asarray(self._errors[: index + 1]) / LEVELS
        return Alarm(
            detector=name,
            samples=self.offset + index + 1,
            change_sample=self.offset + change,
            change_at=self._times[change] / 1000,
            before=float(errors[:change].mean()) if change else math.nan,
            after=float(errors[change:].mean()),
        )


def _pack(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


def _unpack(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


# Feedback that matched no prediction yet (its prediction's segment may publish a second
# after it) is tried again at later steps for this long, then counted as unmatched.
WAITING_S = 120.0
WAITING_MAX = 10_000
LABEL_COLUMNS = ("request_id", "id", "at", "label")


@dataclass
class StreamState:
    """What the incremental step keeps between ticks, all of it JSON: the cursor into the
    feedback log, feedback still waiting for its prediction, the champion the detectors
    watch (its holdout MAE for a regressor) and their tail, and running counts.

    `change_at` is the newest change the detectors located in this champion's errors
    (epoch seconds): the other monitors' retrains start there too (`training_start`)."""

    cursor: LogCursor = field(default_factory=LogCursor)
    detectors: ErrorDetectors = field(default_factory=ErrorDetectors)
    waiting: list[dict[str, Any]] = field(default_factory=list)
    champion: str | None = None
    typical_error: float | None = None
    change_at: float | None = None
    alarms: int = 0
    labelled: int = 0
    unmatched: int = 0
    skipped_files: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "cursor": self.cursor.to_json(),
            "detectors": self.detectors.to_json(),
            "waiting": self.waiting,
            "champion": self.champion,
            "typical_error": self.typical_error,
            "change_at": self.change_at,
            "alarms": self.alarms,
            "labelled": self.labelled,
            "unmatched": self.unmatched,
            "skipped_files": self.skipped_files,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any], config: DetectorConfig | None = None) -> StreamState:
        if value.get("version") != STATE_VERSION:
            return cls(detectors=ErrorDetectors(config))
        return cls(
            cursor=LogCursor.from_json(value["cursor"]),
            detectors=ErrorDetectors.from_json(value["detectors"], config),
            waiting=list(value["waiting"]),
            champion=value["champion"],
            typical_error=value["typical_error"],
            change_at=value.get("change_at"),  # absent from states saved before it was kept
            alarms=int(value["alarms"]),
            labelled=int(value["labelled"]),
            unmatched=int(value["unmatched"]),
            skipped_files=int(value["skipped_files"]),
        )


@dataclass(frozen=True)
class Step:
    """What one incremental step did: labelled outcomes fed, the alarms they raised, and
    the log files it left out."""

    fed: int
    alarms: tuple[Alarm, ...]
    skipped: tuple[SkippedFile, ...]
    unmatched: int
    waiting: int


def has_new_feedback(
    state: StreamState, feedback_log: Folder, now: float, lookback_s: float
) -> bool:
    """Whether a step has anything to do: a feedback file not yet read, or feedback
    still waiting for its prediction (a listing, no reads)."""
    return bool(state.waiting) or has_new(feedback_log, state.cursor, now - lookback_s)


def advance(
    state: StreamState,
    feedback_log: Folder,
    prediction_log: Folder,
    champion: str,
    classes: list[str],
    holdout_mae: float | None,
    now: float,
    lookback_s: float,
    window_s: int | None = None,
) -> Step:
    """Feed the champion's labelled outcomes that are new since the last step, in
    prediction time order, to the detectors (updating `state`).

    New feedback is read through the cursor; the predictions it labels are looked up in
    the prediction log's last `lookback_s` before the oldest of it (the batch monitors'
    window: a label for an older prediction matches there neither). Another champion's
    errors start a fresh regime.
    """
    if state.champion != champion:
        state.detectors.reset()
        state.champion, state.typical_error, state.change_at = champion, holdout_mae, None
    new = read_new(feedback_log, state.cursor, now - lookback_s)
    state.skipped_files += len(new.skipped)
    parts = []
    if state.waiting:
        waiting = pd.DataFrame(state.waiting, columns=list(LABEL_COLUMNS))
        parts.append(waiting.assign(at=pd.to_datetime(waiting["at"], unit="s", utc=True)))
    if not new.frame.empty:
        parts.append(new.frame.assign(**{c: None for c in LABEL_COLUMNS if c not in new.frame}))
    labels = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if labels.empty:
        return Step(0, (), new.skipped, 0, 0)
    labels = labels[list(LABEL_COLUMNS)].assign(at=pd.to_datetime(labels["at"], utc=True))
    oldest = labels["at"].min().to_pydatetime() - timedelta(seconds=lookback_s)
    predictions = read_log(prediction_log, oldest, window_s)
    skipped = (*new.skipped, *(SkippedFile(**s) for s in predictions.attrs["skipped_files"]))
    state.skipped_files += len(skipped) - len(new.skipped)
    matched = _matched(labels, predictions)
    young = labels["at"] >= pd.Timestamp(now - WAITING_S, unit="s", tz="UTC")
    keep = labels[~matched & young].tail(WAITING_MAX)
    unmatched = int((~matched).sum()) - len(keep)
    state.unmatched += unmatched
    state.waiting = [
        {
            "request_id": r.request_id,
            "id": r.id,
            "at": r.at.timestamp(),
            "label": r.label,
        }
        for r in keep.itertuples()
    ]
    rows = join_labels(predictions, {"feedback": labels[matched]}).rows
    rows = rows[rows["model_version"].astype(str) == champion].reset_index(drop=True)
    if rows.empty:
        return Step(0, (), skipped, unmatched, len(keep))
    if not classes and state.typical_error is None:  # a regressor registered without it
        absolute = np.abs(_numbers(rows["label"]) - _numbers(rows["prediction"]))
        state.typical_error = float(np.nanmean(absolute[:100]))
    errors = error_stream(rows, classes, state.typical_error or 0.0)
    at = pd.to_datetime(rows["at"], utc=True).map(pd.Timestamp.timestamp).to_numpy(float)
    alarms = state.detectors.update_many(at, errors)
    state.labelled += len(rows)
    state.alarms += len(alarms)
    if alarms:
        state.change_at = max(state.change_at or 0.0, *(alarm.change_at for alarm in alarms))
    return Step(len(rows), tuple(alarms), skipped, unmatched, len(keep))


def _matched(labels: pd.DataFrame, predictions: pd.DataFrame) -> np.ndarray:
    """Labels that name a prediction in `predictions`: by request id, or by id served
    at or before the label's time (as `join_labels` matches them)."""
    if predictions.empty:
        return np.zeros(len(labels), dtype=bool)
    by_request = labels["request_id"].isin(set(predictions["request_id"].dropna()))
    if "id" not in predictions:
        return by_request.to_numpy()
    served = predictions[predictions["id"].notna()]
    first = pd.to_datetime(served["at"], utc=True).groupby(served["id"]).min()
    seen = labels["id"].map(first)
    by_id = labels["request_id"].isna() & seen.notna() & (seen <= labels["at"])
    return (by_request | by_id.fillna(False)).to_numpy(dtype=bool)


def _numbers(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


STATE_FILE = "state-{step:012d}.json"
STATES_KEPT = 3  # the newest, and two before it for a tick that never committed its cursor


def save_state(folder: Folder, step: int, state: StreamState) -> None:
    """`state` as the step's file (published whole); states older than the last few go.

    Each step writes a new file and the sensor's cursor names it, so a tick that fails
    after writing (its cursor never committed) is redone from the state before it.
    """
    folder.write_bytes(STATE_FILE.format(step=step), json.dumps(state.to_json()).encode())
    for old in _saved_steps(folder):
        if old <= step - STATES_KEPT:
            folder.delete(STATE_FILE.format(step=old))


def newest_state(folder: Folder) -> StreamState:
    """The last state saved, for readers other than the sensor that owns the cursor."""
    return load_state(folder, max(_saved_steps(folder), default=0))


def _saved_steps(folder: Folder) -> list[int]:
    """The step numbers of the state files in `folder` (other files left out)."""
    names = (
        old.name.removeprefix("state-").removesuffix(".json") for old in folder.files((".json",))
    )
    return [int(number) for number in names if number.isdigit()]


def load_state(folder: Folder, step: int, config: DetectorConfig | None = None) -> StreamState:
    """The state step `step` saved; a fresh one for step 0 or a state that is gone."""
    if step <= 0:
        return StreamState(detectors=ErrorDetectors(config))
    try:
        saved = json.loads(folder.read_bytes(STATE_FILE.format(step=step)))
    except FileNotFoundError:
        logger.warning("error stream: state %d is gone in %s; starting afresh", step, folder)
        return StreamState(detectors=ErrorDetectors(config))
    return StreamState.from_json(saved, config)
