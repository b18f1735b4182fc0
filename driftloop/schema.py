"""The dataset contract: inferred from the first accepted batch, then enforced on every batch.

Nothing here knows which dataset it is: a schema is a target column, its label set
and typed features. It is saved as JSON so a person can tighten it (add `min`/`max`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

# Integer columns with at most this many distinct values are treated as categories
# (codes such as zip code or education level), which decides encoding and model-card slices.
MAX_CATEGORICAL_CODES = 32
# With DRIFTLOOP_TASK=auto, a numeric target with more distinct values than this is a
# regression target; fewer is a set of class labels (codes 0..k, ratings 1..5).
MAX_AUTO_CLASSES = 20

Task = Literal["binary", "multiclass", "regression"]
TaskSetting = Literal["auto", "classification", "binary", "multiclass", "regression"]


@dataclass(frozen=True)
class FeatureSpec:
    """One model input. `null_share` is what the schema's first batch had, so later batches
    are judged against the data the model was built for, not against zero."""

    name: str
    kind: Literal["numeric", "categorical"]
    dtype: Literal["int", "float", "str", "bool"]
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    null_share: float = 0.0


Role = Literal["id", "timestamp", "ignored", "identifier-like", "constant", "datetime"]
# Roles whose columns are stored with the batch (joins by business id, ordering by time);
# the other excluded columns are dropped at ingest.
KEPT_ROLES = ("id", "timestamp")


@dataclass(frozen=True)
class ExcludedColumn:
    """A column that is not a feature, and why (shown in `status` and the Dagster UI)."""

    name: str
    role: Role
    reason: str


@dataclass(frozen=True)
class ColumnRules:
    """How columns get their roles: the configured ones, then inference for the rest."""

    id_columns: tuple[str, ...] = ()
    timestamp_column: str | None = None
    ignore_columns: tuple[str, ...] = ()
    id_unique_share: float = 0.9
    max_categories: int = 50
    metric: str | None = None
    task: TaskSetting = "auto"


@dataclass(frozen=True)
class NullPolicy:
    """A batch's null share per column may exceed the schema's by `tolerance`, never `cap`."""

    cap: float = 0.5
    tolerance: float = 0.1

    def allowed(self, spec: FeatureSpec) -> float:
        return min(self.cap, spec.null_share + self.tolerance)


@dataclass(frozen=True)
class DatasetSchema:
    target: str
    labels: tuple[Any, ...]
    features: tuple[FeatureSpec, ...]
    task: Task = "binary"
    metric: str = "accuracy"
    id_columns: tuple[str, ...] = ()
    timestamp_column: str | None = None
    excluded: tuple[ExcludedColumn, ...] = ()
    max_categories: int = 50

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    @property
    def is_regression(self) -> bool:
        """A numeric target: `labels` is empty, and "no classes" means regression everywhere."""
        return self.task == "regression"

    @property
    def nullable_features(self) -> list[str]:
        return [f.name for f in self.features if f.nullable]

    @property
    def kept_columns(self) -> list[str]:
        """Non-feature columns stored with each batch: business ids and the timestamp."""
        return [c.name for c in self.excluded if c.role in KEPT_ROLES]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_json_scalar)

    @classmethod
    def from_json(cls, text: str) -> DatasetSchema:
        raw = json.loads(text)
        return cls(
            target=raw["target"],
            labels=tuple(raw["labels"]),
            features=tuple(FeatureSpec(**f) for f in raw["features"]),
            task=raw.get("task", "binary" if len(raw["labels"]) == 2 else "multiclass"),
            metric=raw.get("metric", "accuracy"),
            id_columns=tuple(raw.get("id_columns", ())),
            timestamp_column=raw.get("timestamp_column"),
            excluded=tuple(ExcludedColumn(**c) for c in raw.get("excluded", ())),
            max_categories=raw.get("max_categories", 50),
        )


@dataclass(frozen=True)
class CheckOutcome:
    """One validation rule's verdict on one batch; `detail` says what is wrong."""

    name: str
    passed: bool
    detail: str
    metadata: dict[str, Any] = field(default_factory=dict)


