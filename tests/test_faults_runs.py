"""Faults and concurrency on the real stack (SeaweedFS, Prefect server, one process worker per pool).

- The champion pointer is a compare-and-swap: eight promotions at once against real SeaweedFS (and a local
  store) always end on the best model.
- Three ``kinship/full`` runs started together (different seeds, epochs, precisions) all complete, their S3
  keys and scratch folders stay apart, and the champion ends on the best validation AUC of the three.
- A real fault in one precision's input (the stored INT8 calibration set damaged, a run served from the
  cache that names it): the other precisions are built and reported, INT8 is a ``failed`` row with the
  reason, and the run completes.
- Parameters of the wrong type or with unknown names, sent with ``prefect deployment run``, are refused.
- No secret (S3 keys, Prefect auth) in run logs, artifacts, stored JSON and markdown, prefect.yaml,
  deployments, work pools, or the stack's server and worker log files.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from deployments import driver
from kinship import champion
from kinship.pipeline import open_local_store
from kinship.storage import S3Store, StoreSettings
from tests.flows_stack import TINY_PARAMETERS, kinship_stack  # noqa: F401  (session fixture)
from tests.stack import weed_server  # noqa: F401  (session fixture)
from tests.test_flows_integration import check_ref, flow_name, get_object, manifests, s3

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = TINY_PARAMETERS["train"]
# Distinct seeds (none 0, the session's first run): no run reuses another's model or calibration set.
THREE_RUNS = {
    "a": {**TINY_PARAMETERS, "train": {**TINY_TRAIN, "seed": 1}, "precisions": ["fp32"]},
    "b": {**TINY_PARAMETERS, "train": {**TINY_TRAIN, "seed": 2, "epochs": 2}, "precisions": ["fp32", "fp16"]},
    "c": {**TINY_PARAMETERS, "train": {**TINY_TRAIN, "seed": 3}, "precisions": ["fp32", "int8"]},
}


# ---------------------------------------------------------------- the champion's compare-and-swap


def _candidate(run_id: str, auc: float) -> dict:
    ref = {"uri": f"s3://kinship/runs/{run_id}/train/model.onnx", "key": "model.onnx", "sha256": "0" * 64, "size": 1}
    return {"run_id": run_id, "metrics": {"best_val_auc": auc}, "dataset": {}, "train_config": {},
            "artifacts": {"model.onnx": ref, "model.pt": ref}, "manifest": ref}


BUILT = {"manifest": {}, "engines": [{"variant": "fp32", "status": "built"}]}  # a model with a deployable engine


def _promote_all_at_once(stores: list, aucs: list[float]) -> list[dict]:
    """Every store promotes its candidate at the same instant (a barrier), one thread each."""
    barrier, results = threading.Barrier(len(stores)), [None] * len(stores)

    def promote(index: int) -> None:
        barrier.wait()
        results[index] = champion.promote_if_better(stores[index], _candidate(f"run-{index}", aucs[index]), BUILT)

    threads = [threading.Thread(target=promote, args=(index,)) for index in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _check_swaps(results: list[dict], aucs: list[float], final: dict) -> None:
    assert final["val_auc"] == max(aucs) and final["run_id"] == f"run-{aucs.index(max(aucs))}"
    promoted = [r for r in results if r["promoted"]]
    for result in promoted:  # every write replaced a strictly worse pointer (or none)
        previous = result["previous"]
        assert previous is None or previous["val_auc"] < result["candidate_auc"], result
    assert sum(r["previous"] is None for r in promoted) == 1  # only one run ever saw "no champion yet"


def test_concurrent_promotions_on_seaweedfs_end_on_the_best_model(weed_server, tmp_path) -> None:  # noqa: F811
    settings = StoreSettings(endpoint_url=weed_server.endpoint, region=weed_server.region, bucket=weed_server.bucket,
                             scratch=tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", weed_server.access_key)
        patch.setenv("AWS_SECRET_ACCESS_KEY", weed_server.secret_key)
        for round_ in range(4):  # the read-then-write this replaced lost 12 of 15 such rounds
            stores = [S3Store(replace(settings, prefix=f"cas-{round_}")) for _ in range(8)]
            aucs = [0.5 + 0.05 * ((index * 5 + round_) % 8) for index in range(8)]
            results = _promote_all_at_once(stores, aucs)
            _check_swaps(results, aucs, champion.read_champion(stores[0]))


def test_concurrent_promotions_on_a_local_store_end_on_the_best_model(tmp_path) -> None:
    stores = [open_local_store(tmp_path) for _ in range(6)]
    aucs = [0.61, 0.74, 0.52, 0.8, 0.66, 0.7]
    results = _promote_all_at_once(stores, aucs)
    _check_swaps(results, aucs, champion.read_champion(stores[0]))


# ---------------------------------------------------------------- three runs at once


def _delete(stack, key: str) -> None:
    s3(stack).delete_object(Bucket=stack.env["KINSHIP_BUCKET"], Key=key)


def _run_times(stack, flow_run: dict) -> dict:
    children = driver.child_runs(stack, flow_run["id"])
    return {"parent_s": round(flow_run["total_run_time"], 1),
            **{f"{flow_name(stack, c)}_s": round(c["total_run_time"], 1) for c in children}}


@pytest.fixture(scope="module")
def three(kinship_stack):  # noqa: F811
    """Three ``kinship/full`` runs started at the same moment, from no champion."""
    stack = kinship_stack.stack
    _delete(stack, champion.CHAMPION_KEY)  # the comparison starts from no champion: the best of these three wins
    with ThreadPoolExecutor(len(THREE_RUNS)) as pool:
        futures = {name: pool.submit(driver.run_deployment, stack, "kinship/full", parameters)
                   for name, parameters in THREE_RUNS.items()}
        outcomes = {name: future.result() for name, future in futures.items()}
    runs = {}
    for name, outcome in outcomes.items():
        assert outcome.returncode == 0, outcome.output[-4000:]
        parent = driver.flow_run(stack, outcome.flow_run_id)
        children = driver.child_runs(stack, outcome.flow_run_id)
        run_id = driver.run_id_of(children)
        runs[name] = {"outcome": outcome, "parent": parent, "children": children, "run_id": run_id,
                      "manifests": manifests(stack, run_id)}
    figures = {name: {"client_wall_s": round(run["outcome"].seconds, 1), **_run_times(stack, run["parent"]),
                      "val_auc": run["manifests"]["train"]["metrics"]["best_val_auc"]} for name, run in runs.items()}
    print("\nthree concurrent kinship/full runs:", json.dumps(figures, indent=1))
    return {"stack": stack, "runs": runs, "hosts": kinship_stack.stack.state_dir / "hosts"}


def _when(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def test_three_runs_at_once_all_complete_each_child_on_its_pool(three) -> None:
    stack = three["stack"]
    for run in three["runs"].values():
        assert run["parent"]["state_type"] == "COMPLETED" and run["parent"]["work_pool_name"] == "orchestrator"
        assert {flow_name(stack, c): (c["work_pool_name"], c["state_type"]) for c in run["children"]} == {
            "kinship-train": ("rocm", "COMPLETED"), "kinship-engines": ("cuda", "COMPLETED")}
    # One job at a time per GPU pool: the three trainings ran one after another, never overlapping.
    spans = sorted((_when(c["start_time"]), _when(c["end_time"])) for run in three["runs"].values()
                   for c in run["children"] if c["work_pool_name"] == "rocm")
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def test_three_runs_keep_their_s3_keys_and_scratch_folders_apart(three) -> None:
    stack, runs = three["stack"], three["runs"]
    assert len({run["run_id"] for run in runs.values()}) == 3
    client, keys = s3(stack), {}
    for name, run in runs.items():
        train, engines = run["manifests"]["train"], run["manifests"]["engines"]
        refs = list(train["artifacts"].values()) + list(engines["report"].values())
        refs += [ref for engine in engines["engines"] for ref in engine["artifacts"].values()]
        assert all(f"/runs/{run['run_id']}/" in ref["uri"] for ref in refs), name  # nothing reused from another run
        assert sorted(e["variant"] for e in engines["engines"]) == sorted(THREE_RUNS[name]["precisions"])
        for ref in refs:
            check_ref(client, ref)
        keys[name] = {ref["uri"] for ref in refs}
    assert not (keys["a"] & keys["b"]) and not (keys["a"] & keys["c"]) and not (keys["b"] & keys["c"])
    for host in ("rocm", "cuda"):
        work = three["hosts"] / host / "scratch" / "work"
        assert not any((work / run["run_id"]).exists() for run in runs.values())  # each run cleaned its own folder
    cached = three["hosts"] / "cuda" / "scratch" / "cache" / "sha256"
    for run in runs.values():  # each engine build read its own run's model, fetched through the store
        sha = run["manifests"]["train"]["artifacts"]["model.onnx"]["sha256"]
        assert (cached / sha[:2] / sha).is_file()


def test_the_champion_ends_on_the_best_of_the_three(three) -> None:
    stack, runs = three["stack"], three["runs"]
    aucs = {run["run_id"]: run["manifests"]["train"]["metrics"]["best_val_auc"] for run in runs.values()}
    bucket = stack.env["KINSHIP_BUCKET"]
    pointer = json.loads(get_object(s3(stack), f"s3://{bucket}/{champion.CHAMPION_KEY}")[0])
    assert pointer["val_auc"] == max(aucs.values()) and aucs[pointer["run_id"]] == pointer["val_auc"]
    summaries = {run_id: json.loads(get_object(s3(stack), f"s3://{bucket}/runs/{run_id}/summary.json")[0])
                 for run_id in aucs}
    reasons = [summary["reason"] for summary in summaries.values() if summary["promoted"]]
    assert sum("no champion yet" in reason for reason in reasons) == 1, reasons
    assert all("no champion yet" in reason or "beats" in reason for reason in reasons), reasons
    # A promoted run's recorded predecessor is worse; a kept one is no better than the champion of the end.
    assert pointer["previous"] is None or pointer["previous"]["val_auc"] < pointer["val_auc"]
    for run_id, summary in summaries.items():
        if not summary["promoted"]:
            assert aucs[run_id] <= pointer["val_auc"] and "champion kept" in summary["reason"]


# ---------------------------------------------------------------- one precision fails


def _damage(stack, uri: str) -> None:
    """Flip bytes inside a stored object, keeping its size and its recorded sha256: bit rot in the store."""
    client = s3(stack)
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    answer = client.get_object(Bucket=bucket, Key=key)
    body = bytearray(answer["Body"].read())
    middle = len(body) // 2
    body[middle:middle + 64] = bytes(b ^ 0xFF for b in body[middle:middle + 64])
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=answer["Metadata"])


@pytest.fixture(scope="module")
def damaged(three):
    """Run b again with INT8 added, after its stored calibration set was damaged.

    The rerun is served from the cache for training and calibration (same inputs), so its manifest names
    run b's calibration object, which no engine host ever fetched (run b built no INT8).
    """
    stack, run_b = three["stack"], three["runs"]["b"]
    calibration = run_b["manifests"]["train"]["artifacts"]["calibration.npz"]
    _damage(stack, calibration["uri"])
    outcome = driver.run_deployment(stack, "kinship/full", {**THREE_RUNS["b"], "precisions": ["fp32", "fp16", "int8"]})
    assert outcome.returncode == 0, outcome.output[-4000:]
    children = {flow_name(stack, c): c for c in driver.child_runs(stack, outcome.flow_run_id)}
    run_id = driver.run_id_of(list(children.values()))
    print(f"\nrun with a damaged calibration set: {outcome.seconds:.1f} s (client view)")
    return {"stack": stack, "outcome": outcome, "children": children, "run_id": run_id, "calibration": calibration,
            "manifests": manifests(stack, run_id)}


def test_a_damaged_int8_input_fails_int8_only_and_the_run_completes(damaged) -> None:
    stack, children = damaged["stack"], damaged["children"]
    assert driver.flow_run(stack, damaged["outcome"].flow_run_id)["state_type"] == "COMPLETED"
    assert all(child["state_type"] == "COMPLETED" for child in children.values())
    assert damaged["manifests"]["train"]["artifacts"]["calibration.npz"] == damaged["calibration"]  # from the cache
    engines = damaged["manifests"]["engines"]
    status = {e["variant"]: (e["status"], e["reason"]) for e in engines["engines"]}
    assert status["fp32"][0] == status["fp16"][0] == "built"
    assert status["int8"][0] == "failed"
    assert "sha256 mismatch" in status["int8"][1] and damaged["calibration"]["uri"] in status["int8"][1]
    assert not engines["engines"][2]["artifacts"]  # nothing stored that looks like an INT8 engine
    tasks = {t["name"]: t for t in driver.task_runs(stack, children["kinship-engines"]["id"])}
    backend = engines["backend"]
    assert tasks[f"engine int8 ({backend})"]["state_type"] == "FAILED"
    assert tasks[f"engine int8 ({backend})"]["run_count"] == 1  # damaged content is not worth retrying
    assert {tasks[f"engine {v} ({backend})"]["state_type"] for v in ("fp32", "fp16")} == {"COMPLETED"}
    print(f"int8 failed with: {status['int8'][1]}")


def test_the_reports_mark_the_failed_precision_with_its_reason(damaged) -> None:
    stack, engines = damaged["stack"], damaged["manifests"]["engines"]
    client = s3(stack)
    report = json.loads(get_object(client, engines["report"]["report.json"]["uri"])[0])
    rows = {row["variant"]: row for row in report["results"]}
    assert rows["int8"]["status"] == "failed" and "sha256 mismatch" in rows["int8"]["reason"]
    assert rows["int8"]["validation"] is None and not rows["int8"]["bench"]  # no figures for what did not run
    assert all(rows[v]["status"] == "ok" and rows[v]["validation"]["auc"] is not None for v in ("fp32", "fp16"))
    assert report["context"].get("title")  # the run-wide facts survive a failed row
    parent_artifacts = {a["key"]: a for a in driver.artifacts(stack, damaged["outcome"].flow_run_id) if a.get("key")}
    markdown = parent_artifacts["kinship-report"]["data"]
    assert f"| int8 | {engines['backend']} | failed |" in markdown and "sha256 mismatch" in markdown
    assert f"| fp16 | {engines['backend']} | ok |" in markdown
    logs = _logs(stack, [damaged["children"]["kinship-engines"]["id"]])
    assert any("int8 failed, the other precisions go on" in line["message"] for line in logs)


# ---------------------------------------------------------------- parameters refused


def _runs_of(stack, deployment: str) -> int:
    found = stack.api(f"/deployments/name/{deployment}")
    return stack.api("/flow_runs/count", {"deployments": {"id": {"any_": [found["id"]]}}})


def _prefect_run(stack, *params: str, watch: bool = False):
    argv = [str(driver.VENV_BIN / "prefect"), "deployment", "run", "kinship/full"]
    for param in params:
        argv += ["--param", param]
    return driver.command(stack, argv + (["--watch"] if watch else []), timeout=300, check=False)


@pytest.mark.parametrize("param, names", [
    ('train={"epochs": "many"}', ["epochs", "many"]),
    ('precisions="fp99"', ["precisions", "fp99"]),
    ('precisions=["fp32", "int3"]', ["int3"]),
    ('engines={"bench_batches": "lots"}', ["bench_batches", "lots"]),
    ('engines={"backend": "cuda-magic"}', ["backend", "cuda-magic"]),
])
def test_parameters_of_the_wrong_type_are_refused_before_any_run(kinship_stack, param, names) -> None:  # noqa: F811
    stack = kinship_stack.stack
    before = _runs_of(stack, "kinship/full")
    done = _prefect_run(stack, param)
    output = done.stdout + done.stderr
    print(f"\nprefect deployment run kinship/full --param '{param}' -> exit {done.returncode}: {output.strip()[-400:]}")
    assert done.returncode != 0
    assert "Validation failed" in output or "validation" in output.lower(), output
    assert all(name in output for name in names), output
    assert _runs_of(stack, "kinship/full") == before  # no flow run was created


def test_every_deployment_enforces_its_parameter_schema(kinship_stack) -> None:  # noqa: F811
    deployments = kinship_stack.stack.api("/deployments/filter", {"limit": 50})
    assert {d["name"] for d in deployments} >= {"train", "engines", "full", "retrain-nightly"}
    assert all(d["enforce_parameter_schema"] for d in deployments)
    full = next(d for d in deployments if d["name"] == "full")
    schema = json.dumps(full["parameter_openapi_schema"])
    assert '"int8-qdq"' in schema and '"fp32"' in schema  # precisions are an enum, not free text
    assert '"onnxruntime"' in schema and '"tensorrt"' in schema  # so are backends


# ---------------------------------------------------------------- secrets


def _paged(stack, path: str, body: dict) -> list[dict]:
    found, offset = [], 0
    while True:
        page = stack.api(path, {**body, "limit": 200, "offset": offset})
        found += page
        if len(page) < 200:
            return found
        offset += 200


def _logs(stack, flow_run_ids: list[str]) -> list[dict]:
    return _paged(stack, "/logs/filter", {"logs": {"flow_run_id": {"any_": flow_run_ids}}})


def _stored_text(stack) -> dict[str, str]:
    """Every JSON and markdown object in the bucket, by key."""
    client, bucket = s3(stack), stack.env["KINSHIP_BUCKET"]
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", []) if item["Key"].endswith((".json", ".md"))]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", "replace") for key in keys}


def test_no_secret_in_logs_artifacts_stored_json_or_deployments(three, damaged) -> None:
    stack = three["stack"]
    secrets = {name: stack.env[name] for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")}
    secrets["PREFECT_API_AUTH_STRING password"] = stack.env["PREFECT_API_AUTH_STRING"].split(":", 1)[1]
    secrets["PostgreSQL password"] = json.loads((stack.state_dir / "secrets.json").read_text())["postgres_password"]
    assert all(len(value) >= 12 for value in secrets.values())  # real generated secrets, not placeholders
    flow_runs = _paged(stack, "/flow_runs/filter", {})
    places = {
        "flow-run logs": json.dumps(_logs(stack, [run["id"] for run in flow_runs])),
        "artifacts": json.dumps(_paged(stack, "/artifacts/filter", {})),
        "flow-run parameters and job variables": json.dumps(
            [{"parameters": r["parameters"], "job_variables": r.get("job_variables")} for r in flow_runs]),
        "deployments": json.dumps(stack.api("/deployments/filter", {"limit": 50})),
        "work pools": json.dumps(stack.api("/work_pools/filter", {})),
        "variables": json.dumps(stack.api("/variables/filter", {})),
        "prefect.yaml": (REPO / "prefect.yaml").read_text(),
        **{f"log {log.name}": log.read_text(errors="replace") for log in (stack.state_dir / "logs").glob("*.log")},
        **{f"s3 {key}": text for key, text in _stored_text(stack).items()},
    }
    assert len(places["flow-run logs"]) > 10_000 and '"kinship-report"' in places["artifacts"]  # really looked
    assert sum(key.endswith("manifest.json") for key in places) >= 8
    assert {"log worker-rocm.log", "log worker-cuda.log", "log prefect-server.log"} <= set(places)
    # The run page's plots are embedded (data: URLs), not presigned links that carry the access key id.
    assert "data:image/png;base64," in places["artifacts"] and "X-Amz-Credential" not in places["artifacts"]
    leaks = [(place, name) for place, text in places.items() for name, value in secrets.items() if value in text]
    assert not leaks
