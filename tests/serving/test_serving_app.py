"""The serving application over real HTTP: routing, validation, logging, swaps, failures.

One Serve application for the module (starting Ray costs ~30 s here); tests run in file
order and each leaves the aliases and routing as it found them.
"""

import asyncio
import functools
import json
import math
import time
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from ray import serve

from driftloop.audit import AuditTrail
from driftloop.registry import CHALLENGER, CHAMPION
from driftloop.training import TRUSTED_TYPES
from driftloop.versioning import TAG_SEMVER
from serving.app import ServeArgs, build_app
from serving.launch import APP_NAME
from serving.router import SPLIT_TAG, SharedSplit, TrafficSplit
from serving.security import REQUEST_ID_CHARS
from tests.serving.conftest import ADMIN_KEY, Served, artifact_file
from tests.waits import logged, wait_until, wait_until_async

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/driftloop:predict"
ADMIN = {"X-API-Key": ADMIN_KEY}
INSTANCE = {
    "salary": 52_000.0,
    "commission": 10_000.0,
    "age": 41,
    "elevel": 2,
    "car": 3,
    "zipcode": 4,
    "hvalue": 150_000,
    "hyears": 12,
    "loan": 200_000.0,
}


def routing(client: httpx.Client, **change: object) -> dict:
    response = client.post("/admin/routing", json=change, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def served_requests(client: httpx.Client) -> float:
    """Predictions answered so far, from the replica's own Prometheus counter."""
    text = client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("driftloop_requests_total{") and 'status="200"' in line
    )


