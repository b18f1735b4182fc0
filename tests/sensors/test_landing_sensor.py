"""The landing sensor and the nightly schedule, evaluated with real contexts."""

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from assets.ingestion import landed_files
from driftloop.data import BatchStore
from driftloop.settings import Settings, load_settings
from pipelines.definitions import build_definitions
from pipelines.schedules import nightly_training
from pipelines.sensors import landing_sensor
from resources.deployment import TRIGGER_TAG, DriftloopResource
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
    assert nightly_training(load_settings()).execution_timezone == "Europe/Berlin"


@contextmanager
def unprivileged() -> Iterator[None]:
    """Root reads a file whatever its mode; with the effective uid of `nobody` a `chmod 000`
    file is a real PermissionError (the saved uid lets the test become root again)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def open_landing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A landing zone `nobody` can list (pytest's temp dirs are private to their owner)."""
    landing = Path(tempfile.mkdtemp(prefix="driftloop-landing-"))
    landing.chmod(0o755)
    monkeypatch.setenv("DRIFTLOOP_LANDING_DIR", str(landing))
    yield landing
    shutil.rmtree(landing)


def run_ingest(settings: Settings, instance: dg.DagsterInstance, keys: list[str]) -> list[dict]:
    """Run the ingest job for the requested keys as the daemon would; each run's metadata."""
    instance.add_dynamic_partitions(landed_files.name, keys)
    job = build_definitions(settings).resolve_job_def("ingest")
    found = []
    for key in keys:
        result = job.execute_in_process(instance=instance, partition_key=key)
        (materialization,) = result.asset_materializations_for_node("landed_batch")
        found.append({k: v.value for k, v in materialization.metadata.items()})
    return found


def test_bad_entries_are_skipped_once_and_good_files_go_on_in_the_same_tick(
    home: Settings, open_landing: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    monkeypatch.setenv("DRIFTLOOP_MAX_FILE_BYTES", "200000")
    settings = load_settings()
    good = land(settings, rows=400, batch_rows=200)
    secret = home.home / "secret.csv"  # outside the landing zone: must never be read
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("x,label\n1,0\n")
    (open_landing / "big.csv").write_bytes(b"x,label\n" + b"1,0\n" * 60_000)
    os.mkfifo(open_landing / "stuck.csv")  # opening it for reading would block forever
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(open_landing / "socket.parquet"))
    (open_landing / "folder.csv").mkdir()
    (open_landing / "mem.csv").symlink_to("/proc/self/mem")  # reading it fails with EIO
    (open_landing / "secret.csv").symlink_to(secret)
    locked = open_landing / "locked.parquet"
    (other,) = land(settings, rows=200, batch_rows=200, seed=9)
    (open_landing / other).rename(locked)
    locked.chmod(0)
    bad = {"big.csv", "stuck.csv", "socket.parquet", "folder.csv", "mem.csv", "secret.csv"}

    with dg.DagsterInstance.ephemeral() as instance:
        with unprivileged():
            first = evaluate(settings, instance, None)
        keys = [r.partition_key for r in first.run_requests]
        assert [key.rsplit("-", 1)[0] for key in keys] == good
        assert set(json.loads(first.cursor)) == {*good, *bad, "locked.parquet"}
        warned = capfd.readouterr().err  # the tick's log (Dagster's logger writes to stderr)
        for reason in [
            "'big.csv': 240,008 bytes, over the cap of 200,000 bytes",
            "'stuck.csv': not a regular file but a fifo",
            "'socket.parquet': not a regular file but a socket",
            "'folder.csv': not a regular file but a directory",
            "'mem.csv': a symbolic link: links are not followed",
            "'secret.csv': a symbolic link: links are not followed",
            "'locked.parquet': could not be read: Permission denied (tried again next scan)",
        ]:
            assert reason in warned
        assert [m["status"] for m in run_ingest(settings, instance, keys)] == ["accepted"] * 2

        # Refused entries are reported once; the unreadable file is retried a few times
        # (a transient error heals), then left alone until it changes.
        cursor, messages = first.cursor, []
        for _ in range(3):
            with unprivileged():
                tick = evaluate(settings, instance, cursor)
            assert tick.run_requests == []
            cursor, messages = tick.cursor, [*messages, tick.skip_reason.skip_message]
        denied = "'locked.parquet': could not be read: Permission denied"
        assert messages[0].endswith(f"skipped {denied} (tried again next scan)")
        assert messages[1].endswith(f"skipped {denied}")
        assert messages[2] == "no new files in the landing zone"

        locked.chmod(0o644)
        os.utime(locked, ns=(time.time_ns(), time.time_ns()))  # fixed and touched: tried again
        with unprivileged():
            fixed = evaluate(settings, instance, cursor)
        assert [r.partition_key.rsplit("-", 1)[0] for r in fixed.run_requests] == [locked.name]
    listener.close()
    assert secret.read_text() == "x,label\n1,0\n"


def test_names_with_spaces_unicode_and_commas_are_ingested(home: Settings) -> None:
    names = ["loans 2026, März.parquet", "données été.parquet", "日本語.parquet", "a b.parquet"]
    landing = home.landing.local_path
    for name, landed in zip(names, land(home, rows=800, batch_rows=200), strict=True):
        (landing / landed).rename(landing / name)
    (landed,) = land(home, rows=200, batch_rows=200, seed=8)
    (landing / landed).rename(landing / "a,b.parquet")  # the same slug as "a b.parquet"
    names.append("a,b.parquet")
    with dg.DagsterInstance.ephemeral() as instance:
        tick = evaluate(home, instance, None)
        keys = [r.partition_key for r in tick.run_requests]
        assert len(keys) == 5 and len({key.rsplit("-", 1)[0] for key in keys}) == 4
        ingested = run_ingest(home, instance, keys)
    assert sorted(m["file"] for m in ingested) == sorted(names)
    assert all(m["status"] == "accepted" and m["rows"] == 200 for m in ingested)
    assert sorted(BatchStore(home.batches).keys()) == sorted(keys)
