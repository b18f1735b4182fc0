"""Jobs: ingest one landed file; train from the current accepted data to a gated version.

The steps that move aliases (`candidate_model`, `promotion_gate`, `canary_decision`) share
the concurrency pool `driftloop_aliases` (`assets.registry.ALIAS_POOL`): with the instance's
pool limit at 1, a training run's gate and a canary step never interleave their reads and
moves; the registry's own lock serialises each move against the CLI and the admin API.
"""

import dagster as dg

from assets import canary, ingestion, monitoring, registry, training

# One process per run: every job is a short chain of steps, and a process per step paid
# Python, Dagster and library imports again each time (Evidently alone takes ~5 s), which
# on two shared cores slowed the monitors and the retrain they start. Re-execution from a
# failed step still works: step outputs are in the IO manager's store either way.
EXECUTOR = dg.in_process_executor

ingest_job = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.assets(ingestion.landed_batch),
    description="Validate one landed file and accept or quarantine it.",
    tags={"driftloop/kind": "ingest"},
    executor_def=EXECUTOR,
)

# A training run ends by starting its new @challenger's canary (`CanaryStepConfig`); run
# configs that launch it (`pipelines.launch.run_training`) must keep this part.
TRAINING_RUN_CONFIG = {"ops": {"canary_decision": {"config": {"start_only": True}}}}

training_job = dg.define_asset_job(
    "training",
    selection=dg.AssetSelection.groups(training.GROUP, registry.GROUP)
    | dg.AssetSelection.assets(canary.canary_decision),
    description="Version the dataset, search hyper-parameters, register a @candidate, gate "
    "it, and start the canary of a new @challenger.",
    config=TRAINING_RUN_CONFIG,
    tags={"driftloop/kind": "training"},
    executor_def=EXECUTOR,
)

monitoring_job = dg.define_asset_job(
    "monitoring",
    selection=dg.AssetSelection.groups(monitoring.GROUP),
    description="Judge recent served traffic: feature drift and live quality.",
    tags={"driftloop/kind": "monitoring"},
    executor_def=EXECUTOR,
)

canary_job = dg.define_asset_job(
    "canary",
    selection=dg.AssetSelection.groups(canary.GROUP),
    description="One canary step for the current @challenger (or start a queued @candidate).",
    tags={"driftloop/kind": "canary"},
    executor_def=EXECUTOR,
)