async def hammer(
    url: str, stop: asyncio.Event, seen: list[tuple[int, str]], concurrency: int = 8
) -> None:
    """Keyless single-instance requests at fixed concurrency until `stop`, each answer's
    (status, version) appended to `seen` as it arrives."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            while not stop.is_set():
                try:
                    r = await client.post(PREDICT, json={"instances": [INSTANCE]})
                    seen.append((r.status_code, r.headers.get("x-model-version", "")))
                except httpx.HTTPError as error:
                    seen.append((0, repr(error)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def swap_under_load(served: Served, change, version: str) -> list[tuple[int, str]]:
    """Run `change()` (an alias move) under load until `version` answers every request
    then in flight (or one fails); returns the answers in arrival order."""
    seen: list[tuple[int, str]] = []
    stop = asyncio.Event()
    load = asyncio.create_task(hammer(served.url, stop, seen))
    await wait_until_async(lambda: len(seen) >= 20)  # the load is flowing
    await asyncio.to_thread(change)
    changed = len(seen)

    def settled() -> bool:
        after = seen[changed:]
        recent = after[-16:]  # twice the concurrency: none of them began before the swap
        failed = any(status != 200 for status, _ in after)
        return failed or (len(recent) == 16 and all(v == version for _, v in recent))

    await wait_until_async(settled)
    stop.set()
    await load
    return seen


def test_champion_answers_in_kserve_shape(served: Served) -> None:
    with served.client() as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        ready = client.get("/readyz", headers=ADMIN)
        assert ready.status_code == 200
        assert ready.json()["champion"]["version"] == served.champion
        assert ready.json()["challenger"]["version"] == served.challenger

        response = client.post(PREDICT, json={"instances": [INSTANCE, INSTANCE]})
        schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictResponse"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-model-version"] == body["model_version"] == served.champion
    assert len(body["predictions"]) == len(body["probabilities"]) == 2
    assert all(math.isclose(sum(p), 1.0) for p in body["probabilities"])
    assert len(body["request_id"]) == REQUEST_ID_CHARS
    assert body["ids"] == [None, None]
    # The version's semver and the classes in the probabilities' order, as registered.
    semvers = {
        v: served.registry.version(v).tags[TAG_SEMVER] for v in (served.champion, served.challenger)
    }
    assert body["model_semver"] == semvers[served.champion]
    assert ready.json()["champion"]["semver"] == semvers[served.champion]
    assert ready.json()["challenger"]["semver"] == semvers[served.challenger]
    pipeline = served.registry.load_verified(served.champion, TRUSTED_TYPES)
    assert body["classes"] == pipeline.classes_.tolist()
    assert body["predictions"] == [
        body["classes"][max(range(len(p)), key=p.__getitem__)] for p in body["probabilities"]
    ]
    assert {"classes", "model_semver"} <= set(schema["properties"])


BAD_BODIES = {
    "wrong type": (json.dumps({"instances": [{**INSTANCE, "age": "forty"}]}), 422, "age"),
    "missing field": (
        json.dumps({"instances": [{k: v for k, v in INSTANCE.items() if k != "loan"}]}),
        422,
        "loan",
    ),
    "unknown field": (json.dumps({"instances": [{**INSTANCE, "colour": 1}]}), 422, "colour"),
    "null feature": (json.dumps({"instances": [{**INSTANCE, "loan": None}]}), 422, "loan"),
    "id too long": (json.dumps({"instances": [{**INSTANCE, "id": "x" * 257}]}), 422, "id"),
    "NaN": (json.dumps({"instances": [{**INSTANCE, "salary": float("nan")}]}), 422, "salary"),
    "inf": (json.dumps({"instances": [{**INSTANCE, "loan": float("inf")}]}), 422, "loan"),
    "int beyond 64 bits": (json.dumps({"instances": [{**INSTANCE, "age": 10**22}]}), 422, "age"),
    # Once an OverflowError: a 500, counted by the error-rate alert.
    "float beyond float64": (
        json.dumps({"instances": [{**INSTANCE, "salary": 10**309}]}),
        422,
        "salary",
    ),
    "body over 1 MiB": (json.dumps({"instances": [INSTANCE], "pad": "x" * 2**21}), 413, "bytes"),
    "empty instances": (json.dumps({"instances": []}), 422, "instances"),
    "no instances": (json.dumps({"rows": [INSTANCE]}), 422, "instances"),
    "too many": (json.dumps({"instances": [INSTANCE] * 1001}), 413, "1000"),
    "malformed JSON": ('{"instances": [', 422, "json"),
    "not an object": ("[1, 2]", 422, "body"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_input_is_a_4xx_naming_the_problem(served: Served, case: str) -> None:
    body, status, named = BAD_BODIES[case]
    with served.client() as client:
        before = served_requests(client)
        response = client.post(
            PREDICT, content=body.encode(), headers={"content-type": "application/json"}
        )
        assert response.status_code == status, response.text
        assert named.lower() in response.text.lower()
        assert served_requests(client) == before  # nothing answered, nothing logged
        assert f'route="refused",status="{status}"' in client.get("/metrics").text
        assert client.get("/readyz", headers=ADMIN).status_code == 200  # the replica is still there


def test_unknown_model_is_a_404(served: Served) -> None:
    with served.client() as client:
        response = client.post("/v1/models/other:predict", json={"instances": [INSTANCE]})
    assert response.status_code == 404
    assert "other" in response.json()["detail"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"X-API-Key": ""}, 401), ({"X-API-Key": "wrong"}, 403), (ADMIN, 200)],
)
def test_admin_endpoints_refuse_bad_keys(served: Served, headers: dict, status: int) -> None:
    with served.client() as client:
        for path, body in (("/admin/routing", {}), ("/admin/reload", None)):
            response = client.post(path, json=body, headers=headers)
            assert response.status_code == status, (path, response.text)


def test_canary_share_and_sticky_keys(served: Served) -> None:
    with served.client() as client:
        routing(client, canary_weight=0.2)
        try:

            async def keyless() -> list[str]:
                async with httpx.AsyncClient(base_url=served.url, timeout=30) as aclient:
                    gate = asyncio.Semaphore(16)

                    async def one() -> str:
                        async with gate:
                            r = await aclient.post(PREDICT, json={"instances": [INSTANCE]})
                            assert r.status_code == 200
                            return r.headers["x-model-version"]

                    return await asyncio.gather(*(one() for _ in range(1000)))

            versions = Counter(asyncio.run(keyless()))
            assert 160 <= versions[served.challenger] <= 240, versions

            by_key: dict[str, set[str]] = {}
            for i in range(60):
                for _ in range(3):
                    body = {"instances": [{**INSTANCE, "key": f"customer-{i}"}]}
                    r = client.post(PREDICT, json=body)
                    by_key.setdefault(f"customer-{i}", set()).add(r.headers["x-model-version"])
            assert all(len(v) == 1 for v in by_key.values()), by_key
            assert {v for s in by_key.values() for v in s} == {served.champion, served.challenger}
        finally:
            routing(client, canary_weight=0.0)


def test_an_integer_beyond_int64_in_a_float_feature_is_logged_with_its_neighbours(
    served: Served,
) -> None:
    """2**63 in a float feature was answered, then pyarrow refused it and the writer lost
    the whole flush: every client's records of that second."""

    async def requests() -> list[str]:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as aclient:

            async def one(salary: float | int) -> str:
                body = {"instances": [INSTANCE, {**INSTANCE, "salary": salary}]}
                r = await aclient.post(PREDICT, json=body)
                assert r.status_code == 200, r.text
                return r.json()["request_id"]

            return await asyncio.gather(*(one(2**63 if i == 5 else 52_000.0) for i in range(20)))

    with served.client() as client:
        dropped = 'driftloop_prediction_log_dropped_total{kind="predictions"}'
        request_ids = asyncio.run(requests())
        log = logged(
            served.settings.prediction_log,
            lambda f: f.request_id.isin(request_ids).sum() == 2 * len(request_ids),
        )
        assert f"{dropped} 0.0" in client.get("/metrics").text.splitlines()
    mine = log[log.request_id.isin(request_ids)]
    assert len(mine) == 2 * len(request_ids)
    assert mine.salary.max() == float(2**63)