CHECK_NAMES = ("schema", "nulls", "ranges", "label_set", "min_rows")
# A text column needs this many values before "nearly all distinct" means an identifier.
MIN_ROWS_FOR_IDENTIFIER = 20
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?")
_ID_NAME = re.compile(r"(^|[_\s.-])id$", re.IGNORECASE)


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


def blank_to_null(frame: pd.DataFrame) -> pd.DataFrame:
    """Empty or whitespace-only strings are missing values, as a form left blank is."""
    out = frame.copy()
    for name in out.columns:
        column = out[name]
        if column.dtype == object or pd.api.types.is_string_dtype(column):
            blank = column.map(lambda v: isinstance(v, str) and not v.strip())
            if blank.any():
                out[name] = column.mask(blank, None)
    return out


def infer_schema(
    frame: pd.DataFrame, target: str, rules: ColumnRules = ColumnRules()
) -> DatasetSchema:
    """Infer a schema from a first batch: column roles, feature types, null shares, the
    task and the primary metric. Non-negative numeric columns must stay non-negative."""
    from driftloop.metrics import METRICS, default_metric, metric_named

    if target not in frame.columns:
        raise ValueError(f"target column {target!r} is missing (columns: {list(frame.columns)})")
    for configured in (*rules.id_columns, *rules.ignore_columns, rules.timestamp_column):
        if configured is not None and configured not in frame.columns:
            raise ValueError(f"configured column {configured!r} is not in the file")
    task = _task(frame[target], target, rules.task)
    labels = [] if task == "regression" else frame[target].dropna().unique().tolist()
    features: list[FeatureSpec] = []
    excluded: list[ExcludedColumn] = []
    for name in frame.columns:
        if name == target:
            continue
        role = _role(frame[name], name, rules)
        if role is not None:
            excluded.append(ExcludedColumn(name, *role))
        else:
            features.append(_feature(frame[name], name))
    if not features:
        raise ValueError("no feature columns left after excluding ids, timestamps and constants")
    counts = {str(k): int(v) for k, v in frame[target].value_counts().items()}
    metric = rules.metric or default_metric(task, counts)
    # A misspelt DRIFTLOOP_METRIC fails here, with the choices named, as does one that does
    # not fit the task (rmse for a classification target, accuracy for a numeric one).
    if task not in metric_named(metric).tasks:
        raise ValueError(
            f"metric {metric!r} does not score a {task} task (target {target!r}); choose one "
            f"of {', '.join(m.name for m in METRICS.values() if task in m.tasks)}"
        )
    return DatasetSchema(
        target=target,
        labels=tuple(sorted(_python_scalar(v) for v in labels)),
        features=tuple(features),
        task=task,
        metric=metric,
        id_columns=tuple(rules.id_columns),
        timestamp_column=rules.timestamp_column,
        excluded=tuple(excluded),
        max_categories=rules.max_categories,
    )


def _task(target: pd.Series, name: str, setting: TaskSetting) -> Task:
    """The task `DRIFTLOOP_TASK` names, or the one the first batch's target implies: a
    numeric (not bool) target with more than `MAX_AUTO_CLASSES` distinct values is a
    regression (a price, a duration), anything else classification by its label count."""
    values = target.dropna()
    numeric = pd.api.types.is_numeric_dtype(target) and not _is_bool(target)
    if setting == "auto":
        setting = (
            "regression" if numeric and values.nunique() > MAX_AUTO_CLASSES else "classification"
        )
    if setting == "regression":
        if not numeric:
            raise ValueError(
                f"target column {name!r} ({target.dtype}) is not numeric: it cannot be a "
                "regression target (DRIFTLOOP_TASK=regression)"
            )
        if values.nunique() < 2:
            raise ValueError(f"target column {name!r} needs at least two distinct values")
        if not np.all(np.isfinite(values.to_numpy(dtype=float))):
            raise ValueError(f"target column {name!r} has non-finite values")
        return "regression"
    labels = values.unique().tolist()
    if len(labels) < 2:
        raise ValueError(f"target column {name!r} needs at least two classes, found {labels}")
    implied: Task = "binary" if len(labels) == 2 else "multiclass"
    if setting not in ("classification", implied):
        raise ValueError(
            f"DRIFTLOOP_TASK={setting} but target column {name!r} has {len(labels)} classes"
        )
    return implied


