"""`driftloop.client` against the real application over HTTP on 127.0.0.1, and its retries
and TLS against a network double (a tiny HTTP server that answers 503, drops connections or
speaks TLS with a private CA: a double of the network, not of our components).

Serve starts once for the module, on the session's `trained_home` (@champion v1, loan rows
without gaps, so no feature is nullable: a NaN is the 422 case), with a small instance limit
so that the client's chunking is what makes 30 rows pass.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop.client import Client, DriftloopError, InvalidRequest, Unauthorized, Unavailable
from driftloop.monitoring import read_log
from driftloop.registry import CHAMPION, Registry
from driftloop.schema import load_schema
from driftloop.settings import Settings, load_settings
from driftloop.simulate import LoanStream
from driftloop.training import TRUSTED_TYPES
from driftloop.versioning import TAG_SEMVER
from serving import launch
from serving.app import ServeArgs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_KEY = "client-test-admin-key-0123456789abcd"  # 36 characters
ROWS = 30
SERVER_MAX_INSTANCES = 12  # 30 rows are three requests: 12, 12 and 6


@dataclass(frozen=True)
class Live:
    settings: Settings
    url: str
    version: str
    pipeline: Any  # the registered @champion, loaded from the registry with its digest checked
    frame: pd.DataFrame  # loan rows the model never saw, on an index that is not 0..n
    labels: pd.Series


@pytest.fixture(scope="module")
def live(trained_home: Settings) -> Iterator[Live]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DRIFTLOOP_SERVE_PORT", str(launch.free_port()))
        patch.setenv("DRIFTLOOP_ADMIN_API_KEY", ADMIN_KEY)
        patch.setenv("DRIFTLOOP_SERVE_MAX_INSTANCES", str(SERVER_MAX_INSTANCES))
        settings = load_settings()
        registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
        champion = registry.by_alias(CHAMPION)
        assert champion is not None
        pipeline = registry.load_verified(champion.version, TRUSTED_TYPES)
        rows = LoanStream(seed=2024).take_frame(ROWS, settings.target_column)
        rows.index = pd.RangeIndex(100, 100 + ROWS)
        try:
            url = launch.start(settings, ServeArgs(home=str(settings.home)), num_cpus=2)
            yield Live(
                settings=settings,
                url=url,
                version=champion.version,
                pipeline=pipeline,
                frame=rows.drop(columns=settings.target_column),
                labels=rows[settings.target_column],
            )
        finally:
            launch.stop(settings)


def _client(live: Live, **options: Any) -> Client:
    return Client(live.url, max_instances=SERVER_MAX_INSTANCES, **options)


def test_predict_answers_as_the_registered_model_in_chunks_on_the_callers_index(
    live: Live,
) -> None:
    ids = [f"loan-{i}" for i in range(ROWS)]
    with _client(live) as client:
        scored = client.predict(live.frame, ids=ids)
    expected = live.pipeline.predict_proba(live.frame)
    classes = live.pipeline.classes_
    probability = [f"probability_{c}" for c in classes]
    columns = ["id", "prediction", *probability, "model_version", "model_semver", "request_id"]
    assert list(scored.columns) == columns
    assert scored.index.equals(live.frame.index)
    np.testing.assert_allclose(scored[probability].to_numpy(), expected, rtol=0, atol=1e-9)
    assert scored["prediction"].tolist() == classes[expected.argmax(axis=1)].tolist()
    assert scored["id"].tolist() == ids
    assert set(scored["model_version"]) == {live.version}
    registry = Registry(live.settings.mlflow_tracking_uri, live.settings.model_name)
    assert set(scored["model_semver"]) == {registry.version(live.version).tags[TAG_SEMVER]}
    assert scored["request_id"].nunique() == 3

    # numpy scalars, every one a float64 (int features too: `to_numpy` of a mixed frame)
    records = [dict(zip(live.frame.columns, row, strict=True)) for row in live.frame.to_numpy()]
    assert type(records[0]["age"]) is np.float64
    with _client(live, max_body_bytes=1000) as client:
        again = client.predict(records)
    same = ["prediction", *probability, "model_version"]
    pd.testing.assert_frame_equal(again[same], scored[same].reset_index(drop=True))
    assert again["request_id"].nunique() >= 5, "4.3 kB of rows in bodies of at most 1 kB"


def test_a_batch_over_the_servers_limit_names_the_limit(live: Live) -> None:
    with Client(live.url) as client, pytest.raises(InvalidRequest) as refused:
        client.predict(live.frame)
    assert refused.value.status_code == 413
    assert str(refused.value) == f"at most {SERVER_MAX_INSTANCES} instances per request"


def test_a_nan_in_a_feature_without_gaps_is_a_422_naming_the_callers_row_and_field(
    live: Live,
) -> None:
    schema = load_schema(live.settings.schema_path)
    assert schema is not None and "salary" not in schema.nullable_features
    frame = live.frame.copy()
    frame.loc[117, "salary"] = np.nan  # position 17: the second request
    with _client(live) as client, pytest.raises(InvalidRequest) as refused:
        client.predict(frame)
    error = refused.value
    assert error.status_code == 422
    assert error.fields == ["salary"]
    assert {e.location[:3] for e in error.errors} == {("instances", 17, "salary")}
    assert str(error).startswith("instances[17].salary: Input should be")

    with Client(live.url, model="loans") as client, pytest.raises(InvalidRequest) as unknown:
        client.predict(live.frame.head(1))
    assert unknown.value.status_code == 404 and "no model named 'loans'" in str(unknown.value)


def test_feedback_by_ids_and_by_request_ids_is_accepted(live: Live) -> None:
    ids = [f"labelled-{i}" for i in range(ROWS)]
    with _client(live) as client:
        client.predict(live.frame, ids=ids)
        assert client.feedback(live.labels, ids=ids) == ROWS  # three requests of at most 12

        singles = [client.predict(live.frame.iloc[[i]]) for i in range(2)]
        request_ids = [single["request_id"].iloc[0] for single in singles]
        assert client.feedback(live.labels.iloc[:2].to_numpy(), request_ids=request_ids) == 2
        with pytest.raises(ValueError, match="more than once"):
            client.feedback([1, 0], request_ids=[request_ids[0]] * 2)

        invented = request_ids[0][:-1] + ("0" if request_ids[0][-1] != "0" else "1")
        with pytest.raises(InvalidRequest) as refused:  # request ids are signed
            client.feedback([1], request_ids=[invented])
    assert refused.value.status_code == 422 and refused.value.fields == ["request_id"]

    # the labels reached the feedback log the monitors join, as sent
    deadline = time.monotonic() + 30
    while True:
        log = read_log(live.settings.feedback_log)
        by_id = dict(zip(log["id"], log["label"], strict=True)) if len(log) else {}
        if set(ids) <= set(by_id) and set(request_ids) <= set(log["request_id"]):
            break
        assert time.monotonic() < deadline, "the feedback never reached the log"
        time.sleep(0.2)
    assert [by_id[i] for i in ids] == [str(label) for label in live.labels]


def test_status_tells_anyone_it_is_ready_and_a_key_holder_the_champion(live: Live) -> None:
    with Client(live.url) as anonymous:
        assert anonymous.status() == {"ready": True, "detail": "serving"}
    with Client(live.url, api_key=ADMIN_KEY) as client:
        state = client.status()
    assert state["ready"] is True
    assert state["champion"]["version"] == live.version
    assert state["champion"]["task"] == "classification"


def test_admin_calls_take_the_key_and_refuse_without_it(live: Live) -> None:
    with Client(live.url, api_key=ADMIN_KEY) as admin:
        assert admin.set_routing(shadow=True)["shadow"] is True
        assert admin.set_routing(shadow=False)["shadow"] is False
        # v999 is not the champion: the guarded rollback changes nothing
        assert admin.rollback(expected_champion="999")["champion"]["version"] == live.version
        assert admin.reload()["ready"] is True
        state = admin.admin_state()
    assert state["champion"]["version"] == live.version and ADMIN_KEY not in json.dumps(state)

    with Client(live.url) as anonymous, pytest.raises(Unauthorized) as missing:
        anonymous.reload()
    assert missing.value.status_code == 401
    assert str(missing.value) == "missing or empty X-API-Key header"

    wrong = "not-the-admin-key-0123456789abcdefgh"
    with Client(live.url, api_key=wrong) as stranger, pytest.raises(Unauthorized) as refused:
        stranger.rollback()
    assert refused.value.status_code == 403 and str(refused.value) == "wrong API key"


# --- the network double -----------------------------------------------------------------

PREDICTED = {
    "predictions": [1, 0],
    "probabilities": [[0.25, 0.75], [0.875, 0.125]],
    "ids": ["a", None],
    "model_version": "7",
    "request_id": "r-1",
}
INSTANCES = [{"x": 1.5}, {"x": np.float64(2.5)}]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=lambda: PREDICTED)
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without an answer


BUSY = Reply(503, {"detail": "overloaded, try again"}, {"Retry-After": "0"})


@dataclass(frozen=True)
class Received:
    at: float
    path: str
    body: bytes
    headers: dict[str, str]


@contextlib.contextmanager
def network_double(
    replies: list[Reply], tls: ssl.SSLContext | None = None
) -> Iterator[tuple[str, list[Received]]]:
    """An HTTP(S) server on 127.0.0.1 answering each request with the next reply; yields
    its URL and the requests it received."""
    received: list[Received] = []
    pending = iter(replies)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(Received(time.monotonic(), self.path, body, dict(self.headers)))
            reply = next(pending)
            if reply.drop:
                self.close_connection = True
                return
            payload = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_503_with_retry_after_is_retried_until_the_answer() -> None:
    with network_double([BUSY, BUSY, Reply()]) as (url, received), Client(url) as client:
        scored = client.predict(INSTANCES)
    assert len(received) == 3
    assert {r.body for r in received} == {b'{"instances":[{"x":1.5},{"x":2.5}]}'}
    assert scored["prediction"].tolist() == [1, 0]
    assert scored["probability_1"].tolist() == [0.75, 0.125]
    assert scored["id"].tolist() == ["a", None]
    assert scored["model_version"].tolist() == ["7", "7"]


def test_retry_after_is_waited_and_classes_name_the_probability_columns() -> None:
    named = {**PREDICTED, "classes": ["denied", "approved"]}
    wait = Reply(503, {"detail": "overloaded"}, {"Retry-After": "1"})
    with network_double([wait, Reply(body=named)]) as (url, received), Client(url) as client:
        scored = client.predict(INSTANCES)
    assert received[1].at - received[0].at >= 1.0
    assert scored["probability_approved"].tolist() == [0.75, 0.125]


def test_dropped_connections_are_retried() -> None:
    drop = Reply(drop=True)
    with network_double([drop, drop, Reply()]) as (url, received), Client(url) as client:
        assert client.predict(INSTANCES)["prediction"].tolist() == [1, 0]
    assert len(received) == 3


def test_the_last_503_is_raised_with_the_servers_message() -> None:
    with (
        network_double([BUSY] * 3) as (url, received),
        Client(url, retries=2) as client,
        pytest.raises(Unavailable) as raised,
    ):
        client.predict(INSTANCES)
    assert str(raised.value) == "overloaded, try again"
    assert raised.value.status_code == 503 and len(received) == 3


def test_a_4xx_is_never_retried() -> None:
    problem = {"type": "missing", "loc": ["body", "instances", 1, "x"], "msg": "Field required"}
    invalid = Reply(422, {"detail": [problem]})
    with (
        network_double([invalid, Reply()]) as (url, received),
        Client(url) as client,
        pytest.raises(InvalidRequest) as raised,
    ):
        client.predict(INSTANCES)
    assert len(received) == 1
    assert raised.value.fields == ["x"] and str(raised.value) == "instances[1].x: Field required"


def _private_ca(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it: the server's TLS context and
    the CA bundle a client must be given."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def certificate(
        name: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: Any, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            builder = builder.add_extension(x509.SubjectAlternativeName([address]), False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = certificate("driftloop test CA", ca_key, "driftloop test CA", ca_key, ca=True)
    leaf = certificate("127.0.0.1", server_key, "driftloop test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(leaf.public_bytes(pem))
    (directory / "server.key").write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return context, directory / "ca.pem"


def test_https_with_a_private_ca_bundle(tmp_path: Path) -> None:
    tls, ca = _private_ca(tmp_path)
    with network_double([Reply()], tls) as (url, received):
        with Client(url) as default, pytest.raises(DriftloopError) as refused:
            default.predict(INSTANCES)
        # a certificate the system does not trust is a configuration problem: not retried
        assert not isinstance(refused.value, Unavailable)
        assert "certificate verify failed" in str(refused.value)
        with Client(url, api_key=ADMIN_KEY, verify=ca) as client:
            assert client.predict(INSTANCES)["prediction"].tolist() == [1, 0]
    assert len(received) == 1 and received[0].headers["X-API-Key"] == ADMIN_KEY
