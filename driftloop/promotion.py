"""The promotion gate: challenger against champion on the same data, decided by numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Literal

from driftloop.metrics import Metric, metric_named
from driftloop.registry import (
    CANDIDATE,
    CHALLENGER,
    TAG_DECISION,
    TAG_QUEUED,
    AliasConflict,
    Registry,
)
from driftloop.training import Evaluation
from driftloop.versioning import TAG_SEMVER, breaks_contract

if TYPE_CHECKING:
    from driftloop.review import Review

Policy = Literal["auto", "manual", "canary"]

# The gate's action for a passing version that waits for the running canary to end.
QUEUED_ACTION = "queued as @candidate behind the running canary"

# Below this many rows the "recent" slice is too noisy to decide on; use the whole holdout.
MIN_RECENT_ROWS = 50


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    basis: Literal["recent", "holdout"]
    metric: str
    challenger_version: str
    challenger_score: float | None
    champion_version: str | None
    champion_score: float | None
    margin: float
    floor: float | None
    applied: bool = False
    action: str = "no change"
    flagged: bool = False  # passed overall but worse on a slice: a person should look

    def summary(self) -> str:
        verdict = "promote" if self.promote else "keep the champion"
        return f"**{verdict}** ({self.action}): {self.reason}"

    def as_tags(self) -> dict[str, str]:
        return {f"{TAG_DECISION}.{k}": str(v) for k, v in asdict(self).items()}


def floor_of(metric: Metric, configured: float | None) -> float | None:
    """The bar a first champion must pass: `DRIFTLOOP_PROMOTION_FLOOR` if set, else the
    metric's own default (none for PR AUC, F1, log loss, RMSE and MAE, whose chance level
    depends on the data; 0 for R², the score of predicting the mean). For a lower-is-better
    metric (log loss, RMSE) the floor is a ceiling."""
    return configured if configured is not None else metric.default_floor


def decide(
    challenger_version: str,
    challenger: tuple[Evaluation, Evaluation | None],
    champion_version: str | None,
    champion: tuple[Evaluation, Evaluation | None] | None,
    margin: float,
    floor: float | None,
) -> GateDecision:
    """Each side is (holdout, recent), scored with the same primary metric; recent data
    decides when there is enough of it and the metric is defined on it.

    `margin` and `floor` are in the metric's units: the challenger must gain at least
    `margin` in the metric's direction (lower log loss, higher ROC AUC; for RMSE and MAE a
    fraction of the champion's score) and not be worse than `floor` (a ceiling for a
    lower-is-better metric); `floor=None` sets no bar.
    """
    challenger_holdout, challenger_recent = challenger
    metric = metric_named(challenger_holdout.metric)
    name, ours_holdout = metric.name, challenger_holdout.value
    common = {
        "challenger_version": challenger_version,
        "metric": name,
        "margin": margin,
        "floor": floor,
    }
    if champion_version == challenger_version:
        return GateDecision(
            promote=False,
            reason=f"v{challenger_version} is already the champion",
            basis="holdout",
            challenger_score=ours_holdout,
            champion_version=champion_version,
            champion_score=ours_holdout,
            **common,
        )
    champion_holdout_score = champion[0].value if champion else None
    if ours_holdout is None:
        return GateDecision(
            promote=False,
            reason=f"holdout {name} is not defined on {challenger_holdout.rows} rows "
            "(the holdout lacks a class, or its target does not vary)",
            basis="holdout",
            challenger_score=None,
            champion_version=champion_version,
            champion_score=champion_holdout_score,
            **common,
        )
    if floor is not None and metric.gain(ours_holdout, floor) < 0:
        bar = "floor" if metric.greater_is_better else "ceiling"
        side = "below" if metric.greater_is_better else "above"
        return GateDecision(
            promote=False,
            reason=f"holdout {name} {ours_holdout:.4f} is {side} the {bar} {floor:.4f}",
            basis="holdout",
            challenger_score=ours_holdout,
            champion_version=champion_version,
            champion_score=champion_holdout_score,
            **common,
        )
    if champion is None or champion_version is None:
        passes = "sets no floor" if floor is None else f"passes the floor {floor:.4f}"
        return GateDecision(
            promote=True,
            reason=f"first model: holdout {name} {ours_holdout:.4f} {passes}",
            basis="holdout",
            challenger_score=ours_holdout,
            champion_version=None,
            champion_score=None,
            **common,
        )
    champion_holdout, champion_recent = champion
    if (
        challenger_recent is not None
        and champion_recent is not None
        and challenger_recent.rows >= MIN_RECENT_ROWS
        and challenger_recent.value is not None
        and champion_recent.value is not None
    ):
        basis, ours, theirs = "recent", challenger_recent, champion_recent
    else:
        basis, ours, theirs = "holdout", challenger_holdout, champion_holdout
    # Both sides were scored on the same rows, so a metric defined for one is for the other.
    mine, reigning = float(ours.value), float(theirs.value)  # type: ignore[arg-type]
    gain = metric.gain(mine, reigning)
    needed = metric.margin_at(margin, reigning)
    better = "higher" if metric.greater_is_better else "lower"
    bar = f"margin {needed:.4f}" + (f" ({margin:.2%} of the champion's)" if metric.relative else "")
    comparison = (
        f"{basis} {name} {mine:.4f} vs champion v{champion_version} {reigning:.4f} "
        f"on {ours.rows} rows (gain {gain:+.4f}, {bar}, {better} is better)"
    )
    return GateDecision(
        promote=gain >= needed,
        reason=comparison,
        basis=basis,
        challenger_score=mine,
        champion_version=champion_version,
        champion_score=reigning,
        **common,
    )


def with_review(decision: GateDecision, review: Review | None, policy: Policy) -> GateDecision:
    """A challenger that passed overall but is worse than the champion on some slice is
    refused under the `auto` and `canary` policies, and flagged for the person who
    promotes under `manual`; the slices are named in the reason either way."""
    if review is None or not review.worse or not decision.promote:
        return decision
    reason = f"{decision.reason}; but worse on {review.reason()}"
    if policy == "manual":
        return replace(decision, reason=reason, flagged=True)
    return replace(decision, promote=False, reason=reason)


def apply(decision: GateDecision, registry: Registry, policy: Policy) -> GateDecision:
    """Act on the decision as the policy says; always record it on the version.

    The version is `@candidate` until here, and only a pass moves it: `auto` promotes now
    (if the champion is still the one it was judged against); `manual` leaves it
    `@candidate` for `driftloop promote`; `canary` hands it to the live canary as
    `@challenger` (the first model has nothing to be compared with live, so it is
    promoted). A retrain that passes while another version's canary runs never touches
    `@challenger`: it stays `@candidate`, queued, and takes `@challenger` when that canary
    ends (the newest queued version wins). A failing version leaves `@candidate`. A
    version whose request contract differs from the champion's (a MAJOR semantic version)
    is never moved automatically: it stays `@candidate` for `driftloop promote`.
    """
    version = decision.challenger_version
    applied, action = False, "no change"
    first_model = decision.champion_version is None
    contract_changed = (
        decision.promote
        and not first_model
        and policy != "manual"
        and breaks_contract(
            registry.version(version).tags,
            registry.version(decision.champion_version).tags,  # type: ignore[arg-type]
        )
    )
    if contract_changed:
        semver = registry.version(version).tags.get(TAG_SEMVER, "a new major version")
        action = (
            f"held as @candidate: {semver} changes the request contract; clients must be "
            f"ready before `driftloop promote {version}`"
        )
    elif decision.promote and (policy == "auto" or (policy == "canary" and first_model)):
        try:
            registry.promote(version, expected_champion=decision.champion_version)
            applied, action = True, "applied"
        except AliasConflict as error:  # the champion moved while the gate judged
            action = f"not applied: {error}"
    elif decision.promote and policy == "canary":
        # Queued first: a canary ending meanwhile then finds it (both moves are serialised).
        registry.set_tags(version, {TAG_QUEUED: f"passed the gate vs v{decision.champion_version}"})
        moved = registry.to_challenger(version)
        holder = moved.after.get(CHALLENGER)
        if holder == version:
            action = "handed to the canary analysis"
        else:
            action = f"{QUEUED_ACTION} of v{holder}"
    elif decision.promote:
        action = f"recommended: run `driftloop promote {version}`"
        if decision.flagged:
            action += " after reviewing the slices named in the reason"
    else:
        registry.delete_alias(CANDIDATE, expected=version)
        action = "withdrawn from @candidate"
    decision = GateDecision(**{**asdict(decision), "applied": applied, "action": action})
    registry.set_tags(version, decision.as_tags())
    return decision
