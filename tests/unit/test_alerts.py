"""Alerts against real webhooks on 127.0.0.1: one that answers, fails, or never answers."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from driftloop import alerts
from driftloop.alerts import PAGERDUTY_URL, WEBHOOK_ENV, Alerter, build_alert, notify
from driftloop.settings import PROJECT_ROOT, Settings
from pipelines.monitor_sensors import _retrain_request

SECRET = "T000/B000/secret-token"


class Webhook:
    """An HTTP webhook answering `status` after `delay_s`, keeping every body it got."""

    def __init__(self, status: int = 200, delay_s: float = 0.0) -> None:
        self.status, self.delay_s = status, delay_s
        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                time.sleep(hook.delay_s)
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/{SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class HangingWebhook:
    """Accepts connections and never answers: the worst a webhook can do short of DNS."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/services/{SECRET}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def webhook(request: pytest.FixtureRequest) -> Iterator[Webhook]:
    hook = Webhook(*getattr(request, "param", ()))
    yield hook
    hook.server.shutdown()


@pytest.fixture
def hanging() -> Iterator[HangingWebhook]:
    hook = HangingWebhook()
    yield hook
    hook.close()


def fast_alerter(**overrides: float) -> Alerter:
    return Alerter(**{"attempts": 3, "timeout_s": 0.3, "backoff_s": 0.05, **overrides})


def test_alert_arrives_as_slack_compatible_json(webhook: Webhook, monkeypatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    assert notify("rollback", "v3 rolled back", {"version": "3"})
    assert alerts.ALERTER.flush(5) == 0
    (body,) = webhook.received
    assert body["text"] == "[driftloop] rollback: v3 rolled back"
    assert body["event"] == "rollback" and body["fields"] == {"version": "3"}


@pytest.mark.parametrize(
    "url",
    [
        f"hooks.slack.com/services/{SECRET}",
        f"ftp://hooks.slack.com/{SECRET}",
        f"https:///{SECRET}",
        f"https://hooks.slack.com:{SECRET}",
        f"http://[hooks.slack.com/{SECRET}",
    ],
    ids=["no scheme", "not http", "no host", "bad port", "bad host"],
)
def test_a_malformed_webhook_url_fails_at_start_without_the_url(url: str, monkeypatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, url)
    with pytest.raises(ValidationError) as error:
        Settings()
    message = str(error.value)
    assert "DRIFTLOOP_ALERT_WEBHOOK_URL must be an http:// or https:// URL with a host" in message
    assert "secret-token" not in message and "hooks.slack.com" not in message


def test_an_empty_webhook_url_means_none(monkeypatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, "")
    assert Settings().alert_webhook_url is None
    assert notify("promotion", "v2") is False


def test_a_hanging_webhook_does_not_delay_notify(hanging: HangingWebhook, monkeypatch, caplog):
    monkeypatch.setenv(WEBHOOK_ENV, hanging.url)
    alerter = fast_alerter(attempts=2)
    started = time.perf_counter()
    assert alerter.notify("promotion", "v2 promoted")
    # Typically well under 50 ms; the bound only has to tell "queued" from "waited".
    assert time.perf_counter() - started < 0.25
    assert alerter.flush(5) == 0
    assert len(hanging.connections) == 2  # tried again after the first timeout
    assert alerter.dead_letters == 1 and alerter.delivered == 0
    assert "dead letter" in caplog.text and "secret-token" not in caplog.text


def test_a_hanging_webhook_does_not_delay_the_sensor_that_alerts(
    hanging: HangingWebhook, monkeypatch
) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, hanging.url)
    monkeypatch.setattr(alerts.ALERTER, "attempts", 1)
    monkeypatch.setattr(alerts.ALERTER, "timeout_s", 0.3)
    before = alerts.dead_letters()
    started = time.perf_counter()
    request = _retrain_request("drift", "drift share 0.6", "drift-1", None)
    assert time.perf_counter() - started < 0.25
    assert request.run_key == "drift-1"
    assert alerts.ALERTER.flush(5) == 0
    assert alerts.dead_letters() == before + 1


