"""The engines stage fanned out (``fan_out=true``): one ``kinship-engine/build`` child run per precision on the
``cuda`` pool's ``builds`` queue, taken by the stack's two GPU workers, each with its own scratch folder, then one
benchmark and one merged report in the engines run. The same precisions built in sequence first, for the time
beside it."""

from __future__ import annotations

import json

import pytest

from deployments import driver
from tests.flows_stack import TINY_PARAMETERS, kinship_stack  # noqa: F401  (session fixture)
from tests.test_flows_integration import files_below, s3

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def engines_run(stack, run_id: str, train_manifest: str, fan_out: bool) -> driver.RunOutcome:
    parameters = {"train_manifest": train_manifest, "precisions": TINY_PARAMETERS["precisions"],
                  "engines": TINY_PARAMETERS["engines"], "run_id": run_id, "force": True, "fan_out": fan_out}
    outcome = driver.run_deployment(stack, "kinship-engines/engines", parameters)
    assert outcome.returncode == 0, outcome.output[-4000:]
    return outcome


def test_each_precision_is_its_own_child_on_a_gpu_worker_and_the_report_merges_them(kinship_stack) -> None:
    stack = kinship_stack.stack
    run_id = driver.run_id_of(driver.child_runs(stack, kinship_stack.first.flow_run_id))
    train_manifest = f"s3://{stack.env['KINSHIP_BUCKET']}/runs/{run_id}/train/manifest.json"
    sequential = engines_run(stack, f"{run_id}-seq", train_manifest, fan_out=False)
    fanned = engines_run(stack, f"{run_id}-fan", train_manifest, fan_out=True)
    print(f"engines for {TINY_PARAMETERS['precisions']}: in sequence on one cuda worker {sequential.seconds:.1f} s, "
          f"fanned out to two GPU workers {fanned.seconds:.1f} s (2 shared CPU cores: no speed-up expected)")

    assert driver.child_runs(stack, sequential.flow_run_id) == []  # in sequence: tasks, no child runs
    children = driver.child_runs(stack, fanned.flow_run_id)
    assert sorted(child["name"].split("-")[1] for child in children) == sorted(TINY_PARAMETERS["precisions"])
    assert all(c["state_type"] == "COMPLETED" and c["work_pool_name"] == "cuda" and c["work_queue_name"] == "builds"
               for c in children), [(c["name"], c["state_type"], c["work_queue_name"]) for c in children]
    logs = {name: (stack.state_dir / "logs" / f"worker-{name}.log").read_text(errors="replace")
            for name in ("cuda-build0", "cuda-build1", "cuda")}
    # each taken by exactly one GPU worker, never by the engines worker. Two idle workers may both try a new run:
    # the server lets one move it to Pending and tells the other to abort ("Aborted submission"), which runs nothing
    takers = {child["id"]: [name for name, text in logs.items() if f"submitting flow run '{child['id']}'" in text
                            and f"Aborted submission of flow run '{child['id']}'" not in text]
              for child in children}
    assert sorted(map(tuple, takers.values())) == [("cuda-build0",), ("cuda-build1",)], takers

    hosts = stack.state_dir / "hosts"
    scratch = {name: files_below(hosts / name / "scratch") for name in ("cuda-build0", "cuda-build1", "cuda")}
    inodes = {name: {(p.stat().st_dev, p.stat().st_ino) for p in paths} for name, paths in scratch.items()}
    assert not inodes["cuda-build0"] & inodes["cuda-build1"] and not inodes["cuda"] & (inodes["cuda-build0"] |
                                                                                        inodes["cuda-build1"])
    for name in ("cuda-build0", "cuda-build1"):  # each child cleaned its own work folder after uploading
        assert not list((hosts / name / "scratch" / "work").glob(f"{run_id}-fan*"))

    body = s3(stack).get_object(Bucket=stack.env["KINSHIP_BUCKET"], Key=f"runs/{run_id}-fan/engines/manifest.json")["Body"]
    manifest = json.loads(body.read())
    assert sorted(engine["variant"] for engine in manifest["engines"]) == sorted(TINY_PARAMETERS["precisions"])
    assert all(engine["status"] == "built" for engine in manifest["engines"])
    assert len(manifest["rows"]) == len(TINY_PARAMETERS["precisions"])  # one merged report, a row per precision
    assert all(row["bench_batches"] for row in manifest["rows"])  # every built engine benchmarked, side by side
    assert manifest["report"]["report.md"]["uri"].endswith(f"runs/{run_id}-fan/engines/report/report.md")
