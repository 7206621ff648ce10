"""Progress artifacts and log lines fed from kinship's ``ProgressEvent`` callbacks, throttled to spare the API.

Events may come from any thread (the store's transfer threads report fetched bytes), so the task run's
logger is bound once, in the task's own thread, and every event is handled under a lock.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger

from kinship.progress import ProgressEvent

_EPOCH = re.compile(r"^epoch (\d+)/(\d+)$")
# Stages that would flood the log with one line each: training batches (the epoch line, with loss and
# validation AUC, is ``tasks.training``'s) and the benchmark's warm-ups and timing slices (the benchmark rows are
# logged by ``tasks.engines``). They get only the heartbeat line.
_QUIET = (_EPOCH, re.compile(r"^benchmark .* \(round \d+/\d+\)$"), re.compile(r"^warm-up "))
LOG_STEP = 0.10  # a stage logs when another tenth of it is done...
LOG_GAP_S = 5.0  # ...and at least this long after its previous line (and always when it ends)
HEARTBEAT_S = 30.0  # a line at least this often while events come, whatever the stage, so the log never looks dead


def overall_percent(event: ProgressEvent) -> float:
    """Percent done: training epochs add up to one bar (epoch k of n, batch i of m); other stages are their own."""
    match = _EPOCH.match(event.stage)
    if match:
        epoch, epochs = int(match.group(1)), int(match.group(2))
        return 100.0 * ((epoch - 1) + event.fraction) / max(epochs, 1)
    return 100.0 * event.fraction


def _amount(event: ProgressEvent) -> str:
    """``done/total``, in MB for byte counts, with the percentage when there is a total."""
    if event.info.get("unit") == "bytes":
        text = f"{event.done / 1e6:.1f}/{event.total / 1e6:.1f} MB"
    else:
        text = f"{event.done}/{event.total}"
    return f"{text} ({100 * event.fraction:.0f}%)" if event.total > 0 else text


def describe(title: str, event: ProgressEvent) -> str:
    """One line for an event: ``title: stage done/total (percent) (figures)``."""
    figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in event.info.items() if k != "unit")
    return f"{title}: {event.stage} {_amount(event)}" + (f" ({figures})" if figures else "")


class LogPacer:
    """Decides which events become log lines: a few per stage, not one per file or batch.

    A stage logs when another ``step`` of it is done and ``gap_s`` have passed since its previous line, and
    when it ends; quiet stages (``_QUIET``) only with the heartbeat, every ``heartbeat_s`` across stages.
    """

    def __init__(self, step: float = LOG_STEP, gap_s: float = LOG_GAP_S, heartbeat_s: float = HEARTBEAT_S,
                 clock: Callable[[], float] = time.monotonic):
        self.step, self.gap_s, self.heartbeat_s, self.clock = step, gap_s, heartbeat_s, clock
        self.stage: str | None = None
        self.stage_logged_at = self.stage_fraction = 0.0
        self.any_logged_at = clock()

    def wants(self, event: ProgressEvent) -> bool:
        """Whether ``event`` should be logged (and, if so, it is counted as logged)."""
        now = self.clock()
        if event.stage != self.stage:  # a new stage starts its own count (a stage seen again starts anew)
            self.stage, self.stage_logged_at, self.stage_fraction = event.stage, now, 0.0
        finished = event.total > 0 and event.done >= event.total
        quiet = any(pattern.match(event.stage) for pattern in _QUIET)
        if quiet:
            log = now - self.any_logged_at >= self.heartbeat_s
        else:
            stepped = event.fraction - self.stage_fraction >= self.step and now - self.stage_logged_at >= self.gap_s
            log = finished or stepped or now - self.any_logged_at >= self.heartbeat_s
        if log:
            self.stage_logged_at = self.any_logged_at = now
            self.stage_fraction = event.fraction
        return log


class ProgressArtifact:
    """One progress artifact for a task run, updated at most every ``interval`` seconds and at each stage end,
    plus the few log lines ``LogPacer`` lets through. Callable from any thread."""

    def __init__(self, title: str, interval: float = 2.0):
        self.title, self.interval = title, interval
        self.logger = get_run_logger()  # bound here, in the task's thread: events may come from other threads
        self.artifact_id = create_progress_artifact(progress=0.0, description=f"{title}: starting")
        self.last_update, self.last_stage = 0.0, None
        self.pacer = LogPacer()
        self.lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        with self.lock:
            self._update(event)
            if self.pacer.wants(event):
                self.logger.info(describe(self.title, event))

    def _update(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        finished = event.total > 0 and event.done >= event.total
        if now - self.last_update < self.interval and not finished and event.stage == self.last_stage:
            return
        self.last_update, self.last_stage = now, event.stage
        try:
            update_progress_artifact(self.artifact_id, overall_percent(event), describe(self.title, event))
        except Exception as error:  # a missed progress update must never fail the work it reports on
            self.logger.debug("progress update failed: %s", error)

    def finish(self, note: str = "done") -> None:
        update_progress_artifact(self.artifact_id, 100.0, f"{self.title}: {note}")


@contextmanager
def progress_artifact(title: str) -> Iterator[Callable[[ProgressEvent], None]]:
    """A ``ProgressEvent`` callback for the current task run; the bar is set to 100% when the block ends."""
    reporter = ProgressArtifact(title)
    yield reporter
    reporter.finish()
