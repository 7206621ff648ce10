"""The log lines a follower prints: read from the Prefect API, each taken in once, released in time order, some
hidden as noise, formatted as ``HH:MM:SS label  message`` (``deployments/follow.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

from kinship.server_retries import PrefectApi

# Workers send logs in batches every 2 s (PREFECT_LOGGING_TO_API_BATCH_INTERVAL): a line is held this long
# after its timestamp, so that lines of several runs arriving in different batches still print in time order.
HOLD_S = 3.0
# How far back each poll reads again: a batch delayed longer than HOLD_S is still printed (once), late.
LOOKBACK_S = 60.0
LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
# Lines that say nothing the state lines do not (hidden unless --all): a worker picking the run up, the
# deployment's pull steps, a flow's "Finished in state" (its state line says it).
NOISE = re.compile(r"^(Worker '.*' submitting flow run|Flow run '.*' submitted to infrastructure|"
                   r"Running \d+ deployment pull step|Executing deployment step|Deployment step '.*' completed|"
                   r"All deployment steps completed)")
FLOW_FINISHED = re.compile(r"^Finished in state ")
# Prefect's own lines about a task run, which do not name it: they get the task run's name in front.
TASK_ENGINE_LINE = re.compile(r"^(Finished in state|Task run failed|Task run encountered|Received non-final state|"
                              r"Encountered exception)")


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

