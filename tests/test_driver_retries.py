"""deployments/driver.py rides out a busy Prefect server (503 while SQLite is locked) like Prefect's client."""

from __future__ import annotations

import json
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployments.driver import LocalStack


class FlakyServer(BaseHTTPRequestHandler):
    """Answers ``busy`` times with the status in ``answer`` (503 = locked database), then 200 with JSON."""

    calls = 0
    busy = 2
    answer = 503

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        FlakyServer.calls += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if FlakyServer.calls <= FlakyServer.busy:
            self.send_response(FlakyServer.answer)
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"detail": "database is locked"}')
            return
        body = json.dumps({"id": "run-1"}).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def stack(tmp_path: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FlakyServer.calls = 0
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    yield LocalStack(tmp_path, {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": "admin:x"})
    server.shutdown()
    server.server_close()


def test_busy_server_answers_are_retried(stack: LocalStack) -> None:
    FlakyServer.busy, FlakyServer.answer = 2, 503
    assert stack.api("/flow_runs/", {"name": "x"}) == {"id": "run-1"}
    assert FlakyServer.calls == 3


def test_refusals_are_not_retried(stack: LocalStack) -> None:
    FlakyServer.busy, FlakyServer.answer = 5, 422
    with pytest.raises(urllib.error.HTTPError) as error:
        stack.api("/flow_runs/", {"name": "x"})
    assert error.value.code == 422 and FlakyServer.calls == 1
