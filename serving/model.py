"""Loading a registered version for serving: verified, warmed up, and kept on local disk.

A version is only served after its artifact's SHA-256 matches the registry tag, it loads
with the skops allow-list, and it answers its own input example with finite probabilities
(a classifier) or one finite prediction per row (a regressor).
Every verified artifact is copied under `DRIFTLOOP_HOME/serving/models/` and the last good
version per alias is recorded, so a replica starts and keeps serving while MLflow is down.
The cache is never trusted: a copy is hashed again before every load from it, and an
altered one is replaced by the verified download (or refused when the registry is down).

Replicas sharing a home never read-modify-write one record: each replaces its own file
(`last_good/<replica>.json`, atomically), stamping every alias with the time it read the
registry, and a start from the cache takes the newest reading of each alias across the
files. A slow replica that finishes loading a version after a rollback therefore cannot
bring it back: the replica that saw the rollback read the registry later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from mlflow.models import Model
from sklearn.base import is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

from driftloop.registry import (
    MODEL_FILE,
    ArtifactIntegrityError,
    Registry,
    VersionInfo,
    directory_sha256,
)
from driftloop.training import TRUSTED_TYPES
from driftloop.versioning import TAG_SEMVER
from serving.fastpath import (
    FOREST_ROWS,
    CompiledPipeline,
    compile_pipeline,
    frame_of,
    request_value,
)
from serving.schemas import FeatureField, features_from_signature

logger = logging.getLogger(__name__)

Source = Literal["registry", "cache"]
Task = Literal["classification", "regression"]


class ModelRejected(Exception):
    """A version that must not take traffic; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline ready for traffic, with what requests and logs need to know about it."""

    alias: str
    version: str
    sha256: str
    source: Source
    pipeline: Any
    features: tuple[FeatureField, ...]
    # A classifier's classes in its probability columns' order; () for a regressor.
    classes: tuple[Any, ...]
    compiled: CompiledPipeline | None = None
    # The training categories of each categorical feature, to flag unseen values.
    categories: dict[str, frozenset[Any]] = dataclasses.field(default_factory=dict)
    # The version's `driftloop.semver` tag, read once at load; None for a version without.
    semver: str | None = None
    # What every answer of this version repeats (classes, version, semver), encoded once
    # here so that a request only encodes its own predictions (`answer_fields`).
    answer_fields: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields: dict[str, Any] = {"classes": list(self.classes)} if self.classes else {}
        fields |= {"model_version": self.version, "model_semver": self.semver}
        object.__setattr__(self, "answer_fields", json.dumps(fields)[1:-1])

    @property
    def task(self) -> Task:
        return "classification" if self.classes else "regression"

    def output(self, frame: pd.DataFrame) -> np.ndarray:
        """The pipeline's own answer: class probabilities (rows by classes) from a
        classifier, one float64 per row from a regressor."""
        if self.classes:
            return self.pipeline.predict_proba(frame)
        return self.pipeline.predict(frame)

    def predict(self, frame: pd.DataFrame) -> tuple[list[Any], np.ndarray | None]:
        """Each row's prediction (a label, or a regressor's float) and the class
        probabilities (None for a regressor), from one pipeline call."""
        return self._answered(self.output(frame))

    def predict_rows(self, rows: list[dict[str, Any]]) -> tuple[list[Any], np.ndarray | None]:
        """`predict` for request rows: on the compiled path when it was verified at load."""
        if self.compiled is None:
            return self.predict(frame_of(rows, self.features))
        return self._answered(self.compiled.output(rows))

    def unseen(self, rows: list[dict[str, Any]]) -> list[str | None]:
        """Per row, the comma-joined categorical features whose value training never saw
        (a missing value is missing, not unseen); None when there is none."""
        flagged: list[str | None] = [None] * len(rows)
        for name, known in self.categories.items():
            for i, row in enumerate(rows):
                value = row[name]
                if value is not None and value not in known:
                    flagged[i] = name if flagged[i] is None else f"{flagged[i]},{name}"
        return flagged

    def _answered(self, output: np.ndarray) -> tuple[list[Any], np.ndarray | None]:
        if not self.classes:
            return output.tolist(), None  # Python floats: JSON and the log keep every bit
        return [self.classes[i] for i in output.argmax(axis=1)], output


def training_categories(pipeline: Any) -> dict[str, frozenset[Any]]:
    """The categories each categorical feature was fitted with, from the first encoder over
    it in the pipeline's ColumnTransformer (missing values left out); {} for other shapes."""
    encode = pipeline.steps[0][1] if isinstance(pipeline, Pipeline) else None
    if not isinstance(encode, ColumnTransformer):
        return {}
    found: dict[str, frozenset[Any]] = {}
    for _, step, selection in encode.transformers_:
        first = step.steps[0][1] if isinstance(step, Pipeline) else step
        # An encoder over no columns (a table without categories) is never fitted.
        if isinstance(first, OrdinalEncoder | OneHotEncoder) and len(selection):
            names = getattr(first, "feature_names_in_", [])
            for name, categories in zip(names, first.categories_, strict=True):
                values = (c.item() if isinstance(c, np.generic) else c for c in categories)
                found[str(name)] = frozenset(v for v in values if not pd.isna(v))
    return found