def _role(column: pd.Series, name: str, rules: ColumnRules) -> tuple[Role, str] | None:
    """Why `column` is not a feature, or None when it is one."""
    if name in rules.id_columns:
        return "id", "configured as a business id (DRIFTLOOP_ID_COLUMNS)"
    if name == rules.timestamp_column:
        return "timestamp", "configured as the timestamp (DRIFTLOOP_TIMESTAMP_COLUMN)"
    if name in rules.ignore_columns:
        return "ignored", "configured to ignore (DRIFTLOOP_IGNORE_COLUMNS)"
    values = column.dropna()
    if pd.api.types.is_datetime64_any_dtype(column):
        return "datetime", "dates and times are not features"
    if values.nunique() <= 1:
        return "constant", "one value (or none) in the first batch: nothing to learn from"
    text = _is_text(column)
    if text and values.astype(str).str.match(_ISO_DATE).mean() >= 0.95:
        return "datetime", "ISO dates and times are not features"
    if len(values) >= MIN_ROWS_FOR_IDENTIFIER:
        unique_share = values.nunique() / len(values)
        if text and unique_share > rules.id_unique_share:
            return (
                "identifier-like",
                f"{unique_share:.0%} of its values are distinct (free text or an id)",
            )
        if _ID_NAME.search(name) and pd.api.types.is_integer_dtype(column) and unique_share == 1:
            return "identifier-like", "named like an id and every value is distinct"
    return None


def _is_text(column: pd.Series) -> bool:
    return not _is_bool(column) and not pd.api.types.is_numeric_dtype(column)


def _is_bool(column: pd.Series) -> bool:
    """A bool column, also with nulls (Parquet and CSV then give object dtype)."""
    if pd.api.types.is_bool_dtype(column):
        return True
    values = column.dropna()
    return column.dtype == object and len(values) > 0 and values.map(type).eq(bool).all()


def _feature(column: pd.Series, name: str) -> FeatureSpec:
    nulls = float(column.isna().mean())
    common = {"nullable": nulls > 0, "null_share": round(nulls, 6)}
    if _is_bool(column):
        return FeatureSpec(name, "numeric", "bool", **common)
    if not pd.api.types.is_numeric_dtype(column):
        return FeatureSpec(name, "categorical", "str", **common)
    values = column.dropna()
    # An integer column with gaps reads as float (NaN has no integer): still integers.
    integral = pd.api.types.is_integer_dtype(column) or (
        nulls > 0 and bool(np.all(values == np.round(values)))
    )
    if integral:
        kind = "categorical" if values.nunique() <= MAX_CATEGORICAL_CODES else "numeric"
        return FeatureSpec(name, kind, "int", min=_floor(values), **common)
    return FeatureSpec(name, "numeric", "float", min=_floor(values), **common)


def _floor(values: pd.Series) -> float | None:
    return 0.0 if len(values) and values.min() >= 0 else None


def load_schema(path: Path) -> DatasetSchema | None:
    return DatasetSchema.from_json(path.read_text()) if path.exists() else None


