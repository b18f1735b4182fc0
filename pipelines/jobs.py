"""Jobs: ingest one landed file; train from the current accepted data to a gated version."""

import dagster as dg

from assets import canary, ingestion, monitoring, registry, training

ingest_job = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.assets(ingestion.landed_batch),
    partitions_def=ingestion.landed_files,
    description="Validate one landed file and accept or quarantine it.",
    tags={"driftloop/kind": "ingest"},
)

training_job = dg.define_asset_job(
    "training",
    selection=dg.AssetSelection.groups(training.GROUP, registry.GROUP),
    description="Version the dataset, search hyper-parameters, register and gate a candidate.",
    tags={"driftloop/kind": "training"},
)

monitoring_job = dg.define_asset_job(
    "monitoring",
    selection=dg.AssetSelection.groups(monitoring.GROUP),
    description="Judge recent served traffic: feature drift and live quality.",
    tags={"driftloop/kind": "monitoring"},
)

canary_job = dg.define_asset_job(
    "canary",
    selection=dg.AssetSelection.groups(canary.GROUP),
    description="One canary step for the current @challenger.",
    tags={"driftloop/kind": "canary"},
)
