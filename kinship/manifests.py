"""What the stages hand each other and store: the data set handle, the manifests and their formats, as types.

The stage results stay plain dicts (``TypedDict``s): Prefect persists the cached ones with its default
serializer and a cache hit from an older run must come back as the same dict. Their keys are the stable
interface; the types only name them, nothing is checked at run time.

Stored documents typed here: the training manifest (``runs/<id>/train/manifest.json``), the engines manifest
(``runs/<id>/engines/manifest.json``) and the epoch checkpoint's (``checkpoints/train/<inputs>/manifest.json``).
Documented where they are written, and unchanged: the champion pointer and the promotion decision
(``kinship.champion``, ``kinship-champion/1``), ``summary.json`` (``kinship.run_report``), ``report.json``
(``kinship.engines.report``, ``kinship-engine-report/1``: format, context, results = rows + summary, plots) and
an engine folder's ``engine.json`` sidecar (``kinship.engines.base``).

Light on purpose (no torch, no numpy): the orchestrating flow and the in-process runner both import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from kinship import __version__

if TYPE_CHECKING:
    from kinship.engines.outcome import Status
    from kinship.train_config import TrainConfig

TRAIN_MANIFEST_FORMAT = "kinship-train-manifest/1"
ENGINES_MANIFEST_FORMAT = "kinship-engines-manifest/1"
CHECKPOINT_FORMAT = "kinship-train-checkpoint/1"


@dataclass(frozen=True)
class DatasetHandle:
    """A data set ready on this host: where it came from, what its content is, and the local folder."""

    uri: str
    sha256: str  # sha256 of its store manifest, or the data set fingerprint for a folder used in place
    path: Path

    def identity(self) -> DatasetIdentity:
        """What manifests record about the data set (no local path)."""
        return {"uri": self.uri, "sha256": self.sha256}


# ---------------------------------------------------------------- shared pieces


class RefDict(TypedDict):
    """A stored object (``kinship.storage.ArtifactRef.to_dict``): read back verified against ``sha256``."""

    uri: str
    key: str
    sha256: str
    size: int


class UriOnly(TypedDict):
    """Where a manifest read back by URI came from (``pipeline.read_manifest``), when it carries no ref."""

    uri: str


class DatasetIdentity(TypedDict):
    uri: str
    sha256: str


class StageHost(TypedDict):
    """Which machine did a stage (``kinship.host.stage_host``; ``work_pool`` inside a flow run)."""

    hostname: str
    role: str
    work_pool: NotRequired[str | None]


class ChildRun(TypedDict):
    """The child deployment run that wrote a manifest (added by the ``kinship`` flow, not stored)."""

    id: str
    name: str
    work_pool: str | None
    state: str


class ManifestHeader(TypedDict):
    format: str
    run_id: str
    created: str  # ISO 8601, UTC, seconds
    code_version: str  # kinship.__version__ of the code that wrote it


def manifest_header(format: str, run_id: str) -> ManifestHeader:
    """The first four keys of every run manifest: its format, the run, when, and which code wrote it."""
    return {"format": format, "run_id": run_id, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "code_version": __version__}


# ---------------------------------------------------------------- training half


class TrainMetrics(TypedDict):
    best_val_auc: float
    best_epoch: int
    epochs: int
    pixel_baseline_auc: float
    margin_over_baseline: float
    beats_baseline: bool
    required_margin: float
    final_train_loss: float | None
    final_val_auc: float | None
    precision: str
    train_seconds: float
    resumed: bool
    resumed_from: str | None  # "scratch" (this host's run folder), "store" (the mirrored checkpoint) or None
    start_epoch: int


class ExportCheck(TypedDict):
    """How closely ONNX Runtime reproduced PyTorch on real images, per exported file (``kinship.export`` makes
    them, the training manifest stores them as they are)."""

    name: str
    max_abs_diff: float
    max_rel_diff: float
    samples: int


class CalibrationSummary(TypedDict):
    pairs: int
    counts_by_type: dict[str, int]
    families_used: int
    train_families: int
    config: dict[str, Any]  # CalibrationConfig as a dict


class Trained(TypedDict):
    """``training_stages.train_stage``: model.pt, metrics.json, config.json and the metrics."""

    artifacts: dict[str, RefDict]
    metrics: TrainMetrics


class Exported(TypedDict):
    """``training_stages.export_stage``: the ONNX trio and how closely each matched PyTorch."""

    artifacts: dict[str, RefDict]
    checks: list[ExportCheck]
    image_size: int


class Calibrated(TypedDict):
    """``training_stages.calibration_stage``: calibration.npz and what it holds."""

    artifacts: dict[str, RefDict]
    meta: CalibrationSummary


class TrainManifest(ManifestHeader):
    """The training half's result (``runs/<id>/train/manifest.json``)."""

    dataset: DatasetIdentity
    train_config: dict[str, Any]  # TrainConfig as a dict
    metrics: TrainMetrics
    export_checks: list[ExportCheck]
    calibration: CalibrationSummary
    artifacts: dict[str, RefDict]  # model.pt, metrics.json, config.json, model{,.encoder,.head}.onnx, calibration.npz
    host: StageHost
    code_commit: NotRequired[str]  # the training host's git commit (``-dirty-<digest>`` with changes); newer runs
    manifest: NotRequired[RefDict | UriOnly]  # where it is stored: added when written or read back
    child_run: NotRequired[ChildRun]


