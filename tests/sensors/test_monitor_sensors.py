"""Monitoring assets on prepared serving logs, and the drift/quality sensors deciding."""

import json
import urllib.request
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.main import status_report
from driftloop import alerts
from driftloop.alerts import WEBHOOK_ENV
from driftloop.data import BatchStore
from driftloop.registry import CHALLENGER, CHAMPION, Registry
from driftloop.schema import load_schema
from driftloop.settings import Settings, load_settings
from driftloop.simulate import DriftPlan, LoanStream
from driftloop.training import TRUSTED_TYPES
from pipelines.definitions import build_definitions
from pipelines.launch import ingest_pending, prepare_dagster_home
from pipelines.monitor_sensors import canary_sensor, drift_sensor, quality_sensor
from resources.deployment import TRAIN_SINCE_TAG, TRIGGER_TAG, DriftloopResource
from tests.conftest import FAST_ENV, land, train
from tests.deploy.stack import pushgateway
from tests.unit.test_alerts import Webhook


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory):
    """A trained home of its own (tests here write serving logs into it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DRIFTLOOP_HOME", str(tmp_path_factory.mktemp("monitored") / "home"))
        patch.delenv("DAGSTER_HOME", raising=False)
        for key, value in FAST_ENV.items():
            patch.setenv(key, value)
        settings = load_settings()
        land(settings, rows=3000, batch_rows=3000)
        assert train(settings).success
        yield settings


def replace_log(
    settings: Settings,
    plan: DriftPlan,
    rows: int,
    name: str,
    blank: dict[str, float] | None = None,
    legacy: bool = False,
    flip: float = 0.0,
    hard: bool = False,
) -> None:
    """The serving log holds only these rows, in files as the serving app writes them.

    Half the labels come back by request id and half by business id only, plus three for
    ids never served; `blank` makes that share of a feature's served values null (after
    the model saw them); `legacy` writes the log of a server from before ids (no `id`,
    `probabilities`, `unseen`; feedback by request id only); `flip` turns that share of
    the labels to the other class (a steady loss of accuracy, no change point); `hard`
    keeps only the rows the model is less than 80 % sure of (a covariate shift towards
    them, so fewer than `rows` are written).
    """
    for log in (settings.prediction_log, settings.feedback_log):
        for path in log.local_path.glob("*.parquet"):
            path.unlink()
    frame = LoanStream(seed=11, plan=plan).take_frame(rows, "label")
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    champion = registry.by_alias(CHAMPION)
    model = registry.load_verified(champion.version, TRUSTED_TYPES)
    features = frame.drop(columns=["label"])
    probabilities = model.predict_proba(features)
    if hard:
        unsure = probabilities.max(axis=1) < 0.8
        frame, features = (f[unsure].reset_index(drop=True) for f in (frame, features))
        probabilities, rows = probabilities[unsure], int(unsure.sum())
    now = datetime.now(UTC)
    ids = [f"{name}-{i}" for i in range(rows)]
    business = [f"{name}-loan-{i}" for i in range(rows)]
    rng = np.random.default_rng(0)
    for column, share in (blank or {}).items():
        features[column] = features[column].astype(object).mask(rng.random(rows) < share, None)
    predictions = features.assign(
        request_id=ids,
        index=0,
        at=[now - timedelta(seconds=(rows - i) / 10) for i in range(rows)],
        model_version=champion.version,
        route="champion",
        key=None,
        prediction=model.classes_[probabilities.argmax(axis=1)].astype(str),
        probability=probabilities.max(axis=1),
        latency_ms=1.0,
    )
    flipped = np.random.default_rng(1).random(rows) < flip
    labels = np.where(flipped, 1 - frame["label"], frame["label"]).astype(str).tolist()
    if legacy:
        feedback = pd.DataFrame({"request_id": ids, "at": now, "label": labels})
    else:
        predictions = predictions.assign(
            id=business, probabilities=probabilities.tolist(), unseen=None
        )
        by_id = np.arange(rows) % 2 == 1
        feedback = pd.DataFrame(
            {
                "request_id": [*np.where(by_id, None, ids), None, None, None],
                "id": [*np.where(by_id, business, None), "x-1", "x-2", "x-3"],
                "at": now,
                "label": [*labels, "1", "0", "1"],
            }
        )
    for log, table in [(settings.prediction_log, predictions), (settings.feedback_log, feedback)]:
        log.write_frame(f"{name}.parquet", table)


def run_monitors(settings: Settings, instance: dg.DagsterInstance) -> None:
    job = build_definitions(settings).resolve_job_def("monitoring")
    assert job.execute_in_process(instance=instance).success


def evaluate(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return sensor.evaluate_tick(context)


def test_calm_traffic_skips_and_drift_requests_one_retrain(monitored: Settings) -> None:
    settings = monitored.model_copy(update={"retrain_min_rows": 250})
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        replace_log(settings, DriftPlan(), 1000, "calm")
        run_monitors(settings, instance)
        calm = evaluate(drift_sensor(settings), instance)
        assert calm.run_requests == [] and "below" in calm.skip_message
        quality = instance.get_latest_materialization_event(dg.AssetKey("live_model_quality"))
        assert quality.asset_materialization.metadata["below_holdout"].value is False
        calm_report = instance.get_latest_materialization_event(dg.AssetKey("feature_drift_report"))
        calm_at = calm_report.timestamp
        # the champion's served decisions against its own on the training rows: as calm
        calm_metadata = calm_report.asset_materialization.metadata
        assert calm_metadata["prediction_drifted"].value is False
        assert "prediction_drift_method" in calm_metadata

        replace_log(settings, DriftPlan(covariate_shift_at=0), 1000, "shifted")
        run_monitors(settings, instance)
        shifted = instance.get_latest_materialization_event(dg.AssetKey("feature_drift_report"))
        moved = shifted.asset_materialization.metadata
        # richer applicants get other decisions: the predictions move (a distance here,
        # 0.077 against 0.011 calm; below Evidently's 0.1 drift threshold)
        assert moved["prediction_drift_method"] == calm_metadata["prediction_drift_method"]
        assert (
            moved["prediction_drift_score"].value
            > 2 * calm_metadata["prediction_drift_score"].value
        )
        waiting = evaluate(drift_sensor(settings), instance, calm.cursor)
        assert waiting.run_requests == []
        assert "waiting for labelled rows since the change: 0 of 250" in waiting.skip_message

        # Labelled rows of the new world land in two files; the first may hold rows from
        # before the change, the second is wholly after it: the retrain gets its 300 rows.
        land(settings, rows=600, batch_rows=300, seed=99)
        ingest_pending(settings, instance, lambda _: None)
        run_monitors(settings, instance)
        drifted = evaluate(drift_sensor(settings), instance, waiting.cursor)
        (request,) = drifted.run_requests
        assert request.tags[TRIGGER_TAG] == "drift"
        assert "salary" in request.tags["driftloop/trigger_reason"]
        assert float(request.tags[TRAIN_SINCE_TAG]) == pytest.approx(calm_at, abs=1e-3)
        assert request.job_name in (None, "training")

        # The retrain trains on exactly those rows; its reason reaches the registry.
        job = build_definitions(settings).resolve_job_def("training")
        retrain = job.execute_in_process(instance=instance, tags=request.tags)
        assert retrain.output_for_node("training_dataset").batches == (
            BatchStore(settings.batches).keys()[-1],
        )
        candidate = retrain.output_for_node("candidate_model")
        assert candidate.newly_registered
        assert candidate.version.tags["driftloop.trigger"].startswith("drift: feature drift: share")

        # That retrain started recently: the same episode asks for nothing more.
        run_monitors(settings, instance)
        again = evaluate(drift_sensor(settings), instance, drifted.cursor)
        assert again.run_requests == [] and "cooldown" in again.skip_message


def test_monitors_export_gauges_to_the_pushgateway(monitored: Settings, monkeypatch) -> None:
    with pushgateway() as url:
        monkeypatch.setenv("DRIFTLOOP_PUSHGATEWAY_URL", url)
        settings = load_settings()
        prepare_dagster_home(settings)
        with dg.DagsterInstance.get() as instance:
            # A log from before ids and class probabilities still judges (binary: the
            # predicted class's probability gives both).
            replace_log(settings, DriftPlan(covariate_shift_at=0), 1000, "gauges", legacy=True)
            run_monitors(settings, instance)
            drift, quality = (
                instance.get_latest_materialization_event(
                    dg.AssetKey(name)
                ).asset_materialization.metadata
                for name in ("feature_drift_report", "live_model_quality")
            )
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    (share,) = families["driftloop_drift_share"].samples
    assert share.value == pytest.approx(drift["share_drifted"].value) and share.value > 0
    assert share.labels["job"] == "driftloop" and share.labels["monitor"] == "feature_drift"
    version = quality["champion_version"].value
    accuracy = {
        s.labels["model_version"]: s.value for s in families["driftloop_live_accuracy"].samples
    }
    assert accuracy == {version: pytest.approx(quality[f"accuracy/v{version}"].value)}
    metric = quality["metric"].value
    (score,) = families["driftloop_live_metric"].samples
    expected = {"job": "driftloop", "monitor": "live_quality", "model_version": version}
    assert score.labels.items() >= {**expected, "metric": metric}.items()
    assert score.value == pytest.approx(quality[f"{metric}/v{version}"].value)
    assert np.isfinite(score.value)
    # Label-free: the calibrated confidence follows a covariate shift (P(y | x) unchanged).
    estimated = quality[f"estimated_accuracy/v{version}"].value
    assert {
        s.labels["model_version"]: s.value for s in families["driftloop_estimated_accuracy"].samples
    } == {version: pytest.approx(estimated)}
    assert abs(estimated - accuracy[version]) < 0.05
    assert abs(quality[f"estimate_gap/v{version}"].value) < 0.05
    nulls = {s.labels["feature"]: s.value for s in families["driftloop_null_share"].samples}
    features = load_schema(settings.schema_path).feature_names
    assert nulls == {f: drift[f"null_share/{f}"].value for f in features} and nulls["age"] == 0


def test_quality_drop_is_located_and_triggers(monitored: Settings, monkeypatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_COOLDOWN_S", "0")
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_MIN_ROWS", "0")  # the prepared log is the evidence
    settings = load_settings()
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        replace_log(settings, DriftPlan(concept_drift_at=1500, drift_function=1), 3000, "concept")
        run_monitors(settings, instance)
        materialization = instance.get_latest_materialization_event(
            dg.AssetKey("live_model_quality")
        ).asset_materialization
        metadata = materialization.metadata
        change = metadata["change_at_sample"].value
        assert 1500 <= change < 2100
        # every label joined, by request id or by business id; the unknown ids counted
        assert metadata["labelled"].value == 3000 and metadata["unmatched_labels"].value == 3
        metric = metadata["metric"].value
        assert metadata["quality_drop_metric"].value == metric  # computable on both sides
        assert metadata["quality_drop"].value > 0.1
        assert metadata[f"{metric}_before_change"].value != metadata[f"{metric}_after_change"]
        (request,) = evaluate(quality_sensor(settings), instance).run_requests
        assert request.tags[TRIGGER_TAG] == "quality"
        assert (
            f" in {metric} at labelled sample {change}" in request.tags["driftloop/trigger_reason"]
        )
        # Evaluated again from an older cursor, the same drop asks for the same run.
        (again,) = evaluate(quality_sensor(settings), instance, cursor='{"seen": 0}').run_requests
        assert again.run_key == request.run_key
        accuracy = materialization.metadata[
            f"accuracy/v{materialization.metadata['champion_version'].value}"
        ]
        assert np.isfinite(accuracy.value)
        # The concept moved, the inputs did not: the confidence still promises the holdout
        # accuracy, and the gap to the realized accuracy is beyond chance.
        version = metadata["champion_version"].value
        assert metadata[f"estimate_gap/v{version}"].value < -0.05
        assert metadata[f"estimate_gap_beyond_chance/v{version}"].value is True
    live = status_report(settings)["live_quality"]  # what `driftloop status` prints
    assert live["version"] == version and live["labelled"] == 3000
    assert live["estimate_gap"] == pytest.approx(metadata[f"estimate_gap/v{version}"].value)
    assert live["estimated_accuracy"] > metadata[f"accuracy/v{version}"].value + 0.05


def test_a_steady_drop_below_the_holdout_retrains_without_a_change_point(
    monitored: Settings, monkeypatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_COOLDOWN_S", "0")
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_MIN_ROWS", "0")  # the prepared log is the evidence
    settings = load_settings()
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        # 8 % of labels flipped from the first request on: ~6 points under the holdout
        # throughout, so no detector names a change and no drop at a change point exists.
        replace_log(settings, DriftPlan(), 2000, "steady", flip=0.08)
        run_monitors(settings, instance)
        metadata = instance.get_latest_materialization_event(
            dg.AssetKey("live_model_quality")
        ).asset_materialization.metadata
        assert "quality_drop" not in metadata
        drop, bound = metadata["holdout_drop"].value, metadata["holdout_drop_bound"].value
        assert drop > 0.03 and bound < drop and metadata["below_holdout"].value is True
        (request,) = evaluate(quality_sensor(settings), instance).run_requests
        assert request.tags[TRIGGER_TAG] == "quality"
        assert "below its holdout" in request.tags["driftloop/trigger_reason"]
        # It learns from the monitor window's start on, not from all the rows ever landed.
        noticed = instance.get_latest_materialization_event(
            dg.AssetKey("live_model_quality")
        ).timestamp
        assert float(request.tags[TRAIN_SINCE_TAG]) == pytest.approx(
            noticed - settings.monitor_window_s, abs=1e-3
        )


def test_a_drop_named_again_keeps_waiting_from_where_it_was_first_seen(
    monitored: Settings, monkeypatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_COOLDOWN_S", "0")
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_MIN_ROWS", "1000000")  # waits throughout
    settings = load_settings()
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        replace_log(settings, DriftPlan(), 2000, "steady-again", flip=0.08)
        run_monitors(settings, instance)
        first = evaluate(quality_sensor(settings), instance)
        since = json.loads(first.cursor)["pending"]["since"]
        run_monitors(settings, instance)  # the next verdict names the same drop, later
        again = evaluate(quality_sensor(settings), instance, first.cursor)
        assert again.run_requests == [] and "waiting for labelled rows" in again.skip_message
        assert json.loads(again.cursor)["pending"]["since"] == since


def test_an_estimated_drop_alerts_once_before_any_label(monitored: Settings, monkeypatch) -> None:
    hook = Webhook()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    settings = load_settings()
    prepare_dagster_home(settings)
    try:
        with dg.DagsterInstance.get() as instance:
            replace_log(settings, DriftPlan(), 3000, "hard", hard=True)
            for log in settings.feedback_log.local_path.glob("*.parquet"):
                log.unlink()  # no label has come back yet
            run_monitors(settings, instance)
            metadata = instance.get_latest_materialization_event(
                dg.AssetKey("live_model_quality")
            ).asset_materialization.metadata
            assert metadata["labelled"].value == 0
            assert metadata["estimated_drop_flagged"].value is True
            assert metadata["estimated_drop"].value > 0.1
            first = evaluate(quality_sensor(settings), instance)
            run_monitors(settings, instance)  # still low: the same episode
            evaluate(quality_sensor(settings), instance, first.cursor)
            assert alerts.ALERTER.flush(10) == 0
    finally:
        hook.server.shutdown()
    sent = [body for body in hook.received if body["event"] == "estimated_drop"]
    assert len(sent) == 1 and "estimated without labels" in sent[0]["text"]
    assert first.run_requests == []  # alert only, by default


def test_an_estimated_drop_can_retrain_on_the_labels_after_it(
    monitored: Settings, monkeypatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_ESTIMATED_DROP_ACTION", "retrain")
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_COOLDOWN_S", "0")
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_MIN_ROWS", "250")
    settings = load_settings()
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        replace_log(settings, DriftPlan(), 3000, "hard-retrain", hard=True)
        for log in settings.feedback_log.local_path.glob("*.parquet"):
            log.unlink()
        run_monitors(settings, instance)
        waiting = evaluate(quality_sensor(settings), instance)
        assert waiting.run_requests == []
        assert "waiting for labelled rows since the change: 0 of 250" in waiting.skip_message
        land(settings, rows=600, batch_rows=300, seed=98)
        ingest_pending(settings, instance, lambda _: None)
        (request,) = evaluate(quality_sensor(settings), instance, waiting.cursor).run_requests
    assert request.tags[TRIGGER_TAG] == "quality"
    assert "estimated without labels" in request.tags["driftloop/trigger_reason"]


def test_a_quality_drop_stays_pending_until_its_rows_have_landed(
    monitored: Settings, monkeypatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_COOLDOWN_S", "0")
    settings = load_settings()
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        replace_log(settings, DriftPlan(concept_drift_at=1500, drift_function=1), 3000, "dropped")
        run_monitors(settings, instance)
        verdict = instance.get_latest_materialization_event(dg.AssetKey("live_model_quality"))
        change_at = verdict.asset_materialization.metadata["change_at_time"].value
        # Earlier tests in this home may have landed rows since then: ask for 250 more.
        needed = BatchStore(settings.batches).rows_after(change_at) + 250
        sensor = quality_sensor(settings.model_copy(update={"retrain_min_rows": needed}))
        waiting = evaluate(sensor, instance)
        assert waiting.run_requests == []
        assert "quality drop" in waiting.skip_message
        assert f"waiting for labelled rows since the change: {needed - 250} of {needed}" in (
            waiting.skip_message
        )

        # The monitor window moves past the change: the newest verdict names no drop.
        replace_log(settings, DriftPlan(), 1000, "later")
        run_monitors(settings, instance)
        later = instance.get_latest_materialization_event(dg.AssetKey("live_model_quality"))
        assert "quality_drop" not in later.asset_materialization.metadata
        still = evaluate(sensor, instance, waiting.cursor)
        assert still.run_requests == [] and "waiting for labelled rows" in still.skip_message

        land(settings, rows=600, batch_rows=300, seed=123)
        ingest_pending(settings, instance, lambda _: None)
        fired = evaluate(sensor, instance, still.cursor)
        (request,) = fired.run_requests
        assert request.tags[TRIGGER_TAG] == "quality"
        assert request.tags["driftloop/trigger_reason"].startswith("quality drop")
        done = evaluate(sensor, instance, fired.cursor)
        assert done.run_requests == [] and "no quality drop" in done.skip_message


def test_a_null_share_jump_is_reported_as_its_own_reason(monitored: Settings, monkeypatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_COOLDOWN_S", "0")
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_MIN_ROWS", "0")
    settings = load_settings()
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        # Only missing values change (Evidently leaves nulls out; the null share does not).
        replace_log(settings, DriftPlan(), 1000, "blanked", blank={"salary": 0.6})
        run_monitors(settings, instance)
        metadata = instance.get_latest_materialization_event(
            dg.AssetKey("feature_drift_report")
        ).asset_materialization.metadata
        assert metadata["null_jump_columns"].value == ["salary"]
        served = metadata["null_share/salary"].value
        assert served == pytest.approx(0.6, abs=0.05) and metadata["null_share/age"].value == 0
        assert f"| salary | 0.000 | {served:.3f} | True |" in metadata["null_shares"].value
        (request,) = evaluate(drift_sensor(settings), instance).run_requests
        assert request.tags[TRIGGER_TAG] == "drift"
        assert 'null share jump in ["salary"]' in request.tags["driftloop/trigger_reason"]


def test_canary_sensor_acts_only_for_the_canary_policy_and_a_challenger(
    monitored: Settings, monkeypatch
) -> None:
    registry = Registry(monitored.mlflow_tracking_uri, monitored.model_name)
    resources = {"driftloop": DriftloopResource(home=str(monitored.home))}
    with dg.DagsterInstance.ephemeral() as instance:

        def tick():
            context = dg.build_sensor_context(instance=instance, resources=resources)
            return canary_sensor(load_settings()).evaluate_tick(context)

        registry.set_alias(CHALLENGER, registry.by_alias(CHAMPION).version)
        try:
            assert "not 'canary'" in tick().skip_message
            monkeypatch.setenv("DRIFTLOOP_PROMOTION_POLICY", "canary")
            assert len(tick().run_requests) == 1
            registry.delete_alias(CHALLENGER)
            assert tick().skip_message == "no @challenger"
        finally:
            registry.delete_alias(CHALLENGER)


def test_a_corrupt_log_file_is_skipped_and_counted_in_the_monitors_metadata(
    monitored: Settings,
) -> None:
    """One unreadable file in each log: the monitoring run still succeeds, judges the rest,
    and its metadata counts and names what it left out."""
    prepare_dagster_home(monitored)
    with dg.DagsterInstance.get() as instance:
        replace_log(monitored, DriftPlan(), 1000, "calm")
        monitored.prediction_log.write_bytes("torn-predictions.parquet", b"PAR1 not parquet")
        monitored.feedback_log.write_bytes("torn-feedback.parquet", b"PAR1 not parquet")
        run_monitors(monitored, instance)
        metadata = {
            name: instance.get_latest_materialization_event(
                dg.AssetKey(name)
            ).asset_materialization.metadata
            for name in ("feature_drift_report", "live_model_quality")
        }
    assert metadata["feature_drift_report"]["judged"].value is True
    assert metadata["live_model_quality"]["labelled"].value > 0
    # each file is quarantined by the first reader that meets it, so counted once in all
    counted = sum(m["skipped_log_files"].value for m in metadata.values())
    reasons = " ".join(
        m["skipped_log_file_reasons"].value
        for m in metadata.values()
        if "skipped_log_file_reasons" in m
    )
    assert (
        counted == 2
        and "torn-predictions.parquet" in reasons
        and "torn-feedback.parquet" in reasons
    )
