#!/usr/bin/env python3
"""Orchestration overhead: wall time of ``kinship/full`` (Prefect, three pools, S3) vs ``kinship pipeline`` (one process).

Both run the same tiny configuration on the same synthetic data set, each after one untimed warm-up
(image caches filled, bytecode compiled). The timed ``kinship/full`` runs pass ``force: true`` so no
stage is served from the Prefect cache: both sides do all the work. Wall time is what a person waits:
from the command's start to its return (``prefect deployment run --watch`` / ``kinship pipeline``).

The report also splits the flow's time: how long each flow run waited for its worker to pick it up and
start (created -> running), and how long it ran.

Usage, from the repository root (starts a private stack on random ports and stops it by pid)::

    .venv/bin/python benchmarks/orchestration_overhead.py [--repeats 2] [--json]
    .venv/bin/python benchmarks/orchestration_overhead.py --families 200 --epochs 2 --max-batches-per-epoch 0

The second form makes the work larger while the orchestration cost (worker pick-up, process start,
store transfers) stays about the same, to see where the ratio crosses the goal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployments import driver  # noqa: E402

DATA_URI = "s3://kinship/datasets/bench"
TRAIN = {"epochs": 1, "image_size": 32, "width": 8, "embedding_dim": 32, "max_batches_per_epoch": 4}
PRECISIONS = ["fp32", "int8"]
ENGINES = {"backend": "auto", "bench_batches": [1, 8], "bench_seconds": 0.2}
GOAL = 1.3


def pipeline_argv(data: Path, out: Path) -> list[str]:
    """``kinship pipeline`` with exactly the flow's configuration."""
    argv = [str(driver.VENV_BIN / "kinship"), "pipeline", "--data", str(data), "--out", str(out), "--json",
            "--precisions", ",".join(PRECISIONS), "--backend", ENGINES["backend"],
            "--bench-batches", ",".join(map(str, ENGINES["bench_batches"])), "--bench-seconds", str(ENGINES["bench_seconds"])]
    for name, value in TRAIN.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def time_pipeline(stack: driver.LocalStack, data: Path, out: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(pipeline_argv(data, out), cwd=REPO, env=stack.process_env(), capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"kinship pipeline failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def time_full(stack: driver.LocalStack, force: bool) -> tuple[float, dict]:
    parameters = {"dataset_uri": DATA_URI, "train": TRAIN, "precisions": PRECISIONS, "engines": ENGINES, "force": force}
    outcome = driver.run_deployment(stack, "kinship/full", parameters, timeout=1800)
    if outcome.returncode != 0:
        raise SystemExit(f"kinship/full failed:\n{outcome.output[-3000:]}")
    return outcome.seconds, {**timeline(stack, outcome.flow_run_id), "gantt": gantt(stack, outcome.flow_run_id)}


def _seconds(later: str | None, earlier: str | None) -> float | None:
    if not later or not earlier:
        return None
    return (datetime.fromisoformat(later.replace("Z", "+00:00")) - datetime.fromisoformat(earlier.replace("Z", "+00:00"))).total_seconds()


def gantt(stack: driver.LocalStack, flow_run_id: str) -> list[dict]:
    """Every flow run and task run of one ``kinship/full`` run: start and end in seconds after the parent
    was created, sorted by start; shows where the time between the real work goes."""
    parent = driver.flow_run(stack, flow_run_id)
    origin = parent["created"]
    rows = []
    for run in [parent] + driver.child_runs(stack, flow_run_id):
        rows.append({"what": f"flow {run['name']} ({run['work_pool_name']})", "created": _seconds(run["created"], origin),
                     "start": _seconds(run["start_time"], origin), "end": _seconds(run["end_time"], origin)})
        for task_run in driver.task_runs(stack, run["id"]):
            rows.append({"what": f"  task {task_run['name']}", "created": _seconds(task_run["created"], origin),
                         "start": _seconds(task_run["start_time"], origin), "end": _seconds(task_run["end_time"], origin)})
    return sorted(rows, key=lambda row: (row["start"] if row["start"] is not None else 1e9))


def print_gantt(rows: list[dict]) -> None:
    print(f"{'created':>8} {'start':>7} {'end':>7}  flow / task run (seconds after the parent run was created)")
    for row in rows:
        cells = [f"{row[k]:7.2f}" if row[k] is not None else "      -" for k in ("created", "start", "end")]
        print(f"{cells[0]:>8} {cells[1]} {cells[2]}  {row['what']}")


def timeline(stack: driver.LocalStack, flow_run_id: str) -> dict:
    """Per flow run: seconds from creation to running (worker pickup + process start) and running time."""
    parent = driver.flow_run(stack, flow_run_id)
    runs = [parent] + sorted(driver.child_runs(stack, flow_run_id), key=lambda r: r["created"])
    return {f"{run['work_pool_name']}": {"start_latency_s": _seconds(run["start_time"], run["created"]),
                                         "run_s": run["total_run_time"]} for run in runs}


def measure(state_dir: Path, repeats: int, families: int) -> dict:
    from kinship.synth import SynthConfig, generate

    data = state_dir / "data"
    generate(SynthConfig(families=families, test_families=4, size=64, seed=3), data)
    stack = driver.up(state_dir / "stack")
    driver.push(stack, data, DATA_URI)
    driver.deploy(stack)
    time_pipeline(stack, data, state_dir / "pipeline-warmup")  # untimed: caches and bytecode
    time_full(stack, force=False)
    rounds = []
    for index in range(repeats):
        pipeline_s = time_pipeline(stack, data, state_dir / f"pipeline-{index}")
        full_s, flow_timeline = time_full(stack, force=True)
        rounds.append({"pipeline_s": pipeline_s, "full_s": full_s, "ratio": full_s / pipeline_s, "timeline": flow_timeline})
    ratio = statistics.median(r["ratio"] for r in rounds)
    return {"configuration": {"train": TRAIN, "precisions": PRECISIONS, "engines": ENGINES, "data": f"synth {families} families, 64 px"},
            "rounds": rounds, "median_ratio": ratio, "goal": GOAL, "meets_goal": ratio <= GOAL}


def print_table(result: dict) -> None:
    print(f"{'round':>5} {'pipeline s':>11} {'kinship/full s':>15} {'ratio':>7}   start latency / run time per flow run")
    for index, r in enumerate(result["rounds"], start=1):
        parts = ", ".join(f"{pool} {t['start_latency_s']:.1f}/{t['run_s']:.1f} s" for pool, t in r["timeline"].items()
                          if pool != "gantt")
        print(f"{index:>5} {r['pipeline_s']:>11.1f} {r['full_s']:>15.1f} {r['ratio']:>7.2f}   {parts}")
    print(f"last round's kinship/full, run by run:")
    print_gantt(result["rounds"][-1]["timeline"]["gantt"])
    verdict = "meets" if result["meets_goal"] else "misses"
    print(f"median ratio kinship/full / kinship pipeline: {result['median_ratio']:.2f}x ({verdict} the goal <= {GOAL}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--families", type=int, default=24, help="synthetic families (default: the tiny set)")
    parser.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    parser.add_argument("--max-batches-per-epoch", type=int, default=TRAIN["max_batches_per_epoch"], help="0 = all")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kinship-bench-") as folder:
        try:
            TRAIN.update(epochs=args.epochs, max_batches_per_epoch=args.max_batches_per_epoch)
            result = measure(Path(folder), args.repeats, args.families)
        finally:
            driver.down(Path(folder) / "stack")
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
