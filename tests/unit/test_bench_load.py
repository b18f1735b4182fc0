"""The benchmark's load generators against a real local HTTP server: what they count."""

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import serve as bench


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as both generators expect

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = self.path == "/ok" and json.loads(body) == {"instances": [{"x": 1}]}
        payload = b'{"ok": true}'
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("generator", ["wrk", "asyncio"])
def test_load_counts_answers_and_errors(url: str, generator: str, monkeypatch) -> None:
    if generator == "wrk":
        assert shutil.which("wrk"), "wrk missing: apt-get install wrk (./run.sh test does)"
    if generator == "asyncio":
        monkeypatch.setattr(bench.shutil, "which", lambda _: None)
    body = {"instances": [{"x": 1}]}
    good = bench.load(url, "/ok", body, concurrency=2, seconds=1)
    assert good.requests > 10 and good.errors == 0 and good.rps > 10
    assert 0 < good.p50_ms <= good.p99_ms
    bad = bench.load(url, "/missing", body, concurrency=2, seconds=1)
    assert bad.requests > 10 and bad.errors == bad.requests
