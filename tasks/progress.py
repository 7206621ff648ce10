"""Progress artifacts fed from kinship's ``ProgressEvent`` callbacks, throttled to spare the API."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger

from kinship.progress import ProgressEvent

_EPOCH = re.compile(r"^epoch (\d+)/(\d+)$")


def overall_percent(event: ProgressEvent) -> float:
    """Percent done: training epochs add up to one bar (epoch k of n, batch i of m); other stages are their own."""
    match = _EPOCH.match(event.stage)
    if match:
        epoch, epochs = int(match.group(1)), int(match.group(2))
        return 100.0 * ((epoch - 1) + event.fraction) / max(epochs, 1)
    return 100.0 * event.fraction


def describe(title: str, event: ProgressEvent) -> str:
    figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in event.info.items())
    return f"{title}: {event.stage} {event.done}/{event.total}" + (f" ({figures})" if figures else "")


class ProgressArtifact:
    """One progress artifact for a task run, updated at most every ``interval`` seconds and at each stage end."""

    def __init__(self, title: str, interval: float = 2.0):
        self.title, self.interval = title, interval
        self.artifact_id = create_progress_artifact(progress=0.0, description=f"{title}: starting")
        self.last_update, self.last_stage, self.last_log = 0.0, None, 0.0

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        finished = event.total > 0 and event.done >= event.total
        if now - self.last_update < self.interval and not finished and event.stage == self.last_stage:
            return
        self.last_update, self.last_stage = now, event.stage
        try:
            update_progress_artifact(self.artifact_id, overall_percent(event), describe(self.title, event))
        except Exception as error:  # a missed progress update must never fail the work it reports on
            get_run_logger().debug("progress update failed: %s", error)
        if finished or now - self.last_log > 30:
            self.last_log = now
            get_run_logger().info(describe(self.title, event))

    def finish(self, note: str = "done") -> None:
        update_progress_artifact(self.artifact_id, 100.0, f"{self.title}: {note}")


@contextmanager
def progress_artifact(title: str) -> Iterator[Callable[[ProgressEvent], None]]:
    """A ``ProgressEvent`` callback for the current task run; the bar is set to 100% when the block ends."""
    reporter = ProgressArtifact(title)
    yield reporter
    reporter.finish()
