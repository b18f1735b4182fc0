"""The Dagster code location: definitions, resources, jobs, schedules and sensors."""
