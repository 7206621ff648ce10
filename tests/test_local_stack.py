"""``infra/local/up`` and ``down`` for real: a whole stack in a temporary state folder on random ports.

Its Prefect server runs on PostgreSQL (``KINSHIP_PREFECT_DB=auto`` finds Debian's package or the wheel of the dev
extra); ``tests/test_prefect_database.py`` has the SQLite fallback and each PostgreSQL installation found here."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import stat
import subprocess
from pathlib import Path

import asyncpg

import pytest
from botocore.exceptions import ClientError

from tests.stack import REPO, localstack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.own_servers]


def run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "infra" / "local" / script)], env=env, capture_output=True, text=True, timeout=400)


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line.removeprefix("export ") for line in path.read_text().splitlines() if line.startswith("export ")]
    return {key: value.strip("'") for key, value in (line.split("=", 1) for line in lines)}


def test_up_is_idempotent_and_down_stops_only_its_own(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    env = {**os.environ, "KINSHIP_STACK_DIR": str(state_dir), "KINSHIP_STACK_PORTS": "random"}
    env.pop("KINSHIP_PREFECT_DB", None)  # the default: auto
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        first = run("up", env)
        assert first.returncode == 0, first.stdout + first.stderr
        state = json.loads((state_dir / "state.json").read_text())
        pids = state["pids"]
        assert sorted(pids) == ["postgres", "prefect-server", "seaweedfs", "worker-cuda", "worker-cuda-build0",
                                "worker-orchestrator", "worker-rocm"]
        assert all(localstack.owns(entry["pid"], entry["argv"]) for entry in pids.values())
        for private in ("env", "secrets.json"):
            assert stat.S_IMODE((state_dir / private).stat().st_mode) == 0o600
        client_env = read_env_file(state_dir / "env")
        secret = json.loads((state_dir / "secrets.json").read_text())
        check_no_secret_on_command_lines(pids, client_env["AWS_SECRET_ACCESS_KEY"])
        check_no_secret_on_command_lines(pids, secret["postgres_password"])
        check_s3(client_env)
        check_pools(client_env)
        check_postgres(first.stdout, state, secret["postgres_password"])

        second = run("up", env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert json.loads((state_dir / "state.json").read_text())["pids"] == pids  # reused, nothing restarted

        # A recorded pid that now runs something else (a recycled pid) must survive `down`.
        state = json.loads((state_dir / "state.json").read_text())
        state["pids"]["recycled"] = {"pid": bystander.pid, "argv": ["/bin/weed", "mini", "-dir=/elsewhere"]}
        (state_dir / "state.json").write_text(json.dumps(state))
        stopped = run("down", env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert all(localstack.command_line(entry["pid"]) is None for entry in pids.values())
        assert bystander.poll() is None
        assert stopped.stdout.strip().splitlines()[-1].startswith("postgres ")  # last: after its only client

        # Started again from the kept data: the same cluster (no initdb), pools and automation already in it.
        again = run("up", env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "initdb" not in again.stdout and "created" not in again.stdout, again.stdout
        assert "automation unchanged" in again.stdout
    finally:
        run("down", env)
        bystander.kill()
        bystander.wait()


def check_no_secret_on_command_lines(pids: dict, secret: str) -> None:
    """Any local user can read /proc/PID/cmdline: the S3 secret must not be on one."""
    for name, entry in pids.items():
        argv = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().decode(errors="replace")
        assert argv and secret not in argv, f"{name}'s command line holds the S3 secret"


def check_postgres(stdout: str, state: dict, password: str) -> None:
    """PostgreSQL was chosen and said so; it runs unprivileged, takes only the stack's password, and holds
    Prefect's tables (and pg_trgm); nothing went to SQLite."""
    database = state["database"]
    assert database["kind"] == "postgresql"
    assert f"  database  {database['summary']}" in stdout.splitlines(), stdout
    assert database["summary"].startswith(f"PostgreSQL {database['version']} (")
    entry = state["pids"]["postgres"]
    uid = int(Path(f"/proc/{entry['pid']}/status").read_text().split("Uid:")[1].split()[0])
    # started by root: as the unprivileged user it names; else as ourselves
    assert uid == (pwd.getpwnam(database["user"]).pw_uid if os.geteuid() == 0 else os.geteuid()) != 0
    port = state["ports"]["postgres"]
    tables, extensions = asyncio.run(postgres_catalog(port, password))
    assert {"flow_run", "deployment", "work_pool", "automation"} <= tables
    assert "pg_trgm" in extensions
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(postgres_catalog(port, "wrong-password"))
    assert not (Path(state["pids"]["prefect-server"]["log"]).parents[1] / "prefect" / "prefect.db").exists()


async def postgres_catalog(port: int, password: str) -> tuple[set[str], set[str]]:
    """The table and extension names in the stack's ``prefect`` database."""
    connection = await asyncpg.connect(host="127.0.0.1", port=port, user=localstack.PG_USER, password=password,
                                       database=localstack.PG_DATABASE, timeout=10)
    try:
        tables = {row[0] for row in await connection.fetch("SELECT tablename FROM pg_tables")}
        extensions = {row[0] for row in await connection.fetch("SELECT extname FROM pg_extension")}
    finally:
        await connection.close()
    return tables, extensions


def check_s3(client_env: dict[str, str]) -> None:
    endpoint = client_env["AWS_ENDPOINT_URL_S3"]
    good = localstack.s3_client(endpoint, client_env["AWS_ACCESS_KEY_ID"], client_env["AWS_SECRET_ACCESS_KEY"])
    good.head_bucket(Bucket=client_env["KINSHIP_BUCKET"])
    wrong = localstack.s3_client(endpoint, client_env["AWS_ACCESS_KEY_ID"], "wrong-secret")
    with pytest.raises(ClientError):
        wrong.list_objects_v2(Bucket=client_env["KINSHIP_BUCKET"])


def check_pools(client_env: dict[str, str]) -> None:
    api, auth = client_env["PREFECT_API_URL"], client_env["PREFECT_API_AUTH_STRING"]
    pools = localstack.prefect_api(api, "/work_pools/filter", auth, {"limit": 20})
    limits = {pool["name"]: (pool["type"], pool["concurrency_limit"]) for pool in pools}
    # no pool limit: one run at a time per GPU is each worker's --limit 1 (rocm: training and trial hosts; cuda: the
    # engines run on its default queue, one fanned-out build per GPU worker on "builds")
    assert limits == {"rocm": ("process", None), "cuda": ("process", None), "orchestrator": ("process", None)}
    assert localstack.prefect_api(api, "/work_pools/filter", None, {"limit": 20}) is None  # no auth, no answer
    for pool in limits:
        assert localstack.worker_online(api, pool, f"local-{pool}", auth)
