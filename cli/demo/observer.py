"""Watching the loop from outside: serving's `/readyz` and Dagster's GraphQL, polled,
turned into the demo's events (champions, canary records, alarms, retrains)."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from typing import Any

import httpx

from cli.demo.state import LoopState

RUNS_QUERY = """
query TrainingRuns {
  runsOrError(filter: {pipelineName: "training"}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""

DRIFT_QUERY = """
query DriftVerdicts {
  assetOrError(assetKey: {path: ["feature_drift_report"]}) {
    ... on Asset {
      assetMaterializations(limit: 10) {
        timestamp
        metadataEntries { label ... on BoolMetadataEntry { boolValue } }
      }
    }
  }
}
"""


CANARY_QUERY = """
query CanaryDecisions {
  assetOrError(assetKey: {path: ["canary_decision"]}) {
    ... on Asset {
      assetMaterializations(limit: 20) {
        timestamp
        runId
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on BoolMetadataEntry { boolValue }
        }
      }
    }
  }
}
"""

ESTIMATE_QUERY = """
query EstimatedDrops {
  assetOrError(assetKey: {path: ["live_model_quality"]}) {
    ... on Asset {
      assetMaterializations(limit: 10) {
        timestamp
        metadataEntries { label ... on BoolMetadataEntry { boolValue } }
      }
    }
  }
}
"""

# The error-stream sensor's recent ticks: an alarm is in the tick's log (`Alarm`'s repr),
# in the cursor's pending entry while its retrain waits, and in the retrain's tags.
DETECTOR_QUERY = """
query DetectorTicks($after: Float) {
  sensorOrError(sensorSelector: {repositoryLocationName: "driftloop",
      repositoryName: "__repository__", sensorName: "error_stream_sensor"}) {
    ... on Sensor {
      sensorState {
        ticks(limit: 15, afterTimestamp: $after) {
          tickId timestamp status cursor logEvents { events { message } }
        }
      }
    }
  }
}
"""
TICK_LOOKBACK_S = 180.0  # ticks come every 5-15 s: a few missed polls lose none
FINAL_TICKS = ("SKIPPED", "SUCCESS", "FAILURE")
ALARM_LOG = "error-stream alarm: "
# pipelines/monitor_sensors.py's names for an alarm on its pending entry and retrain tags.
DETECTOR_TAG = "driftloop/detector"
DETECTED_AFTER_TAG = "driftloop/detected_after_samples"
CHANGE_SAMPLE_TAG = "driftloop/change_at_sample"
CHANGE_AT_TAG = "driftloop/change_at"
# The canary record's numbers the timeline and summary keep.
CANARY_FIELDS = (
    "challenger_version",
    "champion_version",
    "verdict",
    "reason",
    "weight",
    "next_weight",
    "metric",
    "challenger_n",
    "champion_n",
    "difference",
    "ci_low",
    "ci_high",
    "probability_better",
)


def alarm_from_log(message: str) -> dict[str, Any] | None:
    """The alarm in an `error_stream_sensor` tick's log line (a `streaming.Alarm` repr,
    numbers possibly as `np.float64(...)`); None for any other line."""
    if ALARM_LOG not in message:
        return None
    text = message.split(ALARM_LOG, 1)[1]
    fields = dict(re.findall(r"(\w+)=(?:np\.\w+\()?'?([^,)']*)", text))
    try:
        return {
            "detector": fields["detector"],
            "samples": int(fields["samples"]),
            "change_sample": int(fields["change_sample"]),
            "change_at": float(fields["change_at"]),
            "before": round(float(fields["before"]), 4),
            "after": round(float(fields["after"]), 4),
        }
    except (KeyError, ValueError):
        return None


def alarm_from_tags(tags: dict[str, str]) -> dict[str, Any] | None:
    """The alarm as the sensor's pending entry and the retrain it starts carry it."""
    if DETECTOR_TAG not in tags:
        return None
    try:
        return {
            "detector": tags[DETECTOR_TAG],
            "samples": int(tags[DETECTED_AFTER_TAG]),
            "change_sample": int(tags[CHANGE_SAMPLE_TAG]),
            "change_at": float(tags[CHANGE_AT_TAG]),
        }
    except (KeyError, ValueError):
        return None


def metadata_values(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Dagster metadata entries, as GraphQL gives them, as plain values by label."""
    values: dict[str, Any] = {}
    for entry in entries:
        for key in ("text", "floatValue", "intValue", "boolValue"):
            if key in entry:
                values[entry["label"]] = entry[key]
                break
    return values


def canary_record(values: dict[str, Any]) -> dict[str, Any] | None:
    """A `canary_decision` materialisation's decision record; None when no canary ran."""
    if values.get("verdict") in (None, "idle"):
        return None
    return {k: values[k] for k in CANARY_FIELDS if values.get(k) is not None}


def canary_event(record: dict[str, Any]) -> str:
    """A decision record as one timeline line: verdict, share, samples per arm, evidence."""
    line = f"canary v{record.get('challenger_version')}: {record['verdict']}"
    if "weight" in record:
        line += f" (weight {float(record['weight']):.0%})"
    if "challenger_n" in record:
        line += f", n {record['challenger_n']} vs {record.get('champion_n')}"
    if "difference" in record:
        line += f", gain {record['difference']:+.3f}"
        if "ci_low" in record and "ci_high" in record:
            line += f" in [{record['ci_low']:+.3f}, {record['ci_high']:+.3f}]"
    return f"{line}: {str(record.get('reason', ''))[:70]}"


class Watcher(threading.Thread):
    """Polls serving's `/readyz` and Dagster's GraphQL; turns changes into events."""

    def __init__(self, state: LoopState, serve_url: str, dagster_url: str, api_key: str) -> None:
        super().__init__(daemon=True, name="watcher")
        self.state = state
        # With an admin key configured, `/readyz` names the models only to a viewer or admin.
        self.serve = httpx.Client(base_url=serve_url, timeout=10, headers={"X-API-Key": api_key})
        self.dagster = httpx.Client(base_url=dagster_url, timeout=20)
        self.stop_event = threading.Event()
        self.weight_zero_at: dict[str, float] = {}  # challenger version -> t its weight hit 0
        self.flagged = False  # the newest verdict's estimated drop flag

    def run(self) -> None:
        tick = 0
        while not self.stop_event.is_set():
            polls = [self.poll_serving]
            if tick % 3 == 0:
                # Detectors before runs: an alarm is dated by its tick, not by its retrain.
                polls += [
                    self.poll_detectors,
                    self.poll_runs,
                    self.poll_drift,
                    self.poll_canary,
                    self.poll_estimates,
                ]
            for poll in polls:  # a busy server answers next time
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                    poll()
            tick += 1
            self.stop_event.wait(1.0)

    def _graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.dagster.post("/graphql", json={"query": query, "variables": variables or {}})
        return body.json().get("data") or {}

    def note_alarm(self, alarm: dict[str, Any], epoch_s: float) -> None:
        """An alarm seen for the first time (by detector and sample) becomes an event."""
        key = f"alarm {alarm['detector']} {alarm['samples']} {alarm['change_sample']}"
        state = self.state
        if key in state.seen:
            return
        state.seen.add(key)
        delay = alarm["samples"] - alarm["change_sample"]
        entry = {
            **alarm,
            "t": round(state.at(epoch_s), 1),
            "change_t": round(state.at(alarm["change_at"]), 1),
            "samples_after_change": delay,
        }
        state.alarms.append(entry)
        state.record(
            f"error-stream alarm: {alarm['detector']}, {delay} labelled samples after the "
            f"change it dates at t {entry['change_t']}",
            at=entry["t"],
            detail=entry,
        )

    def poll_detectors(self) -> None:
        """The streaming detectors' alarms, from `error_stream_sensor`'s ticks."""
        data = self._graphql(DETECTOR_QUERY, {"after": time.time() - TICK_LOOKBACK_S})
        sensor = (data.get("sensorOrError") or {}).get("sensorState") or {}
        for tick in sorted(sensor.get("ticks") or [], key=lambda t: t["timestamp"]):
            if tick["status"] not in FINAL_TICKS or f"tick {tick['tickId']}" in self.state.seen:
                continue
            self.state.seen.add(f"tick {tick['tickId']}")
            events = (tick.get("logEvents") or {}).get("events") or []
            found = [a for a in (alarm_from_log(e["message"]) for e in events) if a]
            pending = json.loads(tick.get("cursor") or "{}").get("pending") or {}
            waiting = alarm_from_tags(pending.get("tags") or {})
            for alarm in found or ([waiting] if waiting else []):
                self.note_alarm(alarm, tick["timestamp"])

    def poll_canary(self) -> None:
        """Every canary decision record, with its samples per arm and its evidence."""
        data = self._graphql(CANARY_QUERY)
        found = (data.get("assetOrError") or {}).get("assetMaterializations") or []
        for materialization in reversed(found):  # oldest first
            key = f"canary {materialization['runId']} {materialization['timestamp']}"
            if key in self.state.seen:
                continue
            self.state.seen.add(key)
            record = canary_record(metadata_values(materialization["metadataEntries"]))
            if record is None:
                continue
            record["t"] = round(self.state.at(int(materialization["timestamp"]) / 1000), 1)
            self.state.canary.append(record)
            self.state.record(
                canary_event(record),
                record.get("challenger_version"),
                at=record["t"],
                detail=record,
            )

    def poll_estimates(self) -> None:
        """Episodes of the label-free estimate under the holdout (an alert each)."""
        data = self._graphql(ESTIMATE_QUERY)
        found = (data.get("assetOrError") or {}).get("assetMaterializations") or []
        for materialization in reversed(found):
            key = f"estimate {materialization['timestamp']}"
            if key in self.state.seen:
                continue
            self.state.seen.add(key)
            values = metadata_values(materialization["metadataEntries"])
            flagged = bool(values.get("estimated_drop_flagged"))
            if flagged and not self.flagged:
                at = self.state.at(int(materialization["timestamp"]) / 1000)
                self.state.estimated_alerts.append(round(at, 1))
                self.state.record("estimated accuracy fell below the holdout's (alert)", at=at)
            self.flagged = flagged

    def poll_serving(self) -> None:
        ready = self.serve.get("/readyz").json()
        state = self.state
        champion = (ready.get("champion") or {}).get("version")
        challenger = (ready.get("challenger") or {}).get("version")
        weight = float(ready.get("canary_weight") or 0.0)
        if champion and champion != state.champion:
            state.champion = champion
            state.champions.append(champion)
            state.record(f"v{champion} serves as @champion", champion)
        who = challenger or state.challenger  # the version the weight belonged to
        if challenger != state.challenger:
            if challenger:
                state.record(f"v{challenger} is @challenger", challenger)
            elif state.challenger and state.challenger != champion:
                state.record(f"v{state.challenger} no longer @challenger", state.challenger)
            state.challenger = challenger
        if weight != state.weight:
            # The share can move before serving has loaded the challenger it is for.
            named = f"v{who}" if who else "challenger not loaded yet"
            state.record(f"canary weight {state.weight:.0%} -> {weight:.0%} ({named})", who)
            if weight == 0.0 and who:
                self.weight_zero_at.setdefault(who, state.now())
            state.weight = weight

    def poll_drift(self, prime: bool = False) -> None:
        """New drift verdicts of the monitor; the first confirmed one is the detection."""
        body = self.dagster.post("/graphql", json={"query": DRIFT_QUERY}).json()
        asset = (body.get("data") or {}).get("assetOrError") or {}
        found = asset.get("assetMaterializations") or []
        for materialization in reversed(found):  # oldest first
            stamp = materialization["timestamp"]
            if stamp in self.state.drift_verdicts:
                continue
            self.state.drift_verdicts.add(stamp)
            entries = {e["label"]: e.get("boolValue") for e in materialization["metadataEntries"]}
            if prime or not entries.get("drift_confirmed"):
                continue
            at = self.state.now() - (time.time() - int(stamp) / 1000)
            self.state.detections.append(at)
            if len(self.state.detections) == 1 or at - self.state.detections[-2] > 120:
                self.state.record("drift confirmed by the monitor")

    def poll_runs(self, prime: bool = False) -> None:
        """New and finished training runs; `prime` only notes the runs that already exist."""
        body = self.dagster.post("/graphql", json={"query": RUNS_QUERY}).json()
        runs = body["data"]["runsOrError"]["results"]
        for run in reversed(runs):  # oldest first
            tags = {t["key"]: t["value"] for t in run["tags"]}
            trigger = tags.get("driftloop/trigger", "manual")
            before = self.state.seen_runs.get(run["runId"])
            if before == run["status"]:
                continue
            self.state.seen_runs[run["runId"]] = run["status"]
            if prime:
                continue
            if before is None:
                reason = tags.get("driftloop/trigger_reason", "")
                alarm = alarm_from_tags(tags)
                self.state.retrains.append(
                    {
                        "run_id": run["runId"],
                        "trigger": trigger,
                        "reason": reason,
                        "t": self.state.now(),
                        "detector": None if alarm is None else alarm["detector"],
                    }
                )
                if alarm is not None:  # started at once: no tick kept it pending
                    self.note_alarm(alarm, time.time())
                self.state.record(f"training run requested ({trigger}: {reason[:80]})")
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                self.state.record(f"training run {run['runId'][:8]} {run['status'].lower()}")
