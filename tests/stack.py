"""Real servers for integration tests: on 127.0.0.1, random free ports, temporary folders, stopped by pid.

The launch lines are the ones ``infra/local/up`` uses (``infra/local/localstack.py``), so the tests exercise
the same SeaweedFS flags (credentials required) and the same Prefect server command.

From ``conftest.py``::

    from tests.stack import prefect_server, weed_server  # noqa: F401  (session-scoped fixtures)

or use the context managers directly: ``running_weed(folder)``, ``running_prefect_server(folder)``,
``running_prefect_worker(server, pool, folder)``. Every start is polled until healthy and time-bounded;
a server that dies during startup fails at once with the tail of its log.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from infra.local import localstack

REPO = Path(__file__).resolve().parents[1]

STARTUP_ATTEMPTS = 3  # a random port can be taken between choosing it and binding it: pick again


def venv_bin(name: str) -> str:
    candidate = Path(sys.prefix) / "bin" / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found next to {sys.executable} nor on PATH (pip install -e '.[dev]')")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _stop(process, argv: list[str]) -> None:
    localstack.stop_many([(process.pid, argv)], timeout=15)
    process.wait(timeout=15)


# ---------------------------------------------------------------- SeaweedFS


@dataclass
class WeedServer:
    """A running ``weed mini`` that only accepts ``access_key``/``secret_key`` on its S3 port (and, on its gRPC
    ports, clients holding the certificate in ``conf_dir``)."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    pid: int
    data_dir: Path
    log: Path
    region: str = localstack.REGION
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def conf_dir(self) -> Path:
        """``s3.json``, ``security.toml`` and the gRPC certificates: weed's working folder (``start_weed``)."""
        return self.data_dir.parent / "conf"

    def env(self) -> dict[str, str]:
        """The variables a client (``StoreSettings.from_env``, boto3) needs to use this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "KINSHIP_BUCKET": self.bucket,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 S3 client, by default with the right credentials."""
        return localstack.s3_client(self.endpoint, access_key or self.access_key, secret_key or self.secret_key)


@contextmanager
def running_weed(folder: Path, bucket: str = "kinship", timeout: float = 60.0) -> Iterator[WeedServer]:
    """Start ``weed mini`` with data under ``folder``; stop it (by pid) on exit."""
    weed = Path(venv_bin("weed"))
    secret = localstack.new_weed_secrets()
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        config = localstack.WeedConfig(weed=weed, data_dir=folder / f"data{attempt}", ports=localstack.weed_ports(),
                                       access_key=secret["access_key"], secret_key=secret["secret_key"],
                                       jwt_keys=secret["jwt_keys"], bucket=bucket)
        log = folder / f"weed{attempt}.log"
        process, argv = localstack.start_weed(config, log, clean_env())
        try:
            localstack.wait_until(lambda: localstack.bucket_ready(config), "weed mini S3", timeout,
                                  lambda: process.poll() is None, log)
            break
        except RuntimeError:
            _stop(process, argv)
            if attempt == STARTUP_ATTEMPTS:
                raise
    try:
        yield WeedServer(config.endpoint, config.access_key, config.secret_key, bucket, process.pid,
                         config.data_dir, log, ports=config.ports)
    finally:
        _stop(process, argv)


@pytest.fixture(scope="session")
def weed_server(tmp_path_factory) -> Iterator[WeedServer]:
    """One SeaweedFS for the whole session; tests keep apart by using their own key prefixes."""
    with running_weed(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


# ---------------------------------------------------------------- Prefect


@dataclass
class PrefectServer:
    """A running Prefect server on SQLite in its own ``PREFECT_HOME``."""

    api_url: str
    pid: int
    home: Path
    log: Path
    auth_string: str | None = None

    def env(self) -> dict[str, str]:
        """Client settings for this server (a separate client home, so nothing touches ~/.prefect)."""
        env = {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home.parent / "client-home")}
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        return env


@contextmanager
def running_prefect_server(folder: Path, auth_string: str | None = None, timeout: float = 240.0) -> Iterator[PrefectServer]:
    """Start ``prefect server start`` (no UI) on a free port with its data under ``folder``; stop it on exit."""
    venv = Path(venv_bin("prefect")).parent.parent
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        port = localstack.free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        home = folder / "home"
        env = clean_env(PREFECT_HOME=str(home), PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                         PREFECT_SERVER_UI_ENABLED="false")
        if auth_string:
            env.update(PREFECT_SERVER_API_AUTH_STRING=auth_string, PREFECT_API_AUTH_STRING=auth_string)
        argv = localstack.prefect_server_argv(venv, port)
        log = folder / f"prefect-server{attempt}.log"
        process = localstack.start_process(argv, log, env, cwd=folder)
        try:
            localstack.wait_until(lambda: localstack.prefect_healthy(api_url, auth_string), "Prefect server", timeout,
                                  lambda: process.poll() is None, log)
            break
        except RuntimeError:
            _stop(process, argv)
            if attempt == STARTUP_ATTEMPTS:
                raise
    try:
        yield PrefectServer(api_url, process.pid, home, log, auth_string)
    finally:
        _stop(process, argv)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    """One Prefect server for the whole session."""
    with running_prefect_server(tmp_path_factory.mktemp("prefect")) as server:
        yield server


@contextmanager
def running_prefect_worker(server: PrefectServer, pool: str, folder: Path, env: dict[str, str] | None = None,
                           timeout: float = 120.0) -> Iterator[int]:
    """Start a process worker for ``pool`` (its own scratch folder under ``folder``); yields its pid."""
    venv = Path(venv_bin("prefect")).parent.parent
    name = f"test-{pool}-{os.getpid()}"
    (folder / "scratch").mkdir(parents=True, exist_ok=True)
    worker_env = clean_env(**{**server.env(), "KINSHIP_SCRATCH": str(folder / "scratch"), "KINSHIP_ROOT": str(REPO),
                               "PREFECT_WORKER_QUERY_SECONDS": "2",
                               # as infra/local/up: flow runs beat often enough for the zombie automation
                               "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(localstack.heartbeat_seconds()),
                               **(env or {})})
    worker_env["PREFECT_HOME"] = str(folder / "prefect-home")
    argv = localstack.prefect_worker_argv(venv, pool, name)
    log = folder / f"worker-{pool}.log"
    process = localstack.start_process(argv, log, worker_env, cwd=folder)
    try:
        since = time.time() - 1.0
        localstack.wait_until(lambda: localstack.worker_online(server.api_url, pool, name, server.auth_string, since),
                              f"worker {name}", timeout, lambda: process.poll() is None, log)
        yield process.pid
    finally:
        _stop(process, argv)


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and all its descendants at once, as a host losing power would: nothing can clean up.

    Returns the pids signalled (``pid`` first). Only for processes a test started itself.
    """
    tree = [pid, *localstack.descendants(pid)]
    for target in tree:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return tree
