"""The rollback drill's deliberately bad challenger, trained in a child process with the
demo's environment while the servers start: the live canary must roll it back."""

from __future__ import annotations

import math

from driftloop.settings import load_settings

BAD_TRAINING = {"classification": "inverted labels", "regression": "mirrored targets"}


def register_bad_challenger() -> str:
    """Train on the accepted rows with inverted labels (mirrored targets for regression),
    register it as `@challenger`, and let it through the offline gate by configuration (no
    floor, any margin): only the live canary can catch it. Runs in a child process with the
    demo's environment."""
    from driftloop.candidate import register_candidate
    from driftloop.data import BatchStore, build_training_set
    from driftloop.hpo import run_search
    from driftloop.promotion import apply, decide
    from driftloop.registry import CHAMPION, Registry, configure_tracking, ensure_experiment
    from driftloop.schema import load_schema
    from driftloop.training import TRUSTED_TYPES, evaluate

    settings = load_settings().model_copy(update={"n_trials": 2})
    configure_tracking(settings)
    schema = load_schema(settings.schema_path)
    assert schema is not None, "no schema yet: train the first champion before the drill"
    rows = BatchStore(settings.batches).read_all()
    target = schema.target
    if schema.is_regression:
        # Mirrored about the mean: errors twice the target's spread, where a shuffled-target
        # model would predict the mean and err by one spread only.
        rows[target] = 2 * rows[target].mean() - rows[target]
    else:
        # Inverted labels, not shuffled ones: with imbalanced classes a shuffled-label model
        # predicts the majority class and stays deceptively close to the champion.
        first, *rest = sorted(rows[target].unique().tolist())
        rows[target] = rows[target].map({first: rest[-1], rest[-1]: first}).fillna(rows[target])
    training = build_training_set(rows, schema, settings.holdout_fraction, settings.seed)
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    task = "regression" if schema.is_regression else "classification"
    trigger = f"drill: trained on {BAD_TRAINING[task]}"
    experiment = ensure_experiment(settings, settings.model_name)
    search = run_search(
        training, settings, experiment, {"driftloop.trigger": trigger}, lambda _: None
    )
    candidate = register_candidate(training, search, settings, registry, trigger)
    champion = registry.by_alias(CHAMPION)
    assert champion is not None
    holdout, metric = training.xy(training.holdout), training.schema.metric
    ours = evaluate(
        registry.load_verified(candidate.version.version, TRUSTED_TYPES), *holdout, metric
    )
    theirs = evaluate(registry.load_verified(champion.version, TRUSTED_TYPES), *holdout, metric)
    decision = decide(
        candidate.version.version, (ours, None), champion.version, (theirs, None), -math.inf, None
    )
    apply(decision, registry, "canary")
    print(candidate.version.version)
    return candidate.version.version
