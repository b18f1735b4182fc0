"""MLflow registry access: aliases, lineage tags, and artifacts verified by SHA-256.

Promotion is alias moves only (`@champion`, `@challenger`, `@previous`): a rollback is
one move back, and serving resolves aliases, never stage names.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException

from driftloop.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)

TAG_SHA256 = "driftloop.sha256"
TAG_LINEAGE = "driftloop.lineage"
TAG_DATA_HASH = "driftloop.data_hash"
TAG_GIT_COMMIT = "driftloop.git_commit"
TAG_STUDY = "driftloop.study"
TAG_TRIGGER = "driftloop.trigger"
TAG_DECISION = "driftloop.decision"
MODEL_FILE = "model.skops"
# MLflow writes this file into every download from the registry (it names the version),
# so it is not part of the logged artifact and stays out of the digest.
DOWNLOAD_ONLY_FILES = frozenset({"registered_model_meta"})


class RegistryError(Exception):
    """A registry problem a user can act on; the message is one sentence."""


class ArtifactIntegrityError(RegistryError):
    """The downloaded artifact's digest differs from the one recorded at registration."""


def directory_sha256(root: Path) -> str:
    """One digest over a directory: sorted relative paths, each followed by its bytes."""
    digest = hashlib.sha256()
    files = (p for p in root.rglob("*") if p.is_file() and p.name not in DOWNLOAD_ONLY_FILES)
    for path in sorted(files):
        relative = path.relative_to(root).as_posix().encode()
        content = path.read_bytes()
        digest.update(len(relative).to_bytes(8, "big") + relative)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def configure_tracking(settings: Settings) -> None:
    """Point MLflow's fluent API at the configured store (called at run time, not import)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if settings.tracking_uri is None:
        (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    """Create the experiment with our artifact root (a tracking server may choose its own)."""
    client = MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = settings.mlflow_artifact_root
    if settings.artifact_root is None and settings.mlflow_tracking_uri.startswith("http"):
        location = None  # the server's --artifacts-destination decides
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another run
        return client.get_experiment_by_name(name).experiment_id


@dataclass(frozen=True)
class VersionInfo:
    """What `driftloop status` and serving need to know about one registered version."""

    version: str
    run_id: str | None
    sha256: str | None
    tags: dict[str, str]
    description: str

    @classmethod
    def of(cls, model_version: ModelVersion) -> VersionInfo:
        return cls(
            version=str(model_version.version),
            run_id=model_version.run_id,
            sha256=model_version.tags.get(TAG_SHA256),
            tags=dict(model_version.tags),
            description=model_version.description or "",
        )


@dataclass(frozen=True)
class ModelRecord:
    """The registered model itself: which version each alias names, and its own tags."""

    aliases: dict[str, str]
    tags: dict[str, str]


class Registry:
    """One registered model in one MLflow registry."""

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        self.client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.name = model_name

    def version(self, version: str) -> VersionInfo:
        try:
            return VersionInfo.of(self.client.get_model_version(self.name, version))
        except MlflowException as error:
            raise RegistryError(f"model {self.name!r} has no version {version}") from error

    def by_alias(self, alias: str) -> VersionInfo | None:
        try:
            return VersionInfo.of(self.client.get_model_version_by_alias(self.name, alias))
        except (RestException, MlflowException) as error:
            if _is_missing(error):
                return None
            raise

    def aliases(self) -> dict[str, VersionInfo | None]:
        return {alias: self.by_alias(alias) for alias in ALIASES}

    def find_by_lineage(self, lineage: str) -> VersionInfo | None:
        """The version already registered from the same data, code and search, if any."""
        found = self.client.search_model_versions(
            f"name = '{self.name}' and tags.`{TAG_LINEAGE}` = '{lineage}'"
        )
        return VersionInfo.of(found[0]) if found else None

    def register(
        self, model_id: str, run_id: str, tags: dict[str, str], description: str
    ) -> VersionInfo:
        """Create the version with every tag and its card in one call: never half-registered."""
        try:
            self.client.create_registered_model(self.name)
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
                raise
        created = self.client.create_model_version(
            self.name,
            source=f"models:/{model_id}",
            run_id=run_id,
            tags=tags,
            description=description,
            model_id=model_id,
        )
        return VersionInfo.of(created)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    def delete_alias(self, alias: str) -> None:
        if self.by_alias(alias) is not None:
            self.client.delete_registered_model_alias(self.name, alias)

    def set_tags(self, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, str(value))

    def record(self) -> ModelRecord:
        """All aliases and model tags in one query: what a serving replica polls."""
        model = self.client.get_registered_model(self.name)
        aliases = {alias: str(version) for alias, version in model.aliases.items()}
        return ModelRecord(aliases, dict(model.tags))

    def model_tag(self, key: str) -> str | None:
        """A tag of the registered model itself: state shared by everyone serving it."""
        return self.record().tags.get(key)

    def set_model_tag(self, key: str, value: str) -> None:
        self.client.set_registered_model_tag(self.name, key, value)

    def set_description(self, version: str, description: str) -> None:
        self.client.update_model_version(self.name, version, description=description)

    def promote(self, version: str) -> VersionInfo | None:
        """Make `version` champion; the replaced champion becomes `@previous`."""
        self.version(version)  # fail with a clear message for an unknown version
        replaced = self.by_alias(CHAMPION)
        if replaced is not None and replaced.version == version:
            raise RegistryError(f"version {version} is already the champion")
        if replaced is not None:
            self.set_alias(PREVIOUS, replaced.version)
        self.set_alias(CHAMPION, version)
        challenger = self.by_alias(CHALLENGER)
        if challenger is not None and challenger.version == version:
            self.delete_alias(CHALLENGER)
        return replaced

    def rollback(self) -> tuple[str, str]:
        """Swap `@champion` and `@previous`; returns (restored, demoted)."""
        previous, champion = self.by_alias(PREVIOUS), self.by_alias(CHAMPION)
        if previous is None or champion is None:
            raise RegistryError("nothing to roll back to: no @previous version is set")
        self.set_alias(CHAMPION, previous.version)
        self.set_alias(PREVIOUS, champion.version)
        return previous.version, champion.version

    def download(self, version: str, destination: Path) -> Path:
        uri = f"models:/{self.name}/{version}"
        local = mlflow.artifacts.download_artifacts(
            uri,
            dst_path=str(destination),
            tracking_uri=self.tracking_uri,
            registry_uri=self.tracking_uri,
        )
        return Path(local)

    def load_verified(self, version: str, trusted_types: list[str]) -> Any:
        """Download, check the digest against the registered tag, then load with skops."""
        import skops.io

        expected = self.version(version).sha256
        if expected is None:
            raise ArtifactIntegrityError(f"version {version} has no {TAG_SHA256} tag")
        with tempfile.TemporaryDirectory() as tmp:
            local = self.download(version, Path(tmp))
            actual = directory_sha256(local)
            if actual != expected:
                raise ArtifactIntegrityError(
                    f"version {version} artifact digest {actual[:12]}… does not match "
                    f"the registered {expected[:12]}…; refusing to load it"
                )
            return skops.io.load(local / MODEL_FILE, trusted=trusted_types)


def _is_missing(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or (
        "not found" in str(error).lower()
    )
