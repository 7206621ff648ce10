"""``infra/local/up`` and ``down`` for real: a whole stack in a temporary state folder on random ports."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.stack import REPO, localstack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "infra" / "local" / script)], env=env, capture_output=True, text=True, timeout=400)


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line.removeprefix("export ") for line in path.read_text().splitlines() if line.startswith("export ")]
    return {key: value.strip("'") for key, value in (line.split("=", 1) for line in lines)}


def test_up_is_idempotent_and_down_stops_only_its_own(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    env = {**os.environ, "KINSHIP_STACK_DIR": str(state_dir), "KINSHIP_STACK_PORTS": "random"}
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        first = run("up", env)
        assert first.returncode == 0, first.stdout + first.stderr
        pids = json.loads((state_dir / "state.json").read_text())["pids"]
        assert sorted(pids) == ["prefect-server", "seaweedfs", "worker-cuda", "worker-orchestrator", "worker-rocm"]
        assert all(localstack.owns(entry["pid"], entry["argv"]) for entry in pids.values())
        for private in ("env", "secrets.json"):
            assert stat.S_IMODE((state_dir / private).stat().st_mode) == 0o600
        client_env = read_env_file(state_dir / "env")
        check_no_secret_on_command_lines(pids, client_env["AWS_SECRET_ACCESS_KEY"])
        check_s3(client_env)
        check_pools(client_env)

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
    finally:
        run("down", env)
        bystander.kill()
        bystander.wait()


def check_no_secret_on_command_lines(pids: dict, secret: str) -> None:
    """Any local user can read /proc/PID/cmdline: the S3 secret must not be on one."""
    for name, entry in pids.items():
        argv = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().decode(errors="replace")
        assert argv and secret not in argv, f"{name}'s command line holds the S3 secret"


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
    assert limits == {"rocm": ("process", 1), "cuda": ("process", 1), "orchestrator": ("process", None)}
    assert localstack.prefect_api(api, "/work_pools/filter", None, {"limit": 20}) is None  # no auth, no answer
    for pool in limits:
        assert localstack.worker_online(api, pool, f"local-{pool}", auth)
