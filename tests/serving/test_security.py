"""Signed request ids, key roles with rotation, the audit log and OpenAPI without secrets, on
the real FastAPI routes without Ray (the stand-in server of `test_limits`)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from driftloop.audit import AuditTrail
from driftloop.settings import Settings
from driftloop.storage import Folder
from serving.app import ServeArgs, _redacted, build_api, build_app
from serving.security import REQUEST_ID_CHARS, SECRET_FILE, RequestIds, WeakSecret
from tests.serving.test_limits import PREDICT, StandIn

ADMIN = "a" * 40
VIEWER = "v" * 40
FEEDBACK = "f" * 40
INSTANCE = {"income": 1.5, "age": 3}


def serve(tmp_path: Path, **settings: object) -> tuple[TestClient, StandIn]:
    """The routes over settings of this test only (never the package's admin key)."""
    server = StandIn(Settings(**{"home": tmp_path, "admin_api_key": None, **settings}))
    return TestClient(build_api(server)), server  # type: ignore[arg-type]


def audit_folder(home: Path) -> Folder:
    return Settings(home=home).audit_log


def audit_text(home: Path) -> str:
    """Every byte of the audit trail, to look for secrets in it."""
    folder = audit_folder(home)
    return "".join(folder.read_bytes(f.name).decode() for f in folder.files())


def issued(http: TestClient) -> str:
    return http.post(PREDICT, json={"instances": [INSTANCE]}).json()["request_id"]


def test_request_ids_are_signed_and_only_issued_ones_verify(tmp_path: Path) -> None:
    ids = RequestIds([b"s" * 32], "test")
    request_id = ids.issue()
    assert len(request_id) == REQUEST_ID_CHARS and ids.verify(request_id)
    assert request_id != ids.issue()
    flipped = request_id[:-1] + ("0" if request_id[-1] != "0" else "1")
    assert not ids.verify(flipped)  # an altered signature
    assert not ids.verify(request_id[:24] + "0" * 32)  # a nonce without its signature
    assert not ids.verify(uuid.uuid4().hex)  # the old, unsigned form
    assert not ids.verify("z" * REQUEST_ID_CHARS)
    assert not RequestIds([b"t" * 32], "other").verify(request_id)  # another deployment's
    # Rotation: the new secret signs, the old one still verifies what it signed.
    rotated = RequestIds([b"t" * 32, b"s" * 32], "rotated")
    assert rotated.verify(request_id) and rotated.verify(rotated.issue())
    assert not ids.verify(rotated.issue())


def test_replicas_sharing_a_home_share_one_generated_secret(tmp_path: Path) -> None:
    first = RequestIds.of(Settings(home=tmp_path))
    second = RequestIds.of(Settings(home=tmp_path))
    assert second.verify(first.issue()) and "generated" in first.source
    secret = tmp_path.resolve() / "serving" / SECRET_FILE
    assert secret.stat().st_mode & 0o777 == 0o600
    assert not RequestIds.of(Settings(home=tmp_path / "elsewhere")).verify(first.issue())
    configured = Settings(home=tmp_path, request_id_secret="c" * 32)
    assert RequestIds.of(configured).source == "DRIFTLOOP_REQUEST_ID_SECRET"
    with pytest.raises(WeakSecret, match="fewer than the 32") as error:
        RequestIds.of(Settings(home=tmp_path, request_id_secret="short"))
    assert "short" not in str(error.value)


def test_feedback_names_only_ids_this_deployment_issued(tmp_path: Path) -> None:
    http, server = serve(tmp_path)
    with http:
        request_id = issued(http)
        forged = http.post("/v1/feedback", json={"request_id": uuid.uuid4().hex, "label": 1})
        assert forged.status_code == 422
        assert forged.json()["detail"][0]["loc"] == ["body", "request_id"]
        assert "not a request_id this deployment issued" in forged.text
        mixed = [{"request_id": request_id, "label": 1}, {"request_id": "x" * 56, "label": 0}]
        batch = http.post("/v1/feedback", json=mixed)
        assert batch.status_code == 422 and batch.json()["detail"][0]["loc"][1:] == [
            1,
            "request_id",
        ]
        assert server.labels == []  # nothing of a refused request is applied
        ok = http.post("/v1/feedback", json={"request_id": request_id, "label": 1})
        assert ok.json() == {"accepted": 1}
        by_id = http.post("/v1/feedback", json={"id": "loan-7", "label": 0})
        assert by_id.json() == {"accepted": 1}
        assert 'route="refused",status="422"' in http.get("/metrics").text


def test_a_feedback_key_when_set_is_required(tmp_path: Path) -> None:
    http, _ = serve(tmp_path, feedback_api_key=FEEDBACK, admin_api_key=ADMIN)
    with http:
        label = {"request_id": issued(http), "label": 1}
        assert http.post("/v1/feedback", json=label).status_code == 401
        wrong = http.post("/v1/feedback", json=label, headers={"X-API-Key": VIEWER})
        assert wrong.status_code == 403
        for key in (FEEDBACK, ADMIN):
            answer = http.post("/v1/feedback", json=label, headers={"X-API-Key": key})
            assert answer.json() == {"accepted": 1}
        # The feedback key is no admin key.
        admin = http.post("/admin/reload", headers={"X-API-Key": FEEDBACK})
        assert admin.status_code == 403


def test_a_viewer_reads_state_and_details_but_changes_nothing(tmp_path: Path) -> None:
    http, server = serve(tmp_path, admin_api_key=ADMIN, viewer_api_key=VIEWER)
    with http:
        state = http.get("/admin/state", headers={"X-API-Key": VIEWER})
        assert state.status_code == 200
        ids = state.json()["key_ids"]
        assert ids["admin"] == [hashlib.sha256(ADMIN.encode()).hexdigest()[:8]]
        assert ADMIN not in state.text and VIEWER not in state.text
        assert http.get("/admin/state").status_code == 401
        assert http.post("/admin/reload", headers={"X-API-Key": VIEWER}).status_code == 403
        assert server.syncs == 0
        assert http.post("/admin/reload", headers={"X-API-Key": ADMIN}).status_code == 200
        assert server.syncs == 1
        # /readyz answers everyone (probes), with details only for a viewer or admin key.
        public = http.get("/readyz")
        assert public.status_code == 200 and public.json() == {"ready": True, "detail": "serving"}
        for key in (VIEWER, ADMIN):
            assert "canary_weight" in http.get("/readyz", headers={"X-API-Key": key}).json()
        assert "canary_weight" not in http.get("/readyz", headers={"X-API-Key": "x" * 40}).json()
    # No key configured at all: nothing to ask for, the details stay open (a local setup).
    http, _ = serve(tmp_path / "open")
    with http:
        assert "canary_weight" in http.get("/readyz").json()
        assert http.get("/admin/state").status_code == 403


def test_admin_keys_rotate_through_their_file_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = "o" * 40, "n" * 40
    keys = tmp_path / "admin-keys"
    keys.write_text(f"# rotation under way\n{old}\n{new}\n")
    http, server = serve(tmp_path, admin_api_key_file=str(keys))
    with http:
        for key in (old, new):
            assert http.post("/admin/reload", headers={"X-API-Key": key}).status_code == 200
        keys.write_text(f"{new}\n")
        assert http.post("/admin/reload", headers={"X-API-Key": old}).status_code == 403
        assert http.post("/admin/reload", headers={"X-API-Key": new}).status_code == 200
        keys.write_text("too-short\n")  # a bad rotation keeps the keys that were valid
        assert http.post("/admin/reload", headers={"X-API-Key": new}).status_code == 200
        assert "too-short" not in audit_text(tmp_path)
    keys.write_text("too-short\n")
    with pytest.raises(WeakSecret, match="DRIFTLOOP_ADMIN_API_KEY_FILE line 1") as error:
        serve(tmp_path, admin_api_key_file=str(keys))
    assert "too-short" not in str(error.value)
    monkeypatch.setenv("DRIFTLOOP_ADMIN_API_KEY_FILE", str(keys))  # the deploy refuses too
    with pytest.raises(WeakSecret, match="DRIFTLOOP_ADMIN_API_KEY_FILE line 1"):
        build_app(ServeArgs(home=str(tmp_path)))
    with pytest.raises(WeakSecret, match="cannot be read"):
        serve(tmp_path, admin_api_key_file=str(tmp_path / "missing"))
    assert server.syncs == 4


def test_every_admin_action_is_audited_without_the_key(tmp_path: Path) -> None:
    http, _ = serve(tmp_path, admin_api_key=ADMIN, viewer_api_key=VIEWER)
    with http:
        http.post("/admin/reload", headers={"X-API-Key": ADMIN})
        http.post("/admin/reload", headers={"X-API-Key": "w" * 40})
        http.post("/admin/reload", headers={"X-API-Key": VIEWER})
        http.post("/admin/reload")
    text = audit_text(tmp_path)
    assert ADMIN not in text and VIEWER not in text and "w" * 40 not in text
    done, wrong, viewer, missing = (e.fields for e in AuditTrail(audit_folder(tmp_path)).read())
    assert done["action"] == "POST /admin/reload" and done["outcome"] == "200"
    assert (
        done["role"] == "admin" and done["key_id"] == hashlib.sha256(ADMIN.encode()).hexdigest()[:8]
    )
    assert done["client"] == "testclient" and "before" in done and "after" in done
    assert (wrong["outcome"], wrong["role"]) == ("403", None)
    assert wrong["key_id"] == hashlib.sha256(b"w" * 40).hexdigest()[:8]
    assert (viewer["outcome"], viewer["role"]) == ("403", "viewer")
    assert (missing["outcome"], missing["key_id"]) == ("401", None)


def test_no_secret_reaches_the_openapi_schema(tmp_path: Path) -> None:
    secret = "r" * 40
    http, _ = serve(
        tmp_path,
        admin_api_key=ADMIN,
        viewer_api_key=VIEWER,
        feedback_api_key=FEEDBACK,
        request_id_secret=secret,
    )
    with http:
        schema = http.get("/openapi.json").text
    assert "X-API-Key" in schema
    for value in (ADMIN, VIEWER, FEEDBACK, secret):
        assert value not in schema


def test_credentials_in_urls_stay_out_of_alerts() -> None:
    """MLflow and botocore errors quote the URL they failed on, password included."""
    message = "API request to http://loop:s3cret@mlflow:5000/api failed; s3://bucket/key"
    assert _redacted(message) == "API request to http://***@mlflow:5000/api failed; s3://bucket/key"
