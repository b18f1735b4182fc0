"""Canary analysis: walk `@challenger` through traffic steps on live evidence.

Each materialisation is one audited decision. The canary's state (current weight, when
the step started) is kept as tags on the challenger's model version, so the registry
alone says where a canary stands and any run can pick it up.

One canary at a time: a version that passes the gate while another's canary runs stays
`@candidate` (queued) and takes `@challenger` in the same alias move that ends the running
canary, promoted or rolled back; its own canary then starts from weight 0.
"""

import time
from datetime import UTC, datetime

import dagster as dg
import numpy as np
from pydantic import Field

from assets.registry import ALIAS_POOL
from driftloop.alerts import notify
from driftloop.canary import (
    Arm,
    CanaryDecision,
    CanaryPolicy,
    analyse,
    capped_per_key,
    next_weight,
    one_hot,
)
from driftloop.metrics import Metric, metric_named
from driftloop.monitoring import join_feedback, read_log, served_output, usable_rows
from driftloop.registry import CHALLENGER, CHAMPION, AliasConflict, Registry
from driftloop.schema import load_schema
from driftloop.serving_client import ServingAdmin, ServingError
from driftloop.settings import Settings
from resources.deployment import DriftloopResource

GROUP = "canary"
TAG_WEIGHT = "driftloop.canary.weight"
TAG_STEP_STARTED = "driftloop.canary.step_started_at"
TAG_CANARY_STARTED = "driftloop.canary.started_at"
TAG_VERDICT = "driftloop.canary.verdict"


def policy_of(settings: Settings) -> CanaryPolicy:
    return CanaryPolicy(
        steps=settings.canary_steps,
        min_samples=settings.canary_min_samples,
        max_samples=settings.canary_max_samples,
        margin=settings.canary_margin,
        confidence=settings.canary_confidence,
        max_p99_ms=settings.canary_max_p99_ms,
        mode=settings.canary_mode,
        champion_floor=settings.canary_champion_floor,
    )


def arm_evidence(
    settings: Settings, since: float, route: str, version: str, classes: list[str]
) -> tuple[Arm, bool, float]:
    """One arm's labelled predictions since `since`, whether the log gave every one's
    output (class probabilities; else the arm carries its decisions, enough for accuracy
    only), and the arm's p99 latency. Without classes (regression) the outputs are the
    served values."""
    start, window = datetime.fromtimestamp(since, UTC), settings.prediction_log_window_s
    predictions = read_log(settings.prediction_log, start, window)
    empty = np.empty(0) if not classes else np.empty((0, len(classes)))
    if predictions.empty:
        return Arm([], empty), True, 0.0
    # Join on all traffic, then pick the arm: a label by business id belongs to the latest
    # prediction for that id, which may have been the other arm's.
    joined = join_feedback(predictions, read_log(settings.feedback_log, start, window))
    in_arm = (joined["route"] == route) & (joined["model_version"] == version)
    joined = joined[in_arm]
    arm = predictions[(predictions["route"] == route) & (predictions["model_version"] == version)]
    p99 = float(np.percentile(arm["latency_ms"], 99)) if len(arm) else 0.0
    if not classes:
        usable, _ = usable_rows(joined, classes)
    else:  # a label outside the schema's classes cannot be scored (ingest would refuse it)
        usable = joined["label"].astype(str).isin(classes).to_numpy()
    joined = joined[usable]
    keys = joined["key"].tolist() if "key" in joined else [None] * len(joined)
    counted = capped_per_key(keys, settings.canary_max_key_share)
    joined = joined[counted]
    shape = {"keys": len({k for k in keys if isinstance(k, str)}), "capped": int((~counted).sum())}
    if not classes:
        values = served_output(joined, classes)
        return Arm(joined["label"].astype(float).tolist(), values, **shape), True, p99
    probabilities = served_output(joined, classes)
    logged = bool(np.isfinite(probabilities).all())
    if not logged:  # files written before the log had probabilities
        probabilities = one_hot(joined["prediction"].astype(str).tolist(), classes)
    return Arm(joined["label"].astype(str).tolist(), probabilities, **shape), logged, p99


