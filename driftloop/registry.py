"""MLflow registry access: aliases, lineage tags, and artifacts verified by SHA-256.

Promotion is alias moves only: a new version is `@candidate` until its gate passes, then
`@challenger` (live canary) or `@champion` (the replaced one `@previous`). Serving resolves
`@champion` and `@challenger` only, so no ungated version takes traffic.

Every alias write goes through `Registry.move`: one writer at a time (a file lock beside an
embedded store), a compare-and-set against the holders the caller judged, and the whole
target alias set recorded first as the model tag `driftloop.alias_intent`, cleared last, so
a writer killed between two alias writes is completed by the next `Registry.repair()` (run
by every move, by the training job before its gate, by serving at start). Against a remote
MLflow server there is no lock: the intent tag is read back as a compare-and-set token,
which catches a concurrent writer in all but a sub-second window (MLflow has no
conditional write); jobs are serialised by the Dagster pool `driftloop_aliases` as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
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
CANDIDATE = "candidate"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS, CANDIDATE)

TAG_SHA256 = "driftloop.sha256"
TAG_LINEAGE = "driftloop.lineage"
TAG_DATA_HASH = "driftloop.data_hash"
TAG_GIT_COMMIT = "driftloop.git_commit"
TAG_STUDY = "driftloop.study"
TAG_TRIGGER = "driftloop.trigger"
TAG_DECISION = "driftloop.decision"
TAG_INTENT = "driftloop.alias_intent"
TAG_ROLLED_BACK = "driftloop.rolled_back"
# On a `@candidate` that passed the gate while another version's canary ran: it takes
# `@challenger` when that canary ends (`Registry.end_canary`, `Registry.start_queued`).
TAG_QUEUED = "driftloop.canary.queued"
# How long a move waits for another writer's lock before it gives up with a sentence.
LOCK_TIMEOUT_S = 60.0
# Without a lock (remote server), an intent younger than this may be its writer's, still
# moving: a move refuses to start, and `repair` leaves it alone.
STALE_INTENT_S = 60.0
# "Any holder": the expectation of a caller that judged no particular one.
ANY: object = object()
MODEL_FILE = "model.skops"
# MLflow writes this file into every download from the registry (it names the version),
# so it is not part of the logged artifact and stays out of the digest.
DOWNLOAD_ONLY_FILES = frozenset({"registered_model_meta"})


class RegistryError(Exception):
    """A registry problem a user can act on; the message is one sentence."""


class ArtifactIntegrityError(RegistryError):
    """The downloaded artifact's digest differs from the one recorded at registration."""


class AliasConflict(RegistryError):
    """An alias no longer has the holder the caller judged: someone else moved it first."""


# The change a move makes, alias -> version, None removing the alias; computed from the
# current holders under the lock, so a plan's checks are the compare in compare-and-set.
Plan = Callable[[dict[str, str]], dict[str, str | None]]


