"""A snapshot of the asset graph: keys, groups, dependencies, checks, jobs and automation."""

import dagster as dg

from pipelines.definitions import defs


def test_asset_graph_snapshot() -> None:
    graph = defs.resolve_asset_graph()
    snapshot = {
        key.to_user_string(): (
            graph.get(key).group_name,
            sorted(p.to_user_string() for p in graph.get(key).parent_keys),
        )
        for key in graph.get_all_asset_keys()
    }
    assert snapshot == {
        "landed_batch": ("ingestion", []),
        "training_dataset": ("training", ["landed_batch"]),
        "hpo_study": ("training", ["training_dataset"]),
        "candidate_model": ("registry", ["hpo_study", "training_dataset"]),
        "promotion_gate": ("registry", ["candidate_model", "hpo_study", "training_dataset"]),
        "feature_drift_report": ("monitoring", ["training_dataset"]),
        "live_model_quality": ("monitoring", []),
        "canary_decision": ("canary", ["promotion_gate"]),
        "serving_admin_audit": ("serving", []),  # external: observed by audit_sensor
    }
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        *(("landed_batch", n) for n in ["schema", "nulls", "ranges", "label_set", "min_rows"]),
        ("training_dataset", "enough_rows"),
        ("training_dataset", "every_label_present"),
    }


def test_jobs_schedules_and_sensors() -> None:
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "ingest",
        "training",
        "monitoring",
        "canary",
    }
    assert {s.name for s in defs.sensors} == {
        "landing_sensor",
        "prediction_log_sensor",
        "drift_sensor",
        "quality_sensor",
        "error_stream_sensor",
        "canary_sensor",
        "audit_sensor",
        "run_failure_alert",
    }
    assert defs.resolve_schedule_def("nightly_training").cron_schedule == "0 2 * * *"
    sensor = defs.resolve_sensor_def("landing_sensor")
    assert sensor.job_name == "ingest"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
