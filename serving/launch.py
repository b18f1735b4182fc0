"""Starting and stopping the application on a local Ray instance (CLI, tests, benchmark).

What is deployed is serving/serve_config.yaml, the file `serve deploy` and a RayService
run, through the same Serve calls the dashboard makes for `serve deploy`; `start` with an
address deploys it onto a running cluster instead (tests/integration/test_cluster.py).

Ray Serve's high-throughput mode (HAProxy in front, replicas answering HTTP directly) is
on by default: on two cores it is the difference between ~250 and ~1,500 requests/s.
HAProxy is a child process of Ray; it gets a config path of our own so that `stop` can
find and end exactly the HAProxy processes this home started, should Ray leave one behind.

The local Ray node is started without the autoscaler monitor and the log monitor, which
`ray.init` always starts: a fixed single node needs neither, the driver does not print
worker logs, and the two Python daemons are ~170 MB of the serving RSS. `ray.init` takes no
parameter for them, so the node is built the way `ray.init` builds it, from Ray's own node
parameters (`ray._private`, pinned with Ray in pyproject.toml). Unlike `ray start` or
`ray.cluster_utils.Cluster`, this does not publish the node as the machine's current
cluster, so no other `ray.init()` on the machine attaches to it. The node binds to
127.0.0.1 and starts no dashboard: its agent's HTTP port (which takes job submissions)
and every other Ray port are unreachable from the network (measured: before, the GCS,
raylet and agents listened on all interfaces, the agent's port 52365 on the machine's
address).

With `DRIFTLOOP_SERVE_TLS_CERTFILE` and `_KEYFILE` the endpoint answers https: Ray's own
proxy terminates TLS with uvicorn's ssl options. HAProxy mode is then off: Ray 2.60's
HAProxy binds plain HTTP and hands the same ssl options to the replicas' direct-ingress
servers, so HAProxy would speak plain HTTP to replicas speaking TLS.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from driftloop.settings import Settings
from serving.app import ServeArgs
from serving.haproxy_watchdog import HAProxyWatchdog, local_proxy_actor

if TYPE_CHECKING:
    from ray._private.node import Node
    from ray.serve.schema import ServeDeploySchema

APP_NAME = "driftloop"
# The deployment artifact: what `serve deploy` and a RayService run, and `start` too.
CONFIG_FILE = Path(__file__).with_name("serve_config.yaml")
SERVE_NAMESPACE = "serve"  # the namespace `serve deploy` and `serve start` connect in
# Ray's default (30 s) is for a load balancer on another machine to deregister a stopping
# replica; the local HAProxy reloads within a second (10 s still covers a keep-alive client
# of the HAProxy process being replaced), and every stop waited the full 30 s.
LOCAL_DRAINING_PERIOD_S = "10"
PROXY_HEALTH_CHECK_PERIOD_S = "1"
# How long a starting proxy may take to report ready before Serve kills and replaces it.
# Ray's 5 s is missed on a saturated machine (load average 20-35 here): the controller
# killed the first HAProxy manager and `serve.start` failed with ActorDiedError (twice
# in six starts). Readiness only: the health checks above still find a dead proxy in ~3 s.
PROXY_READY_CHECK_TIMEOUT_S = "30"
# Requests reach the replicas over HTTP, not through the object store; Ray's default
# reserves 30% of RAM for it.
OBJECT_STORE_BYTES = 256 * 2**20
LOCALHOST = "127.0.0.1"
HAPROXY_PORT_VARIABLES = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")
# Chosen ports start here: above the well-known and common service ports.
FIRST_CHOSEN_PORT = 20000
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_picked_ports: dict[str, str] = {}

_node: Node | None = None
_watchdog: HAProxyWatchdog | None = None


def haproxy_dir(settings: Settings) -> Path:
    """Short and per home: HAProxy refuses socket paths over 97 bytes, and Ray nests one
    more directory under this."""
    digest = hashlib.sha256(str(settings.home).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"dlhap-{digest}"


def serve_env(settings: Settings, haproxy: bool) -> dict[str, str]:
    """Environment Ray must see before it starts (its processes read it at import)."""
    # Ray starts its workers at niceness 15 so that its own daemons win; here the replicas
    # are the workload, and at 15 they lose the cores to anything else (a load generator,
    # a Dagster run): measured 580 against 720 requests/s under wrk.
    local = {
        "RAY_worker_niceness": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": LOCAL_DRAINING_PERIOD_S,
        # Serve replaces a dead proxy (HAProxy) after three failed health checks; at Ray's
        # 10 s period that left the endpoint refusing for 25-36 s after HAProxy died, at 1 s
        # for about 6 s (driftloop bench chaos: 98.4 % against 99.7 % availability over 10
        # minutes). A check is one command on HAProxy's admin socket.
        "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": PROXY_HEALTH_CHECK_PERIOD_S,
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": PROXY_READY_CHECK_TIMEOUT_S,
        # Ray's switch for "no multi-node cluster": every process takes the loopback address
        # as the node's. Without it Ray turns 127.0.0.1 back into the machine's address
        # (the driver then cannot reach a node bound to loopback) and binds its GCS,
        # raylet and agents to all interfaces, the agent's job port 52365 included.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    if not haproxy:
        return {**local, "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    base = haproxy_dir(settings)
    return {
        **local,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
        # HAProxy threads compete with the replicas for the same two cores.
        "RAY_SERVE_HAPROXY_NBTHREAD": "1",
        # Its metrics and stats listeners default to fixed ports (9101, 8404): take free
        # ones so a second driftloop on the machine (a test, a benchmark) can start too.
        **{variable: _operator_or_free_port(variable) for variable in HAPROXY_PORT_VARIABLES},
    }


def _operator_or_free_port(variable: str) -> str:
    """The operator's port if they set one, else a port free now.

    The value this module wrote into the environment at an earlier start is not the
    operator's: reusing it kept one port for a whole process, and by the next start another
    process held it (HAProxy then failed to bind, "Address already in use").
    """
    given = os.environ.get(variable)
    if given is not None and given != _picked_ports.get(variable):
        return given
    _picked_ports[variable] = str(free_port())
    return _picked_ports[variable]


def proxy_options(settings: Settings) -> dict[str, object]:
    """Ray Serve's `http_options` for our host, port and TLS (checked before Ray starts)."""
    return {"host": settings.serve_host, "port": settings.serve_port, **tls_options(settings)}