@dataclass(frozen=True)
class AliasMove:
    """The holders of the managed aliases before and after one move."""

    before: dict[str, str]
    after: dict[str, str]

    @property
    def changed(self) -> bool:
        return self.before != self.after


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
        self.lock_path = _lock_path(tracking_uri, model_name)

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

    def newest(self) -> VersionInfo | None:
        """The most recently registered version, whatever its aliases."""
        found = self.client.search_model_versions(
            f"name = '{self.name}'", max_results=1, order_by=["version_number DESC"]
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

    def set_alias(self, alias: str, version: str) -> AliasMove:
        return self.move(lambda _: {alias: version}, f"set @{alias}")

    def delete_alias(self, alias: str, expected: str | None = None) -> AliasMove:
        """Remove `alias`; with `expected`, only while that version still holds it."""

        def plan(current: dict[str, str]) -> dict[str, str | None]:
            if expected is not None and current.get(alias) != expected:
                return {}
            return {alias: None}

        return self.move(plan, f"remove @{alias}")

    def set_tags(self, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, str(value))

    def record(self) -> ModelRecord:
        """All aliases and model tags in one query: what a serving replica polls."""
        model = self.client.get_registered_model(self.name)
        aliases = {alias: str(version) for alias, version in model.aliases.items()}
        return ModelRecord(aliases, dict(model.tags))

    def set_model_tag(self, key: str, value: str) -> None:
        self.client.set_registered_model_tag(self.name, key, value)

    def set_description(self, version: str, description: str) -> None:
        self.client.update_model_version(self.name, version, description=description)

    def promote(self, version: str, expected_champion: object = ANY) -> AliasMove:
        """Make `version` champion, the replaced one `@previous`, in one move; it leaves
        `@challenger` and `@candidate` if it held them. Already champion: a no-op, so a
        retry changes nothing. `expected_champion` (None: no champion) is the champion the
        caller judged against; another one now raises `AliasConflict`."""
        self.version(version)  # fail with a clear message for an unknown version

        def plan(current: dict[str, str]) -> dict[str, str | None]:
            champion = current.get(CHAMPION)
            if champion == version:
                return {}
            if expected_champion is not ANY and champion != expected_champion:
                raise AliasConflict(
                    f"@champion is {_named(champion)}, not the {_named(expected_champion)} "
                    f"v{version} was judged against; not promoted"
                )
            changes: dict[str, str | None] = {
                alias: None for alias in (CHALLENGER, CANDIDATE) if current.get(alias) == version
            }
            if champion is not None:
                changes[PREVIOUS] = champion
            changes[CHAMPION] = version
            return changes

        return self.move(plan, f"promote v{version}")

    def rollback(self, expected_champion: str | None = None) -> AliasMove:
        """`@champion` back to the `@previous` version, which leaves `@previous`; the
        demoted version holds no alias (a rolled-back model is no fallback) and is tagged.

        With `expected_champion` (the version being rolled back), a retry after the first
        call succeeded is a no-op: the champion is no longer that version. Without it a
        retry finds no `@previous` and fails: it never swaps the bad model back."""

        def plan(current: dict[str, str]) -> dict[str, str | None]:
            champion, previous = current.get(CHAMPION), current.get(PREVIOUS)
            if expected_champion is not None and champion != expected_champion:
                return {}
            if champion is None or previous is None:
                raise RegistryError("nothing to roll back to: no @previous version is set")
            return {PREVIOUS: None, CHAMPION: previous}

        moved = self.move(plan, "rollback")
        if moved.changed:
            demoted = moved.before[CHAMPION]
            self.set_tags(demoted, {TAG_ROLLED_BACK: f"replaced by v{moved.after[CHAMPION]}"})
        return moved

    def to_challenger(self, version: str) -> AliasMove:
        """Hand a gated version to the live canary: it takes `@challenger` (leaving
        `@candidate`) unless another version holds it, whose running canary it then waits
        for (it stays `@candidate`; mark it with `TAG_QUEUED` before calling)."""

        def plan(current: dict[str, str]) -> dict[str, str | None]:
            if current.get(CHALLENGER) not in (None, version):
                return {}
            changes: dict[str, str | None] = {CHALLENGER: version}
            if current.get(CANDIDATE) == version:
                changes[CANDIDATE] = None
            return changes

        return self.move(plan, f"v{version} to @challenger")

    def end_canary(
        self, version: str, promoted: bool, expected_champion: str | None = None
    ) -> AliasMove:
        """End `version`'s canary in one move: promoted (champion, the old one `@previous`)
        or rolled back (`@challenger` removed); a queued `@candidate` then takes
        `@challenger`. A no-op when `version` no longer holds `@challenger` (a retry, or it
        was moved meanwhile); promotion checks the champion judged against."""

        def plan(current: dict[str, str]) -> dict[str, str | None]:
            if current.get(CHALLENGER) != version:
                return {}
            changes: dict[str, str | None] = {CHALLENGER: None, **self._queued_move(current)}
            if promoted:
                champion = current.get(CHAMPION)
                if expected_champion is not None and champion != expected_champion:
                    raise AliasConflict(
                        f"@champion is {_named(champion)}, not the v{expected_champion} "
                        f"the canary of v{version} was judged against; not promoted"
                    )
                if champion is not None:
                    changes[PREVIOUS] = champion
                changes[CHAMPION] = version
            return changes

        verdict = "promoted" if promoted else "rolled back"
        return self.move(plan, f"canary of v{version} {verdict}")

    def start_queued(self) -> AliasMove:
        """With no canary running, a queued `@candidate` takes `@challenger` (the canary
        ended by another path, e.g. `driftloop promote` of the challenger)."""

        def plan(current: dict[str, str]) -> dict[str, str | None]:
            return {} if CHALLENGER in current else self._queued_move(current)

        return self.move(plan, "queued candidate to @challenger")

    def _queued_move(self, current: dict[str, str]) -> dict[str, str | None]:
        queued = current.get(CANDIDATE)
        if queued is None or TAG_QUEUED not in self.version(queued).tags:
            return {}
        return {CANDIDATE: None, CHALLENGER: queued}

    def move(self, plan: Plan, reason: str) -> AliasMove:
        """The one writer of aliases: under the lock, finish any interrupted move, apply
        `plan` to the current holders, record the full target set as the intent, write
        each alias, clear the intent. A plan may raise (its compare failed) or return no
        change (already done: moves are idempotent)."""
        with self._lock():
            self._repair()
            before = self._holders()
            after = _applied(before, plan(dict(before)))
            if after == before:
                return AliasMove(before, after)
            intent = {"id": uuid.uuid4().hex, "reason": reason, "at": time.time(), "target": after}
            self.client.set_registered_model_tag(self.name, TAG_INTENT, json.dumps(intent))
            if self.lock_path is None:  # remote server: the intent tag is the CAS token
                written = json.loads(self.record().tags.get(TAG_INTENT) or "{}")
                if written.get("id") != intent["id"]:
                    raise AliasConflict(f"another alias move is under way; {reason} not done")
            self._converge(before, after)
            self.client.delete_registered_model_tag(self.name, TAG_INTENT)
            return AliasMove(before, after)

    def repair(self) -> AliasMove | None:
        """Complete a move a crashed writer left half done (its intent tag is still set);
        None when there was none, or (remote server) when its writer may still be at it."""
        with self._lock():
            try:
                return self._repair()
            except AliasConflict:
                return None

    def _repair(self) -> AliasMove | None:
        raw = self._record_or_empty().tags.get(TAG_INTENT)
        if raw is None:
            return None
        intent = json.loads(raw)
        # Under the lock its writer is dead; without one (remote) it may be mid-move.
        if self.lock_path is None and time.time() - intent["at"] < STALE_INTENT_S:
            raise AliasConflict("another alias move is under way; try again in a minute")
        target = {
            alias: str(version)
            for alias, version in intent["target"].items()
            if alias in ALIASES and self._exists(str(version))
        }
        before = self._holders()
        self._converge(before, target)
        self.client.delete_registered_model_tag(self.name, TAG_INTENT)
        return AliasMove(before, target)

    def _exists(self, version: str) -> bool:
        try:
            self.client.get_model_version(self.name, version)
        except MlflowException as error:
            if _is_missing(error):  # deleted since the intent was written
                return False
            raise
        return True

    def _converge(self, before: Mapping[str, str], after: Mapping[str, str]) -> None:
        """Removals first, `@champion` last: serving, which reads champion and challenger,
        then never sees the version that is leaving `@challenger` on both at once."""
        for alias in ALIASES:
            if alias in before and alias not in after:
                self._write_alias(alias, None)
        for alias in sorted(after, key=lambda a: a == CHAMPION):
            if before.get(alias) != after[alias]:
                self._write_alias(alias, after[alias])

    def _write_alias(self, alias: str, version: str | None) -> None:
        """One alias write: the step a crash can interrupt, then finished by `repair`."""
        if version is None:
            try:
                self.client.delete_registered_model_alias(self.name, alias)
            except MlflowException as error:
                if not _is_missing(error):
                    raise
        else:
            self.client.set_registered_model_alias(self.name, alias, version)

    def _holders(self) -> dict[str, str]:
        aliases = self._record_or_empty().aliases
        return {alias: aliases[alias] for alias in ALIASES if alias in aliases}

    def _record_or_empty(self) -> ModelRecord:
        try:
            return self.record()
        except MlflowException as error:
            if _is_missing(error):  # nothing registered yet
                return ModelRecord({}, {})
            raise

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive `flock` (per open file, so threads exclude each other too; the
        kernel drops it when its holder dies); nothing for a remote server."""
        if self.lock_path is None:
            yield
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as handle:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(
                            f"another alias move has held {self.lock_path} for over "
                            f"{LOCK_TIMEOUT_S:.0f} s"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def download(self, version: str, destination: Path) -> Path:
        """The version's artifacts, located through this registry's own client: a
        `models:/` URI is resolved through MLflow's process-wide registry URI, which in a
        process holding several homes (tests, tools) is another home's registry."""
        location = self.client.get_model_version_download_uri(self.name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(destination), tracking_uri=self.tracking_uri
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


def _named(version: object) -> str:
    return "unset" if version is None else f"v{version}"


def _applied(before: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    after = dict(before)
    for alias, version in changes.items():
        if version is None:
            after.pop(alias, None)
        else:
            after[alias] = str(version)
    return after


def _lock_path(tracking_uri: str, model_name: str) -> Path | None:
    """A lock file beside an embedded SQLite store, shared by every process using it."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return database.with_name(f"{database.name}.{model_name}.aliases.lock")


def _is_missing(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or (
        "not found" in str(error).lower()
    )
