"""Canary analysis: walk `@challenger` through traffic steps on live evidence.

Each materialisation is one audited decision. The canary's state (current weight, when
the step started) is kept as tags on the challenger's model version, so the registry
alone says where a canary stands and any run can pick it up.
"""

import time
from datetime import UTC, datetime

import dagster as dg
import numpy as np

from driftloop.alerts import notify
from driftloop.canary import CanaryPolicy, analyse, next_weight
from driftloop.monitoring import join_feedback, read_log
from driftloop.registry import CHALLENGER, CHAMPION, Registry
from driftloop.serving_client import ServingAdmin
from driftloop.settings import Settings
from pipelines.resources import DriftloopResource

GROUP = "canary"
TAG_WEIGHT = "driftloop.canary.weight"
TAG_STEP_STARTED = "driftloop.canary.step_started_at"
TAG_VERDICT = "driftloop.canary.verdict"


def policy_of(settings: Settings) -> CanaryPolicy:
    return CanaryPolicy(
        steps=settings.canary_steps,
        min_samples=settings.canary_min_samples,
        max_samples=settings.canary_max_samples,
        margin=settings.canary_margin,
        confidence=settings.canary_confidence,
        max_p99_ms=settings.canary_max_p99_ms,
    )


def arm_outcomes(
    settings: Settings, since: float, route: str, version: str
) -> tuple[np.ndarray, float]:
    """Correctness (1/0) of one arm's labelled predictions since `since`, and its p99 latency."""
    start, window = datetime.fromtimestamp(since, UTC), settings.prediction_log_window_s
    predictions = read_log(settings.prediction_log, start, window)
    if predictions.empty:
        return np.array([]), 0.0
    arm = predictions[(predictions["route"] == route) & (predictions["model_version"] == version)]
    joined = join_feedback(arm, read_log(settings.feedback_log, start, window))  # labels follow
    outcomes = (joined["prediction"].astype(str) == joined["label"].astype(str)).to_numpy(float)
    p99 = float(np.percentile(arm["latency_ms"], 99)) if len(arm) else 0.0
    return outcomes, p99


@dg.asset(group_name=GROUP, kinds={"mlflow", "scipy"}, code_version="1")
def canary_decision(
    context: dg.AssetExecutionContext, driftloop: DriftloopResource
) -> dg.MaterializeResult:
    """One canary step: start, wait, advance the challenger's traffic share, promote it
    after the last step, or roll it back (weight 0, `@challenger` removed, reason kept)."""
    settings = driftloop.settings()
    registry = driftloop.registry()
    challenger, champion = registry.by_alias(CHALLENGER), registry.by_alias(CHAMPION)
    if challenger is None or champion is None:
        return dg.MaterializeResult(metadata={"verdict": "idle", "reason": "no canary to run"})
    admin = ServingAdmin(settings)
    policy = policy_of(settings)
    weight = float(challenger.tags.get(TAG_WEIGHT, 0.0))
    if weight == 0.0:
        return _move(
            context, registry, admin, challenger.version, policy.steps[0], "start", "canary started"
        )

    started = float(challenger.tags[TAG_STEP_STARTED])
    ours, p99 = arm_outcomes(settings, started, "challenger", challenger.version)
    theirs, _ = arm_outcomes(settings, started, "champion", champion.version)
    decision = analyse(ours, theirs, policy, challenger_p99_ms=p99)
    numbers = {
        "challenger_version": challenger.version,
        "champion_version": champion.version,
        "weight": weight,
        "challenger_n": decision.challenger_n,
        "champion_n": decision.champion_n,
        "challenger_p99_ms": p99,
        **{
            k: v
            for k, v in {
                "difference": decision.difference,
                "ci_low": decision.ci_low,
                "ci_high": decision.ci_high,
                "p_value": decision.p_value,
                "effect_size": decision.effect_size,
                "challenger_accuracy": decision.challenger_mean,
                "champion_accuracy": decision.champion_mean,
            }.items()
            if v is not None
        },
    }
    audit = {f"driftloop.canary.{k}": str(v) for k, v in numbers.items()}
    if decision.verdict == "wait":
        return dg.MaterializeResult(
            metadata={"verdict": "wait", "reason": decision.reason, **numbers}
        )
    registry.set_tags(
        champion.version, {**audit, TAG_VERDICT: f"{decision.verdict}: {decision.reason}"}
    )
    if decision.verdict == "rollback":
        admin.set_routing(canary_weight=0.0)
        registry.set_tags(
            challenger.version, {**audit, TAG_VERDICT: f"rolled back: {decision.reason}"}
        )
        registry.delete_alias(CHALLENGER)
        admin.reload()
        notify("rollback", f"v{challenger.version} rolled back: {decision.reason}", numbers)
        context.log.warning(f"v{challenger.version} rolled back: {decision.reason}")
        return dg.MaterializeResult(
            metadata={"verdict": "rollback", "reason": decision.reason, **numbers}
        )
    following = next_weight(weight, policy.steps)
    registry.set_tags(challenger.version, audit)
    if following < 1.0:
        return _move(
            context, registry, admin, challenger.version, following, "advance", decision.reason
        )
    # The step to 100 % is the promotion: serving swaps to the new champion by alias.
    registry.promote(challenger.version)
    registry.set_tags(challenger.version, {TAG_VERDICT: f"promoted: {decision.reason}"})
    admin.set_routing(canary_weight=0.0)
    admin.reload()
    notify("promotion", f"v{challenger.version} promoted: {decision.reason}", numbers)
    return dg.MaterializeResult(
        metadata={"verdict": "promote", "reason": decision.reason, **numbers}
    )


def _move(
    context: dg.AssetExecutionContext,
    registry: Registry,
    admin: ServingAdmin,
    version: str,
    weight: float,
    verdict: str,
    reason: str,
) -> dg.MaterializeResult:
    """Send `weight` of traffic to the challenger and start a new evidence window."""
    admin.set_routing(canary_weight=weight)
    registry.set_tags(version, {TAG_WEIGHT: weight, TAG_STEP_STARTED: time.time()})
    context.log.info(f"v{version}: {verdict} to {weight:.0%} of traffic ({reason})")
    return dg.MaterializeResult(
        metadata={
            "verdict": verdict,
            "reason": reason,
            "challenger_version": version,
            "weight": weight,
        }
    )