class CheckpointManifest(TypedDict):
    """The epoch checkpoint of one training input (``kinship.checkpoint_mirror``)."""

    format: str
    dataset: DatasetIdentity
    train_config: dict[str, Any]
    epoch: int
    complete: bool
    files: dict[str, RefDict]  # checkpoints/last.pt, model.pt (empty once complete)
    created: str
    host: StageHost


# ---------------------------------------------------------------- engines half


class EngineInputs(TypedDict):
    """What every engine build reads (``engine_stages.engine_inputs``); an in-memory value, never stored."""

    onnx: Path  # the pair model in this host's work folder, its encoder and head beside it
    onnx_sha256: str
    calibration_ref: RefDict  # fetched by the INT8 builds themselves
    calibration_sha256: str
    train_config: TrainConfig


class VariantRecord(TypedDict):
    """One precision's outcome (``engine_stages.engine_stage``, ``failed_engine``); the cached result of a build
    task."""

    variant: str
    backend: str
    backend_note: str | None
    status: Status  # built, not applicable or failed (kinship.engines.outcome)
    reason: str | None
    artifacts: dict[str, RefDict]  # the engine folder's files, below its store prefix
    row: dict[str, Any]  # its report.json row (status "ok" when built) with "summary"
    context: dict[str, Any]  # run-wide facts of the report: model, machine, reference batch, ceiling, notes
    reference: dict[str, Any] | None  # the FP32 reference's figures
    validation: dict[str, Any] | None
    environment: dict[str, Any] | None


class ReportRefs(TypedDict):
    """``engine_stages.engines_report_stage``: the stored report files, its rows and its plots."""

    artifacts: dict[str, RefDict]  # report.md, report.json, *.png
    rows: list[dict[str, Any]]  # report.json's results: a row and its summary per variant
    plots: dict[str, str]  # plot name -> file name


class EngineEntry(TypedDict):
    variant: str
    backend: str
    status: Status
    reason: str | None
    artifacts: dict[str, RefDict]


class RowSummary(TypedDict):
    """A report row without its bulky parts (ROC curve, per-batch timings), for manifests and tables."""

    backend: str
    precision: str
    variant: str
    status: str  # the report's word (outcome.REPORT_WORD): "ok", "not applicable" or "failed"
    reason: str | None
    path: str | None  # the engine folder's store URI
    size_bytes: int | None
    build_seconds: float | None
    summary: dict[str, Any] | None
    bench_batches: list[int]


class EnginesManifest(ManifestHeader):
    """The engines half's result (``runs/<id>/engines/manifest.json``)."""

    train_manifest: RefDict | UriOnly
    backend: str | None
    backend_note: str | None
    reference: dict[str, Any] | None
    validation: dict[str, Any] | None
    environment: dict[str, Any] | None
    reference_batch: int | None
    engines: list[EngineEntry]
    report: dict[str, RefDict]
    rows: list[RowSummary]
    host: StageHost
    manifest: NotRequired[RefDict | UriOnly]
    child_run: NotRequired[ChildRun]
