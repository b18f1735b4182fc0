"""The canary split: which model answers a request, and whether the challenger shadows it.

Pure functions over a `RoutingConfig`, which is the deployment's `user_config`: a
`serve deploy` with a new weight, or an admin call, changes it in place. The split itself
(weight and shadow) is also kept as a `SharedSplit` tag on the registered model, so every
replica agrees on it, including replicas the autoscaler starts later.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Route = Literal["champion", "challenger", "shadow"]
CHAMPION_ROUTE: Route = "champion"
CHALLENGER_ROUTE: Route = "challenger"
SHADOW_ROUTE: Route = "shadow"
SPLIT_TAG = "driftloop.serving.split"  # the registered-model tag holding the SharedSplit


class RoutingConfig(BaseModel):
    """How traffic is split; shadow mode answers with the champion only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary_weight: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    shadow: bool = False
    max_batch_rows: int = Field(default=256, ge=1)
    batch_wait_timeout_s: float = Field(default=0.0, ge=0, le=1)


class TrafficSplit(BaseModel):
    """The part of the routing every replica must agree on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary_weight: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    shadow: bool = False

    @classmethod
    def of(cls, routing: RoutingConfig) -> TrafficSplit:
        return cls(canary_weight=routing.canary_weight, shadow=routing.shadow)


class SharedSplit(BaseModel):
    """The split in force, and the one last deployed through `user_config`.

    An admin call changes `current`; a `serve deploy` with a new `user_config` changes
    both; a replica that starts with the already deployed `user_config` adopts `current`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    current: TrafficSplit
    deployed: TrafficSplit

    def on_deploy(self, deployed: TrafficSplit) -> SharedSplit:
        """What a replica given `deployed` as its user_config makes of the shared record."""
        if deployed == self.deployed:
            return self
        return SharedSplit(current=deployed, deployed=deployed)


def sticky_bucket(key: str) -> float:
    """A key's fixed place in [0, 1): the same customer always sees the same model."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose_route(
    key: str | None, config: RoutingConfig, has_challenger: bool, rng: random.Random
) -> Route:
    """Champion or challenger for one request (shadow copies are decided by the caller)."""
    if not has_challenger or config.shadow or config.canary_weight <= 0:
        return CHAMPION_ROUTE
    draw = sticky_bucket(key) if key is not None else rng.random()
    return CHALLENGER_ROUTE if draw < config.canary_weight else CHAMPION_ROUTE
