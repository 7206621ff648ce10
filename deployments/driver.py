"""Drive a local stack from scripts and tests: up/down, push a data set, deploy, run a deployment, read the API.

Everything goes through the same commands a person types (``infra/local/up``, ``kinship data push``,
``prefect deploy``, ``prefect deployment run --watch``) with the stack's client environment, so what the
tests and the benchmark exercise is what ``make run`` does. The Prefect REST API is read through
``kinship.server_retries.PrefectApi`` (plain HTTP, basic auth), so no Prefect settings leak into the calling
process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kinship.server_retries import PrefectApi, wait_for  # noqa: F401  (wait_for: the tests' poll loop)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.prefix) / "bin"
UUID_LINE = re.compile(r"UUID:\s*([0-9a-f-]{36})")


@dataclass
class LocalStack:
    """A stack started by ``infra/local/up`` in ``state_dir``; ``env`` is what ``state_dir/env`` exports."""

    state_dir: Path
    env: dict[str, str]

    @property
    def api_url(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def ui_url(self) -> str:
        return self.client.ui_url

    @property
    def client(self) -> PrefectApi:
        """The stack's Prefect API (its basic auth)."""
        return PrefectApi(self.api_url, self.env["PREFECT_API_AUTH_STRING"])

    def process_env(self, **extra: str) -> dict[str, str]:
        """This process's environment minus any other Prefect/S3 settings, plus the stack's client settings."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "KINSHIP_"))}
        base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
        return {**base, **self.env, "KINSHIP_SCRATCH": str(self.state_dir / "client-scratch"), **extra}

    def api(self, path: str, body: dict | None = None, method: str | None = None):
        """JSON answer of a Prefect REST call (POST when ``body`` is given); HTTP errors raise.

        Retryable answers (503 while the server's SQLite is locked, 429, 502, 504, 408) and requests broken on
        the way are retried with backoff, as Prefect's own client does, so a busy server never fails a caller.
        """
        return self.client(path, body, method)


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export KEY='value'`` lines of the stack's env file."""
    lines = [line.removeprefix("export ") for line in path.read_text().splitlines() if line.startswith("export ")]
    return {key: value.strip("'") for key, value in (line.split("=", 1) for line in lines)}


def _stack_env(state_dir: Path, random_ports: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {}), "KINSHIP_STACK_DIR": str(state_dir), "KINSHIP_VENV": str(Path(sys.prefix))}
    if random_ports:
        env["KINSHIP_STACK_PORTS"] = "random"
    return env


def up(state_dir: Path, random_ports: bool = True, timeout: float = 600, env: dict[str, str] | None = None) -> LocalStack:
    """``infra/local/up`` with its state in ``state_dir`` (idempotent) and ``env`` added to its environment (e.g.
    ``KINSHIP_CUDA_BUILD_WORKERS``); raises with its output if it fails."""
    done = subprocess.run([str(REPO / "infra" / "local" / "up")], env=_stack_env(state_dir, random_ports, env),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"infra/local/up failed:\n{done.stdout}{done.stderr}")
    return LocalStack(state_dir, read_env_file(state_dir / "env"))


def down(state_dir: Path) -> str:
    """``infra/local/down``: stops exactly the processes ``up`` recorded (by pid)."""
    done = subprocess.run([str(REPO / "infra" / "local" / "down")], env=_stack_env(state_dir, False),
                          capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr


def command(stack: LocalStack, argv: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command from the repository root with the stack's client environment."""
    done = subprocess.run(argv, cwd=REPO, env=stack.process_env(), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({done.returncode}):\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return done


def push(stack: LocalStack, folder: Path, uri: str) -> dict:
    """``kinship data push FOLDER URI --json``."""
    return json.loads(command(stack, [str(VENV_BIN / "kinship"), "data", "push", str(folder), uri, "--json"]).stdout)


def deploy(stack: LocalStack) -> str:
    """``prefect --no-prompt deploy --all`` from the repository root (reads prefect.yaml)."""
    return command(stack, [str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--all"], timeout=300).stdout


@dataclass
class RunOutcome:
    """One run waited on by a client (``prefect deployment run --watch`` or the follower): the flow run, its wall
    time from the client's view, the exit code."""

    flow_run_id: str | None
    seconds: float
    returncode: int
    output: str


def run_deployment(stack: LocalStack, name: str, parameters: dict | None = None, timeout: float = 1200) -> RunOutcome:
    """``prefect deployment run NAME --params JSON --watch``; returns when the run is final."""
    argv = [str(VENV_BIN / "prefect"), "deployment", "run", name, "--watch", "--watch-interval", "1"]
    return _timed_run(stack, argv, parameters, UUID_LINE, timeout)


STARTED_LINE = re.compile(r"^started \S+ run .* \(([0-9a-f-]{36})\)", re.MULTILINE)


def follow_deployment(stack: LocalStack, name: str, parameters: dict | None = None, timeout: float = 1200) -> RunOutcome:
    """``deployments/follow.py NAME --params JSON``, what ``make run`` waits on; returns when the run is final."""
    argv = [str(VENV_BIN / "python"), str(REPO / "deployments" / "follow.py"), name]
    return _timed_run(stack, argv, parameters, STARTED_LINE, timeout)


def _timed_run(stack: LocalStack, argv: list[str], parameters: dict | None, id_line: re.Pattern,
               timeout: float) -> RunOutcome:
    """Run a command that starts a flow run and waits for it; its wall time and the run id its output names."""
    if parameters:
        argv = [*argv, "--params", json.dumps(parameters)]
    started = time.perf_counter()
    done = command(stack, argv, timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    match = id_line.search(done.stdout)
    return RunOutcome(match.group(1) if match else None, seconds, done.returncode, done.stdout + done.stderr)


# ---------------------------------------------------------------- reading runs back


def flow_run(stack: LocalStack, flow_run_id: str) -> dict:
    return stack.api(f"/flow_runs/{flow_run_id}")


def child_runs(stack: LocalStack, parent_id: str) -> list[dict]:
    """Flow runs started as sub-flows of ``parent_id`` (through a task run of the parent)."""
    return stack.api("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}, "limit": 50})


def task_runs(stack: LocalStack, flow_run_id: str) -> list[dict]:
    return stack.api("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})


def artifacts(stack: LocalStack, flow_run_id: str) -> list[dict]:
    return stack.api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})


def run_id_of(children: list[dict]) -> str:
    """The kinship run id, from the ``run-<id>`` tag the parent puts on its children."""
    tags = {tag for child in children for tag in child.get("tags", []) if tag.startswith("run-")}
    if len(tags) != 1:
        raise ValueError(f"expected one run-<id> tag on the child runs, found {sorted(tags)}")
    return tags.pop().removeprefix("run-")
