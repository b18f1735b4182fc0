"""Dagster resources: the deployment's stores and the IO manager, below the assets that use
them and the code location (`pipelines/`) that binds them."""
