"""The predict fast path (`serving/fast_ingress.py`) answers as FastAPI's route did.

In process, each request goes to two apps over the same stand-in server: `build_api` as
served, and the same app without `FastPredict`, which is the route as it was before. Valid
requests must be answered by the fast path with the same status, headers and JSON; every
invalid one must be handed to FastAPI and get the same bytes. Over real Serve, the served
loans model answers a valid request the same through both paths.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from driftloop.settings import Settings
from serving.app import build_api
from serving.fast_ingress import FastPredict
from serving.security import REQUEST_ID_CHARS
from tests.serving.conftest import Served
from tests.serving.test_limits import PREDICT, StandIn
from tests.serving.test_serving_app import INSTANCE

JSON = {"content-type": "application/json"}
# A JSON media type FastAPI parses and the fast path leaves to it: FastAPI's own path.
VIA_FASTAPI = {"content-type": "application/vnd.driftloop+json"}
VALID = {
    "instances": [{"income": 52_000.5, "age": 41, "id": 7, "key": "k"}, {"income": 3, "age": 0}]
}
INVALID: dict[str, tuple[str, bytes | None, dict[str, str], int]] = {
    # case: (path, body, headers, status FastAPI gives)
    "missing field": (PREDICT, b'{"instances": [{"income": 1.0}]}', JSON, 422),
    "wrong type": (PREDICT, b'{"instances": [{"income": 1.0, "age": "forty"}]}', JSON, 422),
    "NaN": (PREDICT, b'{"instances": [{"income": NaN, "age": 1}]}', JSON, 422),
    "Infinity": (PREDICT, b'{"instances": [{"income": Infinity, "age": 1}]}', JSON, 422),
    "bool for a float": (PREDICT, b'{"instances": [{"income": true, "age": 1}]}', JSON, 422),
    "bool for an int": (PREDICT, b'{"instances": [{"income": 1.0, "age": false}]}', JSON, 422),
    "int beyond 64 bits": (
        PREDICT,
        b'{"instances": [{"income": 1, "age": 18446744073709551617}]}',
        JSON,
        422,
    ),
    "unknown field": (PREDICT, b'{"instances": [{"income": 1, "age": 1, "colour": 2}]}', JSON, 422),
    "duplicate key, last bad": (
        PREDICT,
        b'{"instances": [{"income": 1, "age": 1, "age": "x"}]}',
        JSON,
        422,
    ),
    "empty instances": (PREDICT, b'{"instances": []}', JSON, 422),
    "too many": (
        PREDICT,
        json.dumps({"instances": [{"income": 1, "age": 1}] * 1001}).encode(),
        JSON,
        413,
    ),
    "malformed JSON": (PREDICT, b'{"instances": [', JSON, 422),
    "not an object": (PREDICT, b"[1, 2]", JSON, 422),
    "empty body": (PREDICT, b"", JSON, 422),
    "oversized body": (PREDICT, b'{"instances": [' + b" " * (2**20 + 1) + b"]}", JSON, 413),
    "wrong content-type": (
        PREDICT,
        json.dumps(VALID).encode(),
        {"content-type": "text/plain"},
        422,
    ),
    "no content-type": (PREDICT, json.dumps(VALID).encode(), {}, 422),
    "unknown model": ("/v1/models/other:predict", json.dumps(VALID).encode(), JSON, 404),
    "a model name one character longer": (
        "/v1/models/driftloopx:predict",
        json.dumps(VALID).encode(),
        JSON,
        404,
    ),
}


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[tuple[StandIn, TestClient, TestClient]]:
    """One stand-in server behind the app as served and the app without the fast path."""
    server = StandIn(Settings(home=tmp_path))
    before = build_api(server)  # type: ignore[arg-type]
    before.user_middleware = [m for m in before.user_middleware if m.cls is not FastPredict]
    with TestClient(build_api(server)) as fast, TestClient(before) as route:  # type: ignore[arg-type]
        yield server, fast, route


def ingress(server: StandIn) -> dict[str, float | None]:
    """Predict requests the fast path answered and handed to FastAPI, from `/metrics`'s
    own registry."""
    registry = server.metrics.registry
    return {
        path: registry.get_sample_value("driftloop_predict_ingress_total", {"path": path})
        for path in ("fast", "fastapi")
    }


def answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON of an answer, its request id (new per answer) left out."""
    body = response.json()
    if isinstance(body, dict) and "request_id" in body:
        assert len(body.pop("request_id")) == REQUEST_ID_CHARS
    return response.status_code, dict(response.headers), body


