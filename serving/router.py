"""The canary split: which model answers a request, and whether the challenger shadows it.

Pure functions over a `RoutingConfig`, which is the deployment's `user_config`: a
`serve deploy` with a new weight, or an admin call, changes it in place.
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


class RoutingConfig(BaseModel):
    """How traffic is split; shadow mode answers with the champion only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary_weight: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    shadow: bool = False
    max_batch_rows: int = Field(default=256, ge=1)
    batch_wait_timeout_s: float = Field(default=0.0, ge=0, le=1)


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
