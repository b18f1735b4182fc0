"""The Ray Serve application that serves the registry's `@champion` (imports no Dagster)."""
