"""Progress reporting that the library emits and each front end renders its own way.

The CLI draws rich progress bars; Prefect tasks turn the same events into progress artifacts.
Library code only calls a ``Progress`` listener; it never knows who listens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long job: ``done`` of ``total`` units of ``stage``, plus free-form figures."""

    stage: str
    done: int
    total: int
    info: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)


Progress = Callable[[ProgressEvent], None]  # a listener: the CLI's bars, a task's artifacts, or ``silent``


def silent(event: ProgressEvent) -> None:
    """The default listener: ignores every event."""


def fan_out(*callbacks: Callable[[ProgressEvent], None]) -> Callable[[ProgressEvent], None]:
    """One callback that forwards each event to several listeners."""

    def forward(event: ProgressEvent) -> None:
        for callback in callbacks:
            callback(event)

    return forward
