"""``kinship pipeline``: every stage in this process, against a local store, in ``kinship.stage_order``'s order.

No orchestrator: the steps of ``stage_order`` run as the stage functions of ``kinship.training_stages`` and
``kinship.engine_stages`` with a ``LocalStore`` in ``out/store``, each timed under the name its Prefect task has.
What the flows do beyond ordering, this mode does too: a precision whose build fails is recorded and the others go
on, a benchmark that fails leaves the engines reported without speeds. The work files stay in
``out/work/<run_id>`` for a look.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from kinship import stage_order
from kinship.baseline import REQUIRED_MARGIN
from kinship.champion import promote_if_better
from kinship.engine_stages import (
    benchmark_stage, choose_backend, engine_inputs, engine_stage, engines_report_stage, failed_engine,
    require_an_engine, write_engines_manifest,
)
from kinship.engines.calibration import CalibrationConfig
from kinship.engines.config import EngineConfig
from kinship.engines.precision import DEFAULT_PRECISIONS, Precision, parse_precisions
from kinship.errors import reason_of
from kinship.manifests import (
    TRAIN_MANIFEST_FORMAT, Calibrated, DatasetHandle, EngineInputs, EnginesManifest, Exported, RefDict, ReportRefs,
    Trained, TrainManifest, UriOnly, VariantRecord,
)
from kinship.pipeline import fetch_dataset, local_dataset, new_run_id, open_local_store, read_manifest, run_prefix
from kinship.progress import Progress, ProgressEvent, silent
from kinship.run_report import publish_run_report
from kinship.storage import ArtifactRef, ArtifactStore
from kinship.train_config import TrainConfig
from kinship.training_stages import calibration_stage, export_stage, train_stage, write_train_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run decides: training, calibration, which precisions and how engines are measured."""

    train: TrainConfig = TrainConfig()
    precisions: tuple[Precision, ...] = DEFAULT_PRECISIONS  # names are parsed here (``parse_precisions``)
    engines: EngineConfig = EngineConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    required_margin: float = REQUIRED_MARGIN  # over raw-pixel cosine, for promotion to champion

    def __post_init__(self) -> None:
        # The in-process mode's edge: a name the caller typed becomes a Precision here, or one UserError.
        object.__setattr__(self, "precisions", parse_precisions(self.precisions))


@dataclass
class PipelineResult:
    """What ``run_pipeline`` produced: the three manifests, the promotion decision and the report."""

    run_id: str
    train: TrainManifest
    engines: EnginesManifest
    promotion: dict
    report: dict
    report_path: Path
    seconds: float
    stage_seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "report_path": str(self.report_path)}


class _Clock:
    """Seconds per stage, in order (the in-process mode's only bookkeeping)."""

    def __init__(self, on_progress: Progress):
        self.seconds: dict[str, float] = {}
        self.on_progress = on_progress

    def __call__(self, name: str, action: Callable[[], object]):
        self.on_progress(ProgressEvent(f"stage: {name}", 0, 1))
        started = time.perf_counter()
        value = action()
        self.seconds[name] = time.perf_counter() - started
        self.on_progress(ProgressEvent(f"stage: {name}", 1, 1))
        return value


def run_pipeline(data: str | Path, out: Path, config: PipelineConfig = PipelineConfig(), run_id: str | None = None,
                 on_progress: Progress = silent) -> PipelineResult:
    """Run every stage in this process against ``out/store``; ``data`` is a folder or a pushed data set URI."""
    started = time.perf_counter()
    config.engines.check()  # a bad setting fails before any work
    out = Path(out).resolve()
    store, run_id = open_local_store(out), run_id or new_run_id()
    work, clock = out / "work" / run_id, _Clock(on_progress)
    dataset = clock("data", lambda: fetch_dataset(str(data), store.settings, on_progress) if "://" in str(data)
                    else local_dataset(Path(data), on_progress))
    training = LocalTrainingSteps(store, dataset, work / "train", clock, on_progress)
    train_manifest = clock("train", lambda: stage_order.training_half(training, dataset.uri, config.train,
                                                                      config.calibration, run_id))
    engines_manifest = clock("engines", lambda: engines_half(
        store, run_id, train_manifest["manifest"], dataset, config.precisions, config.engines, work / "engines", on_progress))
    require_an_engine(engines_manifest)  # the engines report is stored; no promotion, no run report
    promotion = clock("champion", lambda: promote_if_better(store, train_manifest, engines_manifest,
                                                            required_margin=config.required_margin))
    report = clock("report", lambda: publish_run_report(store, run_id, train_manifest, engines_manifest, promotion))
    report_path = store.get_file(ArtifactRef.from_dict(report["artifacts"]["report.md"]), out / "report.md")
    return PipelineResult(run_id, train_manifest, engines_manifest, promotion, report, report_path,
                          time.perf_counter() - started, clock.seconds)


