"""Alerts posted to a webhook (Slack-compatible or PagerDuty Events v2 body) from a queue.

An alert must never break or slow the loop it reports on: `notify` only validates and
enqueues, and one background thread per process delivers, with short timeouts, a few
retries with backoff, and a dead-letter count for what could not be delivered. The
webhook URL often carries a token: no log line or error message holds it.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing.util
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from driftloop.settings import Settings, load_settings

logger = logging.getLogger(__name__)

WEBHOOK_ENV = "DRIFTLOOP_ALERT_WEBHOOK_URL"
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
EVENTS = (
    "drift_detected",
    "estimated_drop",
    "retrain_started",
    "retrain_finished",
    "promotion",
    "rollback",
    "run_failure",
    "model_refused",
)
# PagerDuty's severities: what wakes someone up is a failure or a bad model, not news.
SEVERITY = {
    "drift_detected": "warning",
    "estimated_drop": "warning",  # labels to act on come later: for a person to look
    "retrain_started": "info",
    "retrain_finished": "info",
    "promotion": "info",
    "rollback": "error",
    "run_failure": "error",
    "model_refused": "error",
}
# A 4xx other than these means the body or the key is wrong: retrying cannot help.
RETRIED_STATUSES = frozenset({408, 425, 429})
CLOSED = "the process is exiting"


@dataclass(frozen=True)
class Alert:
    event: str
    url: str
    body: dict[str, Any]


def slack_body(event: str, text: str, fields: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {
        "text": f"[driftloop] {event}: {text}",
        "event": event,
        "at": at.isoformat(),
        "fields": fields,
    }


def pagerduty_body(
    event: str, text: str, fields: dict[str, Any], at: datetime, routing_key: str
) -> dict[str, Any]:
    """A PagerDuty Events v2 `trigger` (https://developer.pagerduty.com/docs/events-api-v2)."""
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "client": "driftloop",
        "payload": {
            "summary": f"[driftloop] {event}: {text}"[:1024],  # PagerDuty's limit
            "source": socket.gethostname() or "driftloop",
            "severity": SEVERITY[event],
            "timestamp": at.isoformat(),
            "component": "driftloop",
            "class": event,
            "custom_details": fields,
        },
    }


def build_alert(
    settings: Settings, event: str, text: str, fields: dict[str, Any] | None = None
) -> Alert | None:
    """The alert `settings` send for this event; None when no destination is configured."""
    at = datetime.now(UTC)
    details = json.loads(json.dumps(fields or {}, default=str))  # numpy, Paths, datetimes
    url = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else None
    if settings.alert_format == "pagerduty" and settings.pagerduty_routing_key is not None:
        key = settings.pagerduty_routing_key.get_secret_value()
        return Alert(event, url or PAGERDUTY_URL, pagerduty_body(event, text, details, at, key))
    if url is None:
        return None
    return Alert(event, url, slack_body(event, text, details, at))


class Alerter:
    """A bounded queue of alerts and the daemon thread that delivers them.

    Per alert: `attempts` posts, each with `timeout_s` per socket operation, `backoff_s`
    doubling between them; then it is a dead letter. At exit the queue gets `flush_s` to
    drain and what is left is counted as dead letters too (DNS resolution is not covered by
    the socket timeout, which is why the waiting is on this thread, never the caller's).
    """

    def __init__(
        self,
        capacity: int = 1000,
        attempts: int = 4,
        timeout_s: float = 3.0,
        backoff_s: float = 0.5,
        flush_s: float = 3.0,
    ) -> None:
        self.capacity = capacity
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.flush_s = flush_s
        self._fresh()
        # A forked child has a copy of the queue but not the thread: it starts its own.
        os.register_at_fork(after_in_child=self._fresh)

    def _fresh(self) -> None:
        self._queue: queue.Queue[Alert] = queue.Queue(maxsize=self.capacity)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.delivered = 0
        self._dead_letters = 0

    @property
    def dead_letters(self) -> int:
        """Alerts given up on: queue full, every attempt failed, or left at exit."""
        with self._lock:
            return self._dead_letters

    def notify(self, event: str, text: str, fields: dict[str, Any] | None = None) -> bool:
        """Queue one alert; True when queued, False (logged, never raised) otherwise."""
        try:
            if event not in EVENTS:
                logger.error("alert %r not sent: unknown event; known: %s", event, EVENTS)
                return False
            alert = build_alert(load_settings(), event, text, fields)
        except Exception as error:  # settings are checked at start; never fail the caller
            logger.warning("alert %s not sent: %s", event, type(error).__name__)
            return False
        return False if alert is None else self.submit(alert)

    def submit(self, alert: Alert) -> bool:
        """Queue a built alert without waiting; a full or closed queue makes a dead letter."""
        with self._lock:
            if self._closed:
                self._dead(alert.event, CLOSED)
                return False
            if self._thread is None:
                self._start()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            with self._lock:
                self._dead(alert.event, "the alert queue is full")
            return False
        return True

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait up to `timeout_s` (default `flush_s`) for the queue to drain; alerts left."""
        deadline = time.monotonic() + (self.flush_s if timeout_s is None else timeout_s)
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks and time.monotonic() < deadline:
                self._queue.all_tasks_done.wait(max(0.0, deadline - time.monotonic()))
            return self._queue.unfinished_tasks

    def close(self) -> None:
        """At exit: a short bounded flush; what could not go out is counted, not lost silently."""
        with self._lock:
            if self._closed:
                return
        left = self.flush()
        with self._lock:
            self._closed = True
            if left:
                self._dead_letters += left
                logger.warning(
                    "%d alert(s) not delivered before exit; %d dead letter(s) in all",
                    left,
                    self._dead_letters,
                )

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="driftloop-alerts", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        # Multiprocessing children (a multiprocess executor's steps) end with os._exit,
        # which skips atexit; multiprocessing runs its own finalizers before that.
        multiprocessing.util.Finalize(None, self.close, exitpriority=10)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if self._closed:
                    continue  # counted as a dead letter when the process began exiting
                if self._deliver(alert):
                    with self._lock:
                        self.delivered += 1
            except Exception as error:  # a bug here must not stop later alerts
                with self._lock:
                    self._dead(alert.event, type(error).__name__)
            finally:
                self._queue.task_done()

    def _deliver(self, alert: Alert) -> bool:
        data = json.dumps(alert.body).encode()
        reason = "no attempt"
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(
                alert.url, data=data, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    if 200 <= response.status < 300:
                        return True
                    reason = f"HTTP {response.status}"
            except urllib.error.HTTPError as error:  # its str holds no URL, but be explicit
                reason = f"HTTP {error.code}"
                if 400 <= error.code < 500 and error.code not in RETRIED_STATUSES:
                    break
            except (OSError, ValueError) as error:  # timeouts, refusals, DNS, bad URL
                reason = type(error).__name__
        with self._lock:
            self._dead(alert.event, reason)
        return False

    def _dead(self, event: str, reason: str) -> None:
        """Count one dead letter; the caller holds the lock."""
        if self._closed and reason != CLOSED:
            return  # an alert in flight at exit: `close` counted it already
        self._dead_letters += 1
        logger.warning(
            "alert %s not delivered (%s); %d dead letter(s) so far",
            event,
            reason,
            self._dead_letters,
        )


ALERTER = Alerter()


def notify(event: str, text: str, fields: dict[str, Any] | None = None) -> bool:
    """Queue one alert for this process's delivery thread; never raises, never waits."""
    return ALERTER.notify(event, text, fields)


def dead_letters() -> int:
    """Alerts this process gave up on (also logged, without the URL, as they happen)."""
    return ALERTER.dead_letters
