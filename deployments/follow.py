#!/usr/bin/env python3
"""Follow a deployment run in the terminal: its log lines and those of every flow run nested under it, as they happen.

``prefect deployment run --watch`` shows the parent run only; ``kinship/full`` does its work in child runs on
other pools (``kinship-train``, ``kinship-engines``), so it printed nothing but heartbeats. This follower
starts the run (or attaches to one), finds the children through the REST API (flow runs whose parent task
run belongs to a followed run, recursively), and prints every run's log lines and state changes in time
order, each prefixed by its flow's name. It exits when the parent run ends: 0 on Completed, else 1 with one
line naming the final state and the run's UI page. Ctrl-C stops following; the run goes on.

    source .stack/env
    python deployments/follow.py kinship/full --param 'dataset_uri="s3://kinship/datasets/demo"' \
        --param 'train={"epochs":2}'
    python deployments/follow.py --flow-run-id 1b2c...

Plain HTTP with the stack's basic auth, through ``kinship.server_retries.PrefectApi`` (a busy server's 503 is
retried, never fatal); no Prefect settings or imports in this process.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, TextIO

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kinship.cli.output import key_values  # noqa: E402
from kinship.errors import UserError  # noqa: E402
from kinship.server_retries import PrefectApi  # noqa: E402

POLL_S = 1.0
# Workers send logs in batches every 2 s (PREFECT_LOGGING_TO_API_BATCH_INTERVAL): a line is held this long
# after its timestamp, so that lines of several runs arriving in different batches still print in time order.
HOLD_S = 3.0
# How far back each poll reads again: a batch delayed longer than HOLD_S is still printed (once), late.
LOOKBACK_S = 60.0
DRAIN_S = 6.0  # after the parent ends, how long its last log batches (and its children's) may take to arrive
OUTAGE_S = 300.0  # how long a server that refuses connections (restarting) is waited for before giving up
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
LABEL_WIDTH = len("kinship-engines")
# Lines that say nothing the state lines do not (hidden unless --all): a worker picking the run up, the
# deployment's pull steps, a flow's "Finished in state" (its state line says it).
NOISE = re.compile(r"^(Worker '.*' submitting flow run|Flow run '.*' submitted to infrastructure|"
                   r"Running \d+ deployment pull step|Executing deployment step|Deployment step '.*' completed|"
                   r"All deployment steps completed)")
FLOW_FINISHED = re.compile(r"^Finished in state ")
DEFAULT_SUFFIX = re.compile(r"-[0-9a-f]{3}$")  # Prefect names an unnamed task run "<task name>-<3 hex digits>"
# Prefect's own lines about a task run, which do not name it: they get the task run's name in front.
TASK_ENGINE_LINE = re.compile(r"^(Finished in state|Task run failed|Task run encountered|Received non-final state|"
                              r"Encountered exception)")


# The follower's name for the one Prefect API client (the tests and earlier scripts use ``follow.Api``).
Api = PrefectApi


# ---------------------------------------------------------------- starting a run


def parse_params(pairs: Iterable[str]) -> dict:
    """``KEY=VALUE`` pairs as ``prefect deployment run --param`` reads them: VALUE as JSON, else as a string."""
    try:
        return key_values(pairs, "--param")
    except UserError as error:
        raise SystemExit(f"follow: {error}") from None


def start_run(api: PrefectApi, deployment: str, parameters: dict) -> dict:
    """Create a flow run of ``flow/deployment`` (the deployment's defaults fill what ``parameters`` leaves out).

    The create carries an idempotency key (``PrefectApi`` adds one), so a retry after a lost answer returns
    the run the first try made instead of starting a second one."""
    flow_name, sep, name = deployment.partition("/")
    if not sep:
        raise SystemExit(f"follow: {deployment!r} is not FLOW/DEPLOYMENT (e.g. kinship/full)")
    found = api(f"/deployments/name/{flow_name}/{name}")
    return api(f"/deployments/{found['id']}/create_flow_run", {"parameters": parameters})


# ---------------------------------------------------------------- the runs being followed


@dataclass
class FollowedRun:
    """One flow run of the tree: its id, the label its lines carry, the last state printed."""

    id: str
    label: str
    name: str
    state_id: str | None = None


@dataclass
class RunTree:
    """The parent run and every flow run nested under it, found as they appear."""

    parent_id: str
    runs: dict[str, FollowedRun] = field(default_factory=dict)
    flow_names: dict[str, str] = field(default_factory=dict)

    def refresh(self, api: PrefectApi) -> list[dict]:
        """Read the parent and all its descendants (one filter call per new level); return their records."""
        records = [api(f"/flow_runs/{self.parent_id}")]
        frontier = [self.parent_id]
        while frontier:
            # parent_flow_run_id: flow runs whose parent task run belongs to one of these runs (the server's join)
            children = api.pages("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": frontier}},
                                                       "sort": "EXPECTED_START_TIME_ASC"})
            known = {record["id"] for record in records}
            children = [child for child in children if child["id"] not in known]
            records += children
            frontier = [child["id"] for child in children]
        for record in records:
            if record["id"] not in self.runs:
                self.runs[record["id"]] = FollowedRun(record["id"], self._label(api, record), record["name"])
        return records

    def _label(self, api: PrefectApi, record: dict) -> str:
        """The run's flow name (``kinship-train``); a second run of the same flow gets ``#2``, and so on."""
        flow_id = record["flow_id"]
        if flow_id not in self.flow_names:
            self.flow_names[flow_id] = api(f"/flows/{flow_id}")["name"]
        label = self.flow_names[flow_id]
        taken = {run.label for run in self.runs.values()}
        number = 2
        candidate = label
        while candidate in taken:
            candidate, number = f"{label}#{number}", number + 1
        return candidate

    def state_lines(self, records: list[dict]) -> list[dict]:
        """A log-like entry for each state not printed yet (Scheduled, Running, Completed...), at its time."""
        entries = []
        for record in records:
            run, state = self.runs[record["id"]], record.get("state") or {}
            if not state.get("id") or state["id"] == run.state_id:
                continue
            run.state_id = state["id"]
            message = f"state {state.get('name') or state.get('type')}"
            if run.id != self.parent_id and state.get("type") == "SCHEDULED":
                message += f" (run {run.name}, pool {record.get('work_pool_name') or '-'})"
            if state.get("message") and state.get("type") in {"FAILED", "CRASHED", "CANCELLED"}:
                message += f": {state['message']}"
            entries.append({"id": f"state:{state['id']}", "flow_run_id": run.id, "level": 20,
                            "timestamp": state.get("timestamp") or record.get("updated"), "message": message})
        return entries


# ---------------------------------------------------------------- log lines: deduplicated, in time order


def parse_time(text: str) -> datetime:
    """An API timestamp (ISO 8601, ``Z`` or an offset) as an aware datetime."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@dataclass
class LogFeed:
    """Log entries from repeated, overlapping reads: each printed once, in timestamp order.

    An entry is held until ``hold_s`` after its timestamp (its batch-mates from other runs arrive by then);
    one that arrives later still is printed at once rather than dropped.
    """

    hold_s: float = HOLD_S
    lookback_s: float = LOOKBACK_S
    pending: list[dict] = field(default_factory=list)
    seen: dict[str, datetime] = field(default_factory=dict)  # id -> timestamp, for entries already taken in
    newest: datetime | None = None  # the newest timestamp released

    def since(self) -> datetime | None:
        """Where the next read should start: a lookback before the newest line released."""
        return None if self.newest is None else self.newest - timedelta(seconds=self.lookback_s)

    def add(self, entries: Iterable[dict]) -> int:
        """Take in entries not seen before (by id); return how many were new."""
        new = 0
        for entry in entries:
            if entry["id"] in self.seen:
                continue
            when = parse_time(entry["timestamp"])
            self.seen[entry["id"]] = when
            self.pending.append({**entry, "_when": when})
            new += 1
        return new

    def release(self, now: datetime, everything: bool = False) -> list[dict]:
        """The pending entries old enough to print (all with ``everything``), oldest first."""
        cutoff = now - timedelta(seconds=self.hold_s)
        ready = sorted((e for e in self.pending if everything or e["_when"] <= cutoff), key=lambda e: e["_when"])
        if ready:
            ids = {id(e) for e in ready}
            self.pending = [e for e in self.pending if id(e) not in ids]
            self.newest = max(self.newest or ready[-1]["_when"], ready[-1]["_when"])
            self._forget_old()
        return ready

    def _forget_old(self) -> None:
        """Drop ids older than any read can return again, so a long run does not grow the set forever."""
        horizon = self.newest - timedelta(seconds=2 * self.lookback_s)
        self.seen = {key: when for key, when in self.seen.items() if when >= horizon}


def read_logs(api: PrefectApi, run_ids: list[str], since: datetime | None) -> list[dict]:
    """Log entries of ``run_ids`` from ``since`` on (all when None), oldest first."""
    logs: dict = {"flow_run_id": {"any_": run_ids}}
    if since is not None:
        logs["timestamp"] = {"after_": since.isoformat()}
    return api.pages("/logs/filter", {"logs": logs, "sort": "TIMESTAMP_ASC"})


def shown(entry: dict) -> bool:
    """Whether a line is worth the terminal (``--all`` shows every line)."""
    message = str(entry.get("message", ""))
    if entry.get("task_run_id") is None and entry.get("name", "").startswith("prefect.flow_runs"):
        return not (NOISE.match(message) or FLOW_FINISHED.match(message))
    return True


def without_tracebacks(message: str) -> str:
    """``message`` with each Python traceback cut down to its exception line (the run page has the rest)."""
    kept, skipping = [], False
    for line in message.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            skipping = True
            continue
        if skipping and (not line.strip() or line[0].isspace()):
            continue
        skipping = False
        kept.append(line)
    return "\n".join(kept)


def format_entry(entry: dict, labels: dict[str, str], task_names: dict[str, str], width: int,
                 tracebacks: bool = False) -> str:
    """``HH:MM:SS label  message`` in local time; the level only when above INFO; Prefect's lines about a task
    run get its name; continuation lines indented; tracebacks cut to their last line unless ``tracebacks``."""
    clock = entry["_when"].astimezone().strftime("%H:%M:%S")
    label = labels.get(entry.get("flow_run_id") or "", "?")
    prefix = f"{clock} {label:<{width}} "
    message = str(entry.get("message", "")).rstrip()
    message = message if tracebacks else without_tracebacks(message)
    task = task_names.get(entry.get("task_run_id") or "")
    if task and TASK_ENGINE_LINE.match(message):
        message = f"{task}: {message}"
    level = int(entry.get("level") or 20)
    if level > 20:
        message = f"{LEVELS.get(level, level)}: {message}"
    first, *rest = message.splitlines() or [""]
    return "\n".join([prefix + first] + [" " * len(prefix) + line for line in rest])


# ---------------------------------------------------------------- following


@dataclass
class Follower:
    """Polls the tree and its logs about once a second and prints what is new; ``follow`` returns the final run."""

    api: PrefectApi
    parent_id: str
    out: TextIO = sys.stdout
    everything: bool = False  # --all: noise lines and whole tracebacks too
    poll_s: float = POLL_S
    drain_s: float = DRAIN_S
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    tree: RunTree = field(init=False)
    feed: LogFeed = field(default_factory=LogFeed)
    task_names: dict[str, str] = field(default_factory=dict)
    outage_since: float | None = None
    outage_reported: bool = False
    parent_closed: bool = False  # the parent's own last line ("Finished in state ...") has been read

    def __post_init__(self) -> None:
        self.tree = RunTree(self.parent_id)

    def poll(self) -> dict:
        """One round: the runs, their new states and log lines; the parent's record."""
        records = self.tree.refresh(self.api)
        self.feed.add(self.tree.state_lines(records))
        entries = read_logs(self.api, list(self.tree.runs), self.feed.since())
        self.feed.add(entries)
        self.parent_closed = self.parent_closed or any(
            e.get("flow_run_id") == self.parent_id and e.get("task_run_id") is None
            and FLOW_FINISHED.match(str(e.get("message", ""))) for e in entries)
        self._name_tasks()
        return records[0]

    def _name_tasks(self) -> None:
        """Look up the names of task runs the pending lines come from (once each)."""
        unknown = sorted({e["task_run_id"] for e in self.feed.pending if e.get("task_run_id")} - set(self.task_names))
        if unknown:
            found = self.api.pages("/task_runs/filter", {"task_runs": {"id": {"any_": unknown}}})
            self.task_names.update({run["id"]: DEFAULT_SUFFIX.sub("", run["name"]) for run in found})

    def print_ready(self, everything: bool = False) -> None:
        """Print the lines old enough to be in order (all of them with ``everything``)."""
        labels = {run_id: run.label for run_id, run in self.tree.runs.items()}
        width = max([LABEL_WIDTH, *(len(label) for label in labels.values())])
        for entry in self.feed.release(self.clock(), everything):
            if self.everything or shown(entry):
                line = format_entry(entry, labels, self.task_names, width, tracebacks=self.everything)
                print(line, file=self.out, flush=True)

    def poll_through_outages(self) -> dict | None:
        """``poll``, or None while the server cannot be reached at all (restarting), for up to ``OUTAGE_S``.

        Busy answers (503...) are already retried by ``PrefectApi``; a refused connection is not.
        """
        try:
            parent = self.poll()
        except urllib.error.HTTPError:
            raise
        except urllib.error.URLError as error:
            self.outage_since = self.outage_since or time.monotonic()
            if time.monotonic() - self.outage_since > OUTAGE_S:
                raise
            if not self.outage_reported:
                print(f"(the Prefect API does not answer: {error.reason}; trying again)", file=self.out, flush=True)
                self.outage_reported = True
            return None
        self.outage_since, self.outage_reported = None, False
        return parent

    def follow(self) -> dict:
        """Print until the parent run is final and its last lines are in; return the parent's final record."""
        while True:
            parent = self.poll_through_outages()
            if parent is None:
                time.sleep(self.poll_s)
                continue
            self.print_ready()
            if (parent.get("state") or {}).get("type") in FINAL_STATES:
                break
            time.sleep(self.poll_s)
        # The final state is set before the runs' last log batches reach the server: read until they are in, that
        # is until the parent's own closing line has arrived (its process sends it last), or for drain_s at most.
        deadline = time.monotonic() + self.drain_s
        while time.monotonic() < deadline and not self.parent_closed:
            time.sleep(self.poll_s)
            parent = self.poll()
            self.print_ready()
        self.print_ready(everything=True)
        return parent


def final_line(api: PrefectApi, run: dict) -> str:
    """One line for a run that did not complete: its final state, the state's message, its UI page."""
    state = run.get("state") or {}
    message = f": {state['message']}" if state.get("message") else ""
    return f"run {run['name']} ended {state.get('name') or state.get('type')}{message}; see {api.run_page(run['id'])}"


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployment", nargs="?", help="FLOW/DEPLOYMENT to run, e.g. kinship/full")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter (VALUE read as JSON, else as a string); repeatable")
    parser.add_argument("--params", default=None, help="parameters as one JSON object")
    parser.add_argument("--flow-run-id", default=None, help="follow this existing flow run instead of starting one")
    parser.add_argument("--all", action="store_true", dest="everything",
                        help="every line: the workers' and pull steps' too, and whole tracebacks")
    args = parser.parse_args(argv)
    if bool(args.deployment) == bool(args.flow_run_id):
        parser.error("give either a deployment to run or --flow-run-id")
    try:
        api = PrefectApi.from_env()
    except LookupError as error:
        raise SystemExit(f"follow: {error}") from None
    try:
        if args.flow_run_id:
            run = api(f"/flow_runs/{args.flow_run_id}")
            print(f"following run {run['name']} ({run['id']}): {api.run_page(run['id'])}", file=out, flush=True)
        else:
            parameters = {**(json.loads(args.params) if args.params else {}), **parse_params(args.param)}
            run = start_run(api, args.deployment, parameters)
            print(f"started {args.deployment} run {run['name']} ({run['id']}): {api.run_page(run['id'])}",
                  file=out, flush=True)
    except urllib.error.HTTPError as error:  # a deployment or run that does not exist, parameters refused (422)
        what = args.flow_run_id or args.deployment
        print(f"follow: {what}: {error.code} {error.reason} {error.read()[:500].decode(errors='replace')}",
              file=sys.stderr)
        return 2
    except urllib.error.URLError as error:
        print(f"follow: the Prefect API at {api.api_url} does not answer ({error.reason}): is the stack up?",
              file=sys.stderr)
        return 2
    try:
        final = Follower(api, run["id"], out, args.everything).follow()
    except KeyboardInterrupt:
        print(f"\nstopped following; run {run['name']} goes on. Follow it again: python deployments/follow.py "
              f"--flow-run-id {run['id']}  (UI: {api.run_page(run['id'])})", file=out, flush=True)
        return 130
    if (final.get("state") or {}).get("type") == "COMPLETED":
        print(f"run {final['name']} completed: {api.run_page(final['id'])}", file=out, flush=True)
        return 0
    print(final_line(api, final), file=out, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