def evidence_numbers(
    decision: CanaryDecision, ours: Arm, theirs: Arm, classes: list[str]
) -> dict[str, float]:
    """The decision's numbers for metadata and tags: the score of each arm named by its
    metric (`challenger_roc_auc`), and accuracy (regression: RMSE) beside it."""
    named = {
        "difference": decision.difference,
        "ci_low": decision.ci_low,
        "ci_high": decision.ci_high,
        "p_value": decision.p_value,
        "effect_size": decision.effect_size,
        "probability_better": decision.probability_better,
        "next_weight": decision.weight,
        f"challenger_{decision.metric}": decision.challenger_score,
        f"champion_{decision.metric}": decision.champion_score,
    }
    beside = metric_named("accuracy" if classes else "rmse")
    for side, arm in (("challenger", ours), ("champion", theirs)):
        if len(arm):
            named.setdefault(
                f"{side}_{beside.name}", beside.score(arm.labels, arm.outputs, classes)
            )
    return {k: v for k, v in named.items() if v is not None}


def evidence_metric(primary: Metric, probabilities_logged: bool) -> Metric:
    """The primary metric, or accuracy when some outcomes lack their probabilities: served
    decisions alone score nothing else, and both arms must be judged alike."""
    return primary if probabilities_logged else metric_named("accuracy")


class CanaryStepConfig(dg.Config):
    """Which canary work this run does. The training job sets `start_only`: its gate's new
    `@challenger` takes its first share in the same run instead of waiting for a canary
    run to be launched (on two cores that launch alone took 15-20 s)."""

    start_only: bool = Field(
        default=False,
        description="Only start a @challenger that has no traffic yet, and only when serving "
        "answers; leave every step and every later start to the canary job.",
    )


