"""kinship.server_retries (deployments/driver.py, the local stack) rides out a busy Prefect server (503 while SQLite is locked) like Prefect's client."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
from datetime import datetime, timedelta, timezone
from email.message import Message
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployments.driver import LocalStack
from kinship.server_retries import JITTER, retry_after_seconds, with_server_retries


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


# ---------------------------------------------------------------- the same rules as Prefect's client, without a server


def http_error(code: int, retry_after: str | None = None) -> urllib.error.HTTPError:
    headers = Message()
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return urllib.error.HTTPError("http://127.0.0.1/api/x", code, "busy", headers, None)


def flaky(*errors: BaseException):
    """A call that raises ``errors`` in turn, then answers ``b"ok"``; ``calls`` counts the attempts."""
    pending = list(errors)

    def call() -> bytes:
        call.calls += 1
        if pending:
            raise pending.pop(0)
        return b"ok"

    call.calls = 0
    return call


def test_backoff_doubles_from_two_seconds_with_jitter_like_prefect() -> None:
    slept: list[float] = []
    call = flaky(*(http_error(503) for _ in range(5)))
    assert with_server_retries(call, sleep=slept.append) == b"ok" and call.calls == 6
    assert len(slept) == 5 and all(abs(delay / 2**n - 1) <= JITTER for n, delay in enumerate(slept, 1)), slept


def test_retry_after_is_a_floor_in_both_forms() -> None:
    slept: list[float] = []
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    call = flaky(http_error(429, "1.5"), http_error(503, later), http_error(502, "soon"))
    assert with_server_retries(call, sleep=slept.append) == b"ok"
    assert 1.5 <= slept[0] <= 1.5 * (1 + JITTER) and 28 <= slept[1] <= 30 * (1 + JITTER)
    assert 8 * (1 - JITTER) <= slept[2] <= 8 * (1 + JITTER)  # unreadable: the usual backoff (third retry: 2**3 s)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and retry_after_seconds("nan") is None


def test_gives_up_after_prefect_client_max_retries(monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_CLIENT_MAX_RETRIES", "2")
    call = flaky(*(http_error(503) for _ in range(5)))
    with pytest.raises(urllib.error.HTTPError):
        with_server_retries(call, sleep=lambda _: None)
    assert call.calls == 3


def test_extra_codes_are_retried_as_prefect_client_retry_extra_codes_says(monkeypatch) -> None:
    call = flaky(http_error(500))
    with pytest.raises(urllib.error.HTTPError):
        with_server_retries(call, sleep=lambda _: None)
    monkeypatch.setenv("PREFECT_CLIENT_RETRY_EXTRA_CODES", "404,500")
    call = flaky(http_error(500))
    assert with_server_retries(call, sleep=lambda _: None) == b"ok" and call.calls == 2


@pytest.mark.parametrize("broken", [ConnectionResetError("reset by peer"), TimeoutError("timed out"),
                                    http.client.RemoteDisconnected("closed"), urllib.error.URLError(TimeoutError())])
def test_requests_broken_on_the_way_are_retried(broken: BaseException) -> None:
    call = flaky(broken)
    assert with_server_retries(call, sleep=lambda _: None) == b"ok" and call.calls == 2


def test_a_refused_connection_fails_at_once() -> None:
    call = flaky(urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")))
    with pytest.raises(urllib.error.URLError):
        with_server_retries(call, sleep=lambda _: None)
    assert call.calls == 1


# ---------------------------------------------------------------- a retried create must not create twice


class CreatingServer(BaseHTTPRequestHandler):
    """A Prefect-like server that acts on each create and then loses the first answer (504, as a proxy's timeout
    after the server committed): flow runs are deduplicated by idempotency key as Prefect does, automations are
    not (Prefect's automation create takes no key)."""

    runs: list[dict] = []
    automations: list[dict] = []
    lost = 1

    def _answer(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(200, {"id": "deployment-1", "name": "full"})

    def do_DELETE(self) -> None:  # noqa: N802
        CreatingServer.automations = [a for a in CreatingServer.automations if not self.path.endswith(a["id"])]
        self._answer(204, None)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path.endswith("/automations/filter"):
            return self._answer(200, CreatingServer.automations)
        if self.path.endswith("/automations/"):
            made = {**body, "id": f"automation-{len(CreatingServer.automations)}", "created": str(len(CreatingServer.automations))}
            CreatingServer.automations.append(made)
        else:
            key = body.get("idempotency_key")
            made = next((run for run in CreatingServer.runs if key and run.get("idempotency_key") == key), None)
            if made is None:
                made = {**body, "id": f"run-{len(CreatingServer.runs)}"}
                CreatingServer.runs.append(made)
        if CreatingServer.lost:
            CreatingServer.lost -= 1
            return self._answer(504, {"detail": "gateway timeout"})
        self._answer(201, made)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def creating_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), CreatingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    CreatingServer.runs, CreatingServer.automations, CreatingServer.lost = [], [], 1
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def test_a_flow_run_create_whose_answer_is_lost_makes_one_run(creating_server: str) -> None:
    from deployments import follow

    run = follow.start_run(follow.Api(creating_server, "admin:x"), "kinship/full", {"n": 1})
    assert [r["id"] for r in CreatingServer.runs] == [run["id"]]  # one run, the one returned
    assert run["idempotency_key"]
    CreatingServer.lost = 1  # a create through the driver's client too
    LocalStack(Path("."), {"PREFECT_API_URL": creating_server, "PREFECT_API_AUTH_STRING": "admin:x"}).api(
        "/deployments/deployment-1/create_flow_run", {"parameters": {}})
    assert len(CreatingServer.runs) == 2


def test_a_create_without_an_idempotency_key_is_not_retried(creating_server: str) -> None:
    stack = LocalStack(Path("."), {"PREFECT_API_URL": creating_server, "PREFECT_API_AUTH_STRING": "admin:x"})
    with pytest.raises(urllib.error.HTTPError) as error:
        stack.api("/automations/", {"name": "a"})
    assert error.value.code == 504 and len(CreatingServer.automations) == 1


def test_the_stacks_automation_is_created_once_when_its_answer_is_lost(creating_server: str) -> None:
    from infra.local import localstack

    assert localstack.ensure_zombie_automation(creating_server, "admin:x", 90) == "created"
    assert len(CreatingServer.automations) == 1
    assert localstack.ensure_zombie_automation(creating_server, "admin:x", 90) == "unchanged"
    CreatingServer.automations.append({**CreatingServer.automations[0], "id": "automation-9", "created": "9"})
    assert localstack.ensure_zombie_automation(creating_server, "admin:x", 90) == "unchanged"
    assert [a["id"] for a in CreatingServer.automations] == ["automation-0"]  # an earlier duplicate is removed


def test_retry_after_is_capped() -> None:
    slept: list[float] = []
    call = flaky(http_error(503, "86400"))
    assert with_server_retries(call, sleep=slept.append) == b"ok"
    assert slept and slept[0] <= 60 * (1 + JITTER)  # a minute at most (MAX_RETRY_AFTER_S), not a day
