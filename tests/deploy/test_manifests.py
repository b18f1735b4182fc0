"""Static checks of `deploy/`: what can be verified without a Docker daemon or a cluster.

Every file parses; the Dagster instance config validates against Dagster's own schema; the
compose file's services wait on health checks that exist; the images run as non-root users
and install dependencies before copying code; the Kubernetes manifests agree with the compose
setup and embed the repository's Serve config; the alert rules pass `promtool test rules`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.config import pg_config
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from ray.serve.schema import ServeDeploySchema

from driftloop.pushgateway import DRIFT_SHARE, LIVE_ACCURACY, LIVE_METRIC, NULL_SHARE
from serving.app import ServeArgs
from serving.metrics import ServingMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
INSTANCE = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
HELM = yaml.safe_load((DEPLOY / "k8s" / "dagster-values.yaml").read_text())
RAYSERVICE = yaml.safe_load((DEPLOY / "k8s" / "rayservice.yaml").read_text())
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
# The monitoring assets push these to the Pushgateway (driftloop/pushgateway.py).
MONITORING_METRICS = {DRIFT_SHARE, NULL_SHARE, LIVE_ACCURACY, LIVE_METRIC}
SERVE_CONFIG = yaml.safe_load((ROOT / "serving" / "serve_config.yaml").read_text())
# Services that run once and exit, so they have nothing to health-check.
ONE_SHOT = {"minio-init"}
COMPOSE_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")  # ${NAME:-default}
COMPOSE_REQUIRED = re.compile(r"\$\{(\w+):\?([^}]*)\}")  # ${NAME:?message}: no default
NETWORK_POLICIES = list(yaml.safe_load_all((DEPLOY / "k8s" / "networkpolicies.yaml").read_text()))


def env_refs(node: Any) -> set[str]:
    """Every `{env: NAME}` in a Dagster config tree."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node)) if node else set()
    return set()


def compose_env(service: str) -> dict[str, str]:
    """A service's environment as compose would set it with the required secrets given
    (as `<NAME>`) and everything else at its default."""
    environment = COMPOSE["services"][service].get("environment", {})
    assert isinstance(environment, dict), f"{service}: use the mapping form of environment"
    return {
        key: COMPOSE_REQUIRED.sub(r"<\1>", COMPOSE_DEFAULT.sub(r"\2", str(value)))
        for key, value in environment.items()
    }


def test_every_deploy_file_parses() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json")]
    assert len(files) >= 10
    for path in files:
        text = path.read_text()
        if path.suffix == ".json":
            assert json.loads(text), path
        else:  # a manifest may hold several documents
            assert all(doc is not None for doc in yaml.safe_load_all(text)), path


# --- deploy/dagster.yaml -------------------------------------------------------------------


@pytest.fixture
def instance_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The instance's variables as compose sets them for the webserver."""
    env = compose_env("webserver")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_instance_config_validates_against_dagsters_schema(
    tmp_path: Path, instance_env: dict[str, str]
) -> None:
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_retries"] == {"enabled": True, "max_retries": 2}
    # Each pluggable class's own config schema, with the variables resolved.
    for schema, value in (
        (pg_config(), config["storage"]["postgres"]),
        (QueuedRunCoordinator.config_type(), config["run_coordinator"]["config"]),
        (S3ComputeLogManager.config_type(), config["compute_logs"]["config"]),
    ):
        result = process_config(resolve_to_config_type(schema), value)
        assert result.success, result.errors
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    assert config["run_launcher"]["class"] == "DockerRunLauncher"


def test_every_postgres_connection_field_comes_from_the_environment() -> None:
    fields = INSTANCE["storage"]["postgres"]["postgres_db"]
    assert {"hostname", "port", "username", "password", "db_name"} <= set(fields)
    for name in ("hostname", "port", "username", "password", "db_name"):
        assert set(fields[name]) == {"env"}, name


def test_run_containers_get_every_variable_the_instance_and_driftloop_read() -> None:
    passed = set(INSTANCE["run_launcher"]["config"]["env_vars"])
    assert env_refs(INSTANCE) <= passed  # a run container loads this same instance file
    driftloop = {k for k in compose_env("user-code") if k.startswith(("DRIFTLOOP_", "AWS_"))}
    assert driftloop <= passed