def test_a_valid_request_takes_the_fast_path_and_gets_the_routes_answer(apps) -> None:
    server, fast, route = apps
    content = json.dumps(VALID).encode()
    for headers in (JSON, {"content-type": "Application/JSON; charset=utf-8"}):
        fast_answer = answer(fast.post(PREDICT, content=content, headers=headers))
        assert fast_answer == answer(route.post(PREDICT, content=content, headers=headers))
        assert fast_answer[0] == 200
    assert ingress(server) == {"fast": 2, "fastapi": 0}
    # A float feature's integer beyond 64 bits: orjson reads a float, json.loads an int that
    # the feature turns into the same float. The fast path answers, with the route's answer.
    big = b'{"instances": [{"income": 18446744073709551617, "age": 1}]}'
    expected = answer(route.post(PREDICT, content=big, headers=JSON))
    assert answer(fast.post(PREDICT, content=big, headers=JSON)) == expected
    assert expected[0] == 200 and expected[2]["rows"][0]["income"] == float(2**64 + 1)
    # A JSON type the fast path leaves alone: FastAPI parses and answers it.
    content = json.dumps(VALID).encode()
    expected = answer(route.post(PREDICT, content=content, headers=VIA_FASTAPI))
    assert answer(fast.post(PREDICT, content=content, headers=VIA_FASTAPI)) == expected
    assert expected[0] == 200
    assert ingress(server) == {"fast": 3, "fastapi": 1}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_an_invalid_request_gets_exactly_the_routes_answer(apps, case: str) -> None:
    server, fast, route = apps
    path, content, headers, status = INVALID[case]
    expected = route.post(path, content=content, headers=headers)
    got = fast.post(path, content=content, headers=headers)
    assert (got.status_code, got.headers, got.content) == (
        expected.status_code,
        expected.headers,
        expected.content,
    )
    assert got.status_code == status, got.text
    assert ingress(server)["fast"] == 0


def test_a_chunked_body_over_the_limit_is_the_routes_413(apps) -> None:
    """No Content-Length: the fast path stops reading at the limit and hands what it read
    on, then the rest; `BodyLimit` counts all of it and refuses."""
    server, fast, route = apps

    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(20):
            yield b" " * 65536
        yield b"]}"

    got, expected = (c.post(PREDICT, content=chunks(), headers=JSON) for c in (fast, route))
    assert (got.status_code, got.content) == (expected.status_code, expected.content)
    assert got.status_code == 413 and ingress(server)["fast"] == 0


def test_other_routes_and_the_openapi_schema_are_fastapis(apps) -> None:
    server, fast, route = apps
    assert fast.get(PREDICT).status_code == route.get(PREDICT).status_code == 405
    assert fast.get("/openapi.json").json() == route.get("/openapi.json").json()
    app: FastAPI = fast.app  # type: ignore[assignment]
    schema = app.openapi()["paths"]["/v1/models/{model}:predict"]["post"]
    assert schema["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"
    }
    assert {"200", "404", "413", "422", "503"} <= set(schema["responses"])
    feedback = {"request_id": "r" * 56, "label": 1}
    assert fast.post("/v1/feedback", json=feedback).content == (
        route.post("/v1/feedback", json=feedback).content
    )
    assert ingress(server) == {"fast": 0, "fastapi": 1}  # only GET :predict reached it


SERVE_HEADERS_PER_ANSWER = {"date", "x-request-id"}  # uvicorn's clock, Serve's own id


def ingress_counts(client: httpx.Client) -> dict[str, float]:
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("driftloop_predict_ingress_total{"):
            counts[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return counts


def test_over_serve_both_paths_answer_alike(served: Served) -> None:
    """One replica (the fixture's): the fast path's answer is the route's, headers and all."""
    body = {"instances": [{**INSTANCE, "key": "same-route", "id": "loan-1"}]}
    with served.client() as client:
        before = ingress_counts(client)
        answers = []
        for headers in (JSON, VIA_FASTAPI, JSON):
            response = client.post(PREDICT, content=json.dumps(body), headers=headers)
            assert response.status_code == 200, response.text
            status, got, content = answer(response)
            answers.append(
                (
                    status,
                    {k: v for k, v in got.items() if k not in SERVE_HEADERS_PER_ANSWER},
                    content,
                )
            )
        after = ingress_counts(client)
        bad = client.post(PREDICT, content=b'{"instances": [{"age": true}]}', headers=JSON)
        bad_via_fastapi = client.post(
            PREDICT, content=b'{"instances": [{"age": true}]}', headers=VIA_FASTAPI
        )
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][2]["ids"] == ["loan-1"]
    assert after["fast"] - before.get("fast", 0) == 2
    assert after["fastapi"] - before.get("fastapi", 0) == 1
    assert (bad.status_code, bad.content) == (422, bad_via_fastapi.content)
