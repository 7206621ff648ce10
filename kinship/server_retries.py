"""The one client of a Prefect server's REST API outside Prefect's own: plain urllib with basic auth, each call
retried on the server's retryable answers the way Prefect's own client retries them.

Used by the follower (``deployments/follow.py``), the driver (``deployments/driver.py``) and the local stack
(``infra/local/``). No Prefect import: the stack script runs before any flow, and the follower reads no Prefect
settings. ``wait_for`` is the one poll-until loop of those three.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import re
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Callable, Mapping

PAGE = 200  # the server's default and largest page (PREFECT_API_DEFAULT_LIMIT)


class PrefectApi:
    """The Prefect REST API at ``api_url`` (basic auth with ``auth_string``).

    A call is a JSON answer (POST when a body is given); HTTP errors that are not retryable (401, 404, 422...)
    and refused connections raise at once. Only a request that is safe to send twice is retried
    (``repeatable``): a flow-run create gets an idempotency key (the same on every retry, so a create that
    landed before its answer was lost is returned, not made again); any other create is sent once, and its
    caller checks what happened before trying again."""

    def __init__(self, api_url: str, auth_string: str | None = None, timeout: float = 30):
        self.api_url, self.auth_string, self.timeout = api_url.rstrip("/"), auth_string, timeout

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "PrefectApi":
        """The API named by ``PREFECT_API_URL`` / ``PREFECT_API_AUTH_STRING`` (``source .stack/env``); LookupError
        when the URL is not set."""
        if not environ.get("PREFECT_API_URL"):
            raise LookupError("PREFECT_API_URL is not set (source .stack/env first)")
        return cls(environ["PREFECT_API_URL"], environ.get("PREFECT_API_AUTH_STRING"))

    @property
    def ui_url(self) -> str:
        """The UI, served next to the API."""
        return self.api_url.removesuffix("/api")

    def run_page(self, flow_run_id: str) -> str:
        """The run's page in the UI."""
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"

    def __call__(self, path: str, body: dict | None = None, method: str | None = None,
                 retries: int | None = None) -> object:
        """JSON answer of one call (``None`` for an empty one), retried as above; ``retries`` caps the retries of
        a repeatable call (default: Prefect's, ``PREFECT_CLIENT_MAX_RETRIES``)."""
        method = method or ("POST" if body is not None else "GET")
        if body is not None and method == "POST":
            body = with_idempotency_key(path, body)
        request = self._request(path, body, method)
        retries = retries if repeatable(method, path, body) else 0
        return json.loads(with_server_retries(lambda: _read(request, self.timeout), retries) or b"null")

    def _request(self, path: str, body: dict | None, method: str) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.auth_string:
            headers["Authorization"] = f"Basic {b64encode(self.auth_string.encode()).decode()}"
        return urllib.request.Request(f"{self.api_url}{path}", data=data, headers=headers, method=method)

    def pages(self, path: str, body: dict) -> list[dict]:
        """Every item of a ``/filter`` call, a page at a time."""
        items: list[dict] = []
        while True:
            page = self(path, {**body, "limit": PAGE, "offset": len(items)})
            items += page
            if len(page) < PAGE:
                return items

    def healthy(self) -> bool:
        """Whether ``/health`` answers true now: one try, no retries (callers poll it with ``wait_for``)."""
        try:
            return self("/health", retries=0) is True
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
            return False


