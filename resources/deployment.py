"""Resources, and the one function where the environment picks the implementations."""

from pathlib import Path

import dagster as dg

from driftloop.data import BatchStore
from driftloop.registry import Registry, configure_tracking, ensure_experiment
from driftloop.settings import Settings
from resources.values import ValueStore

TRIGGER_TAG = "driftloop/trigger"
TRIGGER_REASON_TAG = "driftloop/trigger_reason"
# Unix time: train only on batches ingested since then (the detected change point).
TRAIN_SINCE_TAG = "driftloop/train_since"


class DriftloopResource(dg.ConfigurableResource):
    """The deployment's settings and the stores they point to.

    Only `home` is a field (so a run's config shows which home it used); everything else
    comes from `DRIFTLOOP_*` environment variables when a run starts.
    """

    home: str

    def settings(self) -> Settings:
        return Settings(home=Path(self.home))

    def registry(self) -> Registry:
        settings = self.settings()
        configure_tracking(settings)
        return Registry(settings.mlflow_tracking_uri, settings.model_name)

    def experiment_id(self) -> str:
        settings = self.settings()
        configure_tracking(settings)
        return ensure_experiment(settings, settings.model_name)

    def batch_store(self) -> BatchStore:
        return BatchStore(self.settings().batches)


def build_resources(settings: Settings) -> dict[str, object]:
    """Embedded mode keeps asset values on local disk under the home; with an IO bucket
    (scale-out) they go to S3, because run workers in other containers must read them.
    Either way as JSON and Parquet, never pickles (`resources.values`)."""
    location = (
        str(settings.io_dir)
        if settings.io_bucket is None
        else f"s3://{settings.io_bucket}/{settings.io_prefix.strip('/')}"
    )
    return {
        "driftloop": DriftloopResource(home=str(settings.home)),
        "io_manager": ValueStore(location=location, s3_endpoint_url=settings.s3_endpoint_url),
    }
