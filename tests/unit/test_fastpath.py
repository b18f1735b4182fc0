"""The compiled prediction path gives exactly the pipeline's probabilities, or is not used.

The pipelines are `make_model`'s, fitted on a table with what real data has: gaps in
several columns (numeric, bool, int and str categories), a bool feature, rare categories
beyond `max_categories` (sklearn's infrequent level) and, at prediction time, categories
training never saw.
"""

import dataclasses
from typing import Any

import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler

from driftloop.schema import DatasetSchema, FeatureSpec
from driftloop.training import make_model
from serving.fastpath import CompiledPipeline, NotCompilable, compile_pipeline
from serving.model import LoadedModel, compile_checked, frame_of, training_categories
from serving.schemas import FeatureField

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
# name: (kind, dtype, share of cells blanked)
COLUMNS = {
    "income": ("numeric", "float", 0.15),
    "debt": ("numeric", "float", 0.0),
    "age": ("numeric", "int", 0.1),
    "owner": ("numeric", "bool", 0.1),
    "grade": ("categorical", "int", 0.1),
    "colour": ("categorical", "str", 0.2),
    "region": ("categorical", "str", 0.0),
}
# Which columns a variant keeps. Both kinds; one kind only (the encoders then see empty
# column lists); few categories and no gaps (a dense one-hot output, no indicators).
VARIANTS = {
    "mixed": list(COLUMNS),
    "numeric": ["income", "debt", "age", "owner"],
    "categorical": ["grade", "colour", "region"],
    "complete": ["debt", "region"],
}
MAX_CATEGORIES = 4
COLOURS = ["red", "green", "blue", "amber", "teal", "plum", "rose"]  # the last four rare


def table(rows: int, seed: int, classes: int = 2) -> tuple[list[dict[str, Any]], list[int]]:
    """Request-like rows (None where blank) and their labels."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 0.5, rows)
    debt = rng.exponential(5_000, rows)
    age = rng.integers(18, 80, rows)
    owner = rng.random(rows) < 0.4
    grade = rng.choice(7, rows, p=[0.4, 0.3, 0.15, 0.06, 0.05, 0.03, 0.01]) + 1
    colour = rng.choice(COLOURS, rows, p=[0.4, 0.3, 0.2, 0.04, 0.03, 0.02, 0.01])
    region = rng.choice(["north", "south", "east"], rows)
    score = (
        np.log(income) / 10
        - debt / 20_000
        + 0.3 * owner
        - 0.1 * grade
        + 0.4 * (colour == "red")
        + rng.normal(0, 0.3, rows)
    )
    cut = np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
    labels = np.searchsorted(cut, score).tolist()
    values = {
        "income": income.tolist(),
        "debt": debt.tolist(),
        "age": age.tolist(),
        "owner": owner.tolist(),
        "grade": grade.tolist(),
        "colour": colour.tolist(),
        "region": region.tolist(),
    }
    for name, (_, _, share) in COLUMNS.items():
        for i in np.flatnonzero(rng.random(rows) < share):
            values[name][i] = None
    return [{name: values[name][i] for name in COLUMNS} for i in range(rows)], labels


def schema_of(columns: list[str], classes: int) -> DatasetSchema:
    specs = []
    for name in columns:
        kind, dtype, share = COLUMNS[name]
        specs.append(FeatureSpec(name, kind, dtype, nullable=share > 0, null_share=share))
    return DatasetSchema(
        target="label",
        labels=tuple(range(classes)),
        features=tuple(specs),
        task="binary" if classes == 2 else "multiclass",
        max_categories=MAX_CATEGORIES,
    )


def fields(schema: DatasetSchema) -> tuple[FeatureField, ...]:
    return tuple(FeatureField(f.name, f.dtype, f.nullable) for f in schema.features)


@dataclasses.dataclass(frozen=True)
class Fitted:
    pipeline: Any
    schema: DatasetSchema
    features: tuple[FeatureField, ...]
    holdout: list[dict[str, Any]]
    holdout_labels: list[int]


def fitted(family: str, variant: str, classes: int = 2) -> Fitted:
    schema = schema_of(VARIANTS[variant], classes)
    features = fields(schema)
    rows, labels = table(800, 3, classes)
    pipeline = make_model(FAMILIES[family], schema, seed=0)
    pipeline.fit(frame_of(rows, features), labels)
    holdout, holdout_labels = table(200, 11, classes)
    return Fitted(pipeline, schema, features, holdout, holdout_labels)


def oddities(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Unseen, infrequent and missing values of every kind, alone and together."""
    return [
        {**row, "colour": "a colour never seen"},
        {**row, "colour": "plum"},  # infrequent
        {**row, "colour": None},
        {**row, "grade": 999},
        {**row, "grade": 7},  # infrequent
        {**row, "grade": None, "income": None, "owner": None, "age": None},
        {**row, "region": "west", "owner": True, "age": 10**6},
        {**row, "owner": False, "debt": None},  # missing where training had no gaps
        {k: None for k in row},
    ]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_compiled_probabilities_are_identical(family: str, variant: str) -> None:
    model = fitted(family, variant)
    compiled = compile_pipeline(model.pipeline, model.features)
    rows = model.holdout + oddities(model.holdout[0])
    rows += compiled.probe_rows(rows[:5])  # every category, unseen ones, random mixes
    rows = [{f.name: row[f.name] for f in model.features} for row in rows]
    # Many rows take the per-tree route, up to 8 the all-trees-at-once `Forest`.
    for batch in (rows, rows[:3], rows[:1], rows[-1:], *([row] for row in rows[200:215])):
        expected = model.pipeline.predict_proba(frame_of(batch, model.features))
        assert np.array_equal(compiled.output(batch), expected)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_multiclass_probabilities_are_identical(family: str) -> None:
    model = fitted(family, "mixed", classes=3)
    compiled = compile_pipeline(model.pipeline, model.features)
    rows = model.holdout + oddities(model.holdout[1])
    for batch in (rows, rows[:3], rows[-9:]):
        expected = model.pipeline.predict_proba(frame_of(batch, model.features))
        assert expected.shape == (len(batch), 3)
        assert np.array_equal(compiled.output(batch), expected)


