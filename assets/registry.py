"""Registry: the candidate version (`@challenger`) and the promotion gate."""

import dagster as dg

from assets.training import trigger_of
from driftloop.candidate import Candidate, register_candidate
from driftloop.data import TrainingSet
from driftloop.hpo import SearchResult
from driftloop.modelcard import holdout_slices, render_card
from driftloop.promotion import GateDecision, apply, decide
from driftloop.registry import CHAMPION
from driftloop.training import TRUSTED_TYPES, evaluate
from pipelines.resources import DriftloopResource

GROUP = "registry"


@dg.asset(group_name=GROUP, kinds={"mlflow", "scikitlearn"}, code_version="1")
def candidate_model(
    context: dg.AssetExecutionContext,
    driftloop: DriftloopResource,
    training_dataset: TrainingSet,
    hpo_study: SearchResult,
) -> dg.Output[Candidate]:
    """The best search point refit on all training rows and registered with signature,
    lineage tags and the SHA-256 of its artifact, as `@challenger`. An identical lineage
    (same data, search and seed) reuses its existing version instead of registering again."""
    candidate = register_candidate(
        training_dataset, hpo_study, driftloop.settings(), driftloop.registry(), trigger_of(context)
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


@dg.asset(group_name=GROUP, kinds={"mlflow"}, code_version="1")
def promotion_gate(
    context: dg.AssetExecutionContext,
    driftloop: DriftloopResource,
    training_dataset: TrainingSet,
    hpo_study: SearchResult,
    candidate_model: Candidate,
) -> dg.Output[GateDecision]:
    """Challenger and champion scored on the same holdout and on the newest batch's
    holdout rows; promotes (policy `auto`) or recommends (policy `manual`) by a margin."""
    settings = driftloop.settings()
    registry = driftloop.registry()
    challenger_version = candidate_model.version.version
    champion = registry.by_alias(CHAMPION)
    holdout, recent = (
        training_dataset.xy(training_dataset.holdout),
        training_dataset.xy(training_dataset.recent),
    )

    def scores(version: str):
        model = registry.load_verified(version, TRUSTED_TYPES)
        return model, (evaluate(model, *holdout), evaluate(model, *recent))

    challenger_model, challenger_scores = scores(challenger_version)
    reigning = champion is not None and champion.version == challenger_version
    champion_scores = None
    if champion is not None:
        champion_scores = challenger_scores if reigning else scores(champion.version)[1]
    decision = decide(
        challenger_version,
        challenger_scores,
        champion.version if champion else None,
        champion_scores,
        settings.promotion_margin,
        settings.promotion_floor,
    )
    if not reigning:  # a reigning champion keeps the card and decision it was promoted with
        decision = apply(decision, registry, settings.promotion_policy)
        card = render_card(
            training_dataset,
            hpo_study,
            challenger_scores[0],
            holdout_slices(challenger_model, training_dataset),
            decision,
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
            "challenger_version": challenger_version,
            "challenger_score": decision.challenger_score,
            "champion_version": decision.champion_version or "none",
            "champion_score": decision.champion_score
            if decision.champion_score is not None
            else float("nan"),
            "policy": settings.promotion_policy,
        },
    )
