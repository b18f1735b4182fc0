"""The last-good cache is hashed again before every load (no Ray: the store alone)."""

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