def test_missing_values_take_the_models_missing_branches() -> None:
    """Not a constant stand-in: the answer for a gap is the pipeline's, and differs from
    the answer for any one filled-in value."""
    model = fitted("hist_gradient_boosting", "mixed")
    compiled = compile_pipeline(model.pipeline, model.features)
    row = model.holdout[0]
    gap = compiled.output([{**row, "income": None}])
    filled = compiled.output([{**row, "income": v} for v in (1e3, 2e4, 6e4, 1e6)])
    assert not any(np.array_equal(gap[0], f) for f in filled)


def test_probe_rows_hold_missing_unseen_and_infrequent_values() -> None:
    model = fitted("logistic_regression", "mixed")
    compiled = compile_pipeline(model.pipeline, model.features)
    rows = compiled.probe_rows(model.holdout[:5])
    for feature in model.features:
        if feature.nullable or feature.type == "str":
            assert any(row[feature.name] is None for row in rows), feature.name
    colours = {row["colour"] for row in rows}
    assert set(COLOURS) <= colours and len(colours - set(COLOURS) - {None}) == 1
    assert {1, 7, 8} <= {row["grade"] for row in rows}  # 7 is infrequent, 8 unseen


def test_frame_of_builds_what_the_model_takes() -> None:
    features = fields(schema_of(list(COLUMNS), 2))
    frame = frame_of(
        [{**dict.fromkeys(COLUMNS), "owner": True, "age": 3, "colour": "red"}], features
    )
    assert list(frame.columns) == list(COLUMNS)
    assert frame["colour"].dtype == object and frame["region"].tolist() == [None]
    assert all(frame[n].dtype == np.float64 for n in COLUMNS if n not in ("colour", "region"))
    assert frame.loc[0, "owner"] == 1.0 and frame.loc[0, "age"] == 3.0
    assert np.isnan(frame.loc[0, "income"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_categories_flag_unseen_values(family: str) -> None:
    model = fitted(family, "mixed")
    categories = training_categories(model.pipeline)
    assert categories == {
        "grade": frozenset(range(1, 8)),
        "colour": frozenset(COLOURS),
        "region": frozenset({"north", "south", "east"}),
    }
    loaded_model = loaded(model)
    row = model.holdout[0]
    flagged = loaded_model.unseen(
        [
            row,
            {**row, "colour": "mauve"},
            {**row, "colour": None},
            {**row, "grade": 0, "region": "w"},
        ]
    )
    assert flagged == [None, "colour", None, "grade,region"]


def loaded(model: Fitted, compiled: CompiledPipeline | None = None) -> LoadedModel:
    return LoadedModel(
        alias="champion",
        version="1",
        sha256="0" * 64,
        source="cache",
        pipeline=model.pipeline,
        features=model.features,
        classes=tuple(model.pipeline.classes_.tolist()),
        compiled=compiled,
        categories=training_categories(model.pipeline),
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loaded_model_uses_the_checked_compiled_path(family: str) -> None:
    model = fitted(family, "mixed")
    compiled = compile_checked(loaded(model), model.holdout[:5])
    assert compiled is not None
    served = loaded(model, compiled)
    rows = model.holdout + oddities(model.holdout[2])
    labels, probabilities = served.predict_rows(rows)
    expected_labels, expected = served.predict(frame_of(rows, served.features))
    assert labels == expected_labels and np.array_equal(probabilities, expected)


def test_unknown_steps_fall_back_to_the_pandas_path() -> None:
    model = fitted("logistic_regression", "complete")
    model.pipeline.named_steps["encode"].set_params(numeric=MinMaxScaler())
    model.pipeline.fit(frame_of(model.holdout, model.features), model.holdout_labels)
    with pytest.raises(NotCompilable, match="MinMaxScaler"):
        compile_pipeline(model.pipeline, model.features)
    assert compile_checked(loaded(model), model.holdout[:5]) is None
    _, probabilities = loaded(model).predict_rows(model.holdout)
    expected = model.pipeline.predict_proba(frame_of(model.holdout, model.features))
    assert np.array_equal(probabilities, expected)


def test_a_compiled_path_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    model = fitted("hist_gradient_boosting", "mixed")

    def off_by_a_little(pipeline: Any, features: tuple[FeatureField, ...]) -> CompiledPipeline:
        compiled = compile_pipeline(pipeline, features)
        return dataclasses.replace(compiled, estimate=lambda x: compiled.estimate(x) + 1e-9)

    monkeypatch.setattr("serving.model.compile_pipeline", off_by_a_little)
    assert compile_checked(loaded(model), model.holdout[:5]) is None


def test_an_encoder_that_errors_on_unseen_values_is_not_compiled() -> None:
    model = fitted("hist_gradient_boosting", "categorical")
    encoder = model.pipeline.named_steps["encode"].named_transformers_["categorical"]
    encoder.handle_unknown = "error"
    with pytest.raises(NotCompilable, match="handle_unknown"):
        compile_pipeline(model.pipeline, model.features)