def test_shadow_answers_with_champion_and_logs_both(served: Served) -> None:
    with served.client() as client:
        routing(client, canary_weight=0.5, shadow=True)
        try:
            ids = []
            for i in range(20):
                r = client.post(PREDICT, json={"instances": [{**INSTANCE, "key": f"s{i}"}]})
                assert r.headers["x-model-version"] == served.champion
                ids.append(r.json()["request_id"])
        finally:
            routing(client, canary_weight=0.0, shadow=False)
    log = logged(served.settings.prediction_log, lambda f: f.request_id.isin(ids).sum() == 40)
    mine = log[log.request_id.isin(ids)]
    routes = mine.groupby("request_id").route.apply(frozenset)
    assert len(routes) == 20 and set(routes) == {frozenset({"champion", "shadow"})}
    shadow = mine[mine.route == "shadow"]
    assert set(shadow.model_version) == {served.challenger}
    assert {"salary", "probability", "latency_ms", "at", "prediction"} <= set(log.columns)
    assert {"id", "probabilities", "unseen"} <= set(log.columns)
    assert all(math.isclose(sum(p), 1.0) for p in mine.probabilities)
    assert (mine.probability == [max(p) for p in mine.probabilities]).all()


def test_feedback_is_logged_for_issued_request_ids_only(served: Served) -> None:
    """Feedback names an answer by its signed request id (or the instance's business id);
    an id this deployment never issued is a 422 naming `request_id`, and nothing is logged."""
    with served.client() as client:
        issued = [
            client.post(PREDICT, json={"instances": [INSTANCE]}).json()["request_id"]
            for _ in range(3)
        ]
        one = client.post("/v1/feedback", json={"request_id": issued[0], "label": 1})
        pair = [{"request_id": issued[1], "label": 0}, {"request_id": issued[2], "label": 1}]
        many = client.post("/v1/feedback", json=pair)
        by_id = client.post("/v1/feedback", json={"id": "loan-5", "label": 0})
        bad = client.post("/v1/feedback", json={"request_id": issued[0]})
        both = client.post("/v1/feedback", json={"request_id": "r-4", "id": "l-4", "label": 1})
        forged = [{"request_id": "f" * 56, "label": 1}, {"request_id": "r-1", "label": 1}]
        refused = client.post("/v1/feedback", json=forged)
        replayed = client.post("/v1/feedback", json={"request_id": issued[0], "label": 0})
    assert (one.json(), many.json(), by_id.json(), replayed.json()) == (
        {"accepted": 1},
        {"accepted": 2},
        {"accepted": 1},
        {"accepted": 1},  # logged; the first label per request id is the one joined
    )
    assert bad.status_code == both.status_code == refused.status_code == 422
    assert "label" in bad.text and "exactly one of 'request_id'" in both.text
    assert [d["loc"] for d in refused.json()["detail"]] == [
        ["body", 0, "request_id"],
        ["body", 1, "request_id"],
    ]
    log = logged(served.settings.feedback_log, lambda f: set(issued) <= set(f.request_id))
    assert not {"f" * 56, "r-1"} & set(log.request_id)
    assert log.loc[log.id == "loan-5", "request_id"].isna().all()


