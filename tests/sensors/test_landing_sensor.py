"""The landing sensor and the nightly schedule, evaluated with real contexts."""

import json

import dagster as dg

from assets.ingestion import landed_files
from driftloop.settings import Settings
from pipelines.definitions import build_definitions
from pipelines.resources import TRIGGER_TAG, DriftloopResource
from pipelines.schedules import nightly_training
from pipelines.sensors import landing_sensor
from tests.conftest import land


def evaluate(settings: Settings, instance: dg.DagsterInstance, cursor: str | None):
    sensor = landing_sensor(settings)
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"driftloop": DriftloopResource(home=str(settings.home))},
        definitions=build_definitions(settings),
    )
    return sensor(context)


def test_one_run_per_new_file_and_none_for_repeats(home: Settings) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        first, second = land(home, rows=400, batch_rows=200)
        result = evaluate(home, instance, None)
        keys = [r.partition_key for r in result.run_requests]
        assert len(keys) == 2 and keys[0].startswith(first)
        assert all(r.tags[TRIGGER_TAG] == "landing" for r in result.run_requests)
        assert result.dynamic_partitions_requests[0].partition_keys == keys
        assert set(json.loads(result.cursor)) == {first, second}

        instance.add_dynamic_partitions(landed_files.name, keys)
        again = evaluate(home, instance, result.cursor)
        assert again.run_requests == [] and "no new files" in again.skip_reason.skip_message

        # The same bytes under another name, with a fresh cursor: still nothing to do.
        home.landing.write_bytes("copy.parquet", home.landing.read_bytes(first))
        repeat = evaluate(home, instance, None)
        assert repeat.run_requests == []
        assert "copy.parquet" in json.loads(repeat.cursor)


def test_nightly_schedule_requests_training_at_two(home: Settings) -> None:
    schedule = nightly_training(home)
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC"
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_schedule_context(instance=instance)
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.tags[TRIGGER_TAG] == "schedule"
    assert schedule.job_name == "training"


def test_schedule_timezone_is_configuration(home: Settings, monkeypatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_SCHEDULE_TIMEZONE", "Europe/Berlin")
    from driftloop.settings import load_settings

    assert nightly_training(load_settings()).execution_timezone == "Europe/Berlin"
