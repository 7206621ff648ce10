#!/usr/bin/env python3
"""Orchestration overhead: wall time of ``kinship/full`` (Prefect, three pools, S3) vs ``kinship pipeline`` (one process).

Both run the same tiny configuration on the same synthetic data set, each after one untimed warm-up
(image caches filled, bytecode compiled). The timed ``kinship/full`` runs pass ``force: true`` so no
stage is served from the Prefect cache: both sides do all the work. Wall time is what a person waits:
from the command's start to its return (``deployments/follow.py``, as ``make run`` does / ``kinship pipeline``).

The report also splits the flow's time: how long each flow run waited for its worker to pick it up and
start (created -> running, with its p95 over every flow run), and how long it ran.

``--concurrent N`` measures the control plane under load instead: N ``kinship/full`` runs (the same tiny
configuration, ``force``) created at once, and from the Prefect server's log (it runs with
``PREFECT_API_LOG_RETRYABLE_ERRORS=true``) the retryable 503 answers it gave and its "database is locked"
errors, printed with the database the stack uses (``--database`` sets ``KINSHIP_PREFECT_DB`` for the stack),
plus the flow runs' start latency. The pools ``rocm`` and ``cuda`` take one run at a time, so there a run's
created -> running includes waiting for the slot; pending -> running (worker pick-up to process running) does not.

Usage, from the repository root (starts a private stack on random ports and stops it by pid)::

    .venv/bin/python benchmarks/orchestration_overhead.py [--repeats 2] [--json]
    .venv/bin/python benchmarks/orchestration_overhead.py --families 200 --epochs 2 --max-batches-per-epoch 0
    .venv/bin/python benchmarks/orchestration_overhead.py --concurrent 3 [--database sqlite]

The second form makes the work larger while the orchestration cost (worker pick-up, process start,
store transfers) stays about the same, to see where the ratio crosses the goal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
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
# the work `kinship pipeline` does: the seeded family split, every run trained (no "nothing new" ending)
SAME_WORK = {"split": "seeded", "only_if_new": False}
ENGINES = {"backend": "auto", "bench_batches": [1, 8], "bench_seconds": 0.2}
GOAL = 1.3
OVERHEAD_GOAL_S = 10.0  # issue 14: seconds kinship/full may add to the same work in one process
START_LATENCY_GOAL_S = 3.0
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


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
    parameters = {"dataset_uri": DATA_URI, "train": TRAIN, "precisions": PRECISIONS, "engines": ENGINES, "force": force,
                  **SAME_WORK}
    outcome = driver.follow_deployment(stack, "kinship/full", parameters, timeout=1800)  # what make run waits on
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


def p95(values: list[float]) -> float:
    """The 95th percentile, nearest rank (with few values: the largest but for every twentieth)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def start_latencies(rounds: list[dict]) -> list[float]:
    """created -> running of every flow run (parents and children) of the timed rounds."""
    return [t["start_latency_s"] for r in rounds for pool, t in r["timeline"].items()
            if pool != "gantt" and t["start_latency_s"] is not None]


# ---------------------------------------------------------------- --concurrent: the control plane under load


def server_log(stack: driver.LocalStack) -> Path:
    return stack.state_dir / "logs" / "prefect-server.log"


LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ", re.MULTILINE)


def retry_counts(text: str) -> dict:
    """From the server's log: its retryable 503 answers, and its errors whose traceback says "database is locked"
    (those 503s and the server's own writes that failed, such as a worker's heartbeat). uvicorn logs each 503's
    exception a second time ("Exception in ASGI application"): that copy is not counted."""
    starts = [match.start() for match in LOG_RECORD.finditer(text)] + [len(text)]
    records = [text[start:end] for start, end in zip(starts, starts[1:])]
    return {"retryable_503": sum("Encountered retryable exception in request" in record for record in records),
            "database_locked": sum("database is locked" in record and "Exception in ASGI application" not in record
                                   for record in records)}


def database_summary(stack: driver.LocalStack) -> str:
    state = json.loads((stack.state_dir / "state.json").read_text())
    return state.get("database", {}).get("summary", "unknown")


def state_times(stack: driver.LocalStack, run: dict) -> dict:
    """created -> running, and pending -> running (the worker had it: process start only), in seconds."""
    states = stack.api(f"/flow_run_states/?flow_run_id={run['id']}")
    pending = min((s["timestamp"] for s in states if s["type"] == "PENDING"), default=None)
    return {"pool": run["work_pool_name"], "created_to_running_s": _seconds(run["start_time"], run["created"]),
            "pending_to_running_s": _seconds(run["start_time"], pending)}


def run_concurrently(stack: driver.LocalStack, count: int, timeout: float = 1500) -> dict:
    """Create ``count`` ``kinship/full`` runs at once (force: each does all the work) and wait for all to end."""
    parameters = {"dataset_uri": DATA_URI, "train": TRAIN, "precisions": PRECISIONS, "engines": ENGINES, "force": True, **SAME_WORK}
    deployment = stack.api("/deployments/name/kinship/full")
    log_start = server_log(stack).stat().st_size
    started = time.perf_counter()
    ids = [stack.api(f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})["id"]
           for _ in range(count)]

    def all_final() -> list[dict] | None:
        runs = [driver.flow_run(stack, run_id) for run_id in ids]
        return runs if all(run["state_type"] in TERMINAL for run in runs) else None

    parents = driver.wait_for(all_final, f"{count} kinship/full runs", timeout, interval=2.0)
    wall_s = time.perf_counter() - started
    with server_log(stack).open(errors="replace") as log:
        log.seek(log_start)
        during = retry_counts(log.read())
    runs = [run for parent in parents for run in [parent] + driver.child_runs(stack, parent["id"])]
    return {"count": count, "wall_s": wall_s, "states": [parent["state_type"] for parent in parents],
            "database": database_summary(stack), "during_runs": during,
            "whole_log": retry_counts(server_log(stack).read_text(errors="replace")),
            "flow_runs": [state_times(stack, run) for run in runs]}