def save_schema_once(schema: DatasetSchema, path: Path) -> DatasetSchema:
    """Write the schema unless one exists; return whichever is in force.

    Exclusive creation makes the first batch win when two ingest runs race.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as out:
            out.write(schema.to_json())
    except FileExistsError:
        return DatasetSchema.from_json(path.read_text())
    os.chmod(path, 0o644)
    return schema


def validate_batch(
    frame: pd.DataFrame, schema: DatasetSchema, min_rows: int, nulls: NullPolicy = NullPolicy()
) -> list[CheckOutcome]:
    """Run every rule; later rules only look at columns the schema rule accepted."""
    outcomes = [_check_schema(frame, schema)]
    present = [f for f in schema.features if f.name in frame.columns]
    outcomes.append(_check_nulls(frame, schema, present, nulls))
    outcomes.append(_check_ranges(frame, present))
    outcomes.append(_check_labels(frame, schema))
    outcomes.append(
        CheckOutcome(
            "min_rows",
            len(frame) >= min_rows,
            f"{len(frame)} rows (minimum {min_rows})",
            {"rows": len(frame), "minimum": min_rows},
        )
    )
    return outcomes


def _check_schema(frame: pd.DataFrame, schema: DatasetSchema) -> CheckOutcome:
    """Features and target must be there; excluded columns may be, nothing else."""
    expected = {*schema.feature_names, schema.target}
    optional = {c.name for c in schema.excluded}
    missing = sorted(expected - set(frame.columns))
    unexpected = sorted(set(frame.columns) - expected - optional)
    wrong_type = [
        f"{f.name} (expected {f.dtype}, got {frame[f.name].dtype})"
        for f in schema.features
        if f.name in frame.columns and not _type_fits(frame[f.name], f)
    ]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if unexpected:
        problems.append(f"unexpected columns {unexpected}")
    if wrong_type:
        problems.append(f"wrong types: {', '.join(wrong_type)}")
    return CheckOutcome(
        "schema",
        not problems,
        "; ".join(problems) or f"{len(expected)} columns as expected",
        {"missing": missing, "unexpected": unexpected, "wrong_type": wrong_type},
    )


def _type_fits(column: pd.Series, spec: FeatureSpec) -> bool:
    values = column.dropna()
    if spec.dtype == "str" or values.empty:  # an all-null column is judged by the null rule
        return True
    if spec.dtype == "bool":
        return _is_bool(column) or bool(
            pd.api.types.is_numeric_dtype(column) and values.isin([0, 1]).all()
        )
    if _is_bool(column) or not pd.api.types.is_numeric_dtype(column):
        return False
    if spec.dtype == "int" and not pd.api.types.is_integer_dtype(column):
        return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
    return True


def _check_nulls(
    frame: pd.DataFrame, schema: DatasetSchema, present: list[FeatureSpec], policy: NullPolicy
) -> CheckOutcome:
    """Missing feature values are data up to what the schema's batch had (plus a tolerance,
    never past the cap); a missing label is not (the row could teach nothing)."""
    shares = {f.name: float(frame[f.name].isna().mean()) for f in present}
    over = {
        f.name: f"{shares[f.name]:.1%} null (schema batch {f.null_share:.1%}, "
        f"allowed {policy.allowed(f):.1%})"
        for f in present
        if shares[f.name] > policy.allowed(f) + 1e-12
    }
    if schema.target in frame:
        missing_labels = int(frame[schema.target].isna().sum())
        if missing_labels:
            over[schema.target] = f"{missing_labels} rows without a label"
    return CheckOutcome(
        "nulls",
        not over,
        f"too many nulls: {over}" if over else "null shares within tolerance",
        {"null_shares": {k: round(v, 4) for k, v in shares.items() if v}, "over": over},
    )


def _check_ranges(frame: pd.DataFrame, present: list[FeatureSpec]) -> CheckOutcome:
    violations: dict[str, str] = {}
    for spec in present:
        if spec.dtype == "str":
            continue
        values = pd.to_numeric(frame[spec.name], errors="coerce").dropna().to_numpy(dtype=float)
        if not np.all(np.isfinite(values)):
            violations[spec.name] = "non-finite values"
        elif spec.min is not None and values.size and values.min() < spec.min:
            violations[spec.name] = f"min {values.min():g} < {spec.min:g}"
        elif spec.max is not None and values.size and values.max() > spec.max:
            violations[spec.name] = f"max {values.max():g} > {spec.max:g}"
    return CheckOutcome(
        "ranges",
        not violations,
        f"out of range: {violations}" if violations else "all values within range",
        {"violations": violations},
    )


def _check_labels(frame: pd.DataFrame, schema: DatasetSchema) -> CheckOutcome:
    """Classification: labels among the schema's classes. Regression: finite numbers."""
    if schema.target not in frame:
        return CheckOutcome("label_set", False, f"target column {schema.target!r} is missing")
    if schema.is_regression:
        return _check_numeric_target(frame[schema.target], schema.target)
    seen = frame[schema.target].dropna().unique().tolist()
    unknown = sorted({_python_scalar(v) for v in seen} - set(schema.labels), key=str)
    return CheckOutcome(
        "label_set",
        not unknown,
        f"unknown labels {unknown} (allowed {list(schema.labels)})"
        if unknown
        else f"labels within {list(schema.labels)}",
        {"unknown": [str(v) for v in unknown]},
    )


