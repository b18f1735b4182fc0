"""A NumPy-only prediction path compiled from a fitted pipeline, for the serving hot path.

`Pipeline.predict_proba` (or a regressor's `predict`) on a small DataFrame spends most of
its time validating pandas input in the ColumnTransformer, its encoders and
HistGradientBoosting's own internal encoder, not in the trees. At load time the fitted
encoders are compiled into per-feature lookups (category -> code, imputed value,
standardisation constants), so a request's rows become the estimator's float64 matrix
directly, without pandas, and HistGradientBoosting's trees are summed as its `_raw_predict`
does (see `Boosting`), for a classifier and a regressor alike.
Encoders are compiled by asking them: each one transforms its own categories, a missing
value and an unseen one, so infrequent categories and missing values land where scikit-learn
puts them without re-implementing its rules. Only what `make_model` builds is compiled;
anything else raises `NotCompilable` and the model is served by the pandas path.
`serving.model` also compares both paths on probe rows before using this one.

Kept over maintained compilers, measured (issue 16; scripts/bench_fastpath_libs.py, one
thread, median per call interleaved, the loans' 211-tree classifier; docs/benchmarks.md):
- onnxruntime on skl2onnx's whole pipeline: 1.7 ms for 1 row against our 0.8 ms, and wrong
  for this model: skl2onnx writes categorical splits as thresholds (probabilities 0.95
  off) and rounds inputs to float32 (a diabetes split flips, 16.3 off).
- treelite 4.8's interpreter on our encoded matrix: float64-exact (9e-16), faster for a
  few rows (0.5 ms against 0.8 ms at 1, 1.1 against 5.7 ms at 8) but twice slower from 32
  rows; it sums the baseline last, so a regressor is not bit-identical and would fail the
  load check. tl2cgen's C build of it is fastest everywhere (0.3 ms at 1 row, 9 ms at 256)
  but costs a gcc run per version (5 s to 205 s here, 139 s for this model) and a native
  library to load outside skops' allow-list.
- Neither lifts the `scikit-learn<1.10` pin: treelite's importer reads the same private
  attributes (`_predictors`, `_bin_mapper`, `_preprocessor`, `_baseline_prediction`) and
  needs our compiled columns for the encoding anyway.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
from sklearn.utils.validation import check_array

from serving.schemas import FeatureField

NUMERIC_TYPES = {"int", "float", "bool"}


class NotCompilable(Exception):
    """The pipeline holds something the compiler does not reproduce; the message says what."""


def frame_of(rows: Sequence[dict[str, Any]], features: tuple[FeatureField, ...]) -> pd.DataFrame:
    """What the model takes, from request rows (None for missing), in signature order:
    int/float/bool as float64 (missing NaN, bool 1.0/0.0), str as object (str or None)."""
    return pd.DataFrame(
        {
            f.name: np.array(
                [row[f.name] for row in rows],
                dtype=np.float64 if f.type in NUMERIC_TYPES else object,
            )
            for f in features
        }
    )


@dataclass(frozen=True)
class Value:
    """A feature's value as float64: missing becomes `fill` when set (SimpleImputer), then
    standardised as `(x - mean) / scale` when they are set."""

    name: str
    fill: float | None = None
    mean: float | None = None
    scale: float | None = None


@dataclass(frozen=True)
class Indicator:
    """1.0 where the feature is missing, else 0.0 (SimpleImputer's `add_indicator`), then
    standardised when `mean` and `scale` are set."""

    name: str
    mean: float | None = None
    scale: float | None = None


@dataclass(frozen=True)
class Code:
    """An ordinal code looked up by the raw value (None: missing); values not in `codes`
    get `unknown`."""

    name: str
    codes: dict[Any, float]
    unknown: float


@dataclass(frozen=True)
class OneHot:
    """`width` indicator columns; `positions` (None: missing) says which one a value sets,
    a value not in it sets `unknown` (the infrequent column), -1 none of them."""

    name: str
    positions: dict[Any, int]
    unknown: int
    width: int


Column = Value | Indicator | Code | OneHot


def _width(column: Column) -> int:
    return column.width if isinstance(column, OneHot) else 1


# Up to this many rows, all trees are walked at once in NumPy (`Forest`); beyond it, one
# compiled call per tree is cheaper. Measured on the demo's 211-tree model: 1 row 0.7 ms
# against 1.9 ms, 16 rows about even, 100 rows 10.9 ms against 4.0 ms.
FOREST_ROWS = 8
_MISSING_CODE = 256  # the column of `Forest.goes_left` for a missing or negative category


@dataclass(frozen=True)
class Forest:
    """One class's trees as flat node arrays, walked one level per step for every
    (row, tree) pair at once.

    A request of a few rows pays mostly per-call overhead in the per-tree path (~8 us per
    compiled call, hundreds of trees); here it pays one NumPy pass per tree level. Leaves
    point to themselves, so walking the deepest tree's depth finishes every tree. The rules
    are `_predict_one_from_raw_data`'s (sklearn 1.9), with each categorical node's decision
    for every code precomputed in `goes_left`.
    """

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    category_slot: np.ndarray  # -1 for numeric nodes, else the node's row in `goes_left`
    goes_left: np.ndarray  # (categorical nodes, 257): code 0..255, then missing
    value: np.ndarray
    depth: int

    @classmethod
    def of(cls, trees: list[Any], known_cat_bitsets: np.ndarray, f_idx_map: np.ndarray) -> Forest:
        sizes = [tree.nodes.shape[0] for tree in trees]
        starts = np.cumsum([0, *sizes[:-1]]).astype(np.intp)
        nodes = np.concatenate([tree.nodes for tree in trees])
        offset = np.repeat(starts, sizes)
        leaf = nodes["is_leaf"].astype(bool)
        itself = np.arange(len(nodes), dtype=np.intp)
        missing_left = nodes["missing_go_to_left"].astype(bool)
        categorical = np.flatnonzero(nodes["is_categorical"].astype(bool) & ~leaf)
        slot = np.full(len(nodes), -1, dtype=np.intp)
        slot[categorical] = np.arange(len(categorical))
        tree_of = np.repeat(np.arange(len(trees)), sizes)
        codes = np.arange(256)
        goes_left = np.empty((len(categorical), 257), dtype=bool)
        for row, node in enumerate(categorical):
            left_set = trees[tree_of[node]].raw_left_cat_bitsets[nodes["bitset_idx"][node]]
            known = known_cat_bitsets[f_idx_map[nodes["feature_idx"][node]]]
            in_left = (left_set[codes // 32] >> (codes % 32)) & 1 == 1
            is_known = (known[codes // 32] >> (codes % 32)) & 1 == 1
            goes_left[row, :256] = in_left | (~is_known & missing_left[node])
            goes_left[row, _MISSING_CODE] = missing_left[node]
        return cls(
            roots=starts,
            feature=np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp),
            threshold=nodes["num_threshold"].astype(np.float64),
            missing_left=missing_left,
            left=np.where(leaf, itself, nodes["left"].astype(np.intp) + offset),
            right=np.where(leaf, itself, nodes["right"].astype(np.intp) + offset),
            category_slot=slot,
            goes_left=goes_left,
            value=nodes["value"].astype(np.float64),
            depth=max(tree.get_max_depth() for tree in trees),
        )

    def leaf_values(self, x: np.ndarray) -> np.ndarray:
        """Each tree's leaf value for each row: shape (rows, trees)."""
        at = np.tile(self.roots, (x.shape[0], 1))
        rows = np.arange(x.shape[0])[:, None]
        for _ in range(self.depth):
            value = x[rows, self.feature[at]]
            left = value <= self.threshold[at]
            missing = np.isnan(value)
            if missing.any():
                left[missing] = self.missing_left[at[missing]]
            slot = self.category_slot[at]
            categorical = slot >= 0
            if categorical.any():
                code = value[categorical]
                code = np.where(np.isnan(code) | (code < 0), _MISSING_CODE, np.clip(code, 0, 255))
                left[categorical] = self.goes_left[slot[categorical], code.astype(np.intp)]
            at = np.where(left, self.left[at], self.right[at])
        return self.value[at]


@dataclass(frozen=True)
class Boosting:
    """HistGradientBoosting's `_raw_predict` on an already encoded matrix, then the
    classifier's probabilities or the regressor's inverse link (identity for squared error).

    The same private calls in the same order as scikit-learn 1.9 (pinned in pyproject), minus
    per-call input validation and re-encoding, which the compiled columns already did; a few
    rows go through `Forest` instead.
    """

    predictors: list[list[Any]]
    known_cat_bitsets: np.ndarray
    f_idx_map: np.ndarray
    baseline: np.ndarray
    loss: Any
    forests: tuple[Forest, ...]

    @classmethod
    def of(
        cls, estimator: HistGradientBoostingClassifier | HistGradientBoostingRegressor
    ) -> Boosting:
        bitsets, f_idx_map = estimator._bin_mapper.make_known_categories_bitsets()
        predictors = estimator._predictors
        forests = tuple(
            Forest.of([iteration[k] for iteration in predictors], bitsets, f_idx_map)
            for k in range(len(predictors[0]))
        )
        baseline = estimator._baseline_prediction
        return cls(predictors, bitsets, f_idx_map, baseline, estimator._loss, forests)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """The classifier's `predict_proba`."""
        return self.loss.predict_proba(self.raw(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The regressor's `predict`: one value per row."""
        return self.loss.link.inverse(self.raw(x).ravel())

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The baseline plus every tree's leaf value: shape (rows, trees per iteration)."""
        if x.shape[0] <= FOREST_ROWS:
            # Summed left to right from the baseline (cumsum is sequential), the order
            # `_raw_predict` adds trees in, so the sums are bit-identical.
            return np.stack(
                [
                    np.cumsum(np.hstack([np.full((len(x), 1), start), forest.leaf_values(x)]), 1)
                    for start, forest in zip(self.baseline.ravel(), self.forests, strict=True)
                ],
                axis=1,
            )[:, :, -1]
        raw = np.zeros((x.shape[0], self.baseline.shape[-1]), self.baseline.dtype, order="F")
        raw += self.baseline
        n_threads = _openmp_effective_n_threads()
        for predictors_of_iteration in self.predictors:
            for k, predictor in enumerate(predictors_of_iteration):
                raw[:, k] += predictor.predict(x, self.known_cat_bitsets, self.f_idx_map, n_threads)
        return raw


@dataclass(frozen=True)
class CompiledPipeline:
    """Request rows to the pipeline's output: a classifier's `predict_proba` (rows by
    classes), a regressor's `predict` (one float64 per row)."""

    columns: tuple[Column, ...]
    sparse_output: bool
    order: Literal["C", "F"]
    estimate: Callable[[Any], np.ndarray]
    features: tuple[FeatureField, ...]

    def matrix(self, rows: Sequence[dict[str, Any]]) -> np.ndarray | sparse.csr_matrix:
        """The final estimator's input, in the ColumnTransformer's output layout and format."""
        out = np.zeros((len(rows), sum(_width(c) for c in self.columns)), order=self.order)
        start = 0
        for column in self.columns:
            values = [row[column.name] for row in rows]
            if isinstance(column, Code):
                out[:, start] = [column.codes.get(v, column.unknown) for v in values]
            elif isinstance(column, OneHot):
                unknown = column.unknown
                hot = np.array([column.positions.get(v, unknown) for v in values], dtype=np.intp)
                seen = np.flatnonzero(hot >= 0)
                out[seen, start + hot[seen]] = 1.0
            else:
                x = np.asarray(values, dtype=np.float64)  # None is NaN, a bool 1.0 or 0.0
                if isinstance(column, Indicator):
                    x = np.isnan(x).astype(np.float64)
                elif column.fill is not None:
                    x[np.isnan(x)] = column.fill
                if column.mean is not None:
                    x -= column.mean
                if column.scale is not None:
                    x /= column.scale
                out[:, start] = x
            start += _width(column)
        # The same zero-free, column-sorted CSR as ColumnTransformer's sparse hstack.
        return sparse.csr_matrix(out) if self.sparse_output else out

    def output(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        return self.estimate(self.matrix(rows))

    def probe_rows(self, example: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows to check this path against the pipeline: the example (NaN read as None),
        then every known category of every feature (infrequent ones included), one unseen
        category, a missing value of each feature that can be missing, and random mixes."""
        rng = np.random.default_rng(0)
        types = {f.name: f.type for f in self.features}
        example = [{k: None if _missing(v) else v for k, v in row.items()} for row in example]
        base = dict(example[0])
        categories: dict[str, list[Any]] = {}
        for column in self.columns:
            if isinstance(column, Code | OneHot) and column.name not in categories:
                lookup = column.codes if isinstance(column, Code) else column.positions
                known = [request_value(v, types[column.name]) for v in lookup if v is not None]
                categories[column.name] = [*known, _unseen(known, types[column.name])]
        # A blank string reaches the model as missing even where the feature is not nullable.
        missable = {f.name for f in self.features if f.nullable or f.type == "str"}
        rows = [dict(row) for row in example]
        rows += [{**base, name: v} for name, values in categories.items() for v in values]
        rows += [{**base, name: None} for name in sorted(missable)]
        for _ in range(32):
            row = {}
            for field in self.features:
                seen = [r[field.name] for r in example if r[field.name] is not None]
                if field.name in missable and rng.random() < 0.2:
                    row[field.name] = None
                elif field.name in categories:
                    options = categories[field.name]
                    row[field.name] = options[rng.integers(len(options))]
                elif field.type in ("int", "float"):
                    low, high = (min(seen), max(seen)) if seen else (0, 1)
                    value = rng.uniform(low, high + 1)
                    row[field.name] = int(value) if field.type == "int" else float(value)
                elif field.type == "bool":
                    row[field.name] = bool(rng.integers(2))
                else:
                    row[field.name] = seen[rng.integers(len(seen))] if seen else None
            rows.append(row)
        return rows


def _missing(value: Any) -> bool:
    """None or NaN: how a missing value reaches us from a request, a frame or an encoder."""
    return value is None or (isinstance(value, float) and value != value)


def request_value(value: Any, kind: str) -> Any:
    """A fitted or framed value as a request carries it: int and bool features are floats
    in the frame (and in an int feature's fitted categories)."""
    value = _python(value)
    if kind == "int":
        return int(value)
    return bool(value) if kind == "bool" else value


def _unseen(known: list[Any], kind: str) -> Any:
    """A value of the feature's type that is none of the known categories."""
    if kind in NUMERIC_TYPES:
        value = max(known, default=0) + 1
        return int(value) if kind == "int" else float(value)
    return max(known, default="") + "\x00"


def compile_pipeline(pipeline: Any, features: tuple[FeatureField, ...]) -> CompiledPipeline:
    """Compile `Pipeline([ColumnTransformer, estimator])` as `make_model` builds it, the
    estimator a HistGradientBoosting classifier or regressor, LogisticRegression or Ridge;
    raise `NotCompilable` for anything else."""
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise NotCompilable("not a two-step Pipeline")
    encode, estimator = (step for _, step in pipeline.steps)
    types = {f.name: f.type for f in features}
    names = list(getattr(encode, "feature_names_in_", []))
    if not isinstance(encode, ColumnTransformer) or not set(names) <= set(types):
        raise NotCompilable("the first step is not a ColumnTransformer over signature columns")
    inputs: list[Column | None] = [Value(n) for n in names]
    columns = _compile_columns(encode, inputs, types)
    if hasattr(estimator, "feature_names_in_"):
        raise NotCompilable("the estimator was fitted with feature names")
    if sum(_width(c) for c in columns) != estimator.n_features_in_:
        raise NotCompilable("the encoded width differs from what the estimator was fitted on")
    if isinstance(estimator, LogisticRegression | Ridge):
        order = "C" if encode.sparse_output_ else _dense_order(encode, columns, types)
        linear = estimator.predict if isinstance(estimator, Ridge) else estimator.predict_proba
        return CompiledPipeline(columns, encode.sparse_output_, order, linear, features)
    boosting = HistGradientBoostingClassifier | HistGradientBoostingRegressor
    if not isinstance(estimator, boosting) or encode.sparse_output_:
        raise NotCompilable(f"no fast path for {type(estimator).__name__}")
    if estimator._preprocessor is not None:  # its own encoder of the categorical columns
        columns = _compile_columns(estimator._preprocessor, _per_output(columns), types)
    trees = Boosting.of(estimator)
    regressor = isinstance(estimator, HistGradientBoostingRegressor)
    estimate = trees.predict if regressor else trees.predict_proba
    return CompiledPipeline(columns, False, "C", estimate, features)


def _dense_order(
    encode: ColumnTransformer, columns: tuple[Column, ...], types: dict[str, str]
) -> Literal["C", "F"]:
    """The memory order of the ColumnTransformer's dense output, asked of it on two rows.

    It decides the order in which BLAS sums a linear model's dot products, so the last bits
    of its probabilities or predictions: numeric blocks come from DataFrames in F order,
    encoders give C.
    """
    row: dict[str, Any] = {
        name: 0.0 if types[name] in NUMERIC_TYPES else "" for name in encode.feature_names_in_
    }
    for column in columns:
        if isinstance(column, Code | OneHot):
            row[column.name] = next(
                iter(column.codes if isinstance(column, Code) else column.positions)
            )
    fields = tuple(FeatureField(name, types[name]) for name in row)
    encoded = encode.transform(frame_of([row, row], fields))
    return "F" if encoded.flags.f_contiguous and not encoded.flags.c_contiguous else "C"


def _per_output(columns: tuple[Column, ...]) -> list[Column | None]:
    """One entry per output column; one-hot columns are None (nothing compiles over them)."""
    return [
        c if isinstance(c, Value | Indicator | Code) else None
        for c in columns
        for _ in range(_width(c))
    ]


def _compile_columns(
    transformer: ColumnTransformer, inputs: list[Column | None], types: dict[str, str]
) -> tuple[Column, ...]:
    """The transformer's output columns, in the order its `output_indices_` puts them."""
    if len(inputs) != transformer.n_features_in_:
        raise NotCompilable(f"a ColumnTransformer over {transformer.n_features_in_} columns")
    placed: list[tuple[int, list[Column]]] = []
    for name, step, selection in transformer.transformers_:
        indices = _indices(transformer, selection)
        if step == "drop" or not indices:
            continue
        chosen = [c for c in (inputs[i] for i in indices) if c is not None]
        if len(chosen) != len(indices):
            raise NotCompilable(f"{name!r} reads a one-hot column")
        compiled = _compile_step(step, chosen, types)
        where = transformer.output_indices_[name]
        if where.stop - where.start != sum(_width(c) for c in compiled):
            raise NotCompilable(f"{name!r} outputs {where.stop - where.start} columns")
        placed.append((where.start, compiled))
    columns: list[Column] = []
    for start, compiled in sorted(placed, key=lambda p: p[0]):
        if start != sum(_width(c) for c in columns):
            raise NotCompilable("transformer outputs are not contiguous")
        columns += compiled
    return tuple(columns)


def _indices(transformer: ColumnTransformer, selection: Any) -> list[int]:
    """Input positions of a column selection given as names, a boolean mask or positions."""
    if isinstance(selection, str | int | slice) or callable(selection):
        raise NotCompilable(f"unsupported column selection {selection!r}")
    selection = list(selection)
    if not selection:
        return []
    if all(isinstance(s, str) for s in selection):
        names = list(getattr(transformer, "feature_names_in_", []))
        if not set(selection) <= set(names):
            raise NotCompilable("selected columns are not among the fitted feature names")
        return [names.index(s) for s in selection]
    return np.arange(transformer.n_features_in_)[np.asarray(selection)].tolist()


def _compile_step(step: Any, inputs: list[Column], types: dict[str, str]) -> list[Column]:
    """One fitted transformer over already compiled input columns."""
    if isinstance(step, Pipeline):
        for _, inner in step.steps:
            if inner not in (None, "passthrough"):
                inputs = _compile_step(inner, inputs, types)
        return inputs
    if isinstance(step, FunctionTransformer) and _is_identity(step):
        return [_as_number(c, types) for c in inputs]
    if isinstance(step, SimpleImputer):
        return _imputed(step, inputs, types)
    if isinstance(step, StandardScaler):
        if not all(_unscaled(c) for c in inputs):
            raise NotCompilable("StandardScaler over encoded or scaled columns")
        means = step.mean_ if step.with_mean else [None] * len(inputs)
        scales = step.scale_ if step.with_std else [None] * len(inputs)
        return [
            dataclasses.replace(_as_number(c, types), mean=_float(m), scale=_float(s))
            for c, m, s in zip(inputs, means, scales, strict=True)
        ]
    if isinstance(step, OrdinalEncoder):
        _check_encoder(step, ("use_encoded_value",))
        return [
            _ordinal(c, asked) for c, asked in zip(inputs, _ask(step, inputs, types), strict=True)
        ]
    if isinstance(step, OneHotEncoder):
        _check_encoder(step, ("ignore", "infrequent_if_exist"))
        if step.drop_idx_ is not None:
            raise NotCompilable("OneHotEncoder with drop")
        if not all(_is_raw(c) for c in inputs):
            raise NotCompilable("OneHotEncoder over transformed columns")
        return [
            _one_hot(c, asked) for c, asked in zip(inputs, _ask(step, inputs, types), strict=True)
        ]
    raise NotCompilable(f"no fast path for {type(step).__name__}")


def _imputed(step: SimpleImputer, inputs: list[Column], types: dict[str, str]) -> list[Column]:
    """SimpleImputer's output: the columns filled with `statistics_`, then one missing
    indicator per feature its `indicator_` chose (those with missing values in fit)."""
    if not all(_is_raw(c) and types[c.name] in NUMERIC_TYPES for c in inputs):
        raise NotCompilable("SimpleImputer over transformed or non-numeric columns")
    if not _missing(step.missing_values):
        raise NotCompilable(f"SimpleImputer(missing_values={step.missing_values!r})")
    indicator = step.indicator_
    if indicator is not None and indicator.sparse not in ("auto", False):
        raise NotCompilable("SimpleImputer with a sparse indicator")
    # (A feature without any value in fit would be dropped: the width check then refuses.)
    columns: list[Column] = [
        Value(c.name, fill=float(statistic))
        for c, statistic in zip(inputs, step.statistics_, strict=True)
    ]
    if indicator is not None:
        columns += [Indicator(inputs[i].name) for i in indicator.features_]
    return columns


@dataclass(frozen=True)
class _Asked:
    """What an encoder outputs for one input column: per category, for missing, for unseen."""

    known: dict[Any, np.ndarray]
    missing: np.ndarray
    unknown: np.ndarray


def _ask(
    step: OrdinalEncoder | OneHotEncoder, inputs: list[Column], types: dict[str, str]
) -> list[_Asked]:
    """Each input column's output block for each of its categories, a missing value and an
    unseen value, from the fitted encoder itself (the other columns hold a value of theirs).

    Raw columns are asked as `frame_of` builds them; codes (HGB's own encoder over the
    ordinal codes) as the float matrix it receives.
    """
    raw = all(_is_raw(c) for c in inputs)
    if not raw and not all(isinstance(c, Code) for c in inputs):
        raise NotCompilable(f"{type(step).__name__} over standardised values")
    names = [c.name for c in inputs]
    if raw and list(getattr(step, "feature_names_in_", [])) != names:
        raise NotCompilable(f"{type(step).__name__} was not fitted on the named columns")
    probes = []
    for column, categories in zip(inputs, step.categories_, strict=True):
        known = [v for v in map(_python, categories) if not _missing(v)]
        probes.append([*known, None, _unseen(known, types[column.name] if raw else "float")])
    widths = step._n_features_outs if isinstance(step, OneHotEncoder) else [1] * len(inputs)
    starts = np.cumsum([0, *widths])
    answers = []
    for j, values in enumerate(probes):
        rows = [[v if k == j else other[0] for k, other in enumerate(probes)] for v in values]
        if raw:
            fields = tuple(FeatureField(n, types[n]) for n in names)
            x: Any = frame_of([dict(zip(names, row, strict=True)) for row in rows], fields)
        else:
            x = np.array(rows, dtype=np.float64)
        out = step.transform(x)
        out = out.toarray() if sparse.issparse(out) else np.asarray(out)
        block = out[:, starts[j] : starts[j + 1]]
        answers.append(
            _Asked(dict(zip(values[:-2], block[:-2], strict=True)), block[-2], block[-1])
        )
    return answers


def _ordinal(column: Column, asked: _Asked) -> Code:
    """Encode a raw value, or re-encode a code (HGB's encoder over ordinal codes)."""
    codes = {k: float(v[0]) for k, v in asked.known.items()}
    missing, unknown = float(asked.missing[0]), float(asked.unknown[0])
    if _is_raw(column):
        return Code(column.name, {**codes, None: missing}, unknown)
    assert isinstance(column, Code)

    def recode(code: float) -> float:
        return missing if _missing(code) else codes.get(code, unknown)

    inner = {raw: recode(code) for raw, code in column.codes.items()}
    return Code(column.name, inner, recode(column.unknown))


def _one_hot(column: Column, asked: _Asked) -> OneHot:
    def position(row: np.ndarray) -> int:
        hot = np.flatnonzero(row)
        if len(hot) > 1 or not np.all((row == 0) | (row == 1)):
            raise NotCompilable(f"OneHotEncoder sets more than one column for {column.name!r}")
        return int(hot[0]) if len(hot) else -1

    positions = {k: position(v) for k, v in asked.known.items()}
    positions[None] = position(asked.missing)
    return OneHot(column.name, positions, position(asked.unknown), len(asked.missing))


def _is_identity(step: FunctionTransformer) -> bool:
    """`"passthrough"` (no function), or check_array to float64 as HGB's numeric columns."""
    func = step.func
    return step.kw_args is None and (
        func is None
        or (
            isinstance(func, functools.partial)
            and func.func is check_array
            and func.args == ()
            and func.keywords.get("dtype") in ([np.float64], np.float64)
            and set(func.keywords) <= {"dtype", "ensure_all_finite"}
        )
    )


def _check_encoder(step: OrdinalEncoder | OneHotEncoder, handle_unknown: tuple[str, ...]) -> None:
    if step.handle_unknown not in handle_unknown:
        raise NotCompilable(f"{type(step).__name__}(handle_unknown={step.handle_unknown!r})")
    if np.dtype(step.dtype) != np.float64:
        raise NotCompilable(f"{type(step).__name__}(dtype={step.dtype})")


def _as_number(column: Column, types: dict[str, str]) -> Column:
    """A column passed through as float64: codes already are; raw values must be numbers."""
    if _is_raw(column) and types[column.name] not in NUMERIC_TYPES:
        raise NotCompilable(f"{column.name!r} is passed through but is not numeric")
    return column


def _unscaled(column: Column) -> bool:
    """A number nothing has standardised yet (raw, imputed or a missing indicator)."""
    return isinstance(column, Value | Indicator) and column.mean is None and column.scale is None


def _is_raw(column: Column) -> bool:
    """Still the request's value as sent: nothing has encoded or scaled it yet."""
    return column == Value(column.name)


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
