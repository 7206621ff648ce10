"""The local stack's Prefect: its server (on the database ``postgres.py`` chose), the work pools, one process
worker per pool (more on the ``cuda`` pool's ``builds`` and the ``rocm`` pool's ``trials`` queues), flow-run
heartbeats and the zombie automation that crashes a run whose heartbeats stop.

The API is read through the one client, ``kinship.server_retries.PrefectApi``; prefect itself is only run as a
command (the stack script runs before any flow).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from infra.local.postgres import postgres_url
from infra.local.processes import REPO, BadSetting, Stack, is_running, record, start_process, wait_until
from kinship.server_retries import PrefectApi

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
PREFECT_PORT = 4200  # preferred, Prefect's own; a busy one is swapped for a free one on first up
CREATE_TRIES = 3


# ---------------------------------------------------------------- command lines and workers


def prefect_bin(venv: Path) -> str:
    """The ``prefect`` command of ``venv``."""
    return str(venv / "bin" / "prefect")


def prefect_api_url(port: int) -> str:
    """``PREFECT_API_URL`` of the stack's server on ``port``."""
    return f"http://127.0.0.1:{port}/api"


def prefect_server_argv(venv: Path, port: int) -> list[str]:
    """``prefect server start`` on 127.0.0.1:``port``."""
    return [prefect_bin(venv), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def prefect_worker_argv(venv: Path, pool: str, name: str, queue: str | None = None, limit: int | None = None) -> list[str]:
    """``prefect worker start`` of a process worker named ``name`` on ``pool`` (``queue``, ``limit`` runs at once)."""
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
    return _worker_count("KINSHIP_CUDA_BUILD_WORKERS", 1)


def trial_workers() -> int:
    """``KINSHIP_ROCM_TRIAL_WORKERS`` (default 0): more training hosts on the ``rocm`` pool, on its ``trials`` queue
    only (the recipe search's trial runs), each one run at a time; the pool's first worker takes every queue."""
    return _worker_count("KINSHIP_ROCM_TRIAL_WORKERS", 0)


def _worker_count(name: str, default: int) -> int:
    """The whole number from 0 to 16 in the environment variable ``name`` (``default`` when unset); BadSetting
    otherwise, before anything starts."""
    text = os.environ.get(name, "").strip() or str(default)
    if not text.isdigit() or not 0 <= int(text) <= 16:
        raise BadSetting(f"{name}={text!r}: expected a whole number from 0 to 16")
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


# ---------------------------------------------------------------- the API


def prefect_healthy(api_url: str, auth_string: str | None = None) -> bool:
    """Whether the server's ``/health`` answers true now (one try: a readiness probe)."""
    return PrefectApi(api_url, auth_string, timeout=2).healthy()


def prefect_api(api_url: str, path: str, auth_string: str | None, body: dict | None = None,
                method: str | None = None) -> object | None:
    """JSON answer of a Prefect REST call (POST when ``body`` is given), or None when it fails for good.

    A busy server's retryable answers (503 while its SQLite is locked, 429, 502...) are retried by the client
    (``kinship.server_retries``), so one locked moment never fails ``up``."""
    try:
        answer = PrefectApi(api_url, auth_string, timeout=5)(path, body, method)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return {} if answer is None else answer  # 204 No Content: {} (None means it failed)


# ---------------------------------------------------------------- the zombie automation


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


# ---------------------------------------------------------------- workers and pools online


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
    """The stack's work pools (``WORKER_POOLS``) the server does not have yet."""
    pools = prefect_api(api_url, "/work_pools/filter", auth_string, {"limit": 100})
    names = {pool.get("name") for pool in pools} if isinstance(pools, list) else set()
    return [pool for pool in WORKER_POOLS if pool not in names]


# ---------------------------------------------------------------- in the stack


def ensure_prefect_server(stack: Stack, state: dict, secret: dict, timings: dict, database: dict) -> bool:
    """Start the server on ``database`` unless it runs; True when it was started now."""
    api_url = prefect_api_url(state["ports"]["prefect"])
    log = stack.state_dir / "logs" / "prefect-server.log"
    started = not is_running(state, "prefect-server")
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
        record(state, "prefect-server", process, argv, log)
        stack.save(state)
        alive = lambda: process.poll() is None  # noqa: E731
    timings["prefect-server"] = wait_until(lambda: prefect_healthy(api_url, secret["prefect_auth"]),
                                           "Prefect server /api/health", 180, alive, log)
    return started


def ensure_pools(stack: Stack, client_env: dict[str, str], timings: dict) -> None:
    """Create the work pools (``deployments/create_pools.py``, as a client of the stack) unless all are there."""
    if not pools_missing(client_env["PREFECT_API_URL"], client_env["PREFECT_API_AUTH_STRING"]):
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


def ensure_worker(stack: Stack, state: dict, client_env: dict[str, str],
                  spec: WorkerSpec) -> tuple[Callable[[], bool] | None, Path]:
    """Start the worker ``spec`` unless it runs, with the stack's ``client_env``; it stands in for its host (own
    scratch folder). Returns whether it is alive (None: it ran already) and its log."""
    host = stack.state_dir / "hosts" / spec.host
    log = stack.state_dir / "logs" / f"{spec.key}.log"
    if is_running(state, spec.key):
        return None, log
    (host / "scratch").mkdir(parents=True, exist_ok=True)
    env = {**stack.clean_env(), **client_env, "PREFECT_HOME": str(host / "prefect"),
           "KINSHIP_SCRATCH": str(host / "scratch"), "KINSHIP_ROOT": str(REPO), "KINSHIP_HOST_ROLE": spec.pool,
           "PREFECT_WORKER_QUERY_SECONDS": "1",  # poll often: each flow run waits up to this long to be picked up
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_seconds()),  # its flow runs inherit it
           **dict(spec.env)}
    argv = prefect_worker_argv(stack.venv, spec.pool, spec.name, spec.queue, spec.limit)
    process = start_process(argv, log, env, cwd=host)
    record(state, spec.key, process, argv, log)
    stack.save(state)
    return (lambda: process.poll() is None), log


def ensure_workers(stack: Stack, state: dict, client_env: dict[str, str], timings: dict) -> None:
    """Start every worker of ``worker_specs()`` that does not run, then wait until each is online."""
    api_url, auth_string = client_env["PREFECT_API_URL"], client_env["PREFECT_API_AUTH_STRING"]
    started = [(spec, *ensure_worker(stack, state, client_env, spec)) for spec in worker_specs()]
    start = time.monotonic()
    for spec, alive, log in started:
        since = state["pids"][spec.key]["started"] - 1.0

        def online() -> bool:
            return worker_online(api_url, spec.pool, spec.name, auth_string, since)

        wait_until(online, f"worker {spec.name}", 120, alive, log)
    timings["workers"] = time.monotonic() - start