def example_rows(example: pd.DataFrame, features: tuple[FeatureField, ...]) -> list[dict[str, Any]]:
    """The input example as request rows: Python values, None where missing."""
    return [
        {
            f.name: None if pd.isna(v) else request_value(v, f.type)
            for f, v in zip(features, row, strict=True)
        }
        for row in example[[f.name for f in features]].itertuples(index=False)
    ]


# Another replica's last-good file untouched for this long, and newer for no alias it
# names, is removed (crash-looping replicas would otherwise leave one file per start).
LAST_GOOD_KEEP_S = 3600.0


class ModelStore:
    """Resolves aliases in the registry and keeps verified copies on local disk."""

    def __init__(self, registry: Registry, cache_dir: Path, writer_id: str = "local") -> None:
        if not writer_id or "/" in writer_id or writer_id.startswith("."):
            raise ValueError(f"a cache writer id is a plain file name: {writer_id!r}")
        self.registry = registry
        self.cache_dir = cache_dir
        self.models_dir = cache_dir / "models"
        self.last_good_dir = cache_dir / "last_good"
        self.legacy_last_good = cache_dir / "last_good.json"  # before per-replica files
        self.writer_id = writer_id
        self._mine: dict[str, dict[str, Any]] = {}  # this replica's file, as last written

    def load(self, alias: str, info: VersionInfo, observed_at: float | None = None) -> LoadedModel:
        """Download, verify the digest, keep a verified copy in the local cache, load the
        download itself (what was hashed, not a copy that could change since) and warm up.
        `observed_at` is when the registry named `info` for `alias` (default: now)."""
        observed_at = time.time() if observed_at is None else observed_at
        if info.sha256 is None:
            raise ModelRejected(f"version {info.version} has no sha256 tag")
        with tempfile.TemporaryDirectory(dir=self._tmp_root()) as tmp:
            local = self.registry.download(info.version, Path(tmp) / "download")
            actual = directory_sha256(local)
            if actual != info.sha256:
                raise ArtifactIntegrityError(
                    f"version {info.version} artifact digest {actual[:12]}… does not match "
                    f"the registered {info.sha256[:12]}…; refusing to load it"
                )
            self._keep(info.version, info.sha256, local)
            semver = info.tags.get(TAG_SEMVER)
            model = _open(alias, info.version, info.sha256, "registry", local, semver)
        self.remember(alias, model, observed_at)
        return model

    def load_cached(self, alias: str) -> LoadedModel | None:
        """The last good version for `alias` from local disk, re-verified; None if absent."""
        entry = self._last_good().get(alias)
        if entry is None or entry.get("version") is None:
            return None
        directory = self._version_dir(entry["version"], entry["sha256"])
        if not directory.exists() or directory_sha256(directory) != entry["sha256"]:
            raise ArtifactIntegrityError(
                f"the cached copy of version {entry['version']} is missing or altered"
            )
        semver = entry.get("semver")  # absent from a record written before semvers
        return _open(alias, entry["version"], entry["sha256"], "cache", directory, semver)

    def remember(self, alias: str, model: LoadedModel, observed_at: float) -> None:
        """`model` is the last good version of `alias` as the registry named it then."""
        entry = {
            "version": model.version,
            "sha256": model.sha256,
            "semver": model.semver,
            "observed_at": observed_at,
        }
        self._record(alias, entry)

    def forget(self, alias: str, observed_at: float | None = None) -> None:
        """The alias is gone from the registry: do not bring it back from the cache."""
        when = time.time() if observed_at is None else observed_at
        self._record(alias, {"version": None, "observed_at": when})

    def _keep(self, version: str, sha256: str, local: Path) -> None:
        """`local` (verified) as the cached copy: an existing copy is kept only while it
        still hashes to `sha256`; an altered one is moved aside and replaced."""
        target = self._version_dir(version, sha256)
        if target.exists():
            if directory_sha256(target) == sha256:
                return
            logger.warning("the cached copy of v%s was altered; replacing it", version)
            aside = Path(tempfile.mkdtemp(dir=self._tmp_root()))
            with contextlib.suppress(OSError):  # another replica sharing the disk moved it
                target.rename(aside / "altered")
            shutil.rmtree(aside, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=self._tmp_root()))
        shutil.copytree(local, staging, dirs_exist_ok=True)
        try:
            staging.rename(target)  # atomic: replicas sharing the disk never see half a copy
        except OSError:  # another replica put its copy there first: fine if it is intact
            shutil.rmtree(staging, ignore_errors=True)
            if not target.exists() or directory_sha256(target) != sha256:
                raise

    def _version_dir(self, version: str, sha256: str) -> Path:
        return self.models_dir / f"v{version}-{sha256[:16]}"

    def _tmp_root(self) -> Path:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        return self.models_dir

    def _last_good(self) -> dict[str, dict[str, Any]]:
        """Per alias the newest reading across every replica's file (and the file of
        before, read as older than any of them)."""
        newest: dict[str, dict[str, Any]] = {}
        for _, entries in self._files():
            for alias, entry in entries.items():
                if alias not in newest or entry["observed_at"] > newest[alias]["observed_at"]:
                    newest[alias] = entry
        return newest

    def _files(self) -> list[tuple[Path, dict[str, dict[str, Any]]]]:
        found = []
        paths = sorted(self.last_good_dir.glob("*.json")) if self.last_good_dir.is_dir() else []
        for path in [self.legacy_last_good, *paths]:
            try:
                raw = json.loads(path.read_text())
                entries = {
                    str(alias): {**entry, "observed_at": float(entry.get("observed_at", 0.0))}
                    for alias, entry in raw.items()
                    if isinstance(entry, dict)
                }
            except (OSError, ValueError, TypeError, AttributeError):
                continue  # absent, or being replaced right now: the others still count
            found.append((path, entries))
        return found

    def _record(self, alias: str, entry: dict[str, Any]) -> None:
        """Replace this replica's own file with `entry` for `alias` (atomically: a reader
        sees the old file or the new one), then remove other replicas' stale files."""
        self._mine[alias] = entry
        self.last_good_dir.mkdir(parents=True, exist_ok=True)
        mine = self.last_good_dir / f"{self.writer_id}.json"
        tmp = self.last_good_dir / f".{self.writer_id}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self._mine, indent=2))
        os.replace(tmp, mine)
        newest = self._last_good()
        for path, entries in self._files():
            if path in (mine, self.legacy_last_good):
                continue
            superseded = all(
                newest[a]["observed_at"] > e["observed_at"] for a, e in entries.items()
            )
            with contextlib.suppress(OSError):
                if superseded and time.time() - path.stat().st_mtime > LAST_GOOD_KEEP_S:
                    path.unlink()


