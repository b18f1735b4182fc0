"""The scale-out deployments pass the Dagster side every setting it needs.

Without these, compose and Helm start a loop that looks healthy while alerts are silently
off and the canary job calls 127.0.0.1 (issue 14).
"""

import re

import pytest
import yaml
from pydantic import SecretStr

from driftloop.settings import PROJECT_ROOT, Settings

DEPLOY = PROJECT_ROOT / "deploy"

# What a deployment must tell the Dagster code location (sensors in the code server, assets
# in run containers): where state lives, the dataset's roles, who promotes, how it reaches
# serving and people. Every other setting has a default that holds in any deployment.
DAGSTER_SETTINGS = (
    "home",
    "tracking_uri",
    "optuna_storage",
    "io_bucket",
    "s3_endpoint_url",
    "landing_dir",
    "prediction_log_dir",
    "pushgateway_url",
    "n_trials",
    "target_column",
    "metric",
    "id_columns",
    "timestamp_column",
    "ignore_columns",
    "promotion_policy",
    "serving_url",
    "serving_ca",
    "admin_api_key",
    "alert_webhook_url",
    "alert_format",
    "pagerduty_routing_key",
)
NEEDED = {f"DRIFTLOOP_{name.upper()}" for name in DAGSTER_SETTINGS}
DAGSTER_CODE = ("pipelines", "assets", "driftloop")


def dagster_source() -> str:
    files = [p for d in DAGSTER_CODE for p in sorted((PROJECT_ROOT / d).rglob("*.py"))]
    return "\n".join(p.read_text() for p in files if p.name != "settings.py")


def test_the_list_names_settings_the_dagster_code_reads() -> None:
    source = dagster_source()
    for name in DAGSTER_SETTINGS:
        assert name in Settings.model_fields, f"{name} is not a setting"
        assert re.search(rf"\.{name}\b", source), f"no Dagster code reads settings.{name}"


def test_every_secret_the_dagster_code_reads_is_in_the_list() -> None:
    # Secrets have no default that could work: a new one must be passed, so derive them.
    source = dagster_source()
    secrets = {
        name
        for name, field in Settings.model_fields.items()
        if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
        and re.search(rf"\.{name}\b", source)
    }
    assert secrets and secrets <= set(DAGSTER_SETTINGS)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())


@pytest.mark.parametrize("service", ["user-code", "daemon", "webserver"])
def test_compose_passes_the_dagster_settings(service: str) -> None:
    environment = compose()["services"][service]["environment"]
    assert set(environment) >= NEEDED, sorted(NEEDED - set(environment))


def test_compose_points_the_canary_job_at_serving_not_at_itself() -> None:
    environment = compose()["services"]["daemon"]["environment"]
    assert environment["DRIFTLOOP_SERVING_URL"] == "http://ray-head:8000"
    assert "ray-head" in compose()["services"]


def test_helm_passes_the_dagster_settings_to_the_code_server_and_its_runs() -> None:
    values = yaml.safe_load((DEPLOY / "k8s" / "dagster-values.yaml").read_text())
    [user_code] = values["dagster-user-deployments"]["deployments"]
    assert user_code["includeConfigInLaunchedRuns"]["enabled"] is True
    env = {item["name"]: item for item in user_code["env"]}
    assert set(env) >= NEEDED, sorted(NEEDED - set(env))
    for name, item in env.items():
        if name != "DRIFTLOOP_SERVING_URL":
            assert item["valueFrom"]["secretKeyRef"] == {
                "name": "driftloop-env",
                "key": name,
                "optional": True,
            }
    assert env["DRIFTLOOP_SERVING_URL"]["value"] == "http://driftloop-serve-svc:8000"


def test_compose_run_containers_get_the_dagster_settings() -> None:
    # The DockerRunLauncher passes only the listed variables from the daemon to a run.
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    forwarded = set(instance["run_launcher"]["config"]["env_vars"])
    assert forwarded >= NEEDED, sorted(NEEDED - forwarded)


def test_the_rayservice_is_the_one_the_serving_url_names() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "rayservice.yaml").read_text()))
    names = {d["metadata"]["name"] for d in documents if d and d.get("kind") == "RayService"}
    assert names == {"driftloop"}  # KubeRay's Serve service: driftloop-serve-svc
