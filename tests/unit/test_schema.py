import numpy as np
import pandas as pd
import pytest

from driftloop.schema import DatasetSchema, conform, infer_schema, validate_batch


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
        (lambda f: f.assign(income=f["income"].where(f.index > 3)), {"nulls"}),
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
    assert out["region"].dtype == "int64"
