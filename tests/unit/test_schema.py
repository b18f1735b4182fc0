import json

import numpy as np
import pandas as pd
import pytest

from driftloop.schema import (
    ColumnRules,
    DatasetSchema,
    NullPolicy,
    blank_to_null,
    conform,
    infer_schema,
    validate_batch,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "income": rng.uniform(0, 100, 300),
            "delta": rng.normal(0, 1, 300),
            "region": rng.integers(0, 5, 300),
            "plan": rng.choice(["basic", "pro"], 300),
            "label": rng.integers(0, 2, 300),
        }
    )


def outcome(frame: pd.DataFrame, schema: DatasetSchema, min_rows: int = 100) -> dict[str, bool]:
    return {c.name: c.passed for c in validate_batch(frame, schema, min_rows)}


def test_inference_types_and_bounds(frame: pd.DataFrame) -> None:
    schema = infer_schema(frame, "label")
    kinds = {f.name: (f.kind, f.dtype, f.min) for f in schema.features}
    assert kinds == {
        "income": ("numeric", "float", 0.0),
        "delta": ("numeric", "float", None),
        "region": ("categorical", "int", 0.0),
        "plan": ("categorical", "str", None),
    }
    assert schema.labels == (0, 1)
    assert DatasetSchema.from_json(schema.to_json()) == schema


def test_inference_rejects_missing_target_and_single_class(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="target column 'y' is missing"):
        infer_schema(frame, "y")
    with pytest.raises(ValueError, match="at least two classes"):
        infer_schema(frame.assign(label=1), "label")


def test_good_batch_passes_every_check(frame: pd.DataFrame) -> None:
    schema = infer_schema(frame, "label")
    assert outcome(frame.sample(frac=1, random_state=1), schema) == dict.fromkeys(
        ["schema", "nulls", "ranges", "label_set", "min_rows"], True
    )


@pytest.mark.parametrize(
    ("corrupt", "failing"),
    [
        (lambda f: f.drop(columns=["plan"]), {"schema"}),
        (lambda f: f.assign(extra=1), {"schema"}),
        (lambda f: f.assign(income="lots"), {"schema"}),
        (lambda f: f.assign(region=f["region"] + 0.5), {"schema"}),
        (lambda f: f.assign(income=f["income"].where(f.index % 3 != 0)), {"nulls"}),
        (lambda f: f.assign(label=f["label"].where(f.index > 0)), {"nulls"}),
        (lambda f: f.assign(income=-f["income"]), {"ranges"}),
        (lambda f: f.assign(delta=np.inf), {"ranges"}),
        (lambda f: f.assign(label=f["label"] + 5), {"label_set"}),
        (lambda f: f.head(10), {"min_rows"}),
    ],
)
def test_each_rule_catches_its_problem(frame: pd.DataFrame, corrupt, failing: set[str]) -> None:
    schema = infer_schema(frame, "label")
    result = outcome(corrupt(frame.copy()), schema)
    assert {name for name, passed in result.items() if not passed} == failing


def test_failed_check_names_the_problem(frame: pd.DataFrame) -> None:
    schema = infer_schema(frame, "label")
    checks = validate_batch(frame.drop(columns=["plan"]).assign(extra=1), schema, 1)
    assert checks[0].detail == "missing columns ['plan']; unexpected columns ['extra']"


def test_conform_orders_and_casts(frame: pd.DataFrame) -> None:
    schema = infer_schema(frame, "label")
    shuffled = frame[["label", "plan", "region", "delta", "income"]].astype({"region": "int32"})
    out = conform(shuffled, schema)
    assert list(out.columns) == ["income", "delta", "region", "plan", "label"]
    # What the model takes: numbers as float64 (NaN is a number's gap), text as objects.
    assert out["region"].dtype == "float64"
    assert out["plan"].dtype == object


def test_a_few_gaps_are_data_and_a_jump_in_gaps_is_named(frame: pd.DataFrame) -> None:
    gappy = frame.assign(delta=frame["delta"].where(frame.index % 10 != 0))  # 10 % null
    schema = infer_schema(gappy, "label")
    spec = next(f for f in schema.features if f.name == "delta")
    assert (spec.nullable, spec.null_share) == (True, 0.1)
    assert schema.nullable_features == ["delta"]
    within = gappy.assign(delta=frame["delta"].where(frame.index % 5 != 0))  # 20 %
    assert outcome(within, schema)["nulls"]
    emptied = gappy.assign(delta=np.nan)
    nulls = validate_batch(emptied, schema, 1)[1]
    assert not nulls.passed
    assert nulls.detail == (
        "too many nulls: {'delta': '100.0% null (schema batch 10.0%, allowed 20.0%)'}"
    )
    capped = validate_batch(within, schema, 1, NullPolicy(cap=0.15, tolerance=0.5))[1]
    assert not capped.passed and "allowed 15.0%" in capped.detail


def test_roles_are_configured_or_inferred_and_recorded(frame: pd.DataFrame) -> None:
    n = len(frame)
    table = frame.assign(
        loan_id=[f"L{i}" for i in range(n)],
        row_id=range(n),
        applied_at=pd.date_range("2026-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M"),
        comment=[f"free text number {i}" for i in range(n)],
        branch="north",
        internal=1.5,
        vip=(frame["income"] > 50).astype(object).where(frame.index % 7 != 0, None),
    )
    rules = ColumnRules(id_columns=("loan_id",), ignore_columns=("internal",))
    schema = infer_schema(table, "label", rules)
    roles = {c.name: c.role for c in schema.excluded}
    assert roles == {
        "loan_id": "id",
        "row_id": "identifier-like",
        "applied_at": "datetime",
        "comment": "identifier-like",
        "branch": "constant",
        "internal": "ignored",
    }
    assert schema.feature_names == ["income", "delta", "region", "plan", "vip"]
    vip = schema.features[-1]
    assert (vip.kind, vip.dtype, vip.nullable) == ("numeric", "bool", True)
    assert schema.kept_columns == ["loan_id"]
    assert (schema.task, schema.id_columns) == ("binary", ("loan_id",))
    # Excluded columns may be left out of later batches; kept ones are stored as text.
    assert outcome(table.drop(columns=["comment", "loan_id"]), schema)["schema"]
    stored = conform(table, schema)
    assert list(stored.columns) == [*schema.feature_names, "label", "loan_id"]
    assert stored["vip"].isna().sum() == (frame.index % 7 == 0).sum()
    assert set(stored["vip"].dropna()) == {0.0, 1.0}
    assert DatasetSchema.from_json(schema.to_json()) == schema


def test_a_configured_column_that_is_absent_is_refused(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="'order_id' is not in the file"):
        infer_schema(frame, "label", ColumnRules(id_columns=("order_id",)))


def test_blank_text_is_missing() -> None:
    raw = pd.DataFrame({"plan": ["pro", "", "  ", None], "n": [1, 2, 3, 4]})
    assert blank_to_null(raw)["plan"].isna().tolist() == [False, True, True, True]


def test_a_schema_written_before_roles_existed_still_loads(frame: pd.DataFrame) -> None:
    old = json.loads(infer_schema(frame, "label").to_json())
    for name in ("task", "metric", "id_columns", "timestamp_column", "excluded"):
        old.pop(name)
    for feature in old["features"]:
        feature.pop("nullable"), feature.pop("null_share")
    schema = DatasetSchema.from_json(json.dumps(old))
    assert (schema.task, schema.excluded, schema.features[0].nullable) == ("binary", (), False)