def tls_options(settings: Settings) -> dict[str, str]:
    """Ray's `http_options` for TLS (both files, or neither), checked before Ray starts."""
    given = {
        "DRIFTLOOP_SERVE_TLS_CERTFILE": (settings.serve_tls_certfile or "").strip(),
        "DRIFTLOOP_SERVE_TLS_KEYFILE": (settings.serve_tls_keyfile or "").strip(),
    }
    if not any(given.values()):
        return {}
    for variable, path in given.items():
        if not path:
            raise ValueError(
                "DRIFTLOOP_SERVE_TLS_CERTFILE and DRIFTLOOP_SERVE_TLS_KEYFILE go together: "
                f"set both PEM files or neither ({variable} is unset)"
            )
        if not os.access(path, os.R_OK) or not Path(path).is_file():
            raise ValueError(f"{variable} names {path}, which is not a readable file")
    cert, key = given.values()
    return {"ssl_certfile": cert, "ssl_keyfile": key}


def free_port() -> int:
    """A TCP port nothing listens on, chosen below the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 returns) can be handed to any
    outgoing connection between the moment it is chosen and the moment the listener binds
    it; Ray opens hundreds of connections while it starts. Ports below the range are only
    ever taken by listeners that ask for them.
    """
    low = _ephemeral_range_start()
    for _ in range(100):
        candidate = random.randrange(FIRST_CHOSEN_PORT, low) if low > FIRST_CHOSEN_PORT else 0
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError(f"no free TCP port between {FIRST_CHOSEN_PORT} and {low}")


