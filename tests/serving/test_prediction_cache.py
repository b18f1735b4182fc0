"""The prediction cache: its key and bounds without Ray, then through the real application.

Over HTTP the package's application is redeployed with the cache on (as the other serving
tests redeploy it with their own arguments) and put back as it was afterwards: a second
application would need CPUs the package's Ray does not have while the real-data and
regression applications run.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema
from ray import serve

from driftloop.registry import CHAMPION
from serving.app import ServeArgs, build_app
from serving.cache import PredictionCache
from serving.launch import APP_NAME
from serving.model import LoadedModel, ModelStore
from serving.schemas import build_request_models, features_from_signature
from tests.serving.conftest import ADMIN_KEY, Served
from tests.waits import logged, wait_until

PREDICT = "/v1/models/driftloop:predict"
ADMIN = {"X-API-Key": ADMIN_KEY}
TTL_S = 2.0
SIGNATURE = ModelSignature(
    Schema(
        [
            ColSpec("long", "age"),
            ColSpec("double", "income", required=False),
            ColSpec("string", "colour", required=False),
        ]
    )
)
FEATURES = features_from_signature(SIGNATURE)


def row(raw: str) -> dict[str, Any]:
    """An instance as the replica has it after validation, from its JSON text."""
    instance = build_request_models(FEATURES, 10).instance
    return instance.model_validate_json(raw).__dict__


def test_the_key_is_the_validated_values_whatever_the_json_order_id_or_routing_key() -> None:
    cache = PredictionCache(FEATURES, 8, 60)
    first = row('{"age": 41, "income": 52000.0, "colour": "red"}')
    same = [
        row('{"colour": "red", "income": 52000, "age": 41}'),  # an int literal is a float
        row('{"income": 52000.0, "age": 41, "colour": "red", "id": "loan-7", "key": "c-1"}'),
    ]
    assert all(cache.key("1", r) == cache.key("1", first) for r in same)
    missing = [row('{"age": 41}'), row('{"age": 41, "income": null, "colour": "  "}')]
    assert cache.key("1", missing[0]) == cache.key("1", missing[1])


def test_the_key_changes_with_the_version_and_any_value() -> None:
    cache = PredictionCache(FEATURES, 8, 60)
    base = row('{"age": 41, "income": 52000.0, "colour": "red"}')
    others = [
        row('{"age": 42, "income": 52000.0, "colour": "red"}'),
        row('{"age": 41, "income": 52000.5, "colour": "red"}'),
        row('{"age": 41, "income": 52000.0, "colour": "blue"}'),
        row('{"age": 41, "colour": "red"}'),
    ]
    keys = {cache.key("1", base), cache.key("2", base), *(cache.key("1", r) for r in others)}
    assert len(keys) == 6


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lookups_fill_in_order_are_bounded_expire_and_a_swap_drops_late_answers() -> None:
    clock = Clock()
    cache = PredictionCache(FEATURES, 2, ttl_s=10, timer=clock)
    a, b, c = (row(f'{{"age": {age}}}') for age in (1, 2, 3))
    found = cache.lookup("1", [a, b])
    cache.fill(found, [0, 1], [[1.0, 0.0], [0.0, 1.0]], [None, "colour"])
    mixed = cache.lookup("1", [c, b, a])
    assert mixed.missing == [0]
    cache.fill(mixed, [1], [[0.25, 0.75]], [None])
    assert mixed.columns() == (
        [1, 1, 0],
        [[0.25, 0.75], [0.0, 1.0], [1.0, 0.0]],
        [None, "colour", None],
    )
    assert len(cache) == 2 and cache.lookup("1", [b]).missing == [0]  # least recently used
    clock.now = 10.0
    assert cache.lookup("1", [c, a]).missing == [0, 1]  # both expired
    late = cache.lookup("1", [a])
    cache.clear()  # a swap while the model answered
    cache.fill(late, [0], None, [None])
    assert late.columns() == ([0], None, [None]) and len(cache) == 0


def test_size_zero_is_off() -> None:
    cache = PredictionCache(FEATURES, 0, 60)
    assert not cache.enabled and len(cache) == 0


# --- through the real application --------------------------------------------------------

INSTANCE = {
    "salary": 61_000.0,
    "commission": 0.0,
    "age": 37,
    "elevel": 1,
    "car": 5,
    "zipcode": 2,
    "hvalue": 120_000,
    "hyears": 9,
    "loan": 150_000.0,
}


def instance(salary: float) -> dict[str, Any]:
    return {**INSTANCE, "salary": salary}


def cache_counts(client: httpx.Client) -> dict[str, float]:
    """hit, miss and entries from the replica's /metrics."""
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        for name, prefix in (
            ("hit", 'driftloop_prediction_cache_total{outcome="hit"}'),
            ("miss", 'driftloop_prediction_cache_total{outcome="miss"}'),
            ("entries", "driftloop_prediction_cache_entries "),
        ):
            if line.startswith(prefix):
                counts[name] = float(line.rsplit(" ", 1)[1])
    return counts


