"""Every knob of driftloop, read from `DRIFTLOOP_*` environment variables.

The defaults are the embedded deployment: all state under one `DRIFTLOOP_HOME`
(SQLite for Dagster, MLflow and Optuna; local folders for data). The scale-out
deployment overrides the URIs through the same variables, never through code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from driftloop.storage import Folder, is_s3

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# An admin key is a secret guessed online: 32 characters (e.g. `secrets.token_urlsafe(32)`).
MIN_ADMIN_KEY_CHARS = 32


class WeakAdminKey(Exception):
    """The admin key is too short to use; serving (and every command) refuses to start."""


class Settings(BaseSettings):
    """Configuration with embedded-mode defaults; paths derive from `home` unless set."""

    # Errors never echo a value: some are secrets (the webhook URL, the keys).
    model_config = SettingsConfigDict(
        env_prefix="DRIFTLOOP_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    home: Path = Field(default=Path(".driftloop"), description="Root of all local state.")
    landing_dir: str | None = Field(
        default=None, description="Where new data files land: a folder or s3://bucket/prefix."
    )
    tracking_uri: str | None = Field(default=None, description="MLflow tracking/registry URI.")
    artifact_root: str | None = Field(default=None, description="MLflow artifact root.")
    optuna_storage: str | None = Field(default=None, description="Optuna RDB storage URL.")
    io_bucket: str | None = Field(
        default=None, description="S3 bucket for Dagster asset values; unset keeps local files."
    )
    io_prefix: str = Field(default="dagster/io", description="Key prefix inside `io_bucket`.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto); unset means AWS."
    )

    target_column: str = "label"
    task: Literal["auto", "classification", "binary", "multiclass", "regression"] = Field(
        default="auto",
        description="What the target is; auto: a numeric target with more than 20 distinct "
        "values is a regression, anything else classification.",
    )
    metric: str | None = Field(
        default=None,
        description="The primary metric (accuracy, balanced_accuracy, roc_auc, pr_auc, f1, "
        "log_loss; rmse, mae, r2 for regression); unset: rmse for regression, else chosen "
        "from the label balance.",
    )
    id_columns: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Comma-separated business id columns: kept, never features."
    )
    timestamp_column: str | None = Field(
        default=None, description="The column that orders rows; never a feature."
    )
    ignore_columns: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Comma-separated columns to leave out of the features."
    )
    max_null_share: float = Field(
        default=0.5, ge=0, le=1, description="Null share above which a column is refused."
    )
    null_share_tolerance: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="How far a batch's null share may exceed what the schema's batch saw; "
        "also how far served traffic's may exceed training's before monitoring reports a jump.",
    )
    id_unique_share: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Share of distinct values above which a text column is an identifier.",
    )
    max_categories: int = Field(
        default=50, ge=2, le=250, description="Levels kept per categorical feature."
    )
    model_name: str = "driftloop"
    min_rows: int = Field(default=200, ge=1, description="Smallest batch or dataset accepted.")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    seed: int = 42

    n_trials: int = Field(default=50, ge=1)
    cv_folds: int = Field(default=5, ge=2)
    hpo_timeout_s: float | None = Field(default=None, gt=0)
    hpo_rung_rows: int = Field(
        default=10_000,
        ge=0,
        description="Rows of a trial's first rung on large data (successive halving on rows); "
        "0: every trial k-fold CV on all rows.",
    )
    train_threads: int = Field(default=1, ge=1, description="OpenMP/BLAS threads per fit.")
    hpo_parallel: int = Field(
        default=2, ge=1, description="Trials one search runs at once, each fitting in a process."
    )
    hpo_worker: int = Field(
        default=0, ge=0, description="This process's index among workers sharing one study."
    )

    promotion_policy: Literal["auto", "manual", "canary"] = Field(
        default="auto", description="Who promotes: the gate, a person, or the live canary."
    )
    promotion_margin: float = Field(
        default=0.002,
        ge=-1,
        le=1,
        description="Gain in the primary metric (its units, its direction; a fraction of the "
        "champion's score for rmse and mae) to promote; negative lets a slightly worse one "
        "through.",
    )
    promotion_floor: float | None = Field(
        default=None,
        ge=0,
        description="Holdout bar, in the primary metric's units, the first champion must pass; "
        "unset: the metric's default (0.6 for accuracy, balanced_accuracy, roc_auc; none for "
        "pr_auc, f1, log_loss, rmse, mae; 0 for r2); a ceiling for log_loss, rmse and mae.",
    )

    slice_columns: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Features whose levels the gate compares one by one (comma-separated); "
        "unset: the categorical features with at most 10 levels.",
    )
    sensitive_columns: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Features the gate reports fairness disparities for (comma-separated).",
    )
    slice_min_rows: int = Field(
        default=30, ge=1, description="Holdout rows a slice needs before the gate judges it."
    )
    slice_margin: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="How much worse than the champion a challenger may be on one slice, in "
        "the primary metric's units (a fraction of the champion's for rmse and mae).",
    )

    schedule_cron: str = "0 2 * * *"
    schedule_timezone: str = "UTC"
    landing_sensor_interval_s: int = Field(default=30, ge=1)
    canary_sensor_interval_s: int = Field(default=15, ge=1)
    monitor_sensor_interval_s: int = Field(
        default=15, ge=1, description="How often the quality and error-stream sensors look."
    )

    dagster_port: int = 3000
    mlflow_port: int = 5000

    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    admin_api_key: SecretStr | None = Field(
        default=None,
        description=f"Key for the serving admin endpoints, at least {MIN_ADMIN_KEY_CHARS} "
        "characters; unset, empty or blank turns them off.",
    )

    @field_validator("admin_api_key")
    @classmethod
    def _admin_key(cls, key: SecretStr | None) -> SecretStr | None:
        # Compose passes `${VAR:-}` as "": that must mean off, never "the empty key".
        value = key.get_secret_value().strip() if key is not None else ""
        if not value:
            return None
        if len(value) < MIN_ADMIN_KEY_CHARS:
            # Not a ValueError: pydantic would print the key itself in its error.
            raise WeakAdminKey(
                f"DRIFTLOOP_ADMIN_API_KEY has {len(value)} characters, fewer than the "
                f"{MIN_ADMIN_KEY_CHARS} an admin key needs: generate one with `python -c "
                "'import secrets; print(secrets.token_urlsafe(32))'`, or leave it empty to "
                "turn the admin endpoints off."
            )
        return SecretStr(value)

    canary_weight: float = Field(
        default=0.0, ge=0, le=1, description="Share of traffic the challenger answers."
    )
    serve_replicas: int = Field(default=1, ge=1)
    serve_max_instances: int = Field(
        default=1000, ge=1, description="Instances per predict request; more is a 413."
    )
    serve_max_body_bytes: int = Field(
        default=2**20,
        ge=1,
        description="Largest request body serving reads, in bytes; more is a 413 before parsing.",
    )
    serve_max_batch_rows: int = Field(
        default=256, ge=1, description="Rows one model call may take across batched requests."
    )
    serve_poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often replicas look for alias changes."
    )
    prediction_cache_size: int = Field(
        default=0,
        ge=0,
        description="Answers (one per instance) each replica keeps for repeated instances; "
        "0 turns the cache off.",
    )
    prediction_cache_ttl_s: float = Field(
        default=60.0, gt=0, description="How long a cached answer is served, in seconds."
    )
    prediction_log_dir: str | None = Field(
        default=None,
        description="The serving prediction/feedback log: a folder or s3://bucket/prefix.",
    )
    prediction_log_window_s: int = Field(
        default=300, ge=1, description="One Parquet file per writer per window."
    )
    prediction_log_capacity: int = Field(
        default=100_000, ge=1, description="Queued records before new ones are dropped."
    )

    pushgateway_url: str | None = Field(
        default=None, description="Prometheus Pushgateway for drift share and live accuracy."
    )
    monitor_window_s: int = Field(
        default=900, ge=1, description="Recent traffic the monitors judge, in seconds."
    )
    monitor_min_rows: int = Field(default=200, ge=10, description="Fewest rows to judge drift.")
    drift_share_threshold: float = Field(
        default=0.3, gt=0, le=1, description="Share of drifted features that confirms drift."
    )
    quality_drop_threshold: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Drop in the primary metric (signed by its direction; a fraction of the "
        "score before for rmse and mae; accuracy where it cannot be computed) after a change "
        "point that counts.",
    )
    quality_holdout_margin: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="How far the champion's live metric may fall below its holdout score (a "
        "fraction of it for rmse and mae) before a drop beyond two standard errors retrains.",
    )
    estimated_drop_threshold: float = Field(
        default=0.03,
        gt=0,
        le=1,
        description="Fall of the champion's label-free accuracy estimate below its holdout "
        "accuracy (and beyond two standard errors) that flags the live-quality run; an alert "
        "for the operator, since labels for a retrain come later.",
    )
    estimated_drop_action: Literal["alert", "retrain"] = Field(
        default="alert",
        description="On an estimated drop: alert only, or also retrain once "
        "DRIFTLOOP_RETRAIN_MIN_ROWS labelled rows from after it have landed.",
    )
    retrain_min_rows: int = Field(
        default=1000,
        ge=0,
        description="Labelled rows landed since a detected change before a monitor retrains.",
    )
    retrain_cooldown_s: int = Field(
        default=1800, ge=0, description="Quiet time after a monitor-triggered retrain."
    )

    serving_url: str = Field(
        default="http://127.0.0.1:8000", description="Where the canary job reaches serving."
    )
    alert_webhook_url: SecretStr | None = Field(
        default=None,
        description="Where alerts are posted (Slack-compatible or PagerDuty Events v2); unset "
        "sends none, or PagerDuty's endpoint with the pagerduty format.",
    )
    alert_format: Literal["slack", "pagerduty"] = Field(
        default="slack", description="The alert body: Slack-compatible JSON or PagerDuty Events v2."
    )
    pagerduty_routing_key: SecretStr | None = Field(
        default=None, description="The PagerDuty integration key the pagerduty format needs."
    )
    canary_steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    canary_min_samples: int = Field(default=100, ge=2, description="Outcomes per arm to judge.")
    canary_max_samples: int = Field(
        default=10_000,
        ge=2,
        description="Outcomes per arm after which a canary still inconclusive is rolled back "
        "(since the canary started for the sequential test; per step for welch).",
    )
    canary_margin: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Non-inferiority margin in the primary metric's per-request units (a "
        "fraction of the champion's mean squared or absolute error for rmse and mae); unset: "
        "the metric's default (0.02; 0.1 for rmse and mae, whose per-request losses are noisy).",
    )
    canary_confidence: float = Field(default=0.95, gt=0, lt=1)
    canary_mode: Literal["sequential", "welch", "bandit"] = Field(
        default="sequential",
        description="How the canary judges: a confidence sequence valid at every check "
        "(early promotion of a clear winner), Welch's fixed-horizon test at each check, or "
        "the confidence sequence with traffic allocated by Thompson sampling.",
    )
    canary_champion_floor: float = Field(
        default=0.25,
        ge=0,
        lt=1,
        description="Bandit mode: the least share of traffic the champion keeps.",
    )
    canary_max_key_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Most of an arm's canary outcomes one sticky routing key may supply; "
        "its later ones are left out of the evidence (counted).",
    )
    canary_max_p99_ms: float = Field(
        default=250.0, gt=0, description="Challenger p99 latency that rolls it back."
    )

    @field_validator(
        "id_columns", "ignore_columns", "slice_columns", "sensitive_columns", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("alert_webhook_url", "pagerduty_routing_key")
    @classmethod
    def _empty_is_unset(cls, secret: SecretStr | None) -> SecretStr | None:
        # Compose passes `${VAR:-}`: an empty secret means none.
        return secret if secret and secret.get_secret_value().strip() else None

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook(cls, url: SecretStr | None) -> SecretStr | None:
        # Checked at start so a typo fails loudly once, not silently inside every alert; the
        # message never holds the URL, which often carries a token.
        if url is not None and not _is_http_url(url.get_secret_value().strip()):
            raise ValueError(
                "DRIFTLOOP_ALERT_WEBHOOK_URL must be an http:// or https:// URL with a host"
            )
        return url

    @model_validator(mode="after")
    def _pagerduty_has_a_key(self) -> Settings:
        if self.alert_format == "pagerduty" and self.pagerduty_routing_key is None:
            raise ValueError(
                "DRIFTLOOP_ALERT_FORMAT=pagerduty needs DRIFTLOOP_PAGERDUTY_ROUTING_KEY"
            )
        return self

    @field_validator("home")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # Dagster runs in subprocesses with other working directories: pin paths now.
        return path.expanduser().resolve()

    @field_validator("landing_dir", "prediction_log_dir")
    @classmethod
    def _absolute_unless_s3(cls, location: str | None) -> str | None:
        if location is None or is_s3(location):
            return location
        return str(Path(location).expanduser().resolve())

    @property
    def landing(self) -> Folder:
        return Folder(self.landing_dir or self.home / "landing", self.s3_endpoint_url)

    @property
    def quarantine(self) -> Folder:
        """Rejected files with their reasons: next to the landing zone when that is in S3."""
        if self.landing_dir and is_s3(self.landing_dir):
            return self.landing.child("quarantine")
        return Folder(self.home / "quarantine")

    @property
    def batches(self) -> Path:
        """Accepted batches, one Parquet file per landed file."""
        return self.home / "data" / "batches"

    @property
    def schema_path(self) -> Path:
        return self.home / "data" / "schema.json"

    @property
    def dagster_home(self) -> Path:
        """`DAGSTER_HOME` if the deployment sets it, else a folder of this home."""
        explicit = os.environ.get("DAGSTER_HOME")
        return Path(explicit) if explicit else self.home / "dagster"

    @property
    def io_dir(self) -> Path:
        return self.home / "dagster" / "io"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        return self.artifact_root or (self.home / "mlflow" / "artifacts").as_uri()

    @property
    def optuna_storage_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.home / 'optuna.db'}"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def serving_dir(self) -> Path:
        """The serving replicas' last good models and event log."""
        return self.home / "serving"

    @property
    def prediction_log(self) -> Folder:
        """Served predictions: Parquet files Dagster reads as a source."""
        return self._serving_log.child("predictions")

    @property
    def feedback_log(self) -> Folder:
        """Ground-truth labels posted to the serving app, joined to predictions by request id."""
        return self._serving_log.child("feedback")

    @property
    def audit_log(self) -> Folder:
        """Admin actions and refused attempts on the serving endpoint (`driftloop.audit`)."""
        return self._serving_log.child("audit")

    @property
    def _serving_log(self) -> Folder:
        return Folder(self.prediction_log_dir or self.home / "predictions", self.s3_endpoint_url)

    # Landing-zone limits (issue 13, item 4): checked from the listing and the Parquet footer
    # before a file is read, so one huge or decompression-bomb file cannot exhaust memory.
    max_file_bytes: int = Field(
        default=512 * 2**20, gt=0, description="Largest landed file read (bytes on disk)."
    )
    max_table_bytes: int = Field(
        default=2 * 2**30,
        gt=0,
        description="Largest table a landed Parquet file may decode to (bytes, from its footer).",
    )

    # serving reliability and security (#13, #14)
    prediction_log_flush_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How often a replica publishes what it logged, in seconds: at most this "
        "much is lost if it is killed.",
    )
    serve_max_queued_requests: int = Field(
        default=128,
        ge=1,
        description="Predictions and feedback one replica holds at once; more are answered "
        "503 with Retry-After at once.",
    )
    serve_retry_after_s: int = Field(
        default=1, ge=0, le=3600, description="The Retry-After of a 503 for overload."
    )
    admin_api_key_file: str | None = Field(
        default=None,
        description="A file of admin keys, one per line (two during a rotation), re-read "
        "when it changes; empty means none.",
    )
    viewer_api_key: SecretStr | None = Field(
        default=None,
        description="Read-only key for /readyz details and GET /admin/state; unset, empty "
        "or blank: none.",
    )
    viewer_api_key_file: str | None = Field(
        default=None, description="A file of viewer keys, one per line, re-read on change."
    )
    feedback_api_key: SecretStr | None = Field(
        default=None, description="When set, /v1/feedback requires it (header X-API-Key)."
    )
    request_id_secret: SecretStr | None = Field(
        default=None,
        description="HMAC secret that signs request ids (comma-separated: the first signs, "
        "all verify); unset: one generated per serving home.",
    )
    serve_tls_certfile: str | None = Field(
        default=None, description="PEM certificate: serving answers https with it."
    )
    serve_tls_keyfile: str | None = Field(
        default=None, description="PEM private key of `serve_tls_certfile`."
    )
    serving_ca: str | None = Field(
        default=None,
        description="CA certificate(s) the canary job, the CLI and `up` trust for an https "
        "serving URL: a PEM file's path, or the PEM text itself (what a run container gets "
        "through its environment); unset: the system's trust store (and a self-signed "
        "`serve_tls_certfile`, which is its own CA).",
    )

    # registry events pushed to serving (#18, item 3; serving/registry_events.py)
    registry_webhook_secret: SecretStr | None = Field(
        default=None,
        description="HMAC secret (32+ characters) of the MLflow webhook that pushes alias "
        "moves to serving; with an http(s) tracking server, serving registers the webhook at "
        "deploy. Unset, empty or blank: replicas only poll.",
    )
    registry_webhook_secret_file: str | None = Field(
        default=None, description="A file whose first line is the registry webhook secret."
    )
    registry_webhook_url: str | None = Field(
        default=None,
        description="Where the MLflow server reaches serving's /v1/registry-events; unset: "
        "this serving host and port.",
    )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it raises on a port that is not a number
    except ValueError:  # that, or an unbalanced "[" in the host
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def redacted(url: str) -> str:
    """A store URL fit to print: a password in it (`postgresql://user:secret@host/db`) is
    replaced by `***`; anything else is left as it is."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def load_settings() -> Settings:
    """Read settings from the environment now (not cached: tests and the CLI change it)."""
    return Settings()