@pytest.mark.parametrize("webhook", [(500,)], indirect=True)
def test_a_failing_webhook_is_retried_then_dead_lettered(webhook: Webhook, monkeypatch, caplog):
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    alerter = fast_alerter()
    assert alerter.notify("run_failure", "training failed")
    assert alerter.flush(5) == 0
    assert len(webhook.received) == 3
    assert alerter.dead_letters == 1
    assert "HTTP 500" in caplog.text and "secret-token" not in caplog.text


@pytest.mark.parametrize("webhook", [(400,)], indirect=True)
def test_a_refused_body_is_not_retried(webhook: Webhook, monkeypatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    alerter = fast_alerter()
    assert alerter.notify("run_failure", "training failed")
    assert alerter.flush(5) == 0
    assert len(webhook.received) == 1 and alerter.dead_letters == 1


def test_a_full_queue_drops_without_waiting(hanging: HangingWebhook, monkeypatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, hanging.url)
    alerter = fast_alerter(capacity=1, attempts=1, timeout_s=1)
    assert alerter.notify("promotion", "first")
    deadline = time.monotonic() + 5
    while not hanging.connections and time.monotonic() < deadline:
        time.sleep(0.01)  # the delivery thread now holds the first one
    assert alerter.notify("promotion", "second")  # waits in the queue
    started = time.perf_counter()
    assert alerter.notify("promotion", "third") is False
    assert time.perf_counter() - started < 0.25
    assert alerter.dead_letters == 1


@pytest.mark.parametrize("webhook", [(202,)], indirect=True)
def test_pagerduty_body_has_the_events_v2_fields(webhook: Webhook, monkeypatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    monkeypatch.setenv("DRIFTLOOP_ALERT_FORMAT", "pagerduty")
    monkeypatch.setenv("DRIFTLOOP_PAGERDUTY_ROUTING_KEY", "R0UT1NGKEY")
    alerter = fast_alerter()
    assert alerter.notify("rollback", "v3 rolled back", {"version": 3})
    assert alerter.flush(5) == 0 and alerter.delivered == 1
    (body,) = webhook.received
    assert body["routing_key"] == "R0UT1NGKEY" and body["event_action"] == "trigger"
    payload = body["payload"]
    assert payload["summary"] == "[driftloop] rollback: v3 rolled back"
    assert payload["severity"] == "error" and payload["source"]
    assert payload["custom_details"] == {"version": 3}


def test_pagerduty_needs_a_key_and_defaults_to_its_endpoint() -> None:
    with pytest.raises(ValidationError, match="needs DRIFTLOOP_PAGERDUTY_ROUTING_KEY"):
        Settings(alert_format="pagerduty")
    settings = Settings(alert_format="pagerduty", pagerduty_routing_key="k")
    alert = build_alert(settings, "drift_detected", "drift")
    assert alert is not None and alert.url == PAGERDUTY_URL
    assert alert.body["payload"]["severity"] == "warning"


def test_no_webhook_or_an_unknown_event_sends_nothing_and_raises_nothing(monkeypatch) -> None:
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    assert notify("promotion", "v2") is False
    assert notify("party", "x") is False


EXITING = """
import logging, sys
from driftloop import alerts
logging.basicConfig(level=logging.WARNING)
alerts.ALERTER.flush_s = float(sys.argv[1])
assert alerts.notify("promotion", "sent just before exit")
"""


def exit_right_after_notify(url: str, flush_s: float) -> subprocess.CompletedProcess:
    env = {**os.environ, WEBHOOK_ENV: url}
    return subprocess.run(
        [sys.executable, "-c", EXITING, str(flush_s)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("webhook", [(200, 0.3)], indirect=True)
def test_an_exiting_process_delivers_what_it_queued(webhook: Webhook) -> None:
    result = exit_right_after_notify(webhook.url, flush_s=5)
    assert result.returncode == 0, result.stderr
    assert [body["event"] for body in webhook.received] == ["promotion"]


def test_an_exiting_process_counts_what_it_could_not_deliver(hanging: HangingWebhook) -> None:
    started = time.monotonic()
    result = exit_right_after_notify(hanging.url, flush_s=0.5)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30  # a bounded wait, not the retries' whole course
    assert "1 alert(s) not delivered before exit; 1 dead letter(s) in all" in result.stderr
    assert "secret-token" not in result.stderr