def test_hot_swap_under_load_has_no_errors(served: Served) -> None:
    """Promote the challenger, then roll back through the admin endpoint, both under load."""
    promote = functools.partial(served.registry.promote, served.challenger)
    answers = asyncio.run(swap_under_load(served, promote, served.challenger))
    assert {status for status, _ in answers} == {200}
    versions = [v for _, v in answers]
    assert versions[0] == served.champion and versions[-1] == served.challenger

    with served.client() as client:
        assert client.get("/readyz", headers=ADMIN).json()["last_swap_ms"] < 1000
        answers = asyncio.run(
            swap_under_load(
                served,
                lambda: client.post("/admin/rollback", headers=ADMIN).raise_for_status(),
                served.champion,
            )
        )
        assert {status for status, _ in answers} == {200}
        assert answers[-1][1] == served.champion
        ready = client.get("/readyz", headers=ADMIN).json()
        assert 'driftloop_serving_alerts_total{kind="rollback"}' in client.get("/metrics").text
        # A client retrying the rollback it timed out on must not put the bad model back.
        retried = client.post(
            "/admin/rollback", headers=ADMIN, json={"expected_champion": served.challenger}
        )
        assert retried.status_code == 200, retried.text
        assert retried.json()["champion"]["version"] == served.champion
    assert ready["champion"]["version"] == served.champion
    assert served.registry.by_alias(CHAMPION).version == served.champion
    served.registry.set_alias(CHALLENGER, served.challenger)  # the package's fixture state
    audit = [entry.fields for entry in AuditTrail(served.settings.audit_log).read()]
    assert ADMIN_KEY not in json.dumps(audit)
    rollbacks = [
        entry
        for entry in audit
        if entry["action"] == "POST /admin/rollback" and entry["outcome"] == "200"
    ]
    first, retry = rollbacks[-2:]
    assert (first["before"]["champion"], first["after"]["champion"]) == (
        served.challenger,
        served.champion,
    )
    assert retry["before"] == retry["after"]  # the retried call changed nothing
    assert first["role"] == "admin" and len(first["key_id"]) == 8 and first["client"]


def test_tampered_artifact_is_refused_and_old_version_keeps_answering(served: Served) -> None:
    model_file = artifact_file(served.settings, served.registry, served.challenger)
    original = model_file.read_bytes()
    model_file.write_bytes(original + b"tampered")
    try:
        served.registry.promote(served.challenger)
        with served.client() as client:
            ready = client.post("/admin/reload", headers=ADMIN).json()
            assert ready["champion"]["version"] == served.champion
            r = client.post(PREDICT, json={"instances": [INSTANCE]})
            assert r.status_code == 200 and r.headers["x-model-version"] == served.champion
            assert (
                'driftloop_serving_alerts_total{kind="model_refused"}'
                in client.get("/metrics").text
            )
        events = (served.settings.serving_dir / "events.jsonl").read_text()
        assert "does not match the registered" in events
    finally:
        model_file.write_bytes(original)
        served.registry.rollback()
        served.registry.set_alias(CHALLENGER, served.challenger)