def predict(client: httpx.Client, *instances: dict[str, Any]) -> dict[str, Any]:
    response = client.post(PREDICT, json={"instances": list(instances)})
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == response.json()["model_version"]
    return response.json()


def expected(model: LoadedModel, *instances: dict[str, Any]) -> list[list[float]]:
    """The version's own probabilities for `instances`, validated as the replica does."""
    validate = build_request_models(model.features, 10).instance.model_validate
    _, probabilities = model.predict_rows([validate(i).__dict__ for i in instances])
    assert probabilities is not None
    return probabilities.tolist()


@pytest.fixture(scope="module")
def cached(served: Served) -> Iterator[Served]:
    home = str(served.settings.home)
    on = ServeArgs(
        home=home, poll_interval_s=0.2, prediction_cache_size=64, prediction_cache_ttl_s=TTL_S
    )
    serve.run(build_app(on), name=APP_NAME, route_prefix="/")
    try:
        yield served
    finally:
        served.registry.set_alias(CHAMPION, served.champion)
        live = ServeArgs(home=home, poll_interval_s=0.2)
        serve.run(build_app(live), name=APP_NAME, route_prefix="/")


@pytest.fixture(scope="module")
def versions(served: Served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    """Champion and challenger as a replica loads them, to compare answers with."""
    store = ModelStore(served.registry, Path(tmp_path_factory.mktemp("cache-models")))
    return {
        v: store.load(CHAMPION, served.registry.version(v))
        for v in (served.champion, served.challenger)
    }


@pytest.mark.slow
def test_a_repeat_is_a_hit_answered_as_uncached_and_logged_with_its_own_request_id(
    cached: Served, versions: dict[str, LoadedModel]
) -> None:
    x, y = instance(61_500.0), instance(88_000.0)
    with cached.client() as client:
        before = cache_counts(client)
        first = predict(client, x)
        reordered = json.loads(json.dumps(dict(reversed(list(x.items())))))
        again = predict(client, {**reordered, "id": "loan-1"})
        mixed = predict(client, y, x)
        after = cache_counts(client)
    assert (after["hit"] - before["hit"], after["miss"] - before["miss"]) == (2, 2)
    model = versions[cached.champion]
    assert first["model_version"] == again["model_version"] == cached.champion
    assert first["probabilities"] == again["probabilities"] == expected(model, x)
    assert mixed["probabilities"] == expected(model, y, x) and again["ids"] == ["loan-1"]
    assert first["predictions"] == again["predictions"] == mixed["predictions"][1:]
    ids = [first["request_id"], again["request_id"], mixed["request_id"]]
    assert len(set(ids)) == 3
    log = logged(cached.settings.prediction_log, lambda f: set(ids) <= set(f.request_id))
    mine = log[log.request_id.isin(ids)]
    assert len(mine) == 4 and set(mine.model_version) == {cached.champion}
    assert mine.set_index("request_id").loc[ids[1], "id"] == "loan-1"


@pytest.mark.slow
def test_a_swap_empties_the_cache_and_the_new_version_answers(
    cached: Served, versions: dict[str, LoadedModel]
) -> None:
    x = instance(70_250.0)
    with cached.client() as client:
        predict(client, x)
        assert cache_counts(client)["entries"] >= 1
        cached.registry.set_alias(CHAMPION, cached.challenger)
        try:
            wait_until(
                lambda: (
                    client.get("/readyz", headers=ADMIN).json()["champion"]["version"]
                    == cached.challenger
                )
            )
            before = cache_counts(client)
            answer = predict(client, x)
            after = cache_counts(client)
        finally:
            cached.registry.set_alias(CHAMPION, cached.champion)
            wait_until(
                lambda: (
                    client.get("/readyz", headers=ADMIN).json()["champion"]["version"]
                    == cached.champion
                )
            )
    assert before["entries"] == 0
    assert answer["model_version"] == cached.challenger
    assert answer["probabilities"] == expected(versions[cached.challenger], x)
    assert after["miss"] == before["miss"] + 1 and after["hit"] == before["hit"]


@pytest.mark.slow
def test_an_answer_expires_after_its_ttl(cached: Served) -> None:
    x = instance(93_125.0)
    with cached.client() as client:
        stored_by = time.monotonic()  # the answer is stored after this
        predict(client, x)
        outcomes = []
        while True:
            before = cache_counts(client)["miss"]
            predict(client, x)
            answered_at = time.monotonic()
            outcomes.append("miss" if cache_counts(client)["miss"] > before else "hit")
            if outcomes[-1] == "miss":
                break
            assert answered_at - stored_by < TTL_S + 10, "the answer never expired"
            time.sleep(0.2)
    assert outcomes[0] == "hit" and answered_at - stored_by >= TTL_S
