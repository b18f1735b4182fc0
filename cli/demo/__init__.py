"""The closed-loop demo: the world drifts and driftloop notices, retrains and recovers alone.

This package only drives and watches. It starts `mlflow server`, `dagster dev` (webserver
and daemon, so the sensors really run) and `driftloop serve` as child processes on
127.0.0.1 (through `driftloop.supervisor`, as `driftloop up` does), sends simulated rows
(loan applications to classify, or Friedman rows to regress: `DemoPlan.task`) to serving
over HTTP with delayed feedback, lands the labelled rows as files (so retrains see
post-drift data), injects covariate shift and then concept drift, and records what the
loop does on its own: the monitors' retrain requests, the streaming detectors' alarms (the
error-stream sensor's ticks) and every canary decision record with its evidence (Dagster
GraphQL), the canary's weights and the serving champion (`/readyz`); `--stationary` sends
calm traffic only and counts what the loop raises on it. Its live number follows the task:
accuracy (higher is better) or RMSE (lower is better). It imports neither Dagster nor Ray,
so it measures the system from outside, as a user would see it.

One concern a module, each importing only those listed below it:

    run.py       the orchestration: servers, the first champion, calm and drift phases
    report.py    the numbers: summaries, counterfactual models, the timeline, the plot
    observer.py  serving's `/readyz` and Dagster's GraphQL polled into events
    traffic.py   the load: requests at a steady rate, delayed feedback, landed files
    drill.py     the rollback drill's bad challenger (trained in a child process)
    state.py     what the threads share: answered requests, events, the live metric
    plan.py      the timings and budgets of a run: `FULL`, `QUICK`, `STATIONARY`
"""
