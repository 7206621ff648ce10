"""The one-machine stack's CLI: SeaweedFS S3, a Prefect server on PostgreSQL (or SQLite), and one worker per
work pool, started in that order by ``up`` and stopped by ``down``.

Used by ``infra/local/up`` / ``infra/local/down``; the tests import the services' pieces from here too (they
are re-exported below). Everything lives in one ignored folder (``.stack/`` at the repo root, or
``KINSHIP_STACK_DIR``): data, logs, pids, generated secrets (0600) and an ``env`` file to ``source``. ``down``
stops exactly the processes that ``up`` recorded (each in its own process group, checked against its command
line before any signal).

One module per service: ``processes.py`` (start and stop by pid, the state folder), ``seaweedfs.py`` (S3 and its
TLS), ``postgres.py`` (the Prefect server's database, ``KINSHIP_PREFECT_DB=auto|postgres|sqlite``) and
``prefect_server.py`` (server, pools, workers, the zombie automation).

Runs on the repo's virtualenv python (boto3 is needed for the bucket check); prefect is only run as a command.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script (infra/local/up): the services are imported as infra.local.*
    sys.path.insert(0, str(REPO))

from infra.local.postgres import (database_choice, ensure_database, optuna_storage_url,  # noqa: E402
                                  remove_orphan_postgres_homes)
from infra.local.prefect_server import (PREFECT_PORT, ZOMBIE_AUTOMATION, build_workers, ensure_pools,  # noqa: E402
                                        ensure_prefect_server, ensure_workers, ensure_zombie_automation,
                                        heartbeat_seconds, prefect_api_url, trial_workers, worker_specs,
                                        zombie_seconds)
from infra.local.processes import (BadSetting, Stack, free_port, owns, port_is_free, stop_many,  # noqa: E402
                                   write_private)
from kinship.files import file_lock  # noqa: E402
from infra.local.seaweedfs import (BUCKET, REGION, WEED_PORTS, ensure_weed, new_weed_secrets,  # noqa: E402
                                   weed_ports)
from kinship.server_retries import PrefectApi  # noqa: E402

# Re-exported: the tests (and tests/stack.py) read the services' pieces from here.
from infra.local.postgres import (PG_DATABASE, PG_USER, PostgresInstall, init_postgres,  # noqa: E402,F401
                                  inspect_install, postgres_account, postgres_argv, postgres_bin_dirs,
                                  postgres_home, postgres_url, prepare_postgres_home, prepare_prefect_database,
                                  runnable_install)
from infra.local.prefect_server import (WORKER_POOLS, prefect_api, prefect_healthy,  # noqa: E402,F401
                                        prefect_server_argv, prefect_worker_argv, worker_online)
from infra.local.processes import (command_line, descendants, http_get, start_process,  # noqa: E402,F401
                                   wait_until)
from infra.local.seaweedfs import (ABORT_INCOMPLETE_UPLOADS, WeedConfig, bucket_ready, s3_client,  # noqa: E402,F401
                                   start_weed, weed_argv)

# Preferred ports (SeaweedFS defaults, Prefect's 4200); a busy one is swapped for a free one on first up.
PREFERRED_PORTS = {**WEED_PORTS, "prefect": PREFECT_PORT}


def stack_env(ports: dict[str, int], secret: dict) -> dict[str, str]:
    """What a client of the stack needs (this is also what ``.stack/env`` exports)."""
    return {
        "PREFECT_API_URL": prefect_api_url(ports["prefect"]),
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


def stack_secrets(stack: Stack) -> dict:
    """Credentials generated on the first ``up`` and kept (0600) in ``secrets.json``; one added later (the
    PostgreSQL password) is generated into an older stack's file on its next ``up``."""
    path = stack.state_dir / "secrets.json"
    if not path.exists():
        write_private(path, json.dumps({**new_weed_secrets(), "prefect_auth": f"kinship:{secrets.token_urlsafe(24)}"}))
    os.chmod(path, 0o600)
    stored = json.loads(path.read_text())
    if "postgres_password" not in stored:
        stored["postgres_password"] = secrets.token_urlsafe(24)
        write_private(path, json.dumps(stored))
    return stored


def worker_env(stack: Stack, state: dict, secret: dict) -> dict[str, str]:
    """The stack's settings a worker gets: ``stack_env`` and the Optuna storage the recipe search's trials share."""
    return {**stack_env(state["ports"], secret),
            "KINSHIP_OPTUNA_STORAGE": optuna_storage_url(state, secret, stack.state_dir)}


def write_env_file(stack: Stack, state: dict, secret: dict) -> Path:
    """``.stack/env``: the client settings to ``source`` (0600: it holds the secrets)."""
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
    with file_lock(stack.state_dir / "lock"):  # two up/down never interleave
        state = stack.load()
        state["ports"] = choose_ports(state)
        stack.save(state)
        secret = stack_secrets(stack)
        timings: dict[str, float] = {}
        remove_orphan_postgres_homes()
        ensure_weed(stack, state, secret, timings)
        database = ensure_database(stack, state, secret, timings)
        ensure_prefect_server(stack, state, secret, timings, database)
        ensure_pools(stack, stack_env(state["ports"], secret), timings)
        automation = ensure_zombie_automation(prefect_api_url(state["ports"]["prefect"]), secret["prefect_auth"],
                                              zombie_seconds())
        ensure_workers(stack, state, worker_env(stack, state, secret), timings)
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
    with file_lock(stack.state_dir / "lock"):  # two up/down never interleave
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
    """The database line and, for every recorded process, whether it still runs."""
    state = stack.load()
    if state.get("database"):
        print(f"database: {state['database']['summary']}")
    for name, entry in state.get("pids", {}).items():
        print(f"{name:<22} pid {entry['pid']:<8} {'running' if owns(entry['pid'], entry['argv']) else 'gone'}")
    return 0




def zombie_automation_command(stack: Stack) -> int:
    """The zombie automation on the server named by ``PREFECT_API_URL`` (two-host setup: run it once)."""
    try:
        api = PrefectApi.from_env()
    except LookupError:
        print("zombie-automation: set PREFECT_API_URL (and PREFECT_API_AUTH_STRING) first", file=sys.stderr)
        return 2
    outcome = ensure_zombie_automation(api.api_url, api.auth_string, zombie_seconds())
    print(f"automation {ZOMBIE_AUTOMATION!r}: {outcome} (Crashed after {zombie_seconds()} s without a heartbeat)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``localstack.py up|down|status|zombie-automation``; 2 on a bad setting, 1 when a part fails."""
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
