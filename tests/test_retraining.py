"""Retraining that means something, on the session's real stack (issue 24): data set versions, the automation a
push triggers, champion and challenger on the same held-out pairs, and a run that finds nothing new.

One scenario, in order (each step needs the one before), on a store whose champion pointer is set aside for the
test (as on a new store; put back at the end):
1. version 1 of ``datasets/demo`` (120 families) is pushed: the ``retrain-on-push`` automation starts
   ``kinship/full`` on that version with no command, and its model becomes champion;
2. version 2 (version 1 plus 60 families) is pushed: the automation starts a run on version 2, which scores both
   models on the same held-out pairs of version 2 (every version-1 family keeps its role) and puts the decision table
   on its page;
3. the deployment run again on ``datasets/demo`` (latest = version 2, same code and configuration) ends at once
   with "nothing new since run X", Completed, with no child run.
The figures the README quotes (push to the triggered run's start, the "nothing new" run's wall time) are printed.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from datetime import datetime
from pathlib import Path

import pytest

from deployments import driver
from tests.flows_stack import TINY_PARAMETERS, kinship_stack  # noqa: F401  (session fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEPLOYMENT = "kinship/retrain-on-push"
# The plumbing, not the model: the paired decision itself is tested in test_champion_compare / test_challenge.
RETRAIN_PARAMETERS = {
    "train": {"epochs": 1, "image_size": 32, "width": 8, "embedding_dim": 32, "max_batches_per_epoch": 4},
    "precisions": ["fp32"],
    "engines": {"backend": "auto", "bench_batches": [1], "bench_seconds": 0.1, "warmup_seconds": 0.02},
    "required_margin": -1.0,
    "recipe": "",
}


def _subset(source: Path, dest: Path, families: set[str]) -> Path:
    """A copy of the data set at ``source`` with only ``families`` (their folders and relationship rows)."""
    for family in sorted(families):
        shutil.copytree(source / "train" / family, dest / "train" / family)
    with (source / "train_relationships.csv").open() as handle:
        rows = list(csv.reader(handle))
    kept = [row for row in rows[1:] if row[0].split("/")[0] in families]
    with (dest / "train_relationships.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([rows[0], *kept])
    return dest


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> tuple[Path, Path]:
    """Version 1 (120 families) and version 2 (the same 120 plus 60) of one synthetic data set."""
    from kinship.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("versions")
    full = root / "all"
    generate(SynthConfig(families=180, test_families=0, size=32, seed=7, images_per_person=(3, 3)), full)
    families = sorted(p.name for p in (full / "train").iterdir() if p.is_dir())
    return _subset(full, root / "v1", set(families[:120])), _subset(full, root / "v2", set(families))


def _triggered_run(stack, deployment_id: str, after: set[str], timeout: float = 120.0) -> dict:
    """The flow run the automation created for ``deployment_id`` that is not one of ``after``."""
    query = {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 20}
    return driver.wait_for(lambda: next((r for r in stack.api("/flow_runs/filter", query) if r["id"] not in after), None),
                           "the run the push triggered", timeout=timeout)


def _final(stack, flow_run_id: str, timeout: float = 900.0) -> dict:
    return driver.wait_for(lambda: (lambda run: run if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED",
                                                                             "CANCELLED") else None)(
        driver.flow_run(stack, flow_run_id)), f"flow run {flow_run_id} to end", timeout=timeout, interval=2.0)


def _versions(stack, name_uri: str) -> list[dict]:
    """``kinship data versions NAME --json`` on the stack."""
    done = driver.command(stack, [str(driver.VENV_BIN / "kinship"), "data", "versions", name_uri, "--json"])
    listed = json.loads(done.stdout)
    return listed["versions"] if isinstance(listed, dict) else listed


def _table(artifact: dict) -> list[dict]:
    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


def _seconds(text: str | None) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def new_store_champion(kinship_stack):
    """The session's champion pointer set aside for the test (a store that has none yet), put back after it."""
    from infra.local import localstack

    env = kinship_stack.stack.env
    client = localstack.s3_client(env["AWS_ENDPOINT_URL_S3"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    bucket, key = env["KINSHIP_BUCKET"], "champion.json"
    saved = client.get_object(Bucket=bucket, Key=key)
    body, metadata = saved["Body"].read(), saved.get("Metadata", {})
    client.delete_object(Bucket=bucket, Key=key)
    yield
    client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)


def test_push_triggers_paired_retraining_and_an_unchanged_run_ends_with_nothing_new(kinship_stack, versions,
                                                                                   new_store_champion) -> None:
    stack = kinship_stack.stack
    bucket = stack.env["KINSHIP_BUCKET"]
    name_uri = f"s3://{bucket}/datasets/demo"
    deployment = stack.api(f"/deployments/name/{DEPLOYMENT}")
    # the deployment's training knobs, as a user sets them in the UI (the trigger fills in dataset_uri)
    stack.api(f"/deployments/{deployment['id']}", {"parameters": {**deployment["parameters"], **RETRAIN_PARAMETERS}},
              method="PATCH")
    seen: set[str] = set()
    runs = []
    for version_dir in versions:
        pushed_at = time.time()
        pushed = driver.push(stack, version_dir, name_uri)
        assert pushed["new_version"] and pushed["latest_moved"], pushed
        run = _triggered_run(stack, deployment["id"], seen)
        seen.add(run["id"])
        assert run["parameters"]["dataset_uri"] == pushed["version_uri"]  # the exact version, not "latest"
        final = _final(stack, run["id"])
        assert final["state_type"] == "COMPLETED", final["state"]
        start = _seconds(final["start_time"])
        runs.append({"run": final, "pushed": pushed, "push_to_start_s": round(start - pushed_at, 1)})
    first, second = runs
    assert second["pushed"]["version"] != first["pushed"]["version"]
    assert {first["pushed"]["version"], second["pushed"]["version"]} <= {v["version"] for v in _versions(stack, name_uri)}

    # version 1 on a store without a champion: its model becomes champion (no pairs to compare yet)
    first_tables = {a["key"]: a for a in driver.artifacts(stack, first["run"]["id"]) if a["type"] == "table"}
    assert "kinship-champion-decision" not in first_tables and "kinship-champion-history" in first_tables
    history = _table(first_tables["kinship-champion-history"])
    assert history[0]["kind"] == "promoted" and history[0]["data_version"] == first["pushed"]["version"]
    # version 2: both models on the same held-out pairs of version 2, the decision on the run's page
    tables = {a["key"]: a for a in driver.artifacts(stack, second["run"]["id"]) if a["type"] == "table"}
    assert "kinship-champion-decision" in tables, sorted(tables)
    overall = _table(tables["kinship-champion-decision"])[0]
    assert overall["relationship"] == "all" and overall["pairs"] > 0 and overall["families"] >= 2
    assert {"champion_auc", "challenger_auc", "pixel_auc", "difference", "low", "high"} <= set(overall)
    assert overall["low"] <= overall["difference"] <= overall["high"]
    decided = _table(tables["kinship-champion-history"])[0]
    assert decided["run"] != history[0]["run"] and decided["kind"] in ("promoted", "refused")
    second["decision"] = {key: overall[key] for key in ("pairs", "families", "champion_auc", "challenger_auc",
                                                        "pixel_auc", "low", "high")}

    # unchanged data, code and configuration: nothing new, no child run
    began = time.time()
    again = driver.run_deployment(stack, DEPLOYMENT, {"dataset_uri": name_uri})
    nothing_new_s = time.time() - began
    assert again.returncode == 0, again.output[-4000:]
    assert driver.flow_run(stack, again.flow_run_id)["state_type"] == "COMPLETED"
    assert driver.child_runs(stack, again.flow_run_id) == []
    notes = [a for a in driver.artifacts(stack, again.flow_run_id) if a["key"] == "kinship-nothing-new"]
    assert notes and "nothing new since run" in notes[0]["data"], notes
    print(f"\nretraining figures: push -> triggered run start {[r['push_to_start_s'] for r in runs]} s; "
          f"'nothing new' run {nothing_new_s:.1f} s wall (client), versions "
          f"{[r['pushed']['version'] for r in runs]}; version 2's decision {second['decision']}")
