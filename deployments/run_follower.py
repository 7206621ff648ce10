"""The runs a follower follows (a parent and every flow run nested under it, found as they appear) and the loop
that polls them and prints their new lines (``deployments/follow.py``).
"""

from __future__ import annotations

import re
import sys
import time
import urllib.error
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, TextIO

from deployments.log_lines import FLOW_FINISHED, LogFeed, format_entry, read_logs, shown
from kinship.server_retries import PrefectApi

POLL_S = 1.0
DRAIN_S = 6.0  # after the parent ends, how long its last log batches (and its children's) may take to arrive
OUTAGE_S = 300.0  # how long a server that refuses connections (restarting) is waited for before giving up
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
LABEL_WIDTH = len("kinship-engines")
DEFAULT_SUFFIX = re.compile(r"-[0-9a-f]{3}$")  # Prefect names an unnamed task run "<task name>-<3 hex digits>"


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
