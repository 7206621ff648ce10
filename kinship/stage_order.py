"""The order of the stages, written once: the Prefect flows and the in-process runner both follow it.

Each half is a short list of steps over a ``Steps`` object that says how one step runs. The flows hand in
Prefect tasks (``tasks.training.TrainingTasks``, ``tasks.engines.EngineTasks``); ``kinship.local_run`` hands in
the stage functions of ``kinship.training_stages`` and ``kinship.engine_stages``, run in this process. A step
added here is a step of both modes, so they cannot drift apart; what a step does lives in those two modules for
both as well.

No prefect and no torch here: the orchestrating flows import this module.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kinship.engines.calibration import CalibrationConfig
    from kinship.engines.config import EngineConfig
    from kinship.engines.precision import Precision
    from kinship.manifests import (
        Calibrated, DatasetHandle, EngineInputs, EnginesManifest, Exported, RefDict, ReportRefs, Trained, TrainManifest,
        UriOnly, VariantRecord,
    )
    from kinship.train_config import TrainConfig


def _check_run_id(run_id: str) -> None:
    """Refuse a bad run id (a flow parameter) before any step runs: it becomes a folder and a store prefix."""
    from kinship.pipeline import validate_run_id  # pipeline pulls in numpy; the flows import this module bare

    validate_run_id(run_id)


class TrainingSteps(Protocol):
    """How each step of the training half runs (a Prefect task, or a stage function in this process)."""

    def fetch_dataset(self, uri: str) -> DatasetHandle: ...

    def train_model(self, dataset: DatasetHandle, train: TrainConfig, run_id: str) -> Trained: ...

    def export_onnx(self, dataset: DatasetHandle, model: RefDict, run_id: str) -> Exported: ...

    def build_calibration(self, dataset: DatasetHandle, train: TrainConfig, calibration: CalibrationConfig,
                          run_id: str) -> Calibrated: ...

    def write_train_manifest(self, run_id: str, dataset: DatasetHandle, train: TrainConfig, trained: Trained,
                             exported: Exported, calibrated: Calibrated) -> TrainManifest: ...

    def clean_work(self, run_id: str) -> None: ...


def training_half(steps: TrainingSteps, dataset_uri: str, train: TrainConfig, calibration: CalibrationConfig,
                  run_id: str) -> TrainManifest:
    """Fetch the data set, train, export and check ONNX, draw the calibration set, store the training manifest
    (last: its presence means the half is complete), clean this host's work folder; the manifest."""
    _check_run_id(run_id)
    dataset = steps.fetch_dataset(dataset_uri)
    trained = steps.train_model(dataset, train, run_id)
    exported = steps.export_onnx(dataset, trained["artifacts"]["model.pt"], run_id)
    calibrated = steps.build_calibration(dataset, train, calibration, run_id)
    manifest = steps.write_train_manifest(run_id, dataset, train, trained, exported, calibrated)
    steps.clean_work(run_id)
    return manifest


class EngineSteps(Protocol):
    """How each step of the engines half runs (a Prefect task, or a stage function in this process)."""

    def choose_backend(self, settings: EngineConfig) -> str: ...

    def read_train_manifest(self, ref_or_uri: RefDict | UriOnly | str) -> TrainManifest: ...

    def fetch_dataset(self, uri: str, expected_sha256: str) -> DatasetHandle: ...

    def fetch_inputs(self, manifest: TrainManifest, run_id: str) -> EngineInputs: ...

    def build_engines(self, inputs: EngineInputs, dataset: DatasetHandle, precisions: tuple[Precision, ...],
                      backend: str, settings: EngineConfig, run_id: str) -> list[VariantRecord]:
        """One record per precision; one whose build failed is a ``failed`` record, the others go on."""
        ...

    def benchmark_engines(self, inputs: EngineInputs, dataset: DatasetHandle, variants: list[VariantRecord],
                          backend: str, settings: EngineConfig, run_id: str) -> list[VariantRecord]: ...

    def write_engines_report(self, variants: list[VariantRecord], run_id: str) -> ReportRefs: ...

    def write_engines_manifest(self, run_id: str, train_manifest: TrainManifest, variants: list[VariantRecord],
                               report: ReportRefs) -> EnginesManifest: ...

    def clean_work(self, run_id: str) -> None: ...


def engines_half(steps: EngineSteps, train_manifest: RefDict | UriOnly | str, precisions: tuple[Precision, ...],
                 settings: EngineConfig, run_id: str) -> EnginesManifest:
    """Choose the backend (a bad setting fails here, before any download), read the training manifest, fetch
    the data set it names (the same content) and the model, build and validate each precision, benchmark
    the built ones side by side, report, store the engines manifest, clean; the manifest.

    Whether an engine was built at all is the caller's last step (``engine_stages.require_an_engine``): the
    report and the manifest are stored either way.
    """
    _check_run_id(run_id)
    backend = steps.choose_backend(settings)
    manifest = steps.read_train_manifest(train_manifest)
    dataset = steps.fetch_dataset(manifest["dataset"]["uri"], manifest["dataset"]["sha256"])
    inputs = steps.fetch_inputs(manifest, run_id)
    variants = steps.build_engines(inputs, dataset, precisions, backend, settings, run_id)
    variants = steps.benchmark_engines(inputs, dataset, variants, backend, settings, run_id)
    report = steps.write_engines_report(variants, run_id)
    result = steps.write_engines_manifest(run_id, manifest, variants, report)
    steps.clean_work(run_id)
    return result


class EngineChildSteps(EngineSteps, Protocol):
    """The steps of one fanned-out precision: the engines steps plus storing its record for the engines run."""

    def store_engine_record(self, record: VariantRecord, run_id: str) -> None: ...


def one_engine(steps: EngineChildSteps, train_manifest: RefDict | UriOnly | str, precision: Precision, backend: str,
               settings: EngineConfig, run_id: str) -> VariantRecord:
    """One precision on this host, fanned out by an engines run: check this host can build with the backend the
    engines run chose, read the manifest, fetch the data set and model, build and validate, store the record
    where the engines run reads it, clean this child's scratch; the record. The benchmark stays with the engines
    run (every engine on one device, side by side)."""
    _check_run_id(run_id)
    steps.choose_backend(replace(settings, backend=backend))
    manifest = steps.read_train_manifest(train_manifest)
    dataset = steps.fetch_dataset(manifest["dataset"]["uri"], manifest["dataset"]["sha256"])
    inputs = steps.fetch_inputs(manifest, run_id)
    (record,) = steps.build_engines(inputs, dataset, (precision,), backend, settings, run_id)
    steps.store_engine_record(record, run_id)
    steps.clean_work(run_id)
    return record
