"""The compiled path of a regressor gives exactly the pipeline's predictions, or is not used.

The pipelines are `make_model`'s for a regression schema (HistGradientBoostingRegressor,
Ridge after the imputer, scaler and one-hot encoder), fitted on the classification tests'
table with a numeric target (gaps, a bool, rare and unseen categories) and on scikit-learn's
diabetes data. Bit for bit: a prediction is on the target's scale, where no tolerance is
right for every target.
"""

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.preprocessing import MinMaxScaler

from driftloop.schema import DatasetSchema, infer_schema
from driftloop.training import DEFAULT_TRIALS, make_model
from serving.fastpath import CompiledPipeline, NotCompilable, compile_pipeline
from serving.model import LoadedModel, compile_checked, frame_of, training_categories
from serving.schemas import FeatureField
from tests.unit.test_fastpath import VARIANTS, fields, oddities, schema_of, table

FAMILIES = {params["family"]: params for params in DEFAULT_TRIALS["regression"]}


def target(rows: list[dict[str, Any]], seed: int) -> list[float]:
    """A numeric target from the rows' values (a gap counts as nothing), with noise."""
    rng = np.random.default_rng(seed)
    return [
        np.log(row["income"] or 2e4) * 10
        - (row["debt"] or 0) / 1_000
        + 3 * bool(row["owner"])
        - 2 * (row["grade"] or 0)
        + 5 * (row["colour"] == "red")
        + float(rng.normal(0, 2))
        for row in rows
    ]


@dataclasses.dataclass(frozen=True)
class Fitted:
    pipeline: Any
    features: tuple[FeatureField, ...]
    holdout: list[dict[str, Any]]


def regression_schema(variant: str) -> DatasetSchema:
    return dataclasses.replace(schema_of(VARIANTS[variant], 2), labels=(), task="regression")


def fitted(family: str, variant: str) -> Fitted:
    schema = regression_schema(variant)
    features = fields(schema)
    rows, _ = table(800, 3)
    pipeline = make_model(FAMILIES[family], schema, seed=0)
    pipeline.fit(frame_of(rows, features), target(rows, 3))
    holdout, _ = table(200, 11)
    return Fitted(pipeline, features, holdout)


def diabetes() -> tuple[pd.DataFrame, DatasetSchema]:
    """scikit-learn's diabetes table in raw units, sex as text, cells blanked in four
    columns: a regression target (214 distinct values) by inference, as ingestion finds it."""
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame["sex"] = frame["sex"].map({1.0: "female", 2.0: "male"}).astype(object)
    rng = np.random.default_rng(0)
    for name in ("bmi", "bp", "s5", "sex"):
        frame.loc[rng.random(len(frame)) < 0.1, name] = None
    schema = infer_schema(frame, "target")
    assert schema.task == "regression" and schema.labels == ()
    return frame, schema


def request_rows(frame: pd.DataFrame, features: tuple[FeatureField, ...]) -> list[dict]:
    return [
        {f.name: None if pd.isna(row[f.name]) else row[f.name] for f in features}
        for _, row in frame.iterrows()
    ]


def loaded(model: Fitted, compiled: CompiledPipeline | None = None) -> LoadedModel:
    return LoadedModel(
        alias="champion",
        version="1",
        sha256="0" * 64,
        source="cache",
        pipeline=model.pipeline,
        features=model.features,
        classes=(),
        compiled=compiled,
        categories=training_categories(model.pipeline),
    )


def assert_identical(model: Fitted, compiled: CompiledPipeline, rows: list[dict]) -> None:
    """Every batch shape the hot path sees: many rows (per-tree), up to 8 (`Forest`), one."""
    for batch in (rows, rows[:8], rows[:3], rows[:1], rows[-1:], *([r] for r in rows[100:115])):
        expected = model.pipeline.predict(frame_of(batch, model.features))
        got = compiled.output(batch)
        assert got.shape == (len(batch),) and got.dtype == np.float64
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_compiled_predictions_are_identical(family: str, variant: str) -> None:
    model = fitted(family, variant)
    compiled = compile_pipeline(model.pipeline, model.features)
    rows = model.holdout + oddities(model.holdout[0])
    rows += compiled.probe_rows(rows[:5])  # every category, unseen ones, random mixes
    assert_identical(model, compiled, [{f.name: r[f.name] for f in model.features} for r in rows])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_compiled_predictions_on_diabetes_are_identical(family: str) -> None:
    frame, schema = diabetes()
    features = fields(schema)
    train, holdout = frame.iloc[:350], frame.iloc[350:]
    pipeline = make_model(FAMILIES[family], schema, seed=0)
    pipeline.fit(train[schema.feature_names], train["target"])
    model = Fitted(pipeline, features, request_rows(holdout, features))
    compiled = compile_pipeline(pipeline, features)
    unseen = {**model.holdout[0], "sex": "not recorded", "bmi": 80.0, "s5": None}
    assert_identical(model, compiled, [*model.holdout, unseen])
    assert compile_checked(loaded(model), model.holdout[:5]) is not None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_loaded_regressor_answers_floats_on_the_checked_compiled_path(family: str) -> None:
    model = fitted(family, "mixed")
    compiled = compile_checked(loaded(model), model.holdout[:5])
    assert compiled is not None
    served = loaded(model, compiled)
    assert served.task == "regression"
    rows = model.holdout + oddities(model.holdout[2])
    predictions, probabilities = served.predict_rows(rows)
    expected = model.pipeline.predict(frame_of(rows, model.features))
    assert probabilities is None and all(type(p) is float for p in predictions)
    assert predictions == expected.tolist()
    assert served.predict(frame_of(rows, model.features)) == (predictions, None)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_compiled_regressor_one_ulp_off_is_not_used(
    family: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A last-bit difference is within the classifier's 1e-12 at this target's scale (one
    ulp of 100 is 1.4e-14); the regressor's check still refuses it."""
    model = fitted(family, "mixed")

    def one_ulp_up(pipeline: Any, features: tuple[FeatureField, ...]) -> CompiledPipeline:
        compiled = compile_pipeline(pipeline, features)
        return dataclasses.replace(
            compiled, estimate=lambda x: np.nextafter(compiled.estimate(x), np.inf)
        )

    monkeypatch.setattr("serving.model.compile_pipeline", one_ulp_up)
    assert compile_checked(loaded(model), model.holdout[:5]) is None
    assert "the compiled path disagrees on probe rows" in caplog.text


def test_an_unknown_step_serves_the_regressor_by_the_pandas_path() -> None:
    model = fitted("ridge", "complete")
    model.pipeline.named_steps["encode"].set_params(numeric=MinMaxScaler())
    model.pipeline.fit(frame_of(model.holdout, model.features), target(model.holdout, 5))
    with pytest.raises(NotCompilable, match="MinMaxScaler"):
        compile_pipeline(model.pipeline, model.features)
    assert compile_checked(loaded(model), model.holdout[:5]) is None
    predictions, probabilities = loaded(model).predict_rows(model.holdout)
    expected = model.pipeline.predict(frame_of(model.holdout, model.features))
    assert probabilities is None and predictions == expected.tolist()
