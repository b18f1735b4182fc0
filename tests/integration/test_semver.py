"""Semantic versions through real training runs: new data bumps MINOR, another search on
the same data PATCH, a new column MAJOR, which the gate never moves on its own."""

from __future__ import annotations

import shutil

import pytest

from driftloop.registry import CANDIDATE, CHAMPION, Registry
from driftloop.settings import Settings, load_settings
from driftloop.simulate import LoanStream
from driftloop.versioning import TAG_SEMVER
from tests.conftest import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _land(settings: Settings, name: str, seed: int, extra: bool = False) -> None:
    frame = LoanStream(seed=seed).take_frame(800, settings.target_column)
    if extra:  # a new input the team started sending
        frame = frame.assign(branch=[f"b{i % 4}" for i in range(len(frame))])
    settings.landing.write_frame(name, frame)


def test_versions_bump_by_what_changed(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(home.mlflow_tracking_uri, home.model_name)
    _land(home, "first.parquet", seed=1)
    assert train(home).success
    first = registry.by_alias(CHAMPION)
    assert first.tags[TAG_SEMVER] == "1.0.0"
    # the review ran on the first model's card: no champion to compare with yet
    assert "version 1.0.0" in first.description

    _land(home, "second.parquet", seed=2)  # new data, same schema
    # the gate lets any through: this test is about versions, not about being better
    monkeypatch.setenv("DRIFTLOOP_PROMOTION_MARGIN", "-1")
    monkeypatch.setenv("DRIFTLOOP_SLICE_MARGIN", "1")
    settings = load_settings()
    assert train(settings).success
    second = registry.newest()
    assert second.version == "2" and second.tags[TAG_SEMVER] == "1.1.0"
    assert registry.by_alias(CHAMPION).version == "2"  # a minor step is promoted as usual
    assert second.tags["driftloop.review.worse_slices"]  # the slice review was recorded
    assert "Slices and fairness" in second.description

    monkeypatch.setenv("DRIFTLOOP_N_TRIALS", "3")  # another search on the same data
    assert train(load_settings()).success
    third = registry.newest()
    assert third.version == "3" and third.tags[TAG_SEMVER] == "1.1.1"

    # A new column: the team starts over with a table that has it (a new schema).
    shutil.rmtree(settings.batches)
    settings.schema_path.unlink()
    _land(settings, "with-branch.parquet", seed=3, extra=True)
    assert train(load_settings()).success
    fourth = registry.newest()
    assert fourth.version == "4" and fourth.tags[TAG_SEMVER] == "2.0.0"
    # the request contract changed: clients must be ready, so a person promotes it
    assert registry.by_alias(CHAMPION).version == "3"
    assert registry.by_alias(CANDIDATE).version == "4"
    action = fourth.tags.get("driftloop.decision.action") or registry.version("4").tags.get(
        "driftloop.decision.action"
    )
    assert "changes the request contract" in action and "driftloop promote 4" in action
