"""Shared fixtures: a temporary DRIFTLOOP_HOME, and one trained home per test session.

Tests never touch the repository's own `.driftloop/`: every home is a temp directory and
the environment is restored afterwards.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from driftloop.settings import Settings, load_settings
from driftloop.simulate import LoanStream, write_batches

# Small but real: enough rows and trials for the pipeline to behave as it does at scale.
FAST_ENV = {
    "DRIFTLOOP_N_TRIALS": "4",
    "DRIFTLOOP_CV_FOLDS": "2",
    "DRIFTLOOP_MIN_ROWS": "100",
}


@pytest.fixture(autouse=True)
def _no_dagster_home_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh, empty driftloop home configured through the environment."""
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path / "home"))
    for key, value in FAST_ENV.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def land(
    settings: Settings, rows: int, batch_rows: int, seed: int = 7, fmt: str = "parquet"
) -> list[str]:
    """Simulated batches into the landing zone; the names of the files written."""
    return write_batches(
        LoanStream(seed=seed), rows, batch_rows, settings.landing, settings.target_column, fmt
    )


def train(settings: Settings, trigger: str = "test") -> dg.ExecuteInProcessResult:
    """Ingest what has landed and run the training job on the home's real instance."""
    from pipelines.launch import ingest_pending, prepare_dagster_home, run_training

    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        ingest_pending(settings, instance, lambda _: None)
        return run_training(settings, instance, trigger)


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A home with a registered `@champion` (3,000 simulated rows), shared by a session.

    Tests that change aliases must restore them or use `home` instead.
    """
    root = tmp_path_factory.mktemp("trained") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DAGSTER_HOME", raising=False)
        patch.setenv("DRIFTLOOP_HOME", str(root))
        for key, value in FAST_ENV.items():
            patch.setenv(key, value)
        settings = load_settings()
        land(settings, rows=3000, batch_rows=1500)
        result = train(settings)
        assert result.success, "the shared training run failed"
        yield settings