def _open(
    alias: str,
    version: str,
    sha256: str,
    source: Source,
    directory: Path,
    semver: str | None = None,
) -> LoadedModel:
    """Load with the skops allow-list and refuse a model that fails its own input example;
    a regressor (`is_regressor` asks the pipeline's final step) has no classes."""
    import skops.io

    started = time.perf_counter()
    metadata = Model.load(str(directory))
    features = features_from_signature(metadata.signature)
    pipeline = skops.io.load(directory / MODEL_FILE, trusted=TRUSTED_TYPES)
    model = LoadedModel(
        alias=alias,
        version=version,
        sha256=sha256,
        source=source,
        pipeline=pipeline,
        features=features,
        classes=() if is_regressor(pipeline) else tuple(_python(c) for c in pipeline.classes_),
        categories=training_categories(pipeline),
        semver=semver,
    )
    loaded = metadata.load_input_example(str(directory))
    if not isinstance(loaded, pd.DataFrame) or loaded.empty:
        raise ModelRejected(f"version {version} has no input example to warm up on")
    rows = example_rows(loaded, features)
    example = frame_of(rows, features)  # as requests will reach the model
    for _ in range(3):  # the first calls pay for lazy imports and allocations
        output = model.output(example)
    shape = (len(example), len(model.classes)) if model.classes else (len(example),)
    if output.shape != shape or not np.all(np.isfinite(output)):
        what = "probabilities" if model.classes else "predictions"
        raise ModelRejected(f"version {version} gives invalid {what} on its example")
    model = dataclasses.replace(model, compiled=compile_checked(model, rows))
    logger.info(
        "loaded @%s v%s from %s in %.0f ms (%s path)",
        alias,
        version,
        source,
        (time.perf_counter() - started) * 1000,
        "pandas" if model.compiled is None else "compiled",
    )
    return model


