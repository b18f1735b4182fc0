"""The canary split as pure functions: shares, stickiness and the champion-only cases."""

import random

import pytest

from serving.router import (
    RoutingConfig,
    SharedSplit,
    TrafficSplit,
    choose_route,
    sticky_bucket,
)


def test_keyless_share_follows_the_weight() -> None:
    config, rng = RoutingConfig(canary_weight=0.2), random.Random(1)
    routes = [choose_route(None, config, True, rng) for _ in range(10_000)]
    assert routes.count("challenger") / len(routes) == pytest.approx(0.2, abs=0.015)


def test_a_key_always_gets_the_same_model_and_keys_split_by_weight() -> None:
    config, rng = RoutingConfig(canary_weight=0.3), random.Random(1)
    keys = [f"customer-{i}" for i in range(5_000)]
    first = [choose_route(k, config, True, rng) for k in keys]
    assert first == [choose_route(k, config, True, rng) for k in keys]
    assert first.count("challenger") / len(keys) == pytest.approx(0.3, abs=0.03)
    assert sticky_bucket("customer-1") == sticky_bucket("customer-1")


@pytest.mark.parametrize(
    ("config", "has_challenger"),
    [
        (RoutingConfig(canary_weight=1.0), False),
        (RoutingConfig(canary_weight=1.0, shadow=True), True),
        (RoutingConfig(canary_weight=0.0), True),
    ],
)
def test_champion_only(config: RoutingConfig, has_challenger: bool) -> None:
    rng = random.Random(1)
    assert {choose_route(None, config, has_challenger, rng) for _ in range(200)} == {"champion"}


def test_shared_split_follows_admin_changes_until_a_new_deploy() -> None:
    deployed = TrafficSplit(canary_weight=0.1)
    shared = SharedSplit(current=TrafficSplit(canary_weight=0.5, shadow=True), deployed=deployed)
    # A replica starting with the deployed user_config joins the split in force...
    assert shared.on_deploy(deployed) == shared
    # ...while a deploy with another user_config makes its split everyone's.
    redeployed = TrafficSplit(canary_weight=0.0)
    assert shared.on_deploy(redeployed) == SharedSplit(current=redeployed, deployed=redeployed)
