"""The promotion gate: challenger against champion on the same data, decided by numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from driftloop.registry import CHALLENGER, TAG_DECISION, Registry
from driftloop.training import Evaluation

Policy = Literal["auto", "manual", "canary"]

# Below this many rows the "recent" slice is too noisy to decide on; use the whole holdout.
MIN_RECENT_ROWS = 50


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    basis: Literal["recent", "holdout"]
    challenger_version: str
    challenger_score: float
    champion_version: str | None
    champion_score: float | None
    margin: float
    floor: float
    applied: bool = False
    action: str = "no change"

    def summary(self) -> str:
        verdict = "promote" if self.promote else "keep the champion"
        return f"**{verdict}** ({self.action}): {self.reason}"

    def as_tags(self) -> dict[str, str]:
        return {f"{TAG_DECISION}.{k}": str(v) for k, v in asdict(self).items()}


def decide(
    challenger_version: str,
    challenger: tuple[Evaluation, Evaluation | None],
    champion_version: str | None,
    champion: tuple[Evaluation, Evaluation | None] | None,
    margin: float,
    floor: float,
) -> GateDecision:
    """Each side is (holdout, recent); recent data decides when there is enough of it."""
    challenger_holdout, challenger_recent = challenger
    common = {"challenger_version": challenger_version, "margin": margin, "floor": floor}
    if champion_version == challenger_version:
        return GateDecision(
            promote=False,
            reason=f"v{challenger_version} is already the champion",
            basis="holdout",
            challenger_score=challenger_holdout.accuracy,
            champion_version=champion_version,
            champion_score=challenger_holdout.accuracy,
            **common,
        )
    if challenger_holdout.accuracy < floor:
        return GateDecision(
            promote=False,
            reason=f"holdout accuracy {challenger_holdout.accuracy:.4f} is below "
            f"the floor {floor:.4f}",
            basis="holdout",
            challenger_score=challenger_holdout.accuracy,
            champion_version=champion_version,
            champion_score=champion[0].accuracy if champion else None,
            **common,
        )
    if champion is None or champion_version is None:
        return GateDecision(
            promote=True,
            reason=f"first model: holdout accuracy {challenger_holdout.accuracy:.4f} "
            f"passes the floor {floor:.4f}",
            basis="holdout",
            challenger_score=challenger_holdout.accuracy,
            champion_version=None,
            champion_score=None,
            **common,
        )
    champion_holdout, champion_recent = champion
    if (
        challenger_recent is not None
        and champion_recent is not None
        and challenger_recent.rows >= MIN_RECENT_ROWS
    ):
        basis, ours, theirs = "recent", challenger_recent, champion_recent
    else:
        basis, ours, theirs = "holdout", challenger_holdout, champion_holdout
    gain = ours.accuracy - theirs.accuracy
    promote = gain >= margin
    comparison = (
        f"{basis} accuracy {ours.accuracy:.4f} vs champion v{champion_version} "
        f"{theirs.accuracy:.4f} on {ours.rows} rows (gain {gain:+.4f}, margin {margin:.4f})"
    )
    return GateDecision(
        promote=promote,
        reason=comparison,
        basis=basis,
        challenger_score=ours.accuracy,
        champion_version=champion_version,
        champion_score=theirs.accuracy,
        **common,
    )


def apply(decision: GateDecision, registry: Registry, policy: Policy) -> GateDecision:
    """Act on the decision as the policy says; always record it on the version.

    `auto` promotes now; `manual` leaves it to `driftloop promote`; `canary` leaves a
    passing challenger to the live canary analysis (the first model has nothing to be
    compared with live, so it is promoted) and withdraws a failing one's `@challenger`.
    """
    applied, action = False, "no change"
    first_model = decision.champion_version is None
    if decision.promote and (policy == "auto" or (policy == "canary" and first_model)):
        registry.promote(decision.challenger_version)
        applied, action = True, "applied"
    elif decision.promote and policy == "canary":
        action = "handed to the canary analysis"
    elif decision.promote:
        action = "recommended: run `driftloop promote`"
    elif policy == "canary":
        registry.delete_alias(CHALLENGER)
        action = "withdrawn from @challenger"
    decision = GateDecision(**{**asdict(decision), "applied": applied, "action": action})
    registry.set_tags(decision.challenger_version, decision.as_tags())
    return decision
