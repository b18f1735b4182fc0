"""Ingestion: each landed file is a partition, validated by blocking asset checks."""

import dagster as dg

from driftloop.ingest import ingest
from driftloop.schema import CHECK_NAMES
from resources.deployment import DriftloopResource

GROUP = "ingestion"
landed_files = dg.DynamicPartitionsDefinition(name="landed_files")

CHECK_DESCRIPTIONS = {
    "schema": "Readable, with exactly the schema's columns and compatible types.",
    "nulls": "No null feature or label values.",
    "ranges": "Numeric values finite and within the schema's bounds.",
    "label_set": "Labels only from the schema's label set.",
    "min_rows": "At least the configured minimum number of rows.",
}


@dg.asset(
    partitions_def=landed_files,
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            name, asset="landed_batch", blocking=True, description=CHECK_DESCRIPTIONS[name]
        )
        for name in CHECK_NAMES
    ],
)
def landed_batch(
    context: dg.AssetExecutionContext, driftloop: DriftloopResource
) -> dg.MaterializeResult:
    """One file from the landing zone, stored whole as a Parquet batch if every check
    passes, or moved whole to quarantine with the failed checks as the reason."""
    outcome = ingest(driftloop.settings(), context.partition_key)
    if outcome.accepted:
        context.log.info(f"accepted {outcome.rows} rows into {outcome.location}")
    else:
        context.log.warning(f"quarantined {outcome.location}: {'; '.join(outcome.reasons)}")
    return dg.MaterializeResult(
        metadata={
            "status": "accepted" if outcome.accepted else "quarantined",
            "file": outcome.file,
            "rows": outcome.rows,
            "location": dg.MetadataValue.path(str(outcome.location)),
            "label_counts": dg.MetadataValue.json(outcome.label_counts),
            "reasons": dg.MetadataValue.json(outcome.reasons),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=check.name,
                passed=check.passed,
                description=check.detail,
                metadata={"detail": check.detail, **_json_safe(check.metadata)},
            )
            for check in outcome.checks
        ],
    )


def _json_safe(metadata: dict[str, object]) -> dict[str, object]:
    return {
        k: v if isinstance(v, int | float | str) else dg.MetadataValue.json(v)
        for k, v in metadata.items()
    }
