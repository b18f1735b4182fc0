"""The dataset contract: inferred from the first accepted batch, then enforced on every batch.

Nothing here knows which dataset it is: a schema is a target column, its label set
and typed features. It is saved as JSON so a person can tighten it (add `min`/`max`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

# Integer columns with at most this many distinct values are treated as categories
# (codes such as zip code or education level), which decides encoding and model-card slices.
MAX_CATEGORICAL_CODES = 32


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: Literal["numeric", "categorical"]
    dtype: Literal["int", "float", "str"]
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class DatasetSchema:
    target: str
    labels: tuple[Any, ...]
    features: tuple[FeatureSpec, ...]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_json_scalar)

    @classmethod
    def from_json(cls, text: str) -> DatasetSchema:
        raw = json.loads(text)
        return cls(
            target=raw["target"],
            labels=tuple(raw["labels"]),
            features=tuple(FeatureSpec(**f) for f in raw["features"]),
        )


@dataclass(frozen=True)
class CheckOutcome:
    """One validation rule's verdict on one batch; `detail` says what is wrong."""

    name: str
    passed: bool
    detail: str
    metadata: dict[str, Any] = field(default_factory=dict)


CHECK_NAMES = ("schema", "nulls", "ranges", "label_set", "min_rows")


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


def infer_schema(frame: pd.DataFrame, target: str) -> DatasetSchema:
    """Infer a schema from a first batch; non-negative numeric columns must stay non-negative."""
    if target not in frame.columns:
        raise ValueError(f"target column {target!r} is missing (columns: {list(frame.columns)})")
    labels = frame[target].dropna().unique().tolist()
    if len(labels) < 2:
        raise ValueError(f"target column {target!r} needs at least two classes, found {labels}")
    features = []
    for name in frame.columns:
        if name == target:
            continue
        column = frame[name]
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            features.append(FeatureSpec(name, "categorical", "str"))
        elif pd.api.types.is_integer_dtype(column):
            kind = "categorical" if column.nunique() <= MAX_CATEGORICAL_CODES else "numeric"
            features.append(FeatureSpec(name, kind, "int", min=_floor(column)))
        else:
            features.append(FeatureSpec(name, "numeric", "float", min=_floor(column)))
    return DatasetSchema(target=target, labels=tuple(sorted(labels)), features=tuple(features))


def _floor(column: pd.Series) -> float | None:
    return 0.0 if column.min() >= 0 else None


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


def validate_batch(frame: pd.DataFrame, schema: DatasetSchema, min_rows: int) -> list[CheckOutcome]:
    """Run every rule; later rules only look at columns the schema rule accepted."""
    outcomes = [_check_schema(frame, schema)]
    present = [f for f in schema.features if f.name in frame.columns]
    outcomes.append(_check_nulls(frame, schema, present))
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
    expected = {*schema.feature_names, schema.target}
    missing = sorted(expected - set(frame.columns))
    unexpected = sorted(set(frame.columns) - expected)
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
    if spec.dtype == "str":
        return True
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        return False
    if spec.dtype == "int" and not pd.api.types.is_integer_dtype(column):
        values = column.dropna()
        return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
    return True


def _check_nulls(
    frame: pd.DataFrame, schema: DatasetSchema, present: list[FeatureSpec]
) -> CheckOutcome:
    columns = [f.name for f in present] + ([schema.target] if schema.target in frame else [])
    nulls = {name: int(frame[name].isna().sum()) for name in columns}
    with_nulls = {name: count for name, count in nulls.items() if count}
    return CheckOutcome(
        "nulls",
        not with_nulls,
        f"null values in {with_nulls}" if with_nulls else "no null values",
        {"null_counts": with_nulls},
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
    if schema.target not in frame:
        return CheckOutcome("label_set", False, f"target column {schema.target!r} is missing")
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


def _python_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def conform(frame: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """Order and cast columns to the schema, so every stored batch has identical dtypes."""
    columns = {}
    for spec in schema.features:
        column = frame[spec.name]
        if spec.dtype == "str":
            columns[spec.name] = column.astype(str)
        elif spec.dtype == "int":
            columns[spec.name] = column.astype("int64")
        else:
            columns[spec.name] = column.astype("float64")
    columns[schema.target] = frame[schema.target]
    return pd.DataFrame(columns)
