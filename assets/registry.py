"""Registry: the candidate version (`@candidate`) and the promotion gate.

Both move aliases, as does `canary_decision`: they share the Dagster pool `ALIAS_POOL`
(limit 1 in the instance's `dagster.yaml`), beside the registry's own lock.
"""

from typing import Any

import dagster as dg

from assets.training import trigger_of
from driftloop.candidate import Candidate, register_candidate
from driftloop.data import TrainingSet
from driftloop.hpo import SearchResult
from driftloop.metrics import Metric, metric_named
from driftloop.modelcard import holdout_slices, render_card
from driftloop.promotion import GateDecision, apply, decide, floor_of, with_review
from driftloop.registry import CHAMPION
from driftloop.review import Review, review, slice_columns
from driftloop.settings import Settings
from driftloop.training import TRUSTED_TYPES, classes_of, evaluate, model_output
from driftloop.versioning import TAG_SEMVER
from resources.deployment import DriftloopResource

GROUP = "registry"
ALIAS_POOL = "driftloop_aliases"


@dg.asset(group_name=GROUP, kinds={"mlflow", "scikitlearn"}, code_version="2", pool=ALIAS_POOL)
def candidate_model(
    context: dg.AssetExecutionContext,
    driftloop: DriftloopResource,
    training_dataset: TrainingSet,
    hpo_study: SearchResult,
) -> dg.Output[Candidate]:
    """The best search point refit on all training rows and registered with signature,
    lineage tags and the SHA-256 of its artifact, as `@candidate`: no traffic reaches it
    before the gate. An identical lineage (same data, search and seed) reuses its existing
    version instead of registering again. An alias move a crash left half done is
    completed first, so the gate judges against a consistent champion."""
    registry = driftloop.registry()
    repaired = registry.repair()
    if repaired is not None:
        context.log.warning(f"completed an interrupted alias move: now {repaired.after}")
    candidate = register_candidate(
        training_dataset, hpo_study, driftloop.settings(), registry, trigger_of(context)
    )
    verb = "registered" if candidate.newly_registered else "reused"
    context.log.info(f"{verb} version {candidate.version.version}")
    return dg.Output(
        candidate,
        metadata={
            "version": candidate.version.version,
            "newly_registered": candidate.newly_registered,
            "sha256": candidate.version.sha256 or "",
            "mlflow_run_id": candidate.run_id,
            **candidate.holdout.as_metrics("holdout"),
        },
    )


@dg.asset(group_name=GROUP, kinds={"mlflow"}, code_version="2", pool=ALIAS_POOL)
def promotion_gate(
    context: dg.AssetExecutionContext,
    driftloop: DriftloopResource,
    training_dataset: TrainingSet,
    hpo_study: SearchResult,
    candidate_model: Candidate,
) -> dg.Output[GateDecision]:
    """Candidate and champion scored on the same holdout and on the newest batch's
    holdout rows by every metric; when the primary metric (the schema's) gains the margin,
    in its own direction, and it is not worse than the champion on any slice of the
    holdout by more than `slice_margin`, promotes (policy `auto`), recommends (policy
    `manual`: it stays `@candidate`, flagged when a slice is worse) or hands it to the
    canary (`@challenger`, or queued while another version's canary runs); a failing
    version leaves `@candidate`, and one that changes the request contract (MAJOR) waits
    for `driftloop promote`."""
    settings = driftloop.settings()
    registry = driftloop.registry()
    metric = metric_named(training_dataset.schema.metric)
    challenger_version = candidate_model.version.version
    champion = registry.by_alias(CHAMPION)
    holdout, recent = (
        training_dataset.xy(training_dataset.holdout),
        training_dataset.xy(training_dataset.recent),
    )

    def scores(version: str):
        model = registry.load_verified(version, TRUSTED_TYPES)
        return model, (
            evaluate(model, *holdout, metric.name),
            evaluate(model, *recent, metric.name),
        )

    challenger_model, challenger_scores = scores(challenger_version)
    reigning = champion is not None and champion.version == challenger_version
    champion_model, champion_scores = None, None
    if champion is not None:
        champion_model, champion_scores = (
            (challenger_model, challenger_scores) if reigning else scores(champion.version)
        )
    decision = decide(
        challenger_version,
        challenger_scores,
        champion.version if champion else None,
        champion_scores,
        settings.promotion_margin,
        floor_of(metric, settings.promotion_floor),
    )
    judged = None
    if not reigning:  # a reigning champion keeps the card and decision it was promoted with
        if champion_model is not None and len(holdout[0]):
            judged = slice_review(
                training_dataset, challenger_model, champion_model, settings, metric
            )
            decision = with_review(decision, judged, settings.promotion_policy)
            registry.set_tags(challenger_version, judged.as_tags())
        decision = apply(decision, registry, settings.promotion_policy)
        card = render_card(
            training_dataset,
            hpo_study,
            challenger_scores[0],
            holdout_slices(challenger_model, training_dataset),
            decision,
            semver=registry.version(challenger_version).tags.get(TAG_SEMVER),
            review=None if judged is None else judged.markdown(),
        )
        registry.set_description(challenger_version, card)
    context.log.info(decision.summary())
    return dg.Output(
        decision,
        metadata={
            "promote": decision.promote,
            "applied": decision.applied,
            "reason": decision.reason,
            "basis": decision.basis,
            "metric": decision.metric,
            "challenger_version": challenger_version,
            "challenger_score": decision.challenger_score
            if decision.challenger_score is not None
            else float("nan"),
            "champion_version": decision.champion_version or "none",
            "champion_score": decision.champion_score
            if decision.champion_score is not None
            else float("nan"),
            "policy": settings.promotion_policy,
            "flagged": decision.flagged,
            **(
                {}
                if judged is None
                else {
                    "worse_slices": len(judged.worse),
                    "slices": dg.MetadataValue.md(judged.markdown()),
                }
            ),
        },
    )


def slice_review(
    training: TrainingSet, challenger: Any, champion: Any, settings: Settings, metric: Metric
) -> Review:
    """Challenger and champion per slice of the holdout, and the challenger's disparities
    across the sensitive columns."""
    x, y = training.xy(training.holdout)
    return review(
        x,
        y,
        (model_output(challenger, x), model_output(champion, x)),
        classes_of(challenger),
        metric,
        slice_columns(training.schema, x, settings.slice_columns),
        settings.sensitive_columns,
        settings.slice_min_rows,
        settings.slice_margin,
    )
