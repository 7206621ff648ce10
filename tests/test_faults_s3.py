"""The S3 server itself fails: a real ``weed mini`` is killed (SIGKILL, by pid) in the middle of a multipart
upload and a multipart download, stays down, then starts again on the same ports and data folder.

Both transfers must finish with the right sha256, and a poller watching the server throughout must never
see the upload's final key half-written: absent, or complete with the right size and digest.
``KINSHIP_TEST_OUTAGE_S`` (default 8) sets how long the server stays down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from kinship.progress import ProgressEvent
from kinship.storage import MiB, S3Store, StoreAccessError, StoreSettings, StoreUnreachable
from tests.stack import clean_env, localstack, venv_bin

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = float(os.environ.get("KINSHIP_TEST_OUTAGE_S", "8"))
CHUNK = 5 * MiB  # S3's smallest part: several parts per file, so the kill lands between parts


# ---------------------------------------------------------------- a SeaweedFS we can kill and start again


@dataclass
class RestartableWeed:
    """``weed mini`` with fixed ports and data folder, so a restart is the same server coming back."""

    config: Any
    folder: Path
    process: Any = None
    argv: list[str] = field(default_factory=list)
    starts: int = 0

    def start(self) -> float:
        """Start weed and wait until S3 answers with the bucket; returns the seconds that took."""
        self.starts += 1
        log = self.folder / f"weed{self.starts}.log"
        began = time.monotonic()
        self.process, self.argv = localstack.start_weed(self.config, log, clean_env())
        localstack.wait_until(lambda: localstack.bucket_ready(self.config), "weed mini S3", 60,
                              lambda: self.process.poll() is None, log)
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL weed's process group (ours: started in its own session) and reap it."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=15)

    def stop(self) -> None:
        """At the end: SIGKILL too (its data is a temporary folder; a graceful stop can take 10 s and more)."""
        if self.process is not None and self.process.poll() is None and localstack.owns(self.process.pid, self.argv):
            self.kill()

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_S3": self.config.endpoint, "AWS_ACCESS_KEY_ID": self.config.access_key,
                "AWS_SECRET_ACCESS_KEY": self.config.secret_key, "AWS_REGION": localstack.REGION,
                "KINSHIP_BUCKET": self.config.bucket}

    def client(self) -> Any:
        """A client that tries once and quickly: the poller must see the outage, not wait it out."""
        return localstack.s3_client(self.config.endpoint, self.config.access_key, self.config.secret_key)


@pytest.fixture(scope="module")
def weed(tmp_path_factory) -> Iterator[RestartableWeed]:
    folder = tmp_path_factory.mktemp("weed-faults")
    secret = localstack.new_weed_secrets()
    config = localstack.WeedConfig(weed=Path(venv_bin("weed")), data_dir=folder / "data", ports=localstack.weed_ports(),
                                   access_key=secret["access_key"], secret_key=secret["secret_key"],
                                   jwt_keys=secret["jwt_keys"])
    server = RestartableWeed(config, folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(weed: RestartableWeed, tmp_path: Path, monkeypatch) -> S3Store:
    for name, value in weed.env().items():
        monkeypatch.setenv(name, value)
    settings = replace(StoreSettings.from_env(), prefix=f"faults/{uuid.uuid4().hex[:10]}", scratch=tmp_path / "scratch",
                       multipart_threshold=CHUNK, multipart_chunksize=CHUNK)
    return S3Store(settings)  # the default retry window: the outage must fit in it as shipped


# ---------------------------------------------------------------- watching the server from outside


class Poller(threading.Thread):
    """Every 0.1 s: HEAD the upload's final key, list the prefix, look at the download's destination file;
    record every inconsistent sighting (a half-written object or file)."""

    def __init__(self, weed: RestartableWeed, key: str, expected: tuple[str, int], allowed: set[str],
                 dest: Path, dest_size: int):
        super().__init__(daemon=True)
        self.client, self.bucket, self.key, self.expected, self.allowed = weed.client(), weed.config.bucket, key, expected, allowed
        self.dest, self.dest_size = dest, dest_size
        self.halt = threading.Event()
        self.sightings: dict[str, int] = {"absent": 0, "complete": 0, "unreachable": 0}
        self.bad: list[str] = []
        self.digest_checked = False

    def run(self) -> None:
        while not self.halt.is_set():
            if self.dest.exists() and self.dest.stat().st_size != self.dest_size:
                self.bad.append(f"{self.dest} has {self.dest.stat().st_size} bytes")
            try:
                self._look()
            except (BotoCoreError, ClientError) as error:
                self.sightings["unreachable"] += 1
                if isinstance(error, ClientError) and error.response["ResponseMetadata"]["HTTPStatusCode"] < 500:
                    self.bad.append(f"refused: {error}")
            self.halt.wait(0.1)

    def _look(self) -> None:
        sha256, size = self.expected
        prefix = self.key.rsplit("/", 2)[0] + "/"
        for item in self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", []):
            if item["Key"] not in self.allowed or (item["Key"] == self.key and item["Size"] != size):
                self.bad.append(f"listed {item['Key']} with {item['Size']} bytes")
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key)
        except ClientError as error:
            if error.response["ResponseMetadata"]["HTTPStatusCode"] != 404:
                raise
            self.sightings["absent"] += 1
            return
        self.sightings["complete"] += 1
        if head["ContentLength"] != size or head["Metadata"].get("sha256") != sha256:
            self.bad.append(f"HEAD {self.key}: {head['ContentLength']} bytes, sha256 {head['Metadata'].get('sha256')}")
        elif not self.digest_checked:  # the first complete sighting: its bytes, not just its record
            body = self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
            if hashlib.sha256(body).hexdigest() != sha256:
                self.bad.append(f"GET {self.key}: content does not match its sha256")
            self.digest_checked = True


# ---------------------------------------------------------------- helpers


def random_file(path: Path, size: int) -> tuple[str, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), size


def gate(reached: threading.Event, release: threading.Event, after: int) -> Callable[[ProgressEvent], None]:
    """A progress callback that, once ``after`` bytes have moved, holds every transfer thread until ``release``.

    So the kill lands while parts are in flight, and parts not yet started must be sent after it.
    """
    def on_progress(event: ProgressEvent) -> None:
        if event.done >= after and not release.is_set():
            reached.set()
            release.wait(60)

    return on_progress


@contextmanager
def in_thread(action: Callable[[], Any]) -> Iterator[dict]:
    """Run ``action`` in a thread; the dict gets ``value`` or ``error`` and ``seconds``."""
    outcome: dict = {}

    def body() -> None:
        began = time.monotonic()
        try:
            outcome["value"] = action()
        except BaseException as error:  # reported by the test, not lost in the thread
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - began

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(timeout=180)
        assert not thread.is_alive(), "a transfer was still running 180 s after the server came back"


def retries(caplog, what: str) -> int:
    return sum(1 for r in caplog.records if r.name == "kinship.storage" and r.getMessage().startswith(what))


# ---------------------------------------------------------------- the tests


def test_upload_and_download_survive_a_server_outage(store: S3Store, weed: RestartableWeed, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="kinship.storage")
    random_file(tmp_path / "down.bin", 32 * MiB)
    download_ref = store.put_file(tmp_path / "down.bin", "data/down.bin")
    up_digest = random_file(tmp_path / "up.bin", 24 * MiB)
    up_key = f"{store.prefix}/data/up.bin"
    dest = tmp_path / "out" / "down.bin"
    poller = Poller(weed, up_key, up_digest, {up_key, f"{store.prefix}/data/down.bin"}, dest, download_ref.size)
    up_mid, down_mid, killed = threading.Event(), threading.Event(), threading.Event()
    poller.start()
    began = time.monotonic()
    try:
        with in_thread(lambda: store.put_file(tmp_path / "up.bin", "data/up.bin", gate(up_mid, killed, CHUNK))) as upload, \
                in_thread(lambda: store.get_file(download_ref, dest, gate(down_mid, killed, CHUNK))) as download:
            try:
                assert up_mid.wait(60) and down_mid.wait(60), "the transfers never got going"
                weed.kill()
                down_at = time.monotonic()
                killed.set()  # the held transfer threads now find the server gone
                time.sleep(OUTAGE_S)
            finally:
                killed.set()  # whatever failed, no transfer thread stays held, and the next test has a server
                restart_s = weed.start() if weed.process.poll() is not None else 0.0
            outage_s = time.monotonic() - down_at
        total_s = time.monotonic() - began
        time.sleep(0.3)
    finally:
        poller.halt.set()
        poller.join(timeout=10)

    assert "error" not in upload and "error" not in download, (upload.get("error"), download.get("error"))
    assert (upload["value"].sha256, upload["value"].size) == up_digest
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == download_ref.sha256
    assert [p.name for p in dest.parent.iterdir()] == ["down.bin"]  # no partial file beside it
    assert poller.bad == [], poller.bad
    assert poller.sightings["unreachable"] > 0 and poller.sightings["complete"] > 0 and poller.digest_checked
    up_retries, down_retries = retries(caplog, "upload"), retries(caplog, "download")
    assert up_retries > 0 and down_retries > 0, "the outage did not hit both transfers"
    # The attempt the kill broke could not abort its multipart upload (no server); a later attempt did.
    assert weed.client().list_multipart_uploads(Bucket=weed.config.bucket, Prefix=up_key).get("Uploads", []) == []
    print(f"\noutage {outage_s:.1f} s (restart took {restart_s:.1f} s); retries: upload {up_retries}, "
          f"download {down_retries}; upload {upload['seconds']:.1f} s, download {download['seconds']:.1f} s, "
          f"both {total_s:.1f} s; poller sightings {poller.sightings}")


def test_a_server_that_stays_down_is_one_line_naming_endpoint_and_key(store: S3Store, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="kinship.storage")
    closed = f"http://127.0.0.1:{localstack.free_port()}"
    window = 3.0
    down = S3Store(replace(store.settings, endpoint_url=closed, retry_window=window, connect_timeout=1))
    random_file(tmp_path / "f.bin", 1000)
    began = time.monotonic()
    with pytest.raises(StoreAccessError) as error:
        down.put_file(tmp_path / "f.bin", "data/f.bin")
    elapsed = time.monotonic() - began
    message = str(error.value)
    assert "\n" not in message and closed in message and f"s3://{store.bucket}/{store.prefix}/data/f.bin" in message
    assert "gave up" in message and isinstance(error.value, StoreUnreachable)
    # the window, plus the first and last attempts' own botocore retries (3 attempts: 3 s of backoff at most each)
    assert window <= elapsed <= window + 2 * 3 + 2, elapsed
    print(f"\ngive-up after {elapsed:.1f} s with a {window:.0f} s window, {retries(caplog, 'upload') + 1} attempts: {message}")


class _Failing(BaseHTTPRequestHandler):
    """Answers every request with the status in ``server.status`` and an S3 error body."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code = {500: "InternalError", 501: "NotImplemented"}[self.server.status]
        body = f"<Error><Code>{code}</Code><Message>failing on purpose</Message></Error>".encode()
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status, retried", [(500, True), (501, False)])
def test_a_failing_server_is_retried_and_a_refusing_one_is_not(store: S3Store, tmp_path: Path, caplog,
                                                               status: int, retried: bool) -> None:
    caplog.set_level(logging.WARNING, logger="kinship.storage")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    server.status = status
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    try:
        # botocore's own retries off (max_attempts=0): the retries counted are ours
        failing = S3Store(replace(store.settings, endpoint_url=endpoint, retry_window=1.5, max_attempts=0))
        with pytest.raises(StoreAccessError) as error:
            failing.put_json({"a": 1}, "data/a.json")
    finally:
        server.shutdown()
        server.server_close()
    message = str(error.value)
    assert "\n" not in message and f"s3://{store.bucket}/{store.prefix}/data/a.json" in message
    assert (retries(caplog, "write") > 0) == retried and (endpoint in message) == retried, message
    assert isinstance(error.value, StoreUnreachable) == retried  # what Prefect tasks retry again