# --- docker-compose.yaml -------------------------------------------------------------------


def test_compose_has_the_whole_stack() -> None:
    services = set(COMPOSE["services"])
    assert {
        "postgres", "minio", "mlflow", "user-code", "webserver", "daemon", "ray-head",
        "prometheus", "grafana",
    } <= services  # fmt: skip


def test_compose_services_wait_for_healthy_dependencies() -> None:
    services = COMPOSE["services"]
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service["healthcheck"]["test"], f"{name} has no health check"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if dependency in ONE_SHOT:
                assert rule["condition"] == "service_completed_successfully", name
            else:
                assert rule["condition"] == "service_healthy", f"{name} -> {dependency}"


def test_compose_dagster_processes_share_the_instance_environment() -> None:
    needed = env_refs(INSTANCE)
    for service in ("webserver", "daemon", "user-code"):
        missing = needed - set(compose_env(service))
        assert not missing, f"{service} lacks {sorted(missing)}"
    # The run launcher's network and volume are the compose project's own.
    assert compose_env("daemon")["DAGSTER_DOCKER_NETWORK"] in {
        network.get("name") for network in COMPOSE["networks"].values()
    }
    launcher_volume = INSTANCE["run_launcher"]["config"]["container_kwargs"]["volumes"][0]
    assert launcher_volume.split(":")[0] in {
        volume.get("name") for volume in COMPOSE["volumes"].values() if volume
    }


