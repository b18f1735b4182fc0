"""The application layer: the `driftloop` command line, `up` and the demo, above the code
location (`pipelines/`) and the serving application (`serving/`) they start."""
