"""Folders on both kinds of storage: a local directory and an S3 prefix on moto's server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.storage import Folder
from tests.deploy.stack import AWS_ENV, BUCKET, s3_server


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in AWS_ENV.items():
            patch.setenv(key, value)
        with s3_server() as endpoint:
            yield endpoint


@pytest.fixture(params=["local", "s3"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Folder:
    if request.param == "local":
        return Folder(tmp_path / "zone")
    endpoint = request.getfixturevalue("s3_endpoint")
    return Folder(f"s3://{BUCKET}/{uuid.uuid4().hex}/zone", endpoint)