def engines_half(store: ArtifactStore, run_id: str, train_ref: RefDict | UriOnly | str, dataset: DatasetHandle,
                 precisions: tuple[Precision, ...] | list[str], settings: EngineConfig, work: Path,
                 on_progress: Progress = silent) -> EnginesManifest:
    """The engines half of run ``run_id`` in this process, on the model of the training manifest at ``train_ref``
    (``precisions``: names are parsed here, this module's edge for a caller of its own)."""
    steps = LocalEngineSteps(store, dataset, work, on_progress)
    return stage_order.engines_half(steps, train_ref, parse_precisions(precisions), settings, run_id)


class LocalTrainingSteps:
    """``stage_order.TrainingSteps`` in this process: the stage functions, timed under their tasks' names."""

    def __init__(self, store: ArtifactStore, dataset: DatasetHandle, work: Path, clock: _Clock, on_progress: Progress):
        self.store, self.dataset, self.work, self.clock, self.on_progress = store, dataset, work, clock, on_progress

    def fetch_dataset(self, uri: str) -> DatasetHandle:
        return self.dataset  # fetched (or read in place) by run_pipeline's "data" stage

    def train_model(self, dataset: DatasetHandle, train: TrainConfig, run_id: str) -> Trained:
        return self.clock("train model", lambda: train_stage(self.store, dataset, train, self.work / "run",
                                                             run_prefix(run_id, "train"), self.on_progress))

    def export_onnx(self, dataset: DatasetHandle, model: RefDict, run_id: str) -> Exported:
        return self.clock("export", lambda: export_stage(self.store, dataset, model, self.work,
                                                         run_prefix(run_id, "train")))

    def build_calibration(self, dataset: DatasetHandle, train: TrainConfig, calibration: CalibrationConfig,
                          run_id: str) -> Calibrated:
        return self.clock("calibration", lambda: calibration_stage(self.store, dataset, train, calibration, self.work,
                                                                   run_prefix(run_id, "train"), self.on_progress))

    def write_train_manifest(self, run_id: str, dataset: DatasetHandle, train: TrainConfig, trained: Trained,
                             exported: Exported, calibrated: Calibrated) -> TrainManifest:
        return write_train_manifest(self.store, run_id, dataset, train, trained, exported, calibrated)

    def clean_work(self, run_id: str) -> None:
        """Nothing: the work files stay in ``out/work/<run_id>`` for a look after the run."""


class LocalEngineSteps:
    """``stage_order.EngineSteps`` in this process: the stage functions of ``kinship.engine_stages``."""

    def __init__(self, store: ArtifactStore, dataset: DatasetHandle, work: Path, on_progress: Progress):
        self.store, self.dataset, self.work, self.on_progress = store, dataset, Path(work), on_progress

    def choose_backend(self, settings: EngineConfig) -> str:
        return choose_backend(settings)

    def read_train_manifest(self, ref_or_uri: RefDict | UriOnly | str) -> TrainManifest:
        return read_manifest(self.store, ref_or_uri, TRAIN_MANIFEST_FORMAT)

    def fetch_dataset(self, uri: str, expected_sha256: str) -> DatasetHandle:
        return self.dataset  # the handle the model was trained on, so the content the manifest names

    def fetch_inputs(self, manifest: TrainManifest, run_id: str) -> EngineInputs:
        return engine_inputs(self.store, manifest, self.work)

    def build_engines(self, inputs: EngineInputs, dataset: DatasetHandle, precisions: tuple[Precision, ...],
                      backend: str, settings: EngineConfig, run_id: str) -> list[VariantRecord]:
        return [self._build(inputs, dataset, precision, backend, settings, run_id) for precision in precisions]

    def _build(self, inputs: EngineInputs, dataset: DatasetHandle, precision: Precision, backend: str,
               settings: EngineConfig, run_id: str) -> VariantRecord:
        try:
            return engine_stage(self.store, inputs, dataset, precision, backend, settings, self.work,
                                run_prefix(run_id, "engines"), self.on_progress)
        except Exception as error:  # as a failed build task of the flow: recorded, and the other precisions go on
            reason = reason_of(error)
            log.warning("%s %s failed, the other precisions go on: %s", backend, precision, reason)
            return failed_engine(precision, backend, reason)

    def benchmark_engines(self, inputs: EngineInputs, dataset: DatasetHandle, variants: list[VariantRecord],
                          backend: str, settings: EngineConfig, run_id: str) -> list[VariantRecord]:
        return benchmark_stage(self.store, inputs, variants, dataset, settings, self.work, self.on_progress)

    def write_engines_report(self, variants: list[VariantRecord], run_id: str) -> ReportRefs:
        return engines_report_stage(self.store, variants, self.work, run_prefix(run_id, "engines", "report"))

    def write_engines_manifest(self, run_id: str, train_manifest: TrainManifest, variants: list[VariantRecord],
                               report: ReportRefs) -> EnginesManifest:
        return write_engines_manifest(self.store, run_id, train_manifest, variants, report)

    def clean_work(self, run_id: str) -> None:
        """Nothing: the work files stay in ``out/work/<run_id>`` for a look after the run."""
