"""The one set of engine knobs: which backend, how engines are built, validated and benchmarked.

A flow parameter (``engines``), the CLIs' defaults and the library's argument are all an ``EngineConfig``.
The class defaults are the pipeline's (the flows, ``prefect.yaml`` and ``kinship pipeline`` rely on them);
``kinship engines`` starts from ``CLI_ENGINES`` (a longer benchmark) and ``kinship bench`` from its flags.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from kinship.errors import UserError

BACKENDS = ("onnxruntime", "tensorrt")
# ``auto`` or a backend of ``BACKENDS``: deployments refuse anything else before a run starts.
BackendName = Literal["auto", "onnxruntime", "tensorrt"]
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def check_backend_name(name: str) -> str:
    """A backend name or ``auto``; anything else is a UserError listing the valid ones."""
    if name not in BACKENDS + ("auto",):
        raise UserError(f"unknown backend {name!r}: choose one of auto, {', '.join(BACKENDS)}")
    return name


@dataclass(frozen=True)
class EngineConfig:
    """How engines are built, validated and measured. Batch sizes are pairs; the profile covers both inputs
    of the pair model. Construction checks the build profile and calibration method; ``check()`` the rest."""

    backend: BackendName = "auto"  # auto picks TensorRT on NVIDIA hosts, ONNX Runtime elsewhere
    # build
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 1024
    workspace_mib: int = 2048
    calibration_method: str = "minmax"
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = its default
    reduce_range: bool | None = None  # ORT CPU INT8: None = decide from the CPU (no VNNI -> reduce)
    companions: bool = True  # also build encoder and head engines
    # validation against FP32
    validation_pairs: int = 0  # 0 = every validation pair
    # benchmark
    bench_batches: tuple[int, ...] = (1, 8, 64)
    bench_seconds: float = 1.0
    warmup_seconds: float = 0.3
    bench_rounds: int = 3
    ceiling_seconds: float = 2.0  # the GEMM ceiling measured beside a report

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UserError(
                f"unknown calibration method {self.calibration_method!r}: choose one of {', '.join(CALIBRATION_METHODS)}"
            )

    def check(self) -> "EngineConfig":
        """Return self, or raise ``UserError`` naming the first bad value (backend, batches, durations)."""
        check_backend_name(self.backend)
        if any(int(b) < 1 for b in self.bench_batches):
            raise UserError(f"bench_batches must all be at least 1, got {list(self.bench_batches)}")
        if self.bench_seconds <= 0 or self.warmup_seconds < 0 or self.validation_pairs < 0:
            raise UserError("bench_seconds must be > 0; warmup_seconds and validation_pairs >= 0")
        return self

    def with_changes(self, **changes) -> "EngineConfig":
        """A copy with ``changes`` applied (and checked again at construction)."""
        return replace(self, **changes)


# `kinship engines` measures longer than a pipeline run: a report a person reads, not a step of a flow.
CLI_ENGINES = EngineConfig(bench_batches=(1, 8, 64, 256), bench_seconds=2.0, warmup_seconds=0.5)
