"""An ONNX export of a registered pipeline, for teams that serve with onnxruntime or Triton.

skl2onnx converts `make_model`'s pipelines with one graph input per feature column: numbers
(int, float, bool) as float32 with NaN for missing, text as strings. The export is only
kept when onnxruntime's answers on real rows match the pipeline's within the tolerances
below; otherwise the reason is recorded instead. It never fails a training run.

What does not export, measured: skl2onnx 1.20 writes HistGradientBoosting's categorical
splits as numeric thresholds (`add_tree_to_attribute_pairs_hist_gradient_boosting` reads
`num_threshold` for every node), so a boosting model with categorical features converts
without error and answers wrongly (probabilities up to 0.99 off on the simulated loans): it
is refused before converting. The linear family's imputer with missing indicators (numeric
gaps in training) and int categories with gaps make skl2onnx raise: noted as it says.
The check covers the rows it is given; a value within float32 rounding of a threshold that
none of them holds can still take the other branch in onnxruntime, as float32 does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from driftloop.schema import DatasetSchema

ONNX_ARTIFACT_DIR = "onnx"
ONNX_FILE = "model.onnx"
TAG_ONNX = "driftloop.onnx"
# The tolerances of the check. onnxruntime computes in float32 here (see `graph`): measured
# by scripts/bench_fastpath_libs.py on 2,000 holdout rows, at most 1.0e-7 on a probability
# and 9.6e-6 on a Friedman target (values up to ~30), where our float64 paths are exact.
# So a probability within 1e-5, a prediction within 1e-5 of the target's scale, is float32's
# rounding; a split taken the other way moves a whole leaf value, orders of magnitude more
# (16.3 on diabetes, tests/unit/test_onnx_export.py), and refuses the export.
PROBABILITY_ATOL = 1e-5
PREDICTION_RTOL = 1e-5
CHECK_ROWS = 2_000
_OPSET = {"": 18, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class OnnxExport:
    """The serialised model when it converted and agreed with the pipeline, else None;
    `note` is what the run's `driftloop.onnx` tag says (where it is, or why there is none)."""

    model: bytes | None
    note: str


def convert(pipeline: Any, schema: DatasetSchema) -> Any:
    """The pipeline as an ONNX ModelProto; refuses what `unconvertible` knows to go wrong."""
    refusal = unconvertible(pipeline)
    if refusal is not None:
        raise ValueError(refusal)
    return graph(pipeline, schema)


def graph(pipeline: Any, schema: DatasetSchema) -> Any:
    """skl2onnx's conversion as it is (classifiers output a plain probability matrix).

    Numbers enter as float32: onnxruntime has no float64 kernel for the tree classifier's
    output nor for the imputer (`Imputer(1)`), and its trees compare float32 thresholds.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    estimator = pipeline.steps[-1][1]
    inputs = [
        (f.name, StringTensorType([None, 1]) if f.dtype == "str" else FloatTensorType([None, 1]))
        for f in schema.features
    ]
    options = {} if schema.is_regression else {id(estimator): {"zipmap": False}}
    with warnings.catch_warnings():
        # onnx's helper warns once per tree attribute that skl2onnx passes bools as ints.
        warnings.simplefilter("ignore", DeprecationWarning)
        return convert_sklearn(pipeline, initial_types=inputs, options=options, target_opset=_OPSET)


def unconvertible(pipeline: Any) -> str | None:
    """Why skl2onnx would convert `pipeline` into something that answers wrongly; None if
    nothing known stands in the way."""
    estimator = pipeline.steps[-1][1]
    categorical = getattr(estimator, "is_categorical_", None)
    if categorical is not None and np.any(categorical):
        return "skl2onnx converts HistGradientBoosting's categorical splits as numeric thresholds"
    return None


_DTYPES = {"tensor(float)": np.float32, "tensor(string)": object}  # what `graph` declares


@dataclass(frozen=True)
class OnnxRunner:
    """An onnxruntime session on one thread (as a serving replica runs), fed from frames."""

    session: Any
    schema: DatasetSchema
    dtypes: dict[str, Any]

    @classmethod
    def of(cls, model: Any, schema: DatasetSchema) -> OnnxRunner:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        serialised = model if isinstance(model, bytes) else model.SerializeToString()
        session = onnxruntime.InferenceSession(
            serialised, options, providers=["CPUExecutionProvider"]
        )
        return cls(session, schema, {i.name: _DTYPES[i.type] for i in session.get_inputs()})

    def feed(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The graph's inputs from a feature frame: one (rows, 1) column per feature,
        missing numbers NaN, missing text the empty string."""
        feed = {}
        for name, dtype in self.dtypes.items():
            column = frame[name]
            if dtype is object:
                values = np.array([v if isinstance(v, str) else "" for v in column], dtype=object)
            else:
                values = pd.to_numeric(column, errors="coerce").to_numpy(dtype)
            feed[name] = values.reshape(-1, 1)
        return feed

    def output(self, frame: pd.DataFrame) -> np.ndarray:
        """What the metrics score: probabilities (rows by classes) or one float64
        prediction per row."""
        outputs = self.session.run(None, self.feed(frame))
        if self.schema.is_regression:
            return np.asarray(outputs[0], dtype=np.float64).ravel()
        return np.asarray(outputs[1], dtype=np.float64)


def disagreement(got: np.ndarray, expected: np.ndarray, regression: bool) -> str | None:
    """Why `got` is not the pipeline's `expected` output within the tolerances; None if it is."""
    if got.shape != expected.shape:
        return f"output shape {got.shape} instead of {expected.shape}"
    worst = float(np.max(np.abs(got - expected))) if got.size else 0.0
    scale = max(1.0, float(np.max(np.abs(expected)))) if regression else 1.0
    limit = PREDICTION_RTOL * scale if regression else PROBABILITY_ATOL
    if not worst <= limit:  # NaN fails too
        return f"max abs difference {worst:.3g} above {limit:.3g} on {len(expected)} rows"
    return None


def export_onnx(pipeline: Any, schema: DatasetSchema, rows: pd.DataFrame) -> OnnxExport:
    """Convert and check against the pipeline on up to CHECK_ROWS of `rows` (real rows).

    Any failure is a note, never an exception: an ONNX copy is a convenience for other
    runtimes, and the registered skops pipeline is what driftloop serves.
    """
    rows = rows.head(CHECK_ROWS)
    try:
        model = convert(pipeline, schema)
        got = OnnxRunner.of(model, schema).output(rows)
        expected = pipeline.predict(rows) if schema.is_regression else pipeline.predict_proba(rows)
        problem = disagreement(got, np.asarray(expected, dtype=np.float64), schema.is_regression)
    except Exception as error:  # skl2onnx and onnxruntime raise many kinds; none may fail us
        return OnnxExport(None, f"unavailable: {_reason(error)}")
    if problem is not None:
        return OnnxExport(None, f"unavailable: {problem}")
    return OnnxExport(model.SerializeToString(), f"{ONNX_ARTIFACT_DIR}/{ONNX_FILE}")


def _reason(error: Exception) -> str:
    """A one-line reason about the model's structure (converters name steps, not data)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:240]
