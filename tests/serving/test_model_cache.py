"""The last-good cache is hashed again before every load, and replicas sharing it never
overwrite a newer reading with an older one (no Ray: the store alone)."""

import json
from pathlib import Path

import pytest

from driftloop.registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_FILE,
    ArtifactIntegrityError,
    Registry,
    directory_sha256,
)
from driftloop.settings import Settings
from serving.model import ModelStore


def test_a_tampered_cache_copy_is_refused_and_replaced(
    serving_env: Settings, two_versions: tuple[str, str], tmp_path: Path
) -> None:
    registry = Registry(serving_env.mlflow_tracking_uri, serving_env.model_name)
    first, second = (registry.version(v) for v in two_versions)
    store = ModelStore(registry, tmp_path)
    store.load(CHAMPION, first)
    store.load(CHALLENGER, second)
    (cached,) = store.models_dir.glob(f"v{first.version}-*")
    (other,) = store.models_dir.glob(f"v{second.version}-*")
    # A valid pipeline, but not the one registered as this version.
    (cached / MODEL_FILE).write_bytes((other / MODEL_FILE).read_bytes())

    with pytest.raises(ArtifactIntegrityError, match="altered"):
        store.load_cached(CHAMPION)  # registry down: refused, never served
    model = store.load(CHAMPION, first)  # registry up: the verified download replaces it
    assert model.sha256 == first.sha256 and directory_sha256(cached) == first.sha256
    assert store.load_cached(CHAMPION).sha256 == first.sha256


def test_the_newest_registry_reading_wins_across_replicas_sharing_a_home(
    serving_env: Settings, two_versions: tuple[str, str], tmp_path: Path
) -> None:
    """Replica a read `@champion` = v2, then a rollback moved it to v1, which replica b
    read; a's slower load finished last. Each replaced only its own file, and a start from
    the cache takes b's reading: the rolled-back version does not come back."""
    registry = Registry(serving_env.mlflow_tracking_uri, serving_env.model_name)
    first, second = (registry.version(v) for v in two_versions)
    legacy = tmp_path / "last_good.json"  # a home written before per-replica files
    legacy.write_text(json.dumps({CHAMPION: {"version": second.version, "sha256": second.sha256}}))
    slow, fast = ModelStore(registry, tmp_path, "replica-a"), ModelStore(registry, tmp_path, "b")
    slow.load(CHALLENGER, second, observed_at=50.0)  # the old file's copy is in the cache now
    assert ModelStore(registry, tmp_path, "c").load_cached(CHAMPION).version == second.version

    fast.load(CHAMPION, first, observed_at=200.0)
    slow.load(CHAMPION, second, observed_at=100.0)
    restarted = ModelStore(registry, tmp_path, "restarted")
    assert restarted.load_cached(CHAMPION).version == first.version
    assert sorted(p.name for p in (tmp_path / "last_good").iterdir()) == [
        "b.json",
        "replica-a.json",
    ]
    fast.load(CHALLENGER, second, observed_at=300.0)
    slow.forget(CHALLENGER, observed_at=400.0)  # the alias was removed after b's reading
    assert restarted.load_cached(CHALLENGER) is None