@dg.asset(
    deps=["promotion_gate"],
    group_name=GROUP,
    kinds={"mlflow", "scipy"},
    code_version="3",
    pool=ALIAS_POOL,
)
def canary_decision(
    context: dg.AssetExecutionContext, config: CanaryStepConfig, driftloop: DriftloopResource
) -> dg.MaterializeResult:
    """One canary step: start, wait, advance the challenger's traffic share, promote it
    after the last step, or roll it back (weight 0, `@challenger` removed, reason kept),
    judged by the schema's primary metric on each arm's labelled live predictions. Alias
    moves are compare-and-set on the versions judged: a challenger or champion replaced
    meanwhile (`driftloop promote`, the admin API) is left alone. With no canary running,
    a queued `@candidate` takes `@challenger` and starts."""
    settings = driftloop.settings()
    registry = driftloop.registry()
    if registry.by_alias(CHALLENGER) is None:
        registry.start_queued()
    challenger, champion = registry.by_alias(CHALLENGER), registry.by_alias(CHAMPION)
    if challenger is None or champion is None:
        return dg.MaterializeResult(metadata={"verdict": "idle", "reason": "no canary to run"})
    admin = ServingAdmin(settings)
    policy = policy_of(settings)
    weight = float(challenger.tags.get(TAG_WEIGHT, 0.0))
    if config.start_only and (weight > 0.0 or settings.promotion_policy != "canary"):
        return dg.MaterializeResult(
            metadata={"verdict": "idle", "reason": "no new canary to start here"}
        )
    if weight == 0.0:
        try:
            return _move(
                context,
                registry,
                admin,
                challenger.version,
                policy.steps[0],
                "start",
                "canary started",
            )
        except ServingError as error:
            if not config.start_only:
                raise
            context.log.warning(f"canary of v{challenger.version} not started: {error}")
            return dg.MaterializeResult(
                metadata={
                    "verdict": "idle",
                    "reason": "serving unreachable: the canary job starts it",
                }
            )

    # The sequential interval (also the bandit's) holds however much evidence accumulates,
    # so it judges everything since the canary started (a step only limits exposure);
    # Welch's is only valid for one step's sample.
    started = float(
        challenger.tags[TAG_STEP_STARTED]
        if policy.mode == "welch"
        else challenger.tags.get(TAG_CANARY_STARTED, challenger.tags[TAG_STEP_STARTED])
    )
    schema = load_schema(settings.schema_path)
    if schema is None:
        raise dg.Failure(f"no schema at {settings.schema_path}: nothing was ever ingested")
    classes = [str(c) for c in schema.labels]
    ours, ours_logged, p99 = arm_evidence(
        settings, started, "challenger", challenger.version, classes
    )
    theirs, theirs_logged, _ = arm_evidence(
        settings, started, "champion", champion.version, classes
    )
    metric = evidence_metric(metric_named(schema.metric), ours_logged and theirs_logged)
    if metric.name != schema.metric:
        context.log.warning(
            f"judging by {metric.name}, not {schema.metric}: some logged predictions have "
            "no class probabilities (written before the log had them)"
        )
    decision = analyse(ours, theirs, policy, metric, classes, challenger_p99_ms=p99)
    numbers = {
        "challenger_version": challenger.version,
        "champion_version": champion.version,
        "weight": weight,
        "metric": decision.metric,
        "challenger_n": decision.challenger_n,
        "champion_n": decision.champion_n,
        "challenger_p99_ms": p99,
        # Who supplied the evidence: distinct sticky keys, and outcomes over a key's share.
        "challenger_keys": ours.keys,
        "champion_keys": theirs.keys,
        "challenger_capped": ours.capped,
        "champion_capped": theirs.capped,
        **evidence_numbers(decision, ours, theirs, classes),
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
        registry.end_canary(challenger.version, promoted=False)
        admin.reload()
        notify("rollback", f"v{challenger.version} rolled back: {decision.reason}", numbers)
        context.log.warning(f"v{challenger.version} rolled back: {decision.reason}")
        return dg.MaterializeResult(
            metadata={"verdict": "rollback", "reason": decision.reason, **numbers}
        )
    # A clear winner under the sequential test skips the remaining steps; the bandit sets
    # the share itself, up or down.
    if decision.verdict == "promote":
        following = 1.0
    elif decision.weight is not None:
        following = decision.weight
    else:
        following = next_weight(weight, policy.steps)
    registry.set_tags(challenger.version, audit)
    if following < 1.0:
        return _move(
            context,
            registry,
            admin,
            challenger.version,
            following,
            "advance",
            decision.reason,
            numbers,
        )
    # The step to 100 % is the promotion: serving swaps to the new champion by alias. The
    # weight goes to 0 first, so a queued version taking `@challenger` in the same move
    # starts its own canary from nothing instead of inheriting this one's share.
    admin.set_routing(canary_weight=0.0)
    try:
        registry.end_canary(challenger.version, promoted=True, expected_champion=champion.version)
    except AliasConflict as error:
        context.log.warning(str(error))
        admin.reload()
        return dg.MaterializeResult(metadata={"verdict": "superseded", "reason": str(error)})
    registry.set_tags(challenger.version, {TAG_VERDICT: f"promoted: {decision.reason}"})
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
    numbers: dict[str, object] | None = None,
) -> dg.MaterializeResult:
    """Send `weight` of traffic to the challenger and start a new evidence window; the
    decision's `numbers` (if any) go with it into the metadata."""
    admin.set_routing(canary_weight=weight)
    now = time.time()
    started = {TAG_CANARY_STARTED: now} if verdict == "start" else {}
    registry.set_tags(version, {TAG_WEIGHT: weight, TAG_STEP_STARTED: now, **started})
    context.log.info(f"v{version}: {verdict} to {weight:.0%} of traffic ({reason})")
    return dg.MaterializeResult(
        metadata={
            **(numbers or {}),
            "verdict": verdict,
            "reason": reason,
            "challenger_version": version,
            "weight": weight,
        }
    )
