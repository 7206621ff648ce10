"""``deployments/follow.py`` and the lines it shows.

Unit tests: the log feed's dedup and order, the line format, the parameters, and the tasks' pacing of progress
lines, epoch lines and engine rows. Integration tests: a real Prefect server (basic auth) running a tiny parent
flow whose nested child and grandchild log lines, followed to a Completed and to a Failed end; and the follower
on the shared ``kinship/full`` stack's finished run (its epochs, engine rows and benchmark rows).
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from deployments import follow, log_lines
from kinship.progress import ProgressEvent
from tasks.engines import benchmark_lines, engine_line
from tasks.progress import LogPacer, describe
from tasks.training import EpochLines
from tests.flows_stack import kinship_stack  # noqa: F401  (session fixture: one stack per lane)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def entry(key: str, seconds: float, run: str = "p", message: str | None = None, **extra) -> dict:
    stamp = (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return {"id": key, "flow_run_id": run, "timestamp": stamp, "level": 20, "message": message or key, **extra}


# ---------------------------------------------------------------- the feed: each line once, in time order


def test_overlapping_reads_print_each_line_once_in_time_order() -> None:
    feed = log_lines.LogFeed(hold_s=3)
    # A child's batch arrives after the parent's, with earlier timestamps; the next read repeats both.
    assert feed.add([entry("p1", 0), entry("p2", 2.0)]) == 2
    assert feed.add([entry("c1", 1.0, "c"), entry("p1", 0), entry("c2", 1.5, "c")]) == 2
    assert [e["id"] for e in feed.release(T0 + timedelta(seconds=4.6))] == ["p1", "c1", "c2"]  # p2 is held
    assert feed.add([entry("c1", 1.0, "c"), entry("p2", 2.0)]) == 0  # seen: never again
    assert [e["id"] for e in feed.release(T0 + timedelta(seconds=10))] == ["p2"]
    assert feed.release(T0 + timedelta(seconds=20)) == []
    assert feed.since() == T0 + timedelta(seconds=2) - timedelta(seconds=feed.lookback_s)


def test_a_line_later_than_the_hold_is_printed_late_rather_than_lost() -> None:
    feed = log_lines.LogFeed(hold_s=3)
    feed.add([entry("a", 5)])
    assert [e["id"] for e in feed.release(T0 + timedelta(seconds=9))] == ["a"]
    feed.add([entry("late", 4)])  # its batch was delayed past the hold
    assert [e["id"] for e in feed.release(T0 + timedelta(seconds=9))] == ["late"]
    feed.add([entry("late", 4), entry("a", 5)])
    assert feed.release(T0 + timedelta(seconds=30), everything=True) == []


def test_old_ids_are_forgotten_once_no_read_can_return_them() -> None:
    feed = log_lines.LogFeed(hold_s=0, lookback_s=10)
    feed.add([entry(f"e{i}", i) for i in range(100)])
    feed.release(T0 + timedelta(seconds=200))
    assert len(feed.seen) <= 21  # the last 2 * lookback seconds only


def test_format_names_the_run_the_level_and_the_task_of_prefects_own_lines() -> None:
    labels = {"p": "kinship", "c": "kinship-train"}
    names = {"t1": "train 2 epochs at 32 px"}
    when = {"_when": T0}
    line = log_lines.format_entry({**entry("x", 0, "c", "Finished in state Completed()", task_run_id="t1"), **when},
                               labels, names, 15)
    assert line.endswith("kinship-train   train 2 epochs at 32 px: Finished in state Completed()")
    own = log_lines.format_entry({**entry("y", 0, "c", "epoch 1/2: loss", task_run_id="t1"), **when}, labels, names, 15)
    assert own.endswith("kinship-train   epoch 1/2: loss")  # our own lines say what they are about
    failure = "boom\nTraceback (most recent call last):\n  File \"x.py\", line 1\n    raise\nValueError: no\nafter"
    warned = log_lines.format_entry({**entry("z", 0, "p", failure, level=40), **when}, labels, names, 15)
    assert warned.splitlines()[0].endswith("kinship         ERROR: boom")
    assert [line.strip() for line in warned.splitlines()[1:]] == ["ValueError: no", "after"]
    whole = log_lines.format_entry({**entry("z", 0, "p", failure, level=40), **when}, labels, names, 15, tracebacks=True)
    assert "File \"x.py\"" in whole


def test_worker_and_pull_step_lines_are_hidden() -> None:
    flow_line = {"name": "prefect.flow_runs", "task_run_id": None}
    assert not log_lines.shown({**flow_line, "message": "Executing deployment step: set_working_directory"})
    assert not log_lines.shown({"name": "prefect.flow_runs.worker", "task_run_id": None,
                             "message": "Worker 'local-rocm' submitting flow run 'x'"})
    assert not log_lines.shown({**flow_line, "message": "Finished in state Completed()"})  # the state line says it
    assert log_lines.shown({**flow_line, "message": "Beginning flow run 'x' for flow 'kinship'"})
    assert log_lines.shown({"name": "prefect.task_runs", "task_run_id": "t", "message": "Finished in state Completed()"})


def test_params_read_as_json_else_as_strings() -> None:
    assert follow.parse_params(['dataset_uri="s3://b/d"', 'train={"epochs":2}', "name=plain", "n=3"]) == {
        "dataset_uri": "s3://b/d", "train": {"epochs": 2}, "name": "plain", "n": 3}
    with pytest.raises(SystemExit):
        follow.parse_params(["novalue"])


# ---------------------------------------------------------------- the lines the tasks log


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_long_fetch_logs_a_few_lines_not_one_per_file() -> None:
    clock = Clock()
    pacer = LogPacer(clock=clock)
    logged = []
    for done in range(1, 26240):  # 26,239 files over 160 s
        clock.now = done * 160 / 26239
        event = ProgressEvent("fetch", done, 26239)
        if pacer.wants(event):
            logged.append(done)
    assert 8 <= len(logged) <= 11 and logged[-1] == 26239
    fast = LogPacer(clock=clock)  # a fetch done within the gap: its end only
    assert [fast.wants(ProgressEvent("fetch", d, 4)) for d in range(1, 5)] == [False, False, False, True]


def test_training_batches_and_benchmark_slices_only_beat_the_heartbeat() -> None:
    clock = Clock()
    pacer = LogPacer(clock=clock)
    logged = 0
    for step in range(1, 16 * 120 + 1):  # 16 epochs of 120 batches, 40 s each
        clock.now = step / 3
        epoch, batch = divmod(step - 1, 120)
        logged += pacer.wants(ProgressEvent(f"epoch {epoch + 1}/16", batch + 1, 120))
    assert logged == 21  # one per 30 s of 640 s
    assert not pacer.wants(ProgressEvent("benchmark onnxruntime fp16 (round 3/8)", 8, 8))
    assert "(unit" not in describe("fetch", ProgressEvent("fetch", 5_000_000, 10_000_000, {"unit": "bytes"}))


def test_the_epoch_line_replaces_the_library_dump(caplog) -> None:
    logger = logging.getLogger("test.follow.run")
    lines = EpochLines(logger, 16)
    figures = {"epoch": 3, "train_loss": 0.60211, "val_auc": 0.70123, "epoch_seconds": 41.2, "images_per_second": 310.4}
    record = logging.LogRecord("kinship.train", logging.INFO, __file__, 1, EpochLines.MESSAGE, (3, figures), None)
    with caplog.at_level(logging.INFO, logger="test.follow.run"):
        assert lines.filter(record) is False
    assert caplog.messages == ["epoch 3/16: train loss 0.6021, val AUC 0.7012 (best 0.7012), 41 s, 310 img/s"]
    other = logging.LogRecord("kinship.train", logging.INFO, __file__, 1, "training on %s", ("cpu",), None)
    assert lines.filter(other) is True


def test_engine_and_benchmark_rows() -> None:
    built = {"variant": "int8", "backend": "onnxruntime", "status": "built", "reason": "",
             "row": {"size_bytes": 356_000, "build_seconds": 14.2,
                     "validation": {"agreement": 0.9917, "max_abs_diff": 0.0312, "auc": 0.7012, "auc_delta": -0.0089},
                     "bench": {"1": {"pairs_per_s": 812.4, "latency_ms": {"median": 1.231}},
                               "8": {"pairs_per_s": 2950.0, "latency_ms": {"median": 2.7}}}}}
    assert engine_line(built) == ("engine int8 (onnxruntime): built, 0.36 MB in 14 s; agrees with FP32 on 99.2% of "
                                  "pairs (max |diff| 0.0312), AUC 0.7012 (-0.0089 vs FP32)")
    failed = {"variant": "fp16", "backend": "onnxruntime", "status": "failed", "reason": "no fp16 kernels", "row": {}}
    assert engine_line(failed) == "engine fp16 (onnxruntime): failed (no fp16 kernels)"
    assert benchmark_lines([built, failed]) == [
        "benchmark int8 (onnxruntime): batch 1: 812 pairs/s (p50 1.23 ms), batch 8: 2950 pairs/s (p50 2.70 ms)"]


# ---------------------------------------------------------------- against a real Prefect server

FLOWS = textwrap.dedent('''
    import sys, time
    from prefect import flow, get_run_logger

    @flow(name="follow-grandchild")
    def grandchild():
        get_run_logger().info("grandchild line")

    @flow(name="follow-child")
    def child(fail: bool):
        for number in range(1, 6):
            get_run_logger().info("child line %d", number)
            time.sleep(0.3)
        grandchild()
        if fail:
            raise ValueError("child broke")

    @flow(name="follow-parent", flow_run_name=lambda: "follow-" + sys.argv[1])
    def parent(fail: bool):
        get_run_logger().info("parent before")
        time.sleep(2)  # the follower is attached by now: the child's lines are followed as they happen
        child(fail)
        get_run_logger().info("parent after")

    if __name__ == "__main__":
        parent(sys.argv[1] == "fail")
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.stack import running_prefect_server

    with running_prefect_server(tmp_path_factory.mktemp("follow"), auth_string="watcher:s3cret") as running:
        yield running


def start_flows(server, folder: Path, outcome: str) -> subprocess.Popen:
    from tests.stack import clean_env

    script = folder / "flows.py"
    script.write_text(FLOWS)
    return subprocess.Popen([sys.executable, str(script), outcome], cwd=folder, env=clean_env(**server.env()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_id_named(api: follow.Api, name: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = api("/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}, "limit": 1})
        if found:
            return found[0]["id"]
        time.sleep(0.2)
    raise TimeoutError(f"no flow run {name} within {timeout} s")


def follow_in_thread(flow_run_id: str, results: dict, key: str) -> threading.Thread:
    """``follow.py --flow-run-id`` in a thread; its exit code and output land in ``results[key]``."""
    def target() -> None:
        out = io.StringIO()
        results[key] = (follow.main(["--flow-run-id", flow_run_id], out=out), out.getvalue())

    thread = threading.Thread(target=target)
    thread.start()
    return thread


@pytest.mark.integration
def test_the_follower_prints_the_nested_runs_lines_in_order_and_exits_by_the_final_state(server, tmp_path,
                                                                                        monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", server.api_url)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", server.auth_string)
    api = follow.Api.from_env()
    processes = {}
    for outcome in ("pass", "fail"):  # both at once: the second costs no extra wall time
        (tmp_path / outcome).mkdir()
        processes[outcome] = start_flows(server, tmp_path / outcome, outcome)
    results: dict[str, tuple[int, str]] = {}
    try:
        ids = {outcome: run_id_named(api, f"follow-{outcome}") for outcome in processes}
        threads = [follow_in_thread(ids[outcome], results, outcome) for outcome in processes]
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for process in processes.values():
            process.wait(timeout=60)
    code, text = results["pass"]
    assert code == 0, text + processes["pass"].stdout.read()
    lines = text.splitlines()
    wanted = ["parent before", *(f"child line {n}" for n in range(1, 6)), "grandchild line", "parent after"]
    found = [next(i for i, line in enumerate(lines) if line.endswith(w)) for w in wanted]
    assert found == sorted(found), text  # in time order across the three runs
    assert all(sum(line.endswith(w) for line in lines) == 1 for w in wanted), text  # each once
    assert " follow-child " in lines[found[1]] and " follow-grandchild " in lines[found[6]]
    assert " follow-parent " in lines[found[0]]
    assert lines[-1].startswith("run follow-pass completed: ")

    code, text = results["fail"]
    assert code == 1, text
    assert "child line 5" in text and "ValueError: child broke" in text
    assert "Traceback" not in text  # cut to the exception line
    last = text.splitlines()[-1]
    assert last.startswith("run follow-fail ended Failed") and last.endswith(f"/runs/flow-run/{ids['fail']}")


@pytest.mark.integration
def test_starting_a_deployment_run_merges_its_defaults(server) -> None:
    api = follow.Api(server.api_url, server.auth_string)
    flow_id = api("/flows/", {"name": "follow-start"})["id"]
    api("/deployments/", {"name": "demo", "flow_id": flow_id, "parameters": {"dataset_uri": "s3://b/demo", "n": 1}})
    run = follow.start_run(api, "follow-start/demo", follow.parse_params(['train={"epochs":2}', "n=3"]))
    try:
        assert run["parameters"] == {"dataset_uri": "s3://b/demo", "n": 3, "train": {"epochs": 2}}
        assert run["state"]["type"] == "SCHEDULED"
    finally:
        api(f"/flow_runs/{run['id']}/set_state", {"state": {"type": "CANCELLED"}, "force": True})


@pytest.mark.integration
@pytest.mark.slow
def test_the_kinship_run_shows_fetch_epochs_engine_rows_and_benchmarks(kinship_stack, monkeypatch) -> None:
    for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        monkeypatch.setenv(key, kinship_stack.stack.env[key])
    out = io.StringIO()
    assert follow.main(["--flow-run-id", kinship_stack.first.flow_run_id], out=out) == 0, out.getvalue()
    text = out.getvalue()
    for wanted in (r"kinship-train +fetch s3://kinship/datasets/tiny/versions/[0-9a-f]{16}: ",
                   r"kinship-train +epoch 1/1: train loss [\d.]+, val AUC \d\.\d{4}",
                   r"kinship-engines +engine int8 \(\w+\): built, [\d.]+ MB in \d+ s; agrees with FP32 on [\d.]+%",
                   r"kinship-engines +benchmark fp32 \(\w+\): batch 1: \d+ pairs/s",
                   r"kinship +state Completed"):
        assert re.search(wanted, text), f"{wanted!r} not in:\n{text}"
    assert len(text.splitlines()) < 120, text  # a screenful or two, not one line per file or batch