def compile_checked(model: LoadedModel, example: list[dict[str, Any]]) -> CompiledPipeline | None:
    """The compiled path if it gives the pipeline's output on probe rows, else None.

    Any failure here only costs speed: the model is then served by the pandas path.
    """
    try:
        compiled = compile_pipeline(model.pipeline, model.features)
        rows = compiled.probe_rows(example)
        agrees = (_close if model.classes else _identical)(model, compiled, rows)
    except Exception as error:  # NotCompilable, or anything the probes trip over
        logger.warning("v%s is served by the pandas path: %s", model.version, error)
        return None
    if not agrees:
        logger.warning(
            "v%s is served by the pandas path: the compiled path disagrees on probe rows",
            model.version,
        )
        return None
    return compiled


def _close(model: LoadedModel, compiled: CompiledPipeline, rows: list[dict[str, Any]]) -> bool:
    """Probabilities within 1e-12 of the pipeline's on all rows at once and row by row (a
    few rows take another route through the trees, `Forest`)."""
    slow = model.output(frame_of(rows, model.features))
    fast_alone = np.vstack([compiled.output([row]) for row in rows])
    return all(
        got.shape == slow.shape and np.allclose(got, slow, rtol=0, atol=1e-12)
        for got in (compiled.output(rows), fast_alone)
    )


def _identical(model: LoadedModel, compiled: CompiledPipeline, rows: list[dict[str, Any]]) -> bool:
    """A regressor's predictions bit for bit, on the target's scale (no tolerance fits every
    target), each batch against the pipeline on the same batch: all rows, one row, and
    batches small enough for `Forest`. The same batch, because a linear model's own BLAS sums
    differ in the last bit between batch sizes (Ridge on diabetes: 5.7e-14)."""
    batches = [
        rows,
        rows[:1],
        *(rows[i : i + FOREST_ROWS] for i in range(0, len(rows), FOREST_ROWS)),
    ]
    for batch in batches:
        fast = compiled.output(batch)
        slow = model.output(frame_of(batch, model.features))
        if fast.shape != (len(batch),) or not np.array_equal(fast, slow):
            return False
    return True


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