def measure_concurrent(state_dir: Path, count: int, families: int) -> dict:
    from kinship.synth import SynthConfig, generate

    data = state_dir / "data"
    generate(SynthConfig(families=families, test_families=4, size=64, seed=3), data)
    stack = driver.up(state_dir / "stack")
    driver.push(stack, data, DATA_URI)
    driver.deploy(stack)
    return {"configuration": {"train": TRAIN, "precisions": PRECISIONS, "engines": ENGINES,
                              "data": f"synth {families} families, 64 px"}, **run_concurrently(stack, count)}


def print_concurrent(result: dict) -> None:
    print(f"Prefect database: {result['database']}")
    print(f"{result['count']} concurrent kinship/full runs: {', '.join(result['states'])} in {result['wall_s']:.0f} s")
    during, whole = result["during_runs"], result["whole_log"]
    print(f"server log during the runs: {during['retryable_503']} retryable 503 answers, "
          f"{during['database_locked']} 'database is locked' errors, those 503s included (whole log, setup "
          f"included: {whole['retryable_503']} / {whole['database_locked']})")
    runs = result["flow_runs"]
    for key, what in (("created_to_running_s", "created -> running"), ("pending_to_running_s", "pending -> running")):
        measured = [run for run in runs if run[key] is not None]
        values = [run[key] for run in measured]
        per_pool = ", ".join(f"{pool} {max(run[key] for run in measured if run['pool'] == pool):.1f}"
                             for pool in sorted({run["pool"] for run in measured}))
        print(f"flow-run start {what}, {len(values)} runs: p50 {statistics.median(values):.1f} s, "
              f"p95 {p95(values):.1f} s (max per pool: {per_pool} s)")


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
    latencies = start_latencies(rounds)
    return {"configuration": {"train": TRAIN, "precisions": PRECISIONS, "engines": ENGINES, "data": f"synth {families} families, 64 px"},
            "rounds": rounds, "median_ratio": ratio, "goal": GOAL, "meets_goal": ratio <= GOAL,
            "start_latency_p95_s": p95(latencies), "database": database_summary(stack),
            "retries": retry_counts(server_log(stack).read_text(errors="replace"))}


def print_table(result: dict) -> None:
    print(f"{'round':>5} {'pipeline s':>11} {'kinship/full s':>15} {'ratio':>7}   start latency / run time per flow run")
    for index, r in enumerate(result["rounds"], start=1):
        parts = ", ".join(f"{pool} {t['start_latency_s']:.1f}/{t['run_s']:.1f} s" for pool, t in r["timeline"].items()
                          if pool != "gantt")
        print(f"{index:>5} {r['pipeline_s']:>11.1f} {r['full_s']:>15.1f} {r['ratio']:>7.2f}   {parts}")
    print("last round's kinship/full, run by run:")
    print_gantt(result["rounds"][-1]["timeline"]["gantt"])
    verdict = "meets" if result["meets_goal"] else "misses"
    print(f"median ratio kinship/full / kinship pipeline: {result['median_ratio']:.2f}x ({verdict} the goal <= {GOAL}x)")
    overhead = statistics.median(r["full_s"] - r["pipeline_s"] for r in result["rounds"])
    verdict = "meets" if overhead <= OVERHEAD_GOAL_S else "misses"
    print(f"fixed overhead kinship/full - kinship pipeline: median {overhead:.1f} s ({verdict} the goal <= "
          f"{OVERHEAD_GOAL_S:.0f} s)")
    latencies = start_latencies(result["rounds"])
    verdict = "meets" if p95(latencies) <= START_LATENCY_GOAL_S else "misses"
    print(f"flow-run start (created -> running) over {len(latencies)} flow runs: p95 {p95(latencies):.1f} s "
          f"({verdict} the goal <= {START_LATENCY_GOAL_S:.0f} s)")
    print(f"Prefect database: {result['database']}; server log: {result['retries']['retryable_503']} retryable 503 "
          f"answers, {result['retries']['database_locked']} 'database is locked' errors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--families", type=int, default=24, help="synthetic families (default: the tiny set)")
    parser.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    parser.add_argument("--max-batches-per-epoch", type=int, default=TRAIN["max_batches_per_epoch"], help="0 = all")
    parser.add_argument("--concurrent", type=int, default=0, metavar="N",
                        help="instead: N kinship/full runs at once; count the server's retries (lock contention)")
    parser.add_argument("--database", choices=["auto", "postgres", "sqlite"],
                        help="the stack's Prefect database (KINSHIP_PREFECT_DB; default: its own, auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.database:
        os.environ["KINSHIP_PREFECT_DB"] = args.database  # infra/local/up reads it
    with tempfile.TemporaryDirectory(prefix="kinship-bench-") as folder:
        try:
            TRAIN.update(epochs=args.epochs, max_batches_per_epoch=args.max_batches_per_epoch)
            if args.concurrent > 0:
                result = measure_concurrent(Path(folder), args.concurrent, args.families)
            else:
                result = measure(Path(folder), args.repeats, args.families)
        finally:
            driver.down(Path(folder) / "stack")
    if args.json:
        print(json.dumps(result))
    elif args.concurrent > 0:
        print_concurrent(result)
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