def _ephemeral_range_start() -> int:
    try:
        return int(Path(EPHEMERAL_RANGE_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return FIRST_CHOSEN_PORT  # unknown (not Linux): let the kernel choose


def deploy_config(settings: Settings, args: ServeArgs, local: bool) -> ServeDeploySchema:
    """serve_config.yaml with what this deployment's environment decides in it.

    `args` given here replace the file's arguments; the deployment's `user_config` is the
    routing the application derives from them and the settings (the file's values unless
    DRIFTLOOP_CANARY_WEIGHT and its kin say otherwise); a replica count, when given,
    replaces the file's autoscaling (always on a local node: its CPUs are fixed, there is
    nothing to scale into). The proxy takes its port and TLS from the settings, its host
    from the file on a cluster (all interfaces: HAProxy on each node forwards to replicas on
    the others, and a loopback host refuses them) and from DRIFTLOOP_SERVE_HOST locally
    (127.0.0.1 unless set: the local node is alone and bound to loopback, nothing on
    another node has to reach it, and a laptop's endpoint stays off the network).
    """
    from ray.serve.schema import ServeDeploySchema

    raw: dict[str, Any] = yaml.safe_load(CONFIG_FILE.read_text())
    (app,) = raw["applications"]
    app["args"] = {**app["args"], **args.model_dump(exclude_unset=True, exclude_none=True)}
    merged = ServeArgs.model_validate(app["args"])
    (deployment,) = app["deployments"]
    deployment["user_config"] = merged.routing(merged.settings()).model_dump()
    replicas = merged.num_replicas or (settings.serve_replicas if local else None)
    if replicas is not None:
        deployment["num_replicas"] = replicas
        deployment.pop("autoscaling_config", None)
    proxy = proxy_options(settings)
    if not local:
        proxy["host"] = raw["http_options"]["host"]
    raw["http_options"] = {**raw["http_options"], **proxy}
    return ServeDeploySchema.model_validate(raw)


def _deploy(config: ServeDeploySchema) -> None:
    """What `serve deploy` has the dashboard do (Ray's `serve_head.put_all_applications`):
    start Serve with the config's proxy options (kept if Serve runs already) and hand the
    controller the config, which builds the application from its import path on the
    cluster. Then wait as `serve.run` does: for the application RUNNING (a failed build
    raises with its message) and every proxy serving it."""
    from ray.serve._private.api import serve_start

    client = serve_start(
        http_options=config.http_options.model_dump(),
        grpc_options=config.grpc_options.model_dump(),
        proxy_location=config.proxy_location,
    )
    client.deploy_apps(config)
    client._wait_for_application_running(APP_NAME)
    client.wait_for_proxies_serving(wait_for_applications_running=True)


def start(
    settings: Settings,
    args: ServeArgs,
    num_cpus: int | None = None,
    haproxy: bool = True,
    address: str | None = None,
) -> str:
    """Deploy serving/serve_config.yaml; returns the base URL once it answers.

    Without `address` on a Ray node of our own on 127.0.0.1, with the environment
    `serve_env` gives it; with one on that running cluster, whose nodes' environment
    decides HAProxy and its ports. The two differ in nothing else (`deploy_config`).
    """
    global _node, _watchdog
    import ray
    from ray._private import ray_constants
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    config = deploy_config(settings, args, local=address is None)  # bad settings fail here
    tls = config.http_options.ssl_certfile is not None
    if address is not None:
        if not ray.is_initialized():
            ray.init(address=address, namespace=SERVE_NAMESPACE, log_to_driver=False)
        _deploy(config)
        return f"{'https' if tls else 'http'}://{settings.serve_host}:{settings.serve_port}"
    haproxy = haproxy and not tls
    env = serve_env(settings, haproxy)
    os.environ.update(env)
    # The same switch for this process, which imported Ray before the variable was set.
    ray_constants.ENABLE_RAY_CLUSTER = False
    haproxy_dir(settings).mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        # A node of our own (never another process's cluster on this machine), whose
        # processes end with this one.
        params = RayParams(
            num_cpus=num_cpus or os.cpu_count() or 1,
            node_ip_address=LOCALHOST,
            include_dashboard=False,
            include_log_monitor=False,
            no_monitor=True,
            object_store_memory=OBJECT_STORE_BYTES,
        )
        _node = Node(params, head=True, shutdown_at_exit=True, spawn_reaper=True)
        ray.init(address=_node.address, runtime_env={"env_vars": env}, log_to_driver=False)
    _deploy(config)
    if haproxy and _watchdog is None:
        _watchdog = HAProxyWatchdog(lambda: haproxy_pids(settings), local_proxy_actor)
        _watchdog.start()
    return f"{'https' if tls else 'http'}://{settings.serve_host}:{settings.serve_port}"


def stop(settings: Settings) -> None:
    """Shut Serve and Ray down, then end any HAProxy process of this home still running.

    Each step runs even if the one before it failed: a half-stopped Ray must not keep the
    port or leave HAProxy behind.
    """
    global _node, _watchdog
    import ray
    from ray import serve

    node, _node = _node, None
    watchdog, _watchdog = _watchdog, None
    if watchdog is not None:  # before anything stops HAProxy on purpose
        watchdog.stop()
    with contextlib.ExitStack() as later:  # callbacks run last-in first-out, each regardless
        later.callback(_end_haproxy, settings)
        if node is not None:
            later.callback(
                node.kill_all_processes, check_alive=False, allow_graceful=True, wait=True
            )
        if ray.is_initialized():
            later.callback(ray.shutdown)
            serve.shutdown()


def _end_haproxy(settings: Settings) -> None:
    for pid in haproxy_pids(settings):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 5
    while haproxy_pids(settings) and time.monotonic() < deadline:
        time.sleep(0.1)
    shutil.rmtree(haproxy_dir(settings), ignore_errors=True)


def haproxy_pids(settings: Settings) -> list[int]:
    """HAProxy processes whose command line names a file in this home's HAProxy directory."""
    base = str(haproxy_dir(settings)).encode() + b"/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(cmdline[0].decode(errors="replace")).name == "haproxy" and any(
            arg.startswith(base) for arg in cmdline
        ):
            pids.append(int(entry.name))
    return pids
