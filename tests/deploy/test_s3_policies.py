"""The compose stack's per-service S3 users, enforced by a real S3 API (moto with IAM
authorisation on): each service reaches only the prefixes it needs, through the same
storage code the product uses.

moto evaluates the policies' actions and resources, not their `s3:prefix` conditions on
listing; MinIO evaluates both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from driftloop.storage import Folder
from serving.launch import free_port

POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "minio"
USERS = ("dagster", "serving", "mlflow")
BUCKET = "driftloop"
# Set-up calls moto answers before it starts to authorise: a bucket, and per user
# create_user, create_access_key and put_user_policy.
SETUP_CALLS = 1 + 3 * len(USERS)


def _client(endpoint: str, key: str, secret: str, service: str = "s3"):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


@pytest.fixture(scope="module")
def keys() -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """A moto server that authorises every call after the set-up, and each user's keys."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto did not start"
                time.sleep(0.1)
        _client(endpoint, "root", "root").create_bucket(Bucket=BUCKET)
        iam = _client(endpoint, "root", "root", "iam")
        found = {}
        for user in USERS:
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            policy = (POLICIES / f"{user}.json").read_text()
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=policy)
            found[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        yield endpoint, found
    finally:
        server.terminate()
        server.wait(timeout=30)


def _allowed(client, key: str) -> bool:
    try:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    except botocore.exceptions.ClientError as error:
        assert error.response["Error"]["Code"] == "AccessDenied"
        return False
    return True


@pytest.mark.parametrize(
    ("user", "writable"),
    [
        ("dagster", {"landing/a.csv", "landing/quarantine/a.csv", "dagster/io/x/value.json"}),
        ("serving", {"serving-log/predictions/a.parquet", "serving-log/feedback/a.parquet"}),
        ("mlflow", {"mlflow/1/artifacts/model.skops"}),
    ],
)
def test_each_service_writes_only_its_own_prefixes(keys, user: str, writable: set[str]) -> None:
    endpoint, found = keys
    client = _client(endpoint, *found[user])
    everywhere = {
        "landing/a.csv",
        "landing/quarantine/a.csv",
        "dagster/io/x/value.json",
        "serving-log/predictions/a.parquet",
        "serving-log/feedback/a.parquet",
        "mlflow/1/artifacts/model.skops",
    }
    assert {key for key in sorted(everywhere) if _allowed(client, key)} == writable


def test_serving_publishes_its_log_through_the_product_code_and_reads_nothing_else(
    keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, found = keys
    dagster = _client(endpoint, *found["dagster"])
    dagster.put_object(Bucket=BUCKET, Key="dagster/io/training_dataset/value.json", Body=b"{}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", found["serving"][0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", found["serving"][1])
    log = Folder(f"s3://{BUCKET}/serving-log/predictions", endpoint)
    log.write_bytes("window-1.parquet", b"rows")  # hidden upload, then a move: both allowed
    assert log.read_bytes("window-1.parquet") == b"rows"
    assert "window-1.parquet" in [f.name for f in log.files()]  # listed, no hidden upload left
    serving = _client(endpoint, *found["serving"])
    listed = serving.list_objects_v2(Bucket=BUCKET, Prefix="serving-log/predictions/")
    assert not [o["Key"] for o in listed["Contents"] if "inprogress" in o["Key"]]
    # A planted or stolen asset value is out of reach for serving's key.
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        Folder(f"s3://{BUCKET}/dagster/io/training_dataset", endpoint).read_bytes("value.json")
    # Dagster reads the serving log (monitoring), and cannot rewrite it.
    reader = _client(endpoint, *found["dagster"])
    body = reader.get_object(Bucket=BUCKET, Key="serving-log/predictions/window-1.parquet")
    assert body["Body"].read() == b"rows"
    assert not _allowed(reader, "serving-log/predictions/window-2.parquet")
