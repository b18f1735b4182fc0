"""The request limits and the admin key rules, on the real FastAPI routes without Ray.

`build_api` only needs a server's settings, metrics, request models and feedback sink, so a
stand-in server gives the HTTP layer in milliseconds; the Ray tests check the same limits
through Serve and HAProxy.
"""

from pathlib import Path

import pytest
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel

from driftloop.audit import AuditTrail
from driftloop.settings import Settings, WeakAdminKey
from serving.app import ServeArgs, build_api, build_app
from serving.metrics import ServingMetrics
from serving.schemas import (
    AdminState,
    FeatureField,
    FeedbackItem,
    FeedbackResponse,
    Readiness,
    build_request_models,
)
from serving.security import AuditLog, KeyRing, RequestIds

FEATURES = (FeatureField("income", "float"), FeatureField("age", "int"))
KEY = "k" * 32
PREDICT = "/v1/models/driftloop:predict"
ADMIN_ROUTES = ("/admin/routing", "/admin/reload", "/admin/rollback")


class StandIn:
    """What `build_api` uses of a `ModelServer`; predictions echo the validated rows.

    Keys, request ids and the audit log are the real ones, from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServingMetrics()
        self.request_models = build_request_models(FEATURES, settings.serve_max_instances)
        self.keys = KeyRing.of(settings)
        self.request_ids = RequestIds.of(settings)
        self.audit = AuditLog(AuditTrail(settings.audit_log))
        self.max_queued_requests = settings.serve_max_queued_requests
        self.labels: list[FeedbackItem] = []
        self.refused: set[tuple[str, str]] = set()
        self.failed: dict[str, object] = {}
        self.champion = self.challenger = None
        self.syncs = 0

    async def predict(self, instances: list[BaseModel]) -> JSONResponse:
        rows = [i.model_dump() for i in instances]
        return JSONResponse({"rows": rows, "request_id": self.request_ids.issue()})

    def feedback(self, items: list[FeedbackItem]) -> FeedbackResponse:
        self.labels.extend(items)
        return FeedbackResponse(accepted=len(items))

    async def sync(self) -> None:
        self.syncs += 1

    def readiness(self) -> Readiness:
        return Readiness(ready=True, detail="serving", canary_weight=0.0, shadow=False)

    def state(self) -> AdminState:
        return AdminState(
            **self.readiness().model_dump(),
            replica="stand-in",
            refused=[],
            load_failures=[],
            key_ids=self.keys.key_ids(),
            request_id_secret=self.request_ids.source,
            max_queued_requests=self.max_queued_requests,
        )


def client(tmp_path: Path, **settings: object) -> TestClient:
    return TestClient(build_api(StandIn(Settings(home=tmp_path, **settings))))  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", "   ", "\n"])
def test_an_empty_or_blank_key_turns_admin_off(tmp_path: Path, key: str) -> None:
    """Compose's `${DRIFTLOOP_ADMIN_API_KEY:-}` is "": that once matched an empty header."""
    assert Settings(home=tmp_path, admin_api_key=key).admin_api_key is None
    with client(tmp_path, admin_api_key=key) as http:
        for path in ADMIN_ROUTES:
            for headers in ({"X-API-Key": ""}, {"X-API-Key": key}, {}):
                response = http.post(path, json={"canary_weight": 1}, headers=headers)
                assert response.status_code == 403, (path, headers, response.text)
                assert "admin endpoints are off" in response.json()["detail"]


def test_an_empty_header_is_refused(tmp_path: Path) -> None:
    with client(tmp_path, admin_api_key=KEY) as http:
        for value in ("", "  "):
            response = http.post("/admin/reload", headers={"X-API-Key": value})
            assert response.status_code == 401, response.text
            assert "empty X-API-Key" in response.json()["detail"]


def test_a_short_key_refuses_to_start_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(WeakAdminKey) as error:
        Settings(home=tmp_path, admin_api_key="k" * 31)
    message = str(error.value)
    assert "31 characters" in message and "32" in message and "k" * 31 not in message
    assert len(message.splitlines()) == 1
    # The serving entry point (what `serve run`/`driftloop serve` call) refuses it too.
    monkeypatch.setenv("DRIFTLOOP_ADMIN_API_KEY", "change-me")
    with pytest.raises(WeakAdminKey, match="DRIFTLOOP_ADMIN_API_KEY has 9 characters"):
        build_app(ServeArgs(home=str(tmp_path)))
    # A key with surrounding blanks (a mounted file's newline) is the key without them.
    assert (
        Settings(home=tmp_path, admin_api_key=f" {KEY}\n").admin_api_key.get_secret_value() == KEY
    )


def test_a_body_over_the_limit_is_a_413_before_parsing(tmp_path: Path) -> None:
    with client(tmp_path) as http:
        assert Settings(home=tmp_path).serve_max_body_bytes == 2**20
        big = b'{"instances": [' + b" " * (2 * 2**20) + b"]}"
        response = http.post(PREDICT, content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        assert "over 1048576 bytes" in response.json()["detail"]

        # No Content-Length (chunked): counted as it arrives, refused once over.
        def chunks():
            yield b'{"instances": ['
            for _ in range(40):
                yield b" " * 65536
            yield b"]}"

        response = http.post(
            PREDICT, content=chunks(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413, response.text
        label = {"request_id": "r", "label": "x" * 10_000_000}
        assert http.post("/v1/feedback", json=label).status_code == 413
        assert 'route="refused",status="413"' in http.get("/metrics").text


def test_labels_and_feedback_lists_are_bounded(tmp_path: Path) -> None:
    with client(tmp_path, serve_max_instances=3) as http:
        long = http.post("/v1/feedback", json={"request_id": "r", "label": "x" * 257})
        assert long.status_code == 422 and "label" in long.text
        huge = http.post("/v1/feedback", json={"request_id": "r", "label": 2**64})
        assert huge.status_code == 422 and "label" in huge.text
        many = http.post("/v1/feedback", json=[{"request_id": "r", "label": 1}] * 4)
        assert many.status_code == 413 and "at most 3 feedback items" in many.text
        empty = http.post("/v1/feedback", json=[])
        assert empty.status_code == 422
        issued = http.post(PREDICT, json={"instances": [{"income": 1, "age": 3}]})
        rid = issued.json()["request_id"]
        ok = http.post("/v1/feedback", json=[{"request_id": rid, "label": "x" * 256}] * 3)
        assert ok.json() == {"accepted": 3}


@pytest.mark.parametrize("value", [10**309, -(10**309), 2**1024], ids=["1e309", "-1e309", "2^1024"])
def test_a_float_feature_beyond_float64_is_a_422_naming_it(tmp_path: Path, value: int) -> None:
    with client(tmp_path) as http:
        body = f'{{"instances": [{{"income": {value}, "age": 3}}]}}'
        response = http.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "instances", 0, "income"]
    assert "float64 range" in response.text


def test_an_integer_in_a_float_feature_reaches_the_model_as_a_float(tmp_path: Path) -> None:
    with client(tmp_path) as http:
        response = http.post(PREDICT, json={"instances": [{"income": 2**63, "age": 3}]})
    assert response.status_code == 200, response.text
    (row,) = response.json()["rows"]
    assert row["income"] == float(2**63) and isinstance(row["income"], float)
