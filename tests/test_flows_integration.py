"""``kinship/full`` for real: SeaweedFS + Prefect server + one worker per pool on 127.0.0.1 (``infra/local/up``).

One run on a tiny configuration, then: the run and its nested children completed, each child on its own
pool; every object the manifests name is in S3 with the recorded sha256; the report artifacts exist
through the API; the two workers' scratch folders share nothing; a retried parent's idempotency key
finds the existing child; a second run reuses cached work; the nightly deployment has scheduled runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from deployments import driver
from tests.flows_stack import TINY_PARAMETERS, kinship_stack  # noqa: F401  (session fixture)
from tests.stack import localstack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def first(kinship_stack):
    stack, outcome = kinship_stack.stack, kinship_stack.first
    parent = driver.flow_run(stack, outcome.flow_run_id)
    children = driver.child_runs(stack, outcome.flow_run_id)
    return {"stack": stack, "parent": parent, "children": children, "run_id": driver.run_id_of(children)}


def flow_name(stack, run: dict) -> str:
    return stack.api(f"/flows/{run['flow_id']}")["name"]


def s3(stack):
    env = stack.env
    return localstack.s3_client(env["AWS_ENDPOINT_URL_S3"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])


def get_object(client, uri: str) -> tuple[bytes, dict]:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    answer = client.get_object(Bucket=bucket, Key=key)
    return answer["Body"].read(), answer.get("Metadata", {})


def check_ref(client, ref: dict) -> None:
    body, metadata = get_object(client, ref["uri"])
    assert len(body) == ref["size"], ref["uri"]
    assert hashlib.sha256(body).hexdigest() == ref["sha256"] == metadata.get("sha256"), ref["uri"]


def manifests(stack, run_id: str) -> dict:
    client = s3(stack)
    bucket = stack.env["KINSHIP_BUCKET"]
    found = {}
    for half in ("train", "engines"):
        body, metadata = get_object(client, f"s3://{bucket}/runs/{run_id}/{half}/manifest.json")
        assert hashlib.sha256(body).hexdigest() == metadata["sha256"]
        found[half] = json.loads(body)
    return found


def test_run_and_its_nested_children_completed_each_on_its_own_pool(first) -> None:
    stack, parent, children = first["stack"], first["parent"], first["children"]
    assert parent["state_type"] == "COMPLETED"
    assert parent["work_pool_name"] == "orchestrator"
    assert parent["name"] == "tiny-e1-32px-w8-b4-fp32+int8"  # named from data set and configuration
    assert {flow_name(stack, child): child["work_pool_name"] for child in children} == {
        "kinship-train": "rocm", "kinship-engines": "cuda"}
    assert all(child["state_type"] == "COMPLETED" for child in children)
    assert all(child["parent_task_run_id"] for child in children)  # nested under the parent's task runs
    parent_tasks = {task["id"] for task in driver.task_runs(stack, parent["id"])}
    assert {child["parent_task_run_id"] for child in children} <= parent_tasks
    assert all(f"run-{first['run_id']}" in child["tags"] for child in children)


def test_every_object_named_in_the_manifests_is_in_s3_with_its_sha256(first) -> None:
    stack, run_id = first["stack"], first["run_id"]
    found = manifests(stack, run_id)
    train, engines = found["train"], found["engines"]
    assert {"model.pt", "model.onnx", "model.encoder.onnx", "model.head.onnx", "calibration.npz"} <= set(train["artifacts"])
    refs = list(train["artifacts"].values()) + list(engines["report"].values())
    refs += [ref for engine in engines["engines"] for ref in engine["artifacts"].values()]
    assert {engine["variant"]: engine["status"] for engine in engines["engines"]} == {"fp32": "built", "int8": "built"}
    client = s3(stack)
    for ref in refs:
        check_ref(client, ref)
    assert train["host"]["work_pool"] == "rocm" and engines["host"]["work_pool"] == "cuda"
    assert engines["train_manifest"]["uri"].endswith(f"runs/{run_id}/train/manifest.json")
    report, _ = get_object(client, f"s3://{stack.env['KINSHIP_BUCKET']}/runs/{run_id}/report.md")
    assert f"# kinship run {run_id}" in report.decode()


def test_report_table_markdown_link_and_progress_artifacts_through_the_api(first) -> None:
    stack, parent, children = first["stack"], first["parent"], first["children"]
    by_key = {a["key"]: a for a in driver.artifacts(stack, parent["id"]) if a.get("key")}
    markdown, table = by_key["kinship-report"], by_key["kinship-engines"]
    assert markdown["type"] == "markdown" and f"# kinship run {first['run_id']}" in markdown["data"]
    assert table["type"] == "table"
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert sorted(row["variant"] for row in rows) == ["fp32", "int8"]
    assert all(row["status"] == "ok" and row["pairs_per_s"] > 0 for row in rows)
    # Link artifacts are stored as markdown links.
    links = [a["data"] for a in driver.artifacts(stack, parent["id"]) if not a.get("key") and "](s3://" in str(a["data"])]
    assert any(link.endswith(f"(s3://{stack.env['KINSHIP_BUCKET']}/runs/{first['run_id']}/report.md)") for link in links)
    assert any(link.endswith(f"(s3://{stack.env['KINSHIP_BUCKET']}/champion.json)") for link in links)
    progress = [a for child in children for a in driver.artifacts(stack, child["id"]) if a["type"] == "progress"]
    assert progress and all(float(a["data"]) == 100.0 for a in progress)


def files_below(root: Path) -> list[Path]:
    return [Path(folder) / name for folder, _, names in os.walk(root) for name in names]


def test_the_two_workers_scratch_folders_share_no_files(first, kinship_stack) -> None:
    hosts = kinship_stack.stack.state_dir / "hosts"
    rocm, cuda = files_below(hosts / "rocm" / "scratch"), files_below(hosts / "cuda" / "scratch")
    assert rocm and cuda
    assert not any(path.is_symlink() for path in rocm + cuda)
    inodes = lambda paths: {(p.stat().st_dev, p.stat().st_ino) for p in paths}  # noqa: E731
    assert not inodes(rocm) & inodes(cuda)  # no hard link either: each host has its own copies
    # The engine host got the model through the store: a verified copy in its own hash cache.
    onnx_sha = manifests(kinship_stack.stack, first["run_id"])["train"]["artifacts"]["model.onnx"]["sha256"]
    assert (hosts / "cuda" / "scratch" / "cache" / "sha256" / onnx_sha[:2] / onnx_sha).is_file()
    assert not (hosts / "cuda" / "scratch" / "work" / first["run_id"]).exists()  # cleaned after upload


def test_a_retried_parent_finds_its_child_instead_of_starting_another(first) -> None:
    stack, parent = first["stack"], first["parent"]
    train_child = next(c for c in first["children"] if c["work_pool_name"] == "rocm")
    deployment = stack.api("/deployments/name/kinship-train/train")
    again = stack.api(f"/deployments/{deployment['id']}/create_flow_run",
                      {"idempotency_key": f"{parent['id']}:train:0", "parameters": train_child["parameters"]})
    assert again["id"] == train_child["id"]


def test_a_second_run_with_the_same_inputs_reuses_cached_work(first, kinship_stack) -> None:
    stack = first["stack"]
    second = driver.run_deployment(stack, "kinship/full", TINY_PARAMETERS)
    assert second.returncode == 0, second.output[-4000:]
    children = {flow_name(stack, c): c for c in driver.child_runs(stack, second.flow_run_id)}
    states = {name: {t["name"]: t["state_name"] for t in driver.task_runs(stack, child["id"])}
              for name, child in children.items()}
    train_states, engine_states = states["kinship-train"], states["kinship-engines"]
    cached = [name for name, state in train_states.items() if state == "Cached"]
    assert any(name.startswith("train ") for name in cached), train_states
    assert any(name.startswith("export") for name in cached), train_states
    backend = manifests(stack, first["run_id"])["engines"]["backend"]
    assert sorted(n for n, s in engine_states.items() if n.startswith("engine ") and s == "Cached") == [
        f"engine fp32 ({backend})", f"engine int8 ({backend})"], engine_states
    old = manifests(stack, first["run_id"])["train"]
    new = manifests(stack, driver.run_id_of(list(children.values())))["train"]
    assert new["artifacts"]["model.pt"] == old["artifacts"]["model.pt"]  # the stored model, not a retrained one
    assert new["run_id"] != old["run_id"]


def test_the_nightly_deployment_has_scheduled_runs(first) -> None:
    stack = first["stack"]
    deployment = stack.api("/deployments/name/kinship/retrain-nightly")
    scheduled = {"deployments": {"id": {"any_": [deployment["id"]]}},
                 "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 50}
    runs = driver.wait_for(lambda: stack.api("/flow_runs/filter", scheduled),
                           "scheduled runs of kinship/retrain-nightly", timeout=120)
    assert all(run["expected_start_time"][11:16] == "03:00" for run in runs)
    assert all(run["work_pool_name"] == "orchestrator" for run in runs)


def test_a_failed_child_fails_the_parent_and_promotes_nothing(first) -> None:
    stack = first["stack"]
    client, bucket = s3(stack), stack.env["KINSHIP_BUCKET"]
    champion_before, _ = get_object(client, f"s3://{bucket}/champion.json")
    missing = {**TINY_PARAMETERS, "dataset_uri": f"s3://{bucket}/datasets/never-pushed"}
    outcome = driver.run_deployment(stack, "kinship/full", missing)
    assert outcome.returncode == 1
    assert driver.flow_run(stack, outcome.flow_run_id)["state_type"] == "FAILED"
    # the parent resolves the data set version before any child run (issue 24): a missing one fails it there
    assert driver.child_runs(stack, outcome.flow_run_id) == []
    resolve = next(t for t in driver.task_runs(stack, outcome.flow_run_id) if t["name"].startswith("resolve inputs"))
    assert resolve["run_count"] == 1  # a missing data set is a mistake, not worth retrying
    assert "no data set at" in resolve["state"]["message"] and "never-pushed" in resolve["state"]["message"]
    assert get_object(client, f"s3://{bucket}/champion.json")[0] == champion_before
