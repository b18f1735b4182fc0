"""The ONNX copy stored at registration answers as the pipeline does, or is not stored and
the run says why; conversion never fails a training run.

Pipelines are `make_model`'s on real tables: the fast path's table (gaps, a bool, int and
text categories), scikit-learn's diabetes. onnxruntime is judged on holdout rows the export
check never saw.
"""

from functools import cache
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from driftloop.candidate import log_onnx
from driftloop.onnx_export import (
    PROBABILITY_ATOL,
    TAG_ONNX,
    OnnxRunner,
    disagreement,
    export_onnx,
)
from driftloop.registry import configure_tracking, ensure_experiment
from driftloop.schema import infer_schema
from driftloop.settings import Settings
from driftloop.training import make_model
from serving.fastpath import frame_of
from tests.datasets import TARGET, diabetes
from tests.unit.test_fastpath import FAMILIES, Fitted, fitted

# Each pipeline is fitted once for the module: fitting is most of these tests' time.
fitted_once = cache(fitted)


def check_rows(model: Fitted) -> pd.DataFrame:
    """Rows the export is checked on: the training table's own kind, not the holdout."""
    from tests.unit.test_fastpath import table

    rows, _ = table(400, 5)
    return frame_of(rows, model.features)


def test_a_boosting_model_on_numbers_exports_and_onnxruntime_agrees_on_new_rows() -> None:
    model = fitted_once("hist_gradient_boosting", "numeric")  # gaps in income, age and owner
    exported = export_onnx(model.pipeline, model.schema, check_rows(model))
    assert exported.note == "onnx/model.onnx"
    assert exported.model is not None
    holdout = frame_of(model.holdout, model.features)
    got = OnnxRunner.of(exported.model, model.schema).output(holdout)
    expected = model.pipeline.predict_proba(holdout)
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= PROBABILITY_ATOL


def test_a_linear_model_without_gaps_exports() -> None:
    model = fitted_once("logistic_regression", "complete")  # a number and a text category
    exported = export_onnx(model.pipeline, model.schema, check_rows(model))
    assert exported.model is not None, exported.note
    holdout = frame_of(model.holdout, model.features)
    got = OnnxRunner.of(exported.model, model.schema).output(holdout)
    assert disagreement(got, model.pipeline.predict_proba(holdout), regression=False) is None


@cache
def diabetes_model(family: str) -> tuple:
    frame = diabetes()
    schema = infer_schema(frame, TARGET)
    x, y = frame[schema.feature_names], frame[TARGET]
    params = FAMILIES.get(family, {"family": family, "alpha": 1.0})
    return make_model(params, schema, seed=0).fit(x.iloc[:300], y.iloc[:300]), schema, x


def test_a_linear_regressor_exports_within_the_targets_scale() -> None:
    pipeline, schema, x = diabetes_model("ridge")
    exported = export_onnx(pipeline, schema, x.iloc[:300])
    assert exported.model is not None, exported.note
    got = OnnxRunner.of(exported.model, schema).output(x.iloc[300:])
    assert disagreement(got, pipeline.predict(x.iloc[300:]), regression=True) is None


def test_a_split_that_float32_takes_the_other_way_refuses_the_export() -> None:
    """diabetes holds a value one float64 ulp above one of the boosting model's thresholds
    (bp 0.01842953453818744): onnxruntime's float32 input rounds it onto the other side,
    16.3 away on a target of ~150. Checked on every row, as registration does, the export
    is refused with that number rather than stored."""
    pipeline, schema, x = diabetes_model("hist_gradient_boosting")
    exported = export_onnx(pipeline, schema, x)
    assert exported.model is None
    assert exported.note.startswith("unavailable: max abs difference 16.3 above")


def test_boosting_with_categorical_splits_is_refused_with_the_reason() -> None:
    model = fitted_once("hist_gradient_boosting", "mixed")
    exported = export_onnx(model.pipeline, model.schema, check_rows(model))
    assert exported.model is None
    assert exported.note == (
        "unavailable: ValueError: skl2onnx converts HistGradientBoosting's categorical "
        "splits as numeric thresholds"
    )


def test_what_skl2onnx_cannot_convert_is_a_note_not_an_error() -> None:
    model = fitted_once("logistic_regression", "complete")
    columns = ["debt", "region"]
    custom = Pipeline(
        [
            ("encode", ColumnTransformer([("log", FunctionTransformer(np.log1p), ["debt"])])),
            ("model", LogisticRegression()),
        ]
    )
    frame = check_rows(model)
    custom.fit(frame[columns], np.arange(len(frame)) % 2)
    exported = export_onnx(custom, model.schema, frame)
    assert exported.model is None
    assert exported.note.startswith("unavailable: ")
    assert "FunctionTransformer" in exported.note or "log1p" in exported.note


def test_a_split_taken_the_other_way_is_a_disagreement() -> None:
    expected = np.array([[0.25, 0.75], [0.5, 0.5]])
    assert disagreement(expected + 3e-7, expected, regression=False) is None
    flipped = expected + np.array([[0.0, 0.0], [0.02, -0.02]])
    assert "above" in disagreement(flipped, expected, regression=False)
    assert "shape" in disagreement(expected[:1], expected, regression=False)
    assert disagreement(np.array([150.0002]), np.array([150.0]), regression=True) is None
    assert disagreement(np.array([np.nan]), np.array([150.0]), regression=True) is not None


def test_registration_stores_the_export_as_a_run_artifact_or_tags_why_not(
    home: Settings, tmp_path: Path
) -> None:
    """A real MLflow store: the run of a model that converts holds `onnx/model.onnx`, which
    onnxruntime serves with the pipeline's answers; the run of one that does not holds no
    `onnx/` folder, and its tag says why."""
    configure_tracking(home)
    experiment = ensure_experiment(home, "onnx-export")
    converts = fitted_once("hist_gradient_boosting", "numeric")
    refused = fitted_once("hist_gradient_boosting", "mixed")
    runs = {}
    for name, model in (("converts", converts), ("refused", refused)):
        with mlflow.start_run(experiment_id=experiment) as run:
            log_onnx(model.pipeline, model.schema, check_rows(model))
        runs[name] = run.info.run_id
    client = MlflowClient(home.mlflow_tracking_uri)

    assert client.get_run(runs["converts"]).data.tags[TAG_ONNX] == "onnx/model.onnx"
    local = mlflow.artifacts.download_artifacts(
        run_id=runs["converts"], artifact_path="onnx/model.onnx", dst_path=str(tmp_path)
    )
    holdout = frame_of(converts.holdout, converts.features)
    got = OnnxRunner.of(Path(local).read_bytes(), converts.schema).output(holdout)
    assert disagreement(got, converts.pipeline.predict_proba(holdout), regression=False) is None

    assert client.get_run(runs["refused"]).data.tags[TAG_ONNX].startswith("unavailable: ")
    assert client.list_artifacts(runs["refused"], "onnx") == []