def state(client: httpx.Client) -> dict:
    answer = client.get("/admin/state", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_deleted_artifact_is_reported_retried_with_backoff_and_routing_still_arrives(
    served: Served,
) -> None:
    """An artifact gone from the store (an MlflowException, which once escaped the load):
    the champion keeps answering, the replica says why, retries with backoff rather than
    every poll, and still follows a split another replica shared."""
    registry = served.registry
    artifacts = artifact_file(served.settings, registry, served.challenger).parent
    aside = artifacts.with_name(artifacts.name + ".aside")
    with served.client() as client:

        def challenger() -> str | None:
            loaded = client.get("/readyz", headers=ADMIN).json()["challenger"]
            return loaded and loaded["version"]

        # Settled first: a load begun before the alias went away would finish after it.
        wait_until(lambda: challenger() == served.challenger)
        registry.delete_alias(CHALLENGER)
        wait_until(lambda: challenger() is None)
        artifacts.rename(aside)
        try:
            started = time.monotonic()
            registry.set_alias(CHALLENGER, served.challenger)
            wait_until(lambda: state(client)["load_failures"])
            (failure,) = state(client)["load_failures"]
            assert (failure["alias"], failure["version"]) == ("challenger", served.challenger)
            assert failure["reason"].startswith("MlflowException") and failure["retry_in_s"] > 1
            r = client.post(PREDICT, json={"instances": [INSTANCE]})
            assert r.status_code == 200 and r.headers["x-model-version"] == served.champion
            events = (served.settings.serving_dir / "events.jsonl").read_text().splitlines()
            event = json.loads(events[-1])
            assert event["kind"] == "model_refused" and "could not be loaded" in event["message"]
            assert f"@champion v{served.champion} answers meanwhile" in event["message"]
            # Another replica's admin call, as the registry carries it: it still arrives.
            split = SharedSplit(current=TrafficSplit(canary_weight=0.3), deployed=TrafficSplit())
            registry.set_model_tag(SPLIT_TAG, split.model_dump_json())
            wait_until(lambda: client.get("/readyz", headers=ADMIN).json()["canary_weight"] == 0.3)
            wait_until(lambda: state(client)["load_failures"][0]["attempts"] >= 2)
            polls = (time.monotonic() - started) / 0.2
            failed = 'driftloop_model_swaps_total{alias="challenger",outcome="failed"}'
            count = next(
                float(line.rsplit(" ", 1)[1])
                for line in client.get("/metrics").text.splitlines()
                if line.startswith(failed)
            )
            assert 2 <= count <= state(client)["load_failures"][0]["attempts"] < polls / 3
        finally:
            aside.rename(artifacts)
        reloaded = client.post("/admin/reload", headers=ADMIN).json()  # retry now
        assert reloaded["challenger"]["version"] == served.challenger
        assert state(client)["load_failures"] == []
        routing(client, canary_weight=0.0)


def test_openapi_fuzzing_finds_no_server_error(served: Served) -> None:
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    for path in ("/v1/models/{model}:predict", "/v1/feedback"):
        operation = schema[path]["POST"]

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:
            response = case.call(base_url=served.url)
            assert response.status_code < 500, (case.body, response.text)

        fuzz()


def test_admin_routing_reaches_every_replica(served: Served) -> None:
    """Two replicas, one admin call: the split goes through the registry, which every
    replica polls, so the replica that did not take the call follows it."""
    home = str(served.settings.home)
    pair = ServeArgs(home=home, num_replicas=2, replica_cpus=0.5, poll_interval_s=0.2)
    serve.run(build_app(pair), name=APP_NAME, route_prefix="/")
    try:
        states = serve.status().applications[APP_NAME].deployments["driftloop"].replica_states
        assert states == {"RUNNING": 2}
        with served.client() as client:
            routing(client, canary_weight=1.0)

            def weights_seen(n: int) -> Counter:
                return Counter(
                    client.get("/readyz", headers=ADMIN).json()["canary_weight"] for _ in range(n)
                )

            # The other replica follows at its next poll; 20 answers in a row all from one
            # replica would be a 1-in-500,000 chance.
            wait_until(lambda: weights_seen(20) == {1.0: 20})
            weights = weights_seen(40)
            answers = Counter(
                client.post(PREDICT, json={"instances": [INSTANCE]}).headers["x-model-version"]
                for _ in range(40)
            )
        assert weights == {1.0: 40} and answers == {served.challenger: 40}
    finally:
        with served.client() as client:
            routing(client, canary_weight=0.0)
        live = ServeArgs(home=home, poll_interval_s=0.2)
        serve.run(build_app(live), name=APP_NAME, route_prefix="/")


def test_mlflow_unreachable_still_serves_from_local_copy(served: Served) -> None:
    """Redeploy pointing at a dead tracking server: the replica starts from its disk copy."""
    dead = ServeArgs(
        home=str(served.settings.home), tracking_uri="http://127.0.0.1:9", poll_interval_s=0.2
    )
    serve.run(build_app(dead), name=APP_NAME, route_prefix="/")
    try:
        with served.client() as client:
            ready = client.get("/readyz", headers=ADMIN).json()
            assert ready["champion"] == {**ready["champion"], "source": "cache"}
            assert ready["champion"]["version"] == served.champion
            semver = served.registry.version(served.champion).tags[TAG_SEMVER]
            assert ready["champion"]["semver"] == semver  # kept with the cached copy
            # Answered throughout a few failed registry polls (every 0.2 s), not only once.
            polls_failed_by = time.monotonic() + 1
            while time.monotonic() < polls_failed_by:
                r = client.post(PREDICT, json={"instances": [INSTANCE]})
                assert r.status_code == 200 and r.headers["x-model-version"] == served.champion
    finally:  # later tests expect the live registry behind the app again
        live = ServeArgs(home=str(served.settings.home), poll_interval_s=0.2)
        serve.run(build_app(live), name=APP_NAME, route_prefix="/")


def test_overload_is_a_503_with_retry_after_never_a_500_or_a_hang(served: Served) -> None:
    """A replica holding at most 2 requests, under 32 concurrent clients: what it cannot
    take is answered 503 with Retry-After at once and counted; the rest are answered."""
    home = str(served.settings.home)
    tight = ServeArgs(home=home, poll_interval_s=0.2, max_queued_requests=2)
    serve.run(build_app(tight), name=APP_NAME, route_prefix="/")
    try:

        async def burst() -> list[tuple[int, str | None, float]]:
            body = {"instances": [INSTANCE] * 200}
            async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:

                async def one() -> tuple[int, str | None, float]:
                    started = time.perf_counter()
                    r = await client.post(PREDICT, json=body)
                    return (
                        r.status_code,
                        r.headers.get("retry-after"),
                        time.perf_counter() - started,
                    )

                return await asyncio.gather(*(one() for _ in range(256)))

        answers = asyncio.run(burst())
        statuses = Counter(status for status, _, _ in answers)
        assert set(statuses) == {200, 503}, statuses
        assert {after for status, after, _ in answers if status == 503} == {"1"}
        assert max(elapsed for _, _, elapsed in answers) < 10
        with served.client() as client:
            metrics = client.get("/metrics").text
        shed = 'driftloop_shed_requests_total{reason="queue_full"}'
        counted = [line for line in metrics.splitlines() if line.startswith(shed)]
        assert counted == [f"{shed} {float(statuses[503])}"], (counted, statuses)
    finally:
        live = ServeArgs(home=home, poll_interval_s=0.2)
        serve.run(build_app(live), name=APP_NAME, route_prefix="/")
