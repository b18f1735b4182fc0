"""Turn the search's best point into a registered `@candidate` with full lineage: no
version takes traffic before its gate has judged it."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import ColSpec, Schema

from driftloop.data import TrainingSet
from driftloop.estimation import TAG_CALIBRATION, calibration_tag, confidence_calibration
from driftloop.hpo import SearchResult
from driftloop.modelcard import holdout_slices, render_card, residual_plot
from driftloop.onnx_export import ONNX_ARTIFACT_DIR, ONNX_FILE, TAG_ONNX, export_onnx
from driftloop.registry import (
    CANDIDATE,
    TAG_DATA_HASH,
    TAG_GIT_COMMIT,
    TAG_LINEAGE,
    TAG_SHA256,
    TAG_STUDY,
    TAG_TRIGGER,
    Registry,
    VersionInfo,
    directory_sha256,
)
from driftloop.schema import DatasetSchema
from driftloop.settings import PROJECT_ROOT, Settings
from driftloop.training import (
    TRUSTED_TYPES,
    Evaluation,
    evaluate,
    limited_threads,
    make_model,
    model_output,
)
from driftloop.versioning import TAG_CONTRACT, TAG_SEMVER, contract_of, next_semver


@dataclass(frozen=True)
class Candidate:
    version: VersionInfo
    newly_registered: bool
    holdout: Evaluation
    run_id: str


# Our feature types as MLflow column types: serving builds its request model from these.
_COLUMN_TYPES = {"int": "long", "float": "double", "str": "string", "bool": "boolean"}


def model_signature(schema: DatasetSchema, output: Any) -> ModelSignature:
    """The request contract from the schema, not inferred from the (float64) training frame:
    an integer stays an integer, a bool a bool, and a feature with gaps is optional. The
    outputs are inferred from the model's own output (probabilities, or predictions)."""
    inputs = Schema(
        [ColSpec(_COLUMN_TYPES[f.dtype], f.name, required=not f.nullable) for f in schema.features]
    )
    return ModelSignature(inputs=inputs, outputs=infer_signature(None, output).outputs)


def serving_requirements() -> list[str]:
    """Pinned from this environment: MLflow's own inference of requirements starts a
    subprocess that re-imports the model and cost ~10 s of every registration here."""
    return [f"{name}=={version(name)}" for name in ("mlflow", "scikit-learn", "skops", "pandas")]


def git_commit() -> str:
    """The code version recorded as lineage; `unknown` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def register_candidate(
    training: TrainingSet,
    search: SearchResult,
    settings: Settings,
    registry: Registry,
    trigger: str,
) -> Candidate:
    """Refit on all training rows, log, register as `@candidate` (serving never reads it;
    only the gate moves it on) with its semantic version bumped from the newest version's;
    reuse an identical version, which keeps its aliases and version."""
    existing = registry.find_by_lineage(search.study_name)
    if existing is not None:
        model = registry.load_verified(existing.version, TRUSTED_TYPES)
        holdout = evaluate(model, *training.xy(training.holdout), training.schema.metric)
        return Candidate(existing, False, holdout, existing.run_id or search.parent_run_id)

    x, y = training.xy(training.train)
    with limited_threads(settings.train_threads):
        model = make_model(search.best_params, training.schema, settings.seed).fit(x, y)
    holdout = evaluate(model, *training.xy(training.holdout), training.schema.metric)
    example = x.head(5)
    with mlflow.start_run(run_id=search.parent_run_id):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=model_signature(training.schema, model_output(model, example)),
            input_example=example,
            serialization_format="skops",
            skops_trusted_types=TRUSTED_TYPES,
            pip_requirements=serving_requirements(),
        )
        mlflow.log_params({f"best.{k}": v for k, v in search.best_params.items()})
        mlflow.log_metrics(holdout.as_metrics("holdout"))
        if training.schema.is_regression and len(training.holdout):
            mlflow.log_figure(residual_plot(model, training), "residuals.png")
        mlflow.set_tags({TAG_DATA_HASH: training.data_hash, TAG_TRIGGER: trigger})
        log_onnx(model, training.schema, pd.concat([training.xy(training.holdout)[0], x]))
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp)
        sha256 = directory_sha256(Path(local))
    tags = lineage_tags(training, search, trigger, sha256, holdout)
    calibration = confidence_calibration(model, *training.xy(training.holdout))
    if calibration is not None:
        tags[TAG_CALIBRATION] = calibration_tag(calibration)
    newest = registry.newest()
    tags[TAG_SEMVER] = next_semver(
        None if newest is None else newest.tags, tags[TAG_CONTRACT], training.data_hash
    )
    card = render_card(
        training, search, holdout, holdout_slices(model, training), semver=tags[TAG_SEMVER]
    )
    version = registry.register(info.model_id, search.parent_run_id, tags, card)
    registry.set_alias(CANDIDATE, version.version)
    return Candidate(version, True, holdout, search.parent_run_id)


def log_onnx(model: Any, schema: DatasetSchema, rows: pd.DataFrame) -> None:
    """In the active run: the pipeline's ONNX export as `onnx/model.onnx` (for onnxruntime
    or Triton elsewhere; outside the model's directory, so its digest is unchanged), and the
    `driftloop.onnx` tag naming it or saying why there is none. Conversion never fails us."""
    exported = export_onnx(model, schema, rows)
    if exported.model is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ONNX_FILE
            path.write_bytes(exported.model)
            mlflow.log_artifact(str(path), artifact_path=ONNX_ARTIFACT_DIR)
    mlflow.set_tag(TAG_ONNX, exported.note)


def lineage_tags(
    training: TrainingSet,
    search: SearchResult,
    trigger: str,
    sha256: str,
    holdout: Evaluation,
) -> dict[str, Any]:
    return {
        TAG_SHA256: sha256,
        TAG_LINEAGE: search.study_name,
        TAG_DATA_HASH: training.data_hash,
        TAG_GIT_COMMIT: git_commit(),
        TAG_STUDY: search.study_name,
        TAG_TRIGGER: trigger,
        "driftloop.params": json.dumps(search.best_params, sort_keys=True),
        "driftloop.train_rows": str(len(training.train)),
        "driftloop.holdout_rows": str(holdout.rows),
        # The primary metric and its holdout value, then every holdout score by name
        # (`driftloop.holdout_accuracy`, `driftloop.holdout_roc_auc`, ...).
        "driftloop.metric": holdout.metric,
        **({} if holdout.value is None else {"driftloop.holdout_score": f"{holdout.value:.6f}"}),
        **{f"driftloop.holdout_{name}": f"{value:.6f}" for name, value in holdout.scores.items()},
        "driftloop.target": training.schema.target,
        "driftloop.task": training.schema.task,
        TAG_CONTRACT: contract_of(training.schema),
        "driftloop.features": json.dumps(training.schema.feature_names),
    }
