"""What became of one engine variant, and the one vocabulary for it: built, not applicable, or failed.

``EngineOutcome`` is the one outcome type. A backend returns it (built, or not applicable), ``build.build_one``
adds the validation or turns it into a failure (a build that raised, an engine that cannot run), and the
batch sweep adds the benchmark figures. ``BuildFacts`` is what a build wrote: a value inside the outcome.
The report row (``report.EngineResult``) is a view of an outcome. The engine report (``report.json``,
format ``kinship-engine-report/1``) and the run report spell a built engine "ok": ``REPORT_WORD`` is the
one place that word is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Status = Literal["built", "not applicable", "failed"]
STATUS_BUILT: Status = "built"
STATUS_NOT_APPLICABLE: Status = "not applicable"  # e.g. TF32 on a CPU: a reason, never a copy of FP32
STATUS_FAILED: Status = "failed"
# How the engine report stores each status (rows of kinship-engine-report/1; changing a word needs format /2).
REPORT_WORD: dict[str, str] = {STATUS_BUILT: "ok", STATUS_FAILED: STATUS_FAILED, STATUS_NOT_APPLICABLE: STATUS_NOT_APPLICABLE}


def report_word(status: str) -> str:
    """The engine report's word for ``status`` (a report word is returned as it is)."""
    return REPORT_WORD.get(status, status)


@dataclass
class BuildFacts:
    """What one build wrote. ``path`` is the pair engine (None when the variant does not apply)."""

    path: Path | None
    size_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    parts: dict[str, Path] = field(default_factory=dict)  # part -> file (pair, encoder, head)
    part_bytes: dict[str, int] = field(default_factory=dict)
    size_explanation: dict = field(default_factory=dict)  # INT8: tensors/layers by precision


@dataclass
class EngineOutcome:
    """One variant's outcome: built (with its validation and benchmark), not applicable, or failed (with why).
    ``build`` is None when the build itself raised; the file facts read through to it."""

    backend: str
    variant: str
    precision: str
    status: Status
    reason: str | None = None
    build: BuildFacts | None = None
    validation: object | None = None  # validate.ValidationResult (not imported: validate reaches the backends)
    bench: list = field(default_factory=list)  # timing.BenchResult per batch size

    @property
    def path(self) -> Path | None:
        return self.build.path if self.build else None

    @property
    def size_bytes(self) -> int | None:
        return self.build.size_bytes if self.build else None

    @property
    def notes(self) -> list[str]:
        return self.build.notes if self.build else []

    @property
    def parts(self) -> dict[str, Path]:
        return self.build.parts if self.build else {}

    @property
    def size_explanation(self) -> dict:
        return self.build.size_explanation if self.build else {}

    def to_dict(self) -> dict:
        """The ``kinship engines --json`` record: the outcome, with the build's facts nested under ``build``."""
        return {
            "backend": self.backend, "variant": self.variant, "precision": self.precision, "status": self.status,
            "reason": self.reason, "build": self._build_dict() if self.build else None,
            "validation": self.validation.to_dict() if self.validation else None,
            "bench": [b.to_dict() for b in self.bench],
        }

    def _build_dict(self) -> dict:
        facts = asdict(self.build)
        return {
            "backend": self.backend, "variant": self.variant, "precision": self.precision,
            "path": str(self.build.path) if self.build.path else None, "size_bytes": facts["size_bytes"],
            "seconds": facts["seconds"], "notes": facts["notes"],
            # what the build gave, whatever validation made of it afterwards
            "status": STATUS_NOT_APPLICABLE if self.status == STATUS_NOT_APPLICABLE else STATUS_BUILT,
            "parts": {part: str(path) for part, path in self.build.parts.items()},
            "part_bytes": facts["part_bytes"], "size_explanation": facts["size_explanation"],
        }