def _check_numeric_target(target: pd.Series, name: str) -> CheckOutcome:
    values = target.dropna()
    if _is_bool(target) or not pd.api.types.is_numeric_dtype(target):
        return CheckOutcome(
            "label_set",
            False,
            f"target {name!r} must be numeric for regression, got {target.dtype}",
            {"dtype": str(target.dtype)},
        )
    bad = int((~np.isfinite(values.to_numpy(dtype=float))).sum())
    return CheckOutcome(
        "label_set",
        bad == 0,
        f"{bad} non-finite target values" if bad else "target values are finite numbers",
        {"non_finite": bad},
    )


def target_summary(frame: pd.DataFrame, schema: DatasetSchema) -> dict[str, float]:
    """What a batch's target looks like, for the UI: rows per label for classification;
    count, mean, spread and range for regression (thousands of distinct prices are no
    table to read)."""
    target = frame[schema.target]
    if not schema.is_regression:
        return {str(k): int(v) for k, v in target.value_counts().sort_index().items()}
    values = pd.to_numeric(target, errors="coerce").dropna()
    if values.empty:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": round(float(values.mean()), 6),
        "std": round(float(values.std(ddof=0)), 6),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _python_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def conform(frame: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """The columns the model takes, in schema order and with fixed dtypes (numbers and bools
    as float64 with NaN, text as str or None), then the target and the kept id/timestamp
    columns; every stored batch has identical dtypes. Rows are in timestamp order if set."""
    columns = {}
    for spec in schema.features:
        column = frame[spec.name]
        if spec.dtype == "str":
            columns[spec.name] = column.map(lambda v: None if _is_missing(v) else str(v)).astype(
                object
            )
        else:
            columns[spec.name] = pd.to_numeric(column.astype(object), errors="coerce").astype(
                "float64"
            )
    target = frame[schema.target]
    columns[schema.target] = target.astype("float64") if schema.is_regression else target
    for name in schema.kept_columns:
        if name not in frame.columns:
            continue
        if name == schema.timestamp_column:
            columns[name] = pd.to_datetime(frame[name], utc=True, errors="coerce")
        else:
            columns[name] = frame[name].map(_id_text)
    out = pd.DataFrame(columns)
    if schema.timestamp_column in out.columns:
        out = out.sort_values(schema.timestamp_column, kind="stable").reset_index(drop=True)
    return out


def _id_text(value: Any) -> str | None:
    """An id as text; an integer id read as float because of gaps stays `17`, not `17.0`,
    so it joins the id a client sent when it was served."""
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA
