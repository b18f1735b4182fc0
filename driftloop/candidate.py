"""Turn the search's best point into a registered `@challenger` with full lineage."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import infer_signature

from driftloop.data import TrainingSet
from driftloop.hpo import SearchResult
from driftloop.modelcard import holdout_slices, render_card
from driftloop.registry import (
    CHALLENGER,
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
from driftloop.settings import PROJECT_ROOT, Settings
from driftloop.training import TRUSTED_TYPES, Evaluation, evaluate, limited_threads, make_model


@dataclass(frozen=True)
class Candidate:
    version: VersionInfo
    newly_registered: bool
    holdout: Evaluation
    run_id: str


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
    """Refit on all training rows, log, register and alias; reuse an identical version."""
    existing = registry.find_by_lineage(search.study_name)
    if existing is not None:
        model = registry.load_verified(existing.version, TRUSTED_TYPES)
        holdout = evaluate(model, *training.xy(training.holdout))
        return Candidate(existing, False, holdout, existing.run_id or search.parent_run_id)

    x, y = training.xy(training.train)
    with limited_threads(settings.train_threads):
        model = make_model(search.best_params, training.schema, settings.seed).fit(x, y)
    holdout = evaluate(model, *training.xy(training.holdout))
    example = x.head(5)
    with mlflow.start_run(run_id=search.parent_run_id):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict_proba(example)),
            input_example=example,
            serialization_format="skops",
            skops_trusted_types=TRUSTED_TYPES,
            pip_requirements=serving_requirements(),
        )
        mlflow.log_params({f"best.{k}": v for k, v in search.best_params.items()})
        mlflow.log_metrics(holdout.as_metrics("holdout"))
        mlflow.set_tags({TAG_DATA_HASH: training.data_hash, TAG_TRIGGER: trigger})
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp)
        sha256 = directory_sha256(Path(local))
    tags = lineage_tags(training, search, trigger, sha256, holdout)
    card = render_card(training, search, holdout, holdout_slices(model, training))
    version = registry.register(info.model_id, search.parent_run_id, tags, card)
    registry.set_alias(CHALLENGER, version.version)
    return Candidate(version, True, holdout, search.parent_run_id)


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
        "driftloop.holdout_accuracy": f"{holdout.accuracy:.6f}",
        "driftloop.target": training.schema.target,
        "driftloop.features": json.dumps(training.schema.feature_names),
    }
