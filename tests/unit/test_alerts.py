import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from driftloop.alerts import WEBHOOK_ENV, notify


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_alert_arrives_as_slack_compatible_json(webhook, monkeypatch) -> None:
    url, received = webhook
    monkeypatch.setenv(WEBHOOK_ENV, url)
    assert notify("rollback", "v3 rolled back", {"version": "3"})
    (body,) = received
    assert body["text"] == "[driftloop] rollback: v3 rolled back"
    assert body["event"] == "rollback" and body["fields"] == {"version": "3"}


def test_unreachable_webhook_does_not_raise_or_leak_the_url(monkeypatch, caplog) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, "http://127.0.0.1:9/secret-token")
    assert notify("promotion", "v2", timeout_s=1) is False
    assert "secret-token" not in caplog.text


def test_no_webhook_configured_sends_nothing(monkeypatch) -> None:
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    assert notify("promotion", "v2") is False
    with pytest.raises(ValueError, match="unknown alert event"):
        notify("party", "x")