def wait_for(check: Callable[[], object], what: str, timeout: float, interval: float = 2.0,
             alive: Callable[[], bool] | None = None, detail: Callable[[], str] = lambda: ""):
    """Poll ``check`` until it returns something truthy, and return that; a server that cannot be reached yet
    (``URLError``) counts as not yet. Raise ``TimeoutError`` naming ``what`` after ``timeout`` seconds, or
    ``RuntimeError`` as soon as ``alive`` says the process being waited for has exited; ``detail()`` is added to
    either message (a log's last lines)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except urllib.error.URLError:
            value = None
        if value:
            return value
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited during startup{detail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready within {timeout:.0f} s{detail()}")
        time.sleep(interval)


# POSTs that change nothing, or that Prefect makes idempotent itself: reads (filter, count...) and the create-or-
# return-by-name of a flow or a deployment.
_READ_POST = re.compile(r"/(filter|count|history|paginate)/?$")
_UPSERTS = frozenset({"/flows/", "/deployments/"})
# Prefect's flow-run creates, which take an ``idempotency_key`` (FlowRunCreate, DeploymentFlowRunCreate).
_RUN_CREATE = re.compile(r"^/(flow_runs/|deployments/[^/]+/create_flow_run)$")
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def with_idempotency_key(path: str, body: dict) -> dict:
    """``body`` with a fresh ``idempotency_key`` when ``path`` creates a flow run and none was given."""
    if _RUN_CREATE.match(path.split("?", 1)[0]) and not body.get("idempotency_key"):
        return {**body, "idempotency_key": uuid.uuid4().hex}
    return body


def repeatable(method: str, path: str, body: dict | None) -> bool:
    """Whether sending the request again after a lost answer can do no harm: idempotent methods, read-only or
    upserting POSTs, and creates that carry an idempotency key. A 504 or a reset can come after the server acted,
    so anything else would be done twice (two flow runs: two trainings on the GPU pool)."""
    path = path.split("?", 1)[0]
    if method in _IDEMPOTENT_METHODS or _READ_POST.search(path) or path in _UPSERTS:
        return True
    return bool(body and body.get("idempotency_key"))


# What Prefect's own client retries (prefect/client/base.py): answers 408, 429, 502 and 503 (its SQLite locked)
# plus PREFECT_CLIENT_RETRY_EXTRA_CODES, and requests cut off by a timeout or a dropped connection; up to
# PREFECT_CLIENT_MAX_RETRIES (5) times, 2, 4, 8, 16, 32 s apart with 20 % jitter, or at least the server's
# Retry-After. 504 is added: a proxy's timeout is the same trouble as 502.
RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
MAX_RETRIES = 5
JITTER = 0.2
# The longest Retry-After obeyed: a server (or anything between) asking for a day would hold a run's client for
# a day; past this, the usual retries and their limit decide.
MAX_RETRY_AFTER_S = 60.0
# Broken mid-request (Prefect: ReadTimeout, ReadError, WriteError, RemoteProtocolError). A refused connection
# is not retried: Prefect retries it only once a client has connected, and a wrong URL should fail at once;
# callers that wait out a restarting server poll with ``wait_for``.
BROKEN_REQUEST = (TimeoutError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                  http.client.IncompleteRead, http.client.BadStatusLine)


def _read(request: urllib.request.Request, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def with_server_retries(call, retries: int | None = None, sleep=time.sleep):
    """``call()`` (one urllib request), retried as Prefect's client retries: see ``RETRYABLE_STATUS``."""
    retries = _max_retries() if retries is None else retries
    for attempt in range(1, retries + 2):
        try:
            return call()
        except Exception as error:
            if attempt > retries or not _retryable(error):
                raise
            sleep(_retry_delay(error, attempt))


def _max_retries() -> int:
    return int(os.environ.get("PREFECT_CLIENT_MAX_RETRIES") or MAX_RETRIES)


def _retryable(error: Exception) -> bool:
    """A retryable answer, or a request broken on the way (urllib wraps errors of the connect phase)."""
    if isinstance(error, urllib.error.HTTPError):
        extra = os.environ.get("PREFECT_CLIENT_RETRY_EXTRA_CODES") or ""
        return error.code in RETRYABLE_STATUS | {int(code) for code in extra.split(",") if code.strip().isdigit()}
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    return isinstance(error, BROKEN_REQUEST)


def _retry_delay(error: Exception, attempt: int) -> float:
    """At least the server's ``Retry-After`` (up to 20 % more; at most ``MAX_RETRY_AFTER_S`` of it), else
    2**attempt s with 20 % jitter either way."""
    headers = getattr(error, "headers", None)
    asked = retry_after_seconds(headers.get("Retry-After")) if headers else None
    if asked is not None:
        return min(asked, MAX_RETRY_AFTER_S) * random.uniform(1, 1 + JITTER)
    return 2**attempt * random.uniform(1 - JITTER, 1 + JITTER)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (either form of RFC 9110: seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None
