"""Errors a user can cause end as one sentence and exit code 2, never a traceback; what
`train` and `status` print."""

import json

import pytest

from cli.main import STATUS_AUDIT_ENTRIES, UserError, _one_line, main
from driftloop.audit import AuditTrail
from driftloop.schema import DatasetSchema, ExcludedColumn, FeatureSpec
from driftloop.settings import Settings, redacted
from serving.security import AuditLog


def error_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_bad_configuration(home: Settings, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DRIFTLOOP_CV_FOLDS", "1")
    assert error_of(capsys, ["status"]).startswith(
        "driftloop: bad configuration: cv_folds Input should be greater than or equal to 2"
    )


def test_unreachable_tracking_store(home: Settings, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DRIFTLOOP_TRACKING_URI", "http://127.0.0.1:9")
    assert error_of(capsys, ["status"]) == (
        "driftloop: cannot reach the MLflow store at http://127.0.0.1:9"
    )


def test_nothing_to_roll_back_or_promote(home: Settings, capsys) -> None:
    assert error_of(capsys, ["rollback"]) == (
        "driftloop: nothing to roll back to: no @previous version is set"
    )
    assert "has no version 7" in error_of(capsys, ["promote", "7"])


def test_simulate_rejects_nonsense(home: Settings, capsys) -> None:
    assert error_of(capsys, ["simulate", "--rows", "0"]) == (
        "driftloop: --rows and --batch-rows must be positive"
    )


def test_train_prints_one_line_per_rejected_file(home: Settings, capfd) -> None:
    """A rejected file is one line naming it and why, not Dagster's failed-step traceback."""
    home.landing.write_bytes("no-label.csv", b"a,b\n1,2\n")
    home.landing.write_bytes("tiny.csv", b"x,label\n1,0\n2,1\n3,0\n")
    assert main(["train"]) == 2
    captured = capfd.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2, captured.out
    no_label, tiny = sorted(lines)
    assert no_label.startswith("ingest no-label.csv-")
    assert "rejected -> " in no_label and "quarantine" in no_label
    assert no_label.endswith("schema: target column 'label' is missing (columns: ['a', 'b'])")
    assert "not evaluated" not in no_label
    assert tiny.startswith("ingest tiny.csv-") and "min_rows: " in tiny
    everything = captured.out + captured.err
    assert "Traceback" not in everything and "Stack Trace" not in everything
    assert "STEP_FAILURE" not in everything
    assert captured.err.strip() == (
        f"driftloop: no accepted data yet: put CSV or Parquet files with a 'label' column "
        f"into {home.landing} (or run `driftloop simulate`)"
    )


def test_debug_shows_dagster_log_of_a_rejected_file(home: Settings, monkeypatch, capfd) -> None:
    monkeypatch.setenv("DRIFTLOOP_DEBUG", "1")
    home.landing.write_bytes("no-label.csv", b"a,b\n1,2\n")
    with pytest.raises(UserError, match="no accepted data yet"):
        main(["train"])
    captured = capfd.readouterr()
    assert "STEP_FAILURE" in captured.err and "DagsterAssetCheckFailedError" in captured.err
    assert "ingest no-label.csv-" in captured.out


def test_status_shows_task_metric_and_column_roles(home: Settings, capsys) -> None:
    schema = DatasetSchema(
        target="label",
        labels=(0, 1),
        features=(FeatureSpec("amount", "numeric", "float"),),
        task="binary",
        metric="roc_auc",
        id_columns=("loan_id",),
        timestamp_column="at",
        excluded=(
            ExcludedColumn("loan_id", "id", "configured by DRIFTLOOP_ID_COLUMNS"),
            ExcludedColumn("at", "timestamp", "configured by DRIFTLOOP_TIMESTAMP_COLUMN"),
            ExcludedColumn("note", "identifier-like", "99% of its values are distinct"),
        ),
    )
    home.schema_path.parent.mkdir(parents=True)
    home.schema_path.write_text(schema.to_json())
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "dataset: binary target 'label' (labels [0, 1]), metric roc_auc" in out
    assert "  features (1): amount" in out
    assert "  id columns: loan_id" in out
    assert "  timestamp column: at" in out
    assert "  excluded 'note' (identifier-like): 99% of its values are distinct" in out
    assert main(["status", "--json"]) == 0
    dataset = json.loads(capsys.readouterr().out)["dataset"]
    assert dataset["task"] == "binary" and dataset["metric"] == "roc_auc"
    assert dataset["id_columns"] == ["loan_id"] and dataset["timestamp_column"] == "at"
    assert dataset["excluded"][2] == {
        "name": "note",
        "role": "identifier-like",
        "reason": "99% of its values are distinct",
    }


def test_status_before_any_data(home: Settings, capsys) -> None:
    assert main(["status"]) == 0
    assert "dataset: none accepted yet (target column 'label')" in capsys.readouterr().out


def test_a_ray_actor_error_says_its_cause() -> None:
    """Ray's wrapper names only the actor; HAProxy's startup log says what failed."""
    from ray.exceptions import RayTaskError

    haproxy_log = (
        "HAProxy crashed during startup: [NOTICE]   (12630) : haproxy version is 2.8.25\n"
        "[ALERT]    (12630) : Binding [/tmp/dlhap/haproxy.cfg:50] for frontend http_frontend: "
        "cannot bind socket (Cannot assign requested address) for [10.255.255.1:18001]\n"
        "[ALERT]    (12630) : Some protocols failed to start their listeners! Exiting."
    )
    wrapped = RayTaskError(
        "ready", "\x1b[36mray::HAProxyManager.ready()\x1b[39m (pid=1)", RuntimeError(haproxy_log)
    ).as_instanceof_cause()
    assert _one_line(wrapped) == (
        "HAProxy crashed during startup: Binding [/tmp/dlhap/haproxy.cfg:50] for frontend "
        "http_frontend: cannot bind socket (Cannot assign requested address) for "
        "[10.255.255.1:18001]"
    )


def test_a_store_password_never_reaches_the_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys
) -> None:
    """An unreachable MLflow server named in the error, its password masked."""
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("DRIFTLOOP_TRACKING_URI", "http://ops:hunter2-secret@127.0.0.1:9/")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "ops:***@127.0.0.1:9" in err
    assert (
        redacted("postgresql+psycopg2://u:p@db:5432/x") == "postgresql+psycopg2://u:***@db:5432/x"
    )
    assert redacted("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_status_shows_the_newest_admin_actions(home: Settings, capsys) -> None:
    log = AuditLog(AuditTrail(home.audit_log))  # the writer serving uses
    for number in range(STATUS_AUDIT_ENTRIES + 2):
        log.record(
            action="POST /admin/reload", outcome=str(200 + number), caller=None, client="10.0.0.9"
        )
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"admin actions (newest {STATUS_AUDIT_ENTRIES}):" in out
    assert "POST /admin/reload -> 211  unknown key - from 10.0.0.9" in out
    assert "-> 201 " not in out  # older than the newest ten
    assert main(["status", "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)["audit"]
    assert [entry["outcome"] for entry in audit] == [str(200 + n) for n in range(2, 12)]
