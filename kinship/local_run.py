"""``kinship pipeline``: every stage in this process, against a local store, in the flows' order.

No orchestrator: the stage functions of ``kinship.pipeline`` run one after the other with a ``LocalStore`` in
``out/store``, each timed; the work files stay in ``out/work/<run_id>`` for a look afterwards.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from kinship.baseline import REQUIRED_MARGIN
from kinship.champion import promote_if_better
from kinship.engines.calibration import CalibrationConfig
from kinship.engines.config import DEFAULT_PRECISIONS, EngineConfig
from kinship.manifests import TRAIN_MANIFEST_FORMAT
from kinship.pipeline import (
    benchmark_stage, calibration_stage, check_engine_request, engine_stage, engines_report_stage, export_stage,
    fetch_calibration, fetch_dataset, fetch_model, local_dataset, new_run_id, open_local_store, read_manifest,
    require_an_engine, run_prefix, train_stage, write_engines_manifest, write_train_manifest,
)
from kinship.progress import ProgressEvent, silent
from kinship.run_report import publish_run_report
from kinship.storage import ArtifactRef, join_key
from kinship.train_config import TrainConfig

Progress = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run decides: training, calibration, which precisions and how engines are measured."""

    train: TrainConfig = TrainConfig()
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    engines: EngineConfig = EngineConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    required_margin: float = REQUIRED_MARGIN  # over raw-pixel cosine, for promotion to champion


@dataclass
class PipelineResult:
    """What ``run_pipeline`` produced: the three manifests, the promotion decision and the report."""

    run_id: str
    train: dict
    engines: dict
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
    precisions = check_engine_request(config.precisions, config.engines)
    out = Path(out).resolve()
    store, run_id = open_local_store(out), run_id or new_run_id()
    work, clock = out / "work" / run_id, _Clock(on_progress)
    dataset = clock("data", lambda: fetch_dataset(str(data), store.settings, on_progress) if "://" in str(data)
                    else local_dataset(Path(data), on_progress))
    train_manifest = clock("train", lambda: _training_half(store, run_id, dataset, config, work / "train", clock, on_progress))
    engines_manifest = clock("engines", lambda: engines_half(
        store, run_id, train_manifest["manifest"], dataset, precisions, config.engines, work / "engines", on_progress))
    require_an_engine(engines_manifest)  # the engines report is stored; no promotion, no run report
    promotion = clock("champion", lambda: promote_if_better(store, train_manifest, engines_manifest,
                                                                         required_margin=config.required_margin))
    report = clock("report", lambda: publish_run_report(store, run_id, train_manifest, engines_manifest, promotion))
    report_path = store.get_file(ArtifactRef.from_dict(report["artifacts"]["report.md"]), out / "report.md")
    return PipelineResult(run_id, train_manifest, engines_manifest, promotion, report, report_path,
                          time.perf_counter() - started, clock.seconds)


def _training_half(store, run_id, dataset, config: PipelineConfig, work: Path, clock: _Clock, on_progress) -> dict:
    """The ``kinship-train`` flow's stages, in its order."""
    prefix = run_prefix(run_id, "train")
    trained = clock("train model", lambda: train_stage(store, dataset, config.train, work / "run", prefix, on_progress))
    exported = clock("export", lambda: export_stage(store, dataset, trained["artifacts"]["model.pt"], work, prefix))
    calibrated = clock("calibration", lambda: calibration_stage(store, dataset, config.train, config.calibration, work,
                                                                prefix, on_progress))
    return write_train_manifest(store, run_id, dataset, config.train, trained, exported, calibrated)


def engines_half(store, run_id, train_ref: dict, dataset, precisions, settings, work: Path, on_progress) -> dict:
    """The ``kinship-engines`` flow's stages, in its order (the manifest read back as that flow does)."""
    train_manifest = read_manifest(store, train_ref, TRAIN_MANIFEST_FORMAT)
    onnx = fetch_model(store, train_manifest, work)
    calibration = fetch_calibration(store, train_manifest, work)
    train = TrainConfig.from_dict(train_manifest["train_config"])
    prefix = run_prefix(run_id, "engines")
    variants = [engine_stage(store, onnx, dataset, calibration, variant, settings, train, work, prefix, on_progress)
                for variant in precisions]
    variants = benchmark_stage(store, onnx, variants, dataset, settings, train, work, on_progress)
    report = engines_report_stage(store, variants, work, join_key(prefix, "report"))
    return write_engines_manifest(store, run_id, train_manifest, variants, report)
