"""Semantic versions for registered models: what a version number tells a client.

MLflow numbers versions 1, 2, 3, which says nothing about compatibility. Each registered
version also gets `driftloop.semver`, bumped from the newest version before it:

- MAJOR when the request contract changes: the feature set, a feature's type or whether
  it may be left out, or the task (a client's request may no longer validate, or its
  answer no longer parse);
- MINOR for a retrain on new data with the same contract;
- PATCH for the same data with another search or code (a new study).

The contract is stored beside it (`driftloop.contract`) so the next version compares
against it without loading anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from driftloop.schema import DatasetSchema

TAG_SEMVER = "driftloop.semver"
TAG_CONTRACT = "driftloop.contract"
FIRST = "1.0.0"


def contract_of(schema: DatasetSchema) -> str:
    """What a client depends on: the task and each feature's name, type and whether it is
    required, in a stable order (a request is keyed by name, so order is not part of it)."""
    features = sorted((f.name, f.dtype, not f.nullable) for f in schema.features)
    return json.dumps({"task": schema.task, "features": features}, separators=(",", ":"))


def next_semver(previous: Mapping[str, str] | None, contract: str, data_hash: str) -> str:
    """The version after `previous` (the newest registered version's tags), for a model
    with this contract trained on data with this hash."""
    if previous is None or TAG_SEMVER not in previous:
        return FIRST
    major, minor, patch = (int(part) for part in previous[TAG_SEMVER].split("."))
    if previous.get(TAG_CONTRACT) != contract:
        return f"{major + 1}.0.0"
    if previous.get("driftloop.data_hash") != data_hash:
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def breaks_contract(candidate: Mapping[str, str], champion: Mapping[str, str]) -> bool:
    """Whether serving `candidate` in place of `champion` changes what clients must send:
    a MAJOR step, which needs a person (`driftloop promote`), never an automatic move. A
    champion registered before contracts were recorded is not judged (no evidence)."""
    if TAG_CONTRACT not in champion:
        return False
    return candidate.get(TAG_CONTRACT) != champion[TAG_CONTRACT]
