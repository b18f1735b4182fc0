"""Alerts as JSON posts to a webhook (Slack-compatible body), URL from the environment."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

WEBHOOK_ENV = "DRIFTLOOP_ALERT_WEBHOOK_URL"
EVENTS = (
    "drift_detected",
    "retrain_started",
    "retrain_finished",
    "promotion",
    "rollback",
    "run_failure",
    "model_refused",
)


def notify(
    event: str, text: str, fields: dict[str, Any] | None = None, timeout_s: float = 5
) -> bool:
    """Post one alert; False (and a log line without the URL) when it could not be sent.

    An alert must never break the loop it reports on, so failures are logged, not raised.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown alert event {event!r}; known: {EVENTS}")
    url = os.environ.get(WEBHOOK_ENV)
    if not url:
        return False
    body = {
        "text": f"[driftloop] {event}: {text}",
        "event": event,
        "at": datetime.now(UTC).isoformat(),
        "fields": fields or {},
    }
    request = urllib.request.Request(
        url,
        data=json.dumps(body, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except OSError as error:  # the URL may hold a token: never log it
        logger.warning("alert %s not delivered: %s", event, type(error).__name__)
        return False
