"""Dagster asset and asset-check definitions, one module per domain."""