def test_compose_images_are_pinned_and_ports_local() -> None:
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, re.MULTILINE))
    for name, service in COMPOSE["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        if "build" in service:
            assert service["build"]["target"] in targets, name
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_compose_has_no_default_secret() -> None:
    """Every password, secret key and token must be set (`${X:?...}`): compose refuses to
    start without it, instead of running on a development value."""
    text = (DEPLOY / "docker-compose.yaml").read_text()
    secret = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ROUTING_KEY")
    defaulted = [name for name, _ in COMPOSE_DEFAULT.findall(text) if secret.search(name)]
    # optional secrets: unset means the feature is off (admin API, alerts)
    optional = {"DRIFTLOOP_ADMIN_API_KEY", "DRIFTLOOP_PAGERDUTY_ROUTING_KEY"}
    assert set(defaulted) <= optional, defaulted
    required = {name for name, _ in COMPOSE_REQUIRED.findall(text)}
    assert {
        "POSTGRES_PASSWORD",
        "S3_ROOT_PASSWORD",
        "DAGSTER_S3_SECRET_KEY",
        "SERVING_S3_SECRET_KEY",
        "MLFLOW_S3_SECRET_KEY",
        "RAY_AUTH_TOKEN",
        "DRIFTLOOP_REQUEST_ID_SECRET",
        "GRAFANA_ADMIN_PASSWORD",
    } <= required
    example = (DEPLOY / "env.example").read_text()
    assert all(f"{name}=" in example for name in required), "deploy/env.example lists them"


def test_compose_gives_each_service_its_own_s3_user() -> None:
    """Only MinIO and its init hold the root credentials; each service's key is the user
    whose policy deploy/minio/ holds, and init.sh creates each of those users."""
    users = {
        service: compose_env(service).get("AWS_ACCESS_KEY_ID")
        for service in ("user-code", "webserver", "daemon", "mlflow", "ray-head", "ray-worker")
    }
    assert users == {
        "user-code": "dagster",
        "webserver": "dagster",
        "daemon": "dagster",
        "mlflow": "mlflow",
        "ray-head": "serving",
        "ray-worker": "serving",
    }
    policies = {p.stem for p in (DEPLOY / "minio").glob("*.json")}
    assert set(users.values()) == policies
    init = (DEPLOY / "minio" / "init.sh").read_text()
    assert set(re.search(r"for user in (.+); do", init).group(1).split()) == policies
    for name in COMPOSE["services"]:
        if name not in ("minio", "minio-init"):
            env = compose_env(name)
            assert "S3_ROOT_PASSWORD" not in env and "MINIO_ROOT_PASSWORD" not in env, name
    serving = compose_env("ray-head")
    assert serving["RAY_AUTH_MODE"] == "token" and serving["RAY_AUTH_TOKEN"] == "<RAY_AUTH_TOKEN>"
    assert "--dashboard-host=127.0.0.1" in " ".join(COMPOSE["services"]["ray-head"]["command"])


def test_serving_log_is_where_the_serving_policy_lets_it_write() -> None:
    log = compose_env("ray-head")["DRIFTLOOP_PREDICTION_LOG_DIR"].removeprefix("s3://")
    policy = json.loads((DEPLOY / "minio" / "serving.json").read_text())
    writable = {
        resource.removeprefix("arn:aws:s3:::")
        for statement in policy["Statement"]
        if "s3:PutObject" in statement["Action"]
        for resource in statement["Resource"]
    }
    assert writable == {f"{log}/*"}


def test_network_policies_deny_by_default_and_guard_rays_control_plane() -> None:
    by_name = {p["metadata"]["name"]: p["spec"] for p in NETWORK_POLICIES}
    for policy in NETWORK_POLICIES:
        assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    assert by_name["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    # the dashboard (Jobs API) is reachable only from Ray's pods and the operator's namespace
    dashboard_sources = [
        rule["from"]
        for spec in by_name.values()
        for rule in spec.get("ingress", [])
        if any(p["port"] in (8265, 52365) for p in rule.get("ports", []))
        or (
            "ports" not in rule
            and spec["podSelector"].get("matchLabels", {}).get("ray.io/is-ray-node")
        )
    ]
    assert dashboard_sources == [
        [{"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}}],
        [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kuberay-operator"}
                }
            }
        ],
    ]
    assert RAYSERVICE["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
    groups = [
        RAYSERVICE["spec"]["rayClusterConfig"]["headGroupSpec"],
        *RAYSERVICE["spec"]["rayClusterConfig"]["workerGroupSpecs"],
    ]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert container["envFrom"] == [{"secretRef": {"name": "driftloop-serving-env"}}]


def test_compose_serving_logs_where_dagster_reads_and_gauges_reach_prometheus() -> None:
    dagster, serving = compose_env("user-code"), compose_env("ray-head")
    log = serving["DRIFTLOOP_PREDICTION_LOG_DIR"]
    assert log.startswith("s3://") and dagster["DRIFTLOOP_PREDICTION_LOG_DIR"] == log
    assert serving["DRIFTLOOP_S3_ENDPOINT_URL"] == dagster["DRIFTLOOP_S3_ENDPOINT_URL"]
    assert dagster["DRIFTLOOP_LANDING_DIR"].startswith("s3://")
    gateway = dagster["DRIFTLOOP_PUSHGATEWAY_URL"].removeprefix("http://")
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in scrape["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert job["honor_labels"] is True and job["static_configs"][0]["targets"] == [gateway]


def test_compose_mlflow_uses_postgres_and_s3() -> None:
    command = COMPOSE["services"]["mlflow"]["command"]
    store = command[command.index("--backend-store-uri") + 1]
    artifacts = command[command.index("--artifacts-destination") + 1]
    assert store.startswith("postgresql+psycopg2://") and store.endswith("/mlflow")
    assert artifacts == f"s3://{compose_env('user-code')['DRIFTLOOP_IO_BUCKET']}/mlflow"
    init = (DEPLOY / "postgres" / "init.sql").read_text()
    for database in ("dagster", "mlflow", "optuna"):
        assert f"CREATE DATABASE {database};" in init


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in DOCKERFILE.splitlines():
        match = re.match(r"FROM \S+ AS (\S+)$", line)
        if match:
            current = match.group(1)
            stages[current] = []
        elif current and line and not line.startswith((" ", "#")):
            stages[current].append(line)
    return stages


@pytest.mark.parametrize("target", ["dagster", "user-code", "serving"])
def test_images_run_as_non_root_and_copy_code_last(target: str) -> None:
    instructions = dockerfile_stages()[target]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), f"{target} runs as root"
    installs = [
        i for i, line in enumerate(instructions) if re.match(r"RUN pip install .*-r ", line)
    ]
    code = [i for i, line in enumerate(instructions) if re.match(r"COPY .*\bdriftloop ", line)]
    if code:
        assert installs and max(installs) < min(code), f"{target}: code copied before deps"


def test_serving_image_and_rayservice_match_the_installed_ray() -> None:
    [dockerfile_ray] = re.findall(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert dockerfile_ray == RAYSERVICE["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


# --- Kubernetes ----------------------------------------------------------------------------


def test_serve_config_is_a_valid_autoscaled_deploy_config() -> None:
    """What `serve deploy` checks first: Ray's own schema, then our application's arguments."""
    config = ServeDeploySchema.model_validate(SERVE_CONFIG)
    (app,) = config.applications
    ServeArgs.model_validate(app.args)
    (deployment,) = app.deployments
    assert deployment.num_replicas == "auto"
    scaling = deployment.autoscaling_config
    assert 1 <= scaling["min_replicas"] <= scaling["initial_replicas"] <= scaling["max_replicas"]
    assert "num_replicas" not in app.args  # would fight the autoscaler


def test_rayservice_embeds_the_repository_serve_config() -> None:
    """The RayService deploys exactly the applications `serve deploy` would."""
    embedded = yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])
    assert embedded["applications"] == SERVE_CONFIG["applications"]


def test_rayservice_autoscales_and_runs_unprivileged() -> None:
    assert RAYSERVICE["apiVersion"] == "ray.io/v1" and RAYSERVICE["kind"] == "RayService"
    cluster = RAYSERVICE["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    for group in cluster["workerGroupSpecs"]:
        assert 0 < group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        spec = pod["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            assert container["resources"]["requests"], container["name"]
            assert container["image"].rsplit(":", 1)[1] != "latest"


def test_helm_values_mirror_the_compose_instance() -> None:
    """Kubernetes and compose run the same instance: limits, retries, logs, database."""
    assert HELM["runLauncher"]["type"] == "K8sRunLauncher"
    assert HELM["postgresql"]["enabled"] is False
    assert (
        HELM["postgresql"]["postgresqlScheme"]
        == INSTANCE["storage"]["postgres"]["postgres_db"]["scheme"]
    )
    queued = HELM["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert (
        queued["tagConcurrencyLimits"]
        == INSTANCE["run_coordinator"]["config"]["tag_concurrency_limits"]
    )
    retries = HELM["dagsterDaemon"]["runRetries"]
    assert retries == {
        "enabled": INSTANCE["run_retries"]["enabled"],
        "maxRetries": INSTANCE["run_retries"]["max_retries"],
    }
    logs = HELM["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    assert (
        logs["config"]["s3ComputeLogManager"]["bucket"]
        == compose_env("user-code")["DRIFTLOOP_IO_BUCKET"]
    )
    [user_code] = HELM["dagster-user-deployments"]["deployments"]
    assert user_code["codeServerArgs"] == ["-m", "pipelines.definitions", "-a", "defs"]
    assert HELM["rabbitmq"]["enabled"] is False


# --- Observability -------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    # `./run.sh test` installs it: a skip here would hide untested alert rules.
    assert found is not None, "promtool missing: apt-get install prometheus (./run.sh test does)"
    return found


@pytest.mark.parametrize(
    "check",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "config", "prometheus.tls.yml"),
        ("test", "rules", "alerts_test.yml"),
    ],
    ids=["config is valid", "TLS config is valid", "alert rules fire on recorded series"],
)
def test_promtool_accepts_the_prometheus_files(check: tuple[str, ...]) -> None:
    result = subprocess.run(
        [promtool(), *check], cwd=DEPLOY / "prometheus", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def exported_metrics() -> set[str]:
    """Sample names the serving replica really exposes, plus the rules' recorded series."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = {
        family.name + suffix
        for family in ServingMetrics().registry.collect()
        for suffix in suffixes[family.type]
    }
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names |= {r["record"] for group in rules["groups"] for r in group["rules"] if "record" in r}
    return names | MONITORING_METRICS


def referenced_metrics(expression: str) -> set[str]:
    return set(re.findall(r"\b(driftloop[_:][a-z0-9_:]+)", expression))


def test_dashboard_and_alerts_use_metrics_that_exist() -> None:
    known = exported_metrics()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "driftloop.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for expression in expressions:
        unknown = referenced_metrics(expression) - known
        assert not unknown, f"{sorted(unknown)} in {expression!r}"


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    [uid] = [source["uid"] for source in datasources["datasources"]]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "driftloop.json").read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    for needed in ("Canary weight", "Drift share", "Live accuracy by model version"):
        assert needed in titles
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]


# --- TLS -----------------------------------------------------------------------------------

TLS_OVERLAY = yaml.safe_load((DEPLOY / "docker-compose.tls.yaml").read_text())
RAY_SERVICES = ("ray-head", "ray-worker")
DAGSTER_SERVICES = ("user-code", "webserver", "daemon")


def test_the_compose_head_starts_proxies_through_ours_before_deploying() -> None:
    """`serve start` has no TLS flags: the head starts Serve's proxies with
    `serving.cluster_proxies` (tested on a real cluster in tests/serving/test_tls.py)."""
    command = " ".join(COMPOSE["services"]["ray-head"]["command"])
    assert "serve start" not in command
    assert command.index("python -m serving.cluster_proxies") < command.index("serve deploy")
    env = compose_env("ray-head")
    assert (env["DRIFTLOOP_SERVE_HOST"], env["DRIFTLOOP_SERVE_PORT"]) == ("0.0.0.0", "8000")


def test_the_tls_overlay_gives_every_ray_node_the_certificate_as_secrets() -> None:
    secrets = TLS_OVERLAY["secrets"]
    for name in ("serving_tls_cert", "serving_tls_key"):
        assert COMPOSE_REQUIRED.fullmatch(secrets[name]["file"]), name  # no default file
    for service in RAY_SERVICES:
        overlay = TLS_OVERLAY["services"][service]
        assert service in COMPOSE["services"]
        assert set(overlay["secrets"]) == {"serving_tls_cert", "serving_tls_key"}
        env = overlay["environment"]
        assert env["DRIFTLOOP_SERVE_TLS_CERTFILE"] == "/run/secrets/serving_tls_cert"
        assert env["DRIFTLOOP_SERVE_TLS_KEYFILE"] == "/run/secrets/serving_tls_key"
    health = " ".join(TLS_OVERLAY["services"]["ray-head"]["healthcheck"]["test"])
    assert "https://localhost:8000/-/healthz" in health and "serving_tls_cert" in health


def test_the_tls_overlay_points_dagster_at_https_with_the_ca() -> None:
    for service in DAGSTER_SERVICES:
        env = TLS_OVERLAY["services"][service]["environment"]
        assert env["DRIFTLOOP_SERVING_URL"] == "https://ray-head:8000"
        assert COMPOSE_REQUIRED.fullmatch(env["DRIFTLOOP_SERVING_CA"])
        assert "DRIFTLOOP_SERVING_CA" in COMPOSE["services"][service]["environment"]
    assert "DRIFTLOOP_SERVING_CA" in INSTANCE["run_launcher"]["config"]["env_vars"]
    assert TLS_OVERLAY["secrets"]["serving_tls_ca"] == {"environment": "DRIFTLOOP_SERVING_CA"}


def test_prometheus_over_tls_differs_only_in_the_serving_job() -> None:
    plain = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    tls = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.tls.yml").read_text())
    serving = next(job for job in tls["scrape_configs"] if job["job_name"] == "driftloop-serve")
    assert serving.pop("scheme") == "https"
    ca_file = serving.pop("tls_config")["ca_file"]
    assert tls == plain
    prometheus = TLS_OVERLAY["services"]["prometheus"]
    assert ca_file == f"/run/secrets/{prometheus['secrets'][0]}"
    (mount,) = prometheus["volumes"]
    target = mount.split(":")[1]
    assert mount.startswith("./prometheus/prometheus.tls.yml:")
    assert target in {v.split(":")[1] for v in COMPOSE["services"]["prometheus"]["volumes"]}


def test_the_kubernetes_ingress_terminates_tls_in_front_of_the_serve_service() -> None:
    (ingress,) = yaml.safe_load_all((DEPLOY / "k8s" / "ingress-tls.yaml").read_text())
    assert ingress["kind"] == "Ingress"
    (tls,) = ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] in tls["hosts"] and tls["secretName"] == "driftloop-serving-tls"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "driftloop-serve-svc", "port": {"number": 8000}}
    # and the ingress controller's namespace is one the Serve port admits
    serve_policy = next(p for p in NETWORK_POLICIES if p["metadata"]["name"] == "ray-serve-http")
    sources = [s for rule in serve_policy["spec"]["ingress"] for s in rule["from"]]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    } in sources
