"""Canary analysis through real serving: steps, promotion and rollback on live outcomes.

Feedback here is chosen per answering version (the challenger's answers confirmed or
contradicted), so the live evidence is known and the decision can be asserted exactly.
"""

import random
import time

import dagster as dg
import pytest

from assets.canary import TAG_WEIGHT, canary_decision
from driftloop.registry import CHALLENGER, CHAMPION, PREVIOUS
from driftloop.simulate import LoanStream
from resources.deployment import build_resources
from tests.serving.conftest import ADMIN_KEY, Served
from tests.waits import has_request_ids, logged

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/driftloop:predict"


@pytest.fixture
def canary_env(served: Served, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DRIFTLOOP_SERVING_URL", served.url)
    monkeypatch.setenv("DRIFTLOOP_CANARY_MIN_SAMPLES", "30")
    monkeypatch.setenv("DRIFTLOOP_CANARY_STEPS", "[0.5, 1.0]")
    yield served
    # Leave serving and the registry as the other serving tests expect them.
    registry = served.registry
    registry.set_alias(CHAMPION, served.champion)
    registry.set_alias(CHALLENGER, served.challenger)
    registry.delete_alias(PREVIOUS)
    registry.set_tags(served.challenger, {TAG_WEIGHT: 0.0})
    with served.client() as client:
        client.post("/admin/routing", json={"canary_weight": 0.0}, headers={"X-API-Key": ADMIN_KEY})
        client.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY})


def step(served: Served) -> dict:
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [canary_decision], instance=instance, resources=build_resources(served.settings)
        )
    assert result.success
    metadata = result.asset_materializations_for_node("canary_decision")[0].metadata
    return {k: v.value for k, v in metadata.items()}


def traffic(
    served: Served, requests: int, challenger_right: bool, challenger_wrong: int = 0
) -> dict[str, int]:
    """Keyed single-instance requests; feedback confirms the champion, and confirms or
    contradicts the challenger (or contradicts only its first `challenger_wrong` answers).
    Returns answers per version."""
    stream = LoanStream(seed=random.randrange(10_000))
    answered: dict[str, int] = {}
    request_ids: set[str] = set()
    with served.client() as client:
        for i in range(requests):
            x, _ = next(stream)
            body = {"instances": [{**x, "key": f"customer-{i}"}]}
            response = client.post(PREDICT, json=body)
            assert response.status_code == 200, response.text
            answer = response.json()
            request_ids.add(answer["request_id"])
            version = answer["model_version"]
            answered[version] = answered.get(version, 0) + 1
            label = answer["predictions"][0]
            if version == served.challenger and (
                not challenger_right or answered[version] <= challenger_wrong
            ):
                label = 1 - int(label)
            feedback = {"request_id": answer["request_id"], "label": label}
            assert client.post("/v1/feedback", json=feedback).status_code == 200
    # What the canary step reads: the replica publishes what it logged every flush.
    logged(served.settings.prediction_log, has_request_ids(request_ids))
    logged(served.settings.feedback_log, has_request_ids(request_ids))
    return answered


def _instance() -> dict:
    x, _ = next(LoanStream(seed=1))
    return x


def test_a_good_challenger_walks_the_steps_to_champion(canary_env: Served) -> None:
    served = canary_env
    assert step(served)["verdict"] == "start"
    assert served.registry.by_alias(CHALLENGER).tags[TAG_WEIGHT] == "0.5"
    answered = traffic(served, 160, challenger_right=True)
    assert answered.get(served.challenger, 0) >= 30 and answered.get(served.champion, 0) >= 30
    promoted = step(served)
    assert promoted["verdict"] == "promote", promoted["reason"]
    assert promoted["ci_low"] > -0.02 and promoted["challenger_version"] == served.challenger
    assert served.registry.by_alias(CHAMPION).version == served.challenger
    assert served.registry.by_alias(PREVIOUS).version == served.champion
    assert served.registry.by_alias(CHALLENGER) is None
    deadline = time.monotonic() + 20
    with served.client() as client:
        while time.monotonic() < deadline:
            answer = client.post(PREDICT, json={"instances": [_instance()]})
            if answer.headers["X-Model-Version"] == served.challenger:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("serving never answered with the promoted version")


def test_a_worse_challenger_is_rolled_back_and_serving_keeps_the_champion(
    canary_env: Served,
) -> None:
    served = canary_env
    served.registry.set_tags(served.challenger, {TAG_WEIGHT: 0.0})
    assert step(served)["verdict"] == "start"
    traffic(served, 160, challenger_right=False)
    decision = step(served)
    assert decision["verdict"] == "rollback" and "significantly worse" in decision["reason"]
    assert decision["ci_high"] < 0 and decision["challenger_accuracy"] == 0.0
    assert served.registry.by_alias(CHALLENGER) is None
    assert served.registry.by_alias(CHAMPION).version == served.champion
    tags = served.registry.version(served.challenger).tags
    assert tags["driftloop.canary.verdict"].startswith("rolled back: significantly worse")
    with served.client() as client:
        ready = client.get("/readyz", headers={"X-API-Key": ADMIN_KEY}).json()
        assert ready["canary_weight"] == 0.0
        answers = {
            client.post(PREDICT, json={"instances": [_instance()]}).headers["X-Model-Version"]
            for _ in range(20)
        }
    assert answers == {served.champion}


def test_the_bandit_moves_the_challengers_share_to_its_chance_of_being_better(
    canary_env: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inconclusive evidence (the challenger wrong on 2 answers, the champion never): no
    stop, and serving routes the challenger its Thompson share (here the first step)."""
    served = canary_env
    monkeypatch.setenv("DRIFTLOOP_CANARY_MODE", "bandit")
    monkeypatch.setenv("DRIFTLOOP_CANARY_STEPS", "[0.1, 1.0]")
    served.registry.set_tags(served.challenger, {TAG_WEIGHT: 0.0})
    assert step(served)["verdict"] == "start"
    with served.client() as client:  # half the traffic each, to gather both arms at once
        client.post("/admin/routing", json={"canary_weight": 0.5}, headers={"X-API-Key": ADMIN_KEY})
    served.registry.set_tags(served.challenger, {TAG_WEIGHT: 0.5})
    traffic(served, 160, challenger_right=True, challenger_wrong=2)
    decision = step(served)
    assert decision["verdict"] == "advance", decision["reason"]
    # judged by the schema's ROC AUC: the bootstrap's share of resamples favouring it
    assert (
        0 <= decision["probability_better"] < 0.5 and "P(challenger better)" in decision["reason"]
    )
    expected = min(max(decision["probability_better"], 0.1), 0.75)
    assert decision["weight"] == pytest.approx(expected)
    assert float(served.registry.by_alias(CHALLENGER).tags[TAG_WEIGHT]) == pytest.approx(expected)
    with served.client() as client:
        ready = client.get("/readyz", headers={"X-API-Key": ADMIN_KEY}).json()
    assert ready["canary_weight"] == pytest.approx(expected)
