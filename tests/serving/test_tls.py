"""The local launch: https with a certificate from the environment, and a Ray node that
listens on 127.0.0.1 only (no dashboard, no agent or job port on the network)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from driftloop.serving_client import ServingAdmin, ServingError
from driftloop.settings import Settings
from serving.launch import free_port, tls_options
from tests.serving.conftest import ADMIN_KEY, Served
from tests.serving.test_serving_app import INSTANCE, PREDICT

pytestmark = pytest.mark.slow

# `driftloop serve` in short: start, print the URL, stop cleanly on SIGTERM.
SERVER = """
import signal, sys
from driftloop.settings import load_settings
from serving import launch
from serving.app import ServeArgs
settings = load_settings()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    url = launch.start(settings, ServeArgs(replica_cpus=0.5, poll_interval_s=0.5), num_cpus=1)
    print(url, flush=True)
    signal.pause()
finally:
    launch.stop(settings)
"""


# A one-node Ray cluster of its own (what `ray start --head` runs on the compose head),
# stopped on SIGTERM with every process it started.
CLUSTER_HEAD = """
import os, signal, sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    print(cluster.address, flush=True)
    signal.pause()
finally:
    cluster.shutdown()
"""


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, the way `driftloop serve` is stopped; a process that hangs fails the test."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, valid for a day, and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "driftloop test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_needs_both_readable_files(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    assert tls_options(Settings(home=tmp_path)) == {}
    both = Settings(home=tmp_path, serve_tls_certfile=str(cert), serve_tls_keyfile=str(key))
    assert tls_options(both) == {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    with pytest.raises(ValueError, match="go together"):
        tls_options(Settings(home=tmp_path, serve_tls_certfile=str(cert)))
    with pytest.raises(ValueError, match="not a readable file"):
        tls_options(Settings(home=tmp_path, serve_tls_certfile=str(cert), serve_tls_keyfile="/no"))


def test_serving_answers_https_with_the_configured_certificate(
    served: Served, tmp_path: Path
) -> None:
    """A second `driftloop serve` on the same registry (a home of its own, so that its stop
    leaves this package's HAProxy alone), with TLS: predictions over https, verified
    against the self-signed certificate; plain http on that port gets no answer."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(tmp_path / "home"),
        "DRIFTLOOP_TRACKING_URI": served.settings.mlflow_tracking_uri,
        "DRIFTLOOP_SERVE_PORT": str(port),
        "DRIFTLOOP_SERVE_TLS_CERTFILE": str(cert),
        "DRIFTLOOP_SERVE_TLS_KEYFILE": str(key),
    }
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url == f"https://127.0.0.1:{port}", url
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=url, verify=trusted, timeout=30) as client:
            deadline = time.monotonic() + 120
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "no ready replica over https"
                time.sleep(0.5)
            ready = client.get("/readyz", headers={"X-API-Key": ADMIN_KEY}).json()
            assert ready["champion"]["version"] == served.champion
            answer = client.post(PREDICT, json={"instances": [INSTANCE]})
            assert answer.status_code == 200 and answer.json()["model_version"] == served.champion
        # The canary job and `up` trust serving's own (self-signed) certificate, or the CA
        # bundle they are given; without either they refuse it.
        given = ({"serve_tls_certfile": str(cert)}, {"serving_ca": str(cert)})
        for trust in (*given, {"serving_ca": cert.read_text()}):  # a path or the PEM text
            caller = Settings(home=tmp_path / "caller", serving_url=url, **trust)
            assert ServingAdmin(caller).readiness()["ready"] is True
        with pytest.raises(ServingError, match="CERTIFICATE_VERIFY_FAILED"):
            ServingAdmin(Settings(home=tmp_path / "caller", serving_url=url)).readiness()
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz", timeout=10)  # an unknown certificate is refused
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).raise_for_status()
    finally:
        stop(server)


# What Ray 2.60 binds to every interface whatever its node address: the replicas'
# inter-deployment gRPC server (`[::]:0` in ray/serve/_private/replica.py) and HAProxy's
# stats page and Prometheus exporter (`bind *:` in its config template).
BOUND_BY_RAY = ("ray::ServeReplica", "haproxy")


def test_the_local_ray_node_listens_on_loopback_only(served: Served) -> None:
    """Every port the node started by `launch.start` opened (GCS, raylet, the dashboard
    agent, whose HTTP port takes job submissions, workers, Serve's HTTP) is bound to
    127.0.0.1, but for what Ray binds to every interface itself."""
    exposed = []
    for process in psutil.Process().children(recursive=True):
        try:
            listening = [c for c in process.net_connections("inet") if c.status == "LISTEN"]
            name = process.name()
        except psutil.Error:
            continue
        exposed += [(name, c.laddr) for c in listening if not loopback(c.laddr.ip)]
    names = {name for name, _ in exposed}
    assert {n for n in names if not n.startswith(BOUND_BY_RAY)} == set(), exposed


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_cluster_proxies_answer_https(tmp_path: Path) -> None:
    """The compose head's step before `serve deploy`: `python -m serving.cluster_proxies`
    starts Serve's proxies on a running cluster with the certificate from the environment
    (`serve start` has no TLS flags)."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    # A cluster as compose starts it: Ray's own proxies (no HAProxy switches inherited from
    # this package's local start); one machine, so every Ray process takes the loopback
    # address (as `driftloop serve`).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    head = subprocess.Popen(
        [sys.executable, "-c", CLUSTER_HEAD], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert head.stdout is not None
        address = head.stdout.readline().strip()
        assert address, "the cluster head did not start"
        started = subprocess.run(
            [sys.executable, "-m", "serving.cluster_proxies"],
            env={
                **env,
                "RAY_ADDRESS": address,
                "DRIFTLOOP_HOME": str(tmp_path / "home"),
                "DRIFTLOOP_SERVE_PORT": str(port),
                "DRIFTLOOP_SERVE_TLS_CERTFILE": str(cert),
                "DRIFTLOOP_SERVE_TLS_KEYFILE": str(key),
            },
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert started.returncode == 0, started.stderr[-2000:]
        url = f"https://127.0.0.1:{port}"
        assert f"Serve's proxies answer at {url}" in started.stdout
        trusted = ssl.create_default_context(cafile=str(cert))
        # Serve answers over TLS (no application is deployed yet: its route table is empty).
        answer = httpx.get(f"{url}/-/routes", verify=trusted, timeout=30)
        assert answer.status_code in (200, 503), answer.text
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/-/routes", timeout=10).raise_for_status()
    finally:
        stop(head)
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if address in " ".join(p.info["cmdline"] or [])
    ]
