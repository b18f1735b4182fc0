"""The compiled prediction path gives exactly the pipeline's probabilities, or is not used."""

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import MinMaxScaler

from driftloop.schema import DatasetSchema, conform, infer_schema
from driftloop.simulate import LoanStream
from driftloop.training import make_model
from serving.fastpath import CompiledPipeline, NotCompilable, compile_pipeline
from serving.model import LoadedModel, compile_checked, frame_of
from serving.schemas import FeatureField

TARGET = "label"
FAMILIES = {
    "hist_gradient_boosting": {
        "family": "hist_gradient_boosting",
        "learning_rate": 0.1,
        "max_iter": 30,
        "max_leaf_nodes": 16,
        "min_samples_leaf": 10,
        "l2_regularization": 1e-3,
    },
    "logistic_regression": {"family": "logistic_regression", "C": 1.0},
}
# Which feature columns a variant keeps: both kinds, or only one (the encoders then see
# empty column lists, and HGB has no categorical features of its own to encode). Few
# categories make the one-hot output dense, numeric-only makes it F-ordered.
VARIANTS = {
    "mixed": None,
    "numeric": ["salary", "commission", "age", "loan"],
    "categorical": ["elevel", "car", "zipcode", "hvalue", "hyears"],
    "few_categories": ["salary", "commission", "age", "loan", "elevel"],
}


def loans(rows: int, seed: int, columns: list[str] | None, classes: int) -> pd.DataFrame:
    """Simulated loans; `car` made a string category so both lookup key types are covered."""
    frame = LoanStream(seed=seed).take_frame(rows, TARGET)
    frame["car"] = "car-" + frame["car"].astype(str)
    if classes == 3:
        frame[TARGET] = frame[TARGET] + (frame["age"] > 50)
    if columns is not None:
        frame = frame[[*columns, TARGET]]
    return frame


def fitted(family: str, variant: str, classes: int = 2) -> tuple[Any, DatasetSchema, pd.DataFrame]:
    columns = VARIANTS[variant]
    train = loans(600, 3, columns, classes)
    schema = infer_schema(train, TARGET)
    train = conform(train, schema)
    pipeline = make_model(FAMILIES[family], schema, seed=0)
    pipeline.fit(train[schema.feature_names], train[TARGET])
    return pipeline, schema, conform(loans(200, 11, columns, classes), schema)


def fields(schema: DatasetSchema) -> tuple[FeatureField, ...]:
    return tuple(FeatureField(f.name, f.dtype) for f in schema.features)


def records(frame: pd.DataFrame, schema: DatasetSchema) -> list[dict[str, Any]]:
    return frame[schema.feature_names].to_dict("records")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_compiled_probabilities_are_identical(family: str, variant: str) -> None:
    pipeline, schema, holdout = fitted(family, variant)
    features = fields(schema)
    compiled = compile_pipeline(pipeline, features)
    rows = records(holdout, schema)
    rows += compiled.probe_rows(rows[:5])  # every category, unseen ones, random mixes
    for batch in (rows, rows[:1], rows[-1:]):
        expected = pipeline.predict_proba(frame_of(batch, features))
        assert np.array_equal(compiled.predict_proba(batch), expected)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_multiclass_probabilities_are_identical(family: str) -> None:
    pipeline, schema, holdout = fitted(family, "mixed", classes=3)
    features = fields(schema)
    rows = records(holdout, schema)
    compiled = compile_pipeline(pipeline, features)
    for batch in (rows, rows[:3]):  # many rows take the per-tree route, a few `Forest`
        expected = pipeline.predict_proba(frame_of(batch, features))
        assert expected.shape == (len(batch), 3)
        assert np.array_equal(compiled.predict_proba(batch), expected)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_unknown_categories_match_the_pipeline(family: str) -> None:
    pipeline, schema, holdout = fitted(family, "mixed")
    features = fields(schema)
    row = records(holdout, schema)[0]
    unseen = [
        {**row, "car": "a car never seen"},
        {**row, "zipcode": 999},
        {**row, "car": "", "elevel": -1, "hyears": 10**6},
    ]
    expected = pipeline.predict_proba(frame_of(unseen, features))
    assert np.array_equal(compile_pipeline(pipeline, features).predict_proba(unseen), expected)
    assert np.all(np.isfinite(expected))


def loaded(pipeline: Any, schema: DatasetSchema) -> LoadedModel:
    return LoadedModel(
        alias="champion",
        version="1",
        sha256="0" * 64,
        source="cache",
        pipeline=pipeline,
        features=fields(schema),
        classes=tuple(pipeline.classes_.tolist()),
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loaded_model_uses_the_checked_compiled_path(family: str) -> None:
    pipeline, schema, holdout = fitted(family, "mixed")
    model = loaded(pipeline, schema)
    model = dataclasses.replace(model, compiled=compile_checked(model, holdout.head(5)))
    assert model.compiled is not None
    rows = records(holdout, schema)
    labels, probabilities = model.predict_rows(rows)
    expected_labels, expected = model.predict(frame_of(rows, model.features))
    assert labels == expected_labels and np.array_equal(probabilities, expected)


def test_unknown_steps_fall_back_to_the_pandas_path() -> None:
    pipeline, schema, holdout = fitted("logistic_regression", "mixed")
    pipeline.named_steps["encode"].set_params(numeric=MinMaxScaler())
    pipeline.fit(holdout[schema.feature_names], holdout[TARGET])
    with pytest.raises(NotCompilable, match="MinMaxScaler"):
        compile_pipeline(pipeline, fields(schema))
    model = loaded(pipeline, schema)
    assert compile_checked(model, holdout.head(5)) is None
    rows = records(holdout, schema)
    _, probabilities = model.predict_rows(rows)
    assert np.array_equal(probabilities, pipeline.predict_proba(holdout[schema.feature_names]))


def test_a_compiled_path_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, schema, holdout = fitted("hist_gradient_boosting", "mixed")

    def off_by_a_little(pipeline: Any, features: tuple[FeatureField, ...]) -> CompiledPipeline:
        compiled = compile_pipeline(pipeline, features)
        return dataclasses.replace(compiled, estimate=lambda x: compiled.estimate(x) + 1e-9)

    monkeypatch.setattr("serving.model.compile_pipeline", off_by_a_little)
    assert compile_checked(loaded(pipeline, schema), holdout.head(5)) is None
