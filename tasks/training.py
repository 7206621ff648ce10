"""Training-half tasks: train, export, calibrate, write the manifest. Each cached on its content inputs.

``TrainingTasks`` hands them to ``kinship.stage_order.training_half``, which holds their order.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterator

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from kinship import pipeline, training_stages
from kinship.baseline import REQUIRED_MARGIN, BaselineComparison
from kinship.engines.calibration import CalibrationConfig
from kinship.manifests import Calibrated, DatasetHandle, Exported, RefDict, Trained, TrainManifest
from kinship.train_config import TrainConfig
from tasks.data import clean_work, fetch_dataset
from tasks.progress import progress_artifact
from tasks.runtime import IO_RETRIES, ONE_RETRY, cache_key, host, open_store, work_dir


class EpochLines(logging.Filter):
    """One readable line per epoch in the task run's log, in place of ``kinship.train``'s dump of the epoch's
    figures: ``epoch 3/16: train loss 0.6021, val AUC 0.7012 (best 0.7012), 41 s, 310 img/s``.

    A record of another shape (a future wording of that line) passes through unchanged.
    """

    MESSAGE = "epoch %d: %s"  # kinship.train's per-epoch line

    def __init__(self, logger, epochs: int):
        super().__init__()
        self.logger, self.epochs, self.best = logger, epochs, None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg != self.MESSAGE or len(args) != 2 or not isinstance(args[1], dict):
            return True
        self.logger.info("%s", self.line(args[0], args[1]))
        return False  # said once, by the line above

    def line(self, epoch: int, figures: dict) -> str:
        """The epoch's line; keeps the best validation AUC seen so far."""
        auc = figures.get("val_auc")
        if isinstance(auc, (int, float)):
            self.best = auc if self.best is None else max(self.best, auc)
        parts = [f"epoch {epoch}/{self.epochs}: train loss {_figure(figures.get('train_loss'), '.4f')}",
                 f"val AUC {_figure(auc, '.4f')} (best {_figure(self.best, '.4f')})",
                 f"{_figure(figures.get('epoch_seconds'), '.0f')} s",
                 f"{_figure(figures.get('images_per_second'), '.0f')} img/s"]
        return ", ".join(parts)


def _figure(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


@contextmanager
def epoch_lines(logger, epochs: int) -> Iterator[EpochLines]:
    """``EpochLines`` on ``kinship.train``'s logger for the duration of the block."""
    target, lines = logging.getLogger("kinship.train"), EpochLines(logger, epochs)
    level = target.level
    if not target.isEnabledFor(logging.INFO):  # below the root's WARNING the line is dropped before any filter
        target.setLevel(logging.INFO)
    target.addFilter(lines)
    try:
        yield lines
    finally:
        target.removeFilter(lines)
        target.setLevel(level)


def _training_key(context, parameters: dict) -> str:
    return cache_key("train", parameters["dataset"].sha256, asdict(parameters["config"]))


def _export_key(context, parameters: dict) -> str:
    return cache_key("export", parameters["model"]["sha256"])


def _calibration_key(context, parameters: dict) -> str:
    config = parameters["config"]
    return cache_key("calibration", parameters["dataset"].sha256, config.image_size, config.val_fraction, config.seed,
                     asdict(parameters["calibration"]))


@task(name="train model", cache_key_fn=_training_key,
      task_run_name="train {config.epochs} epochs at {config.image_size} px", **ONE_RETRY)
def train_model(dataset: DatasetHandle, config: TrainConfig, run_id: str) -> Trained:
    """Train on the fetched data set and upload model.pt, metrics.json, config.json.

    Cached on (data set manifest sha256, configuration): the same inputs reuse the stored model. Each epoch's
    checkpoint is stored under those same inputs, so an interrupted training continues from its last epoch:
    a retry from this host's scratch folder, a rerun (new run id, maybe another host) from the store.
    """
    logger = get_run_logger()
    store = open_store()
    with progress_artifact("training") as on_progress, epoch_lines(logger, config.epochs):
        trained = training_stages.train_stage(store, dataset, config, work_dir(run_id, "train", "run"),
                                              pipeline.run_prefix(run_id, "train"), on_progress)
    metrics = trained["metrics"]
    resumed = ""
    if metrics["resumed"]:
        resumed = f", resumed at epoch {metrics['start_epoch']} from the {metrics['resumed_from']}"
    logger.info("best validation AUC %.4f at epoch %s of %s on %s (%.0f s%s)", metrics["best_val_auc"],
                metrics["best_epoch"], metrics["epochs"], metrics["precision"], metrics["train_seconds"], resumed)
    comparison = BaselineComparison(metrics["best_val_auc"], metrics["pixel_baseline_auc"])
    (logger.info if comparison.beats_baseline else logger.warning)("%s", comparison.sentence())
    create_markdown_artifact(_baseline_markdown(comparison), key="model-vs-pixels",
                             description=f"model vs raw-pixel baseline, run {run_id}")
    return trained


def _baseline_markdown(comparison: BaselineComparison) -> str:
    flag = ("" if comparison.beats_baseline else
            f"\n\n**FLAGGED**: not {REQUIRED_MARGIN} above raw pixels; this model will not be promoted to champion.")
    return ("| model validation AUC | raw-pixel cosine AUC | margin | beats baseline |\n|---|---|---|---|\n"
            f"| {comparison.model_auc:.4f} | {comparison.pixel_auc:.4f} | {comparison.margin:+.4f} | "
            f"{'yes' if comparison.beats_baseline else 'NO'} |{flag}")


@task(name="export onnx", cache_key_fn=_export_key, task_run_name="export onnx", **ONE_RETRY)
def export_onnx(dataset: DatasetHandle, model: RefDict, run_id: str) -> Exported:
    """Export pair/encoder/head ONNX from the stored checkpoint, check them against PyTorch, upload them."""
    exported = training_stages.export_stage(open_store(), dataset, model, work_dir(run_id, "train"),
                                            pipeline.run_prefix(run_id, "train"))
    for check in exported["checks"]:
        get_run_logger().info("ONNX %s matches PyTorch: max abs diff %.2e on %d pairs", check["name"],
                              check["max_abs_diff"], check["samples"])
    return exported


@task(name="build calibration set", cache_key_fn=_calibration_key,
      task_run_name="calibration set", **ONE_RETRY)
def build_calibration(dataset: DatasetHandle, config: TrainConfig, calibration: CalibrationConfig,
                      run_id: str) -> Calibrated:
    """Draw the INT8 calibration pairs from the training families and upload the ``.npz``."""
    with progress_artifact("calibration set") as on_progress:
        built = training_stages.calibration_stage(open_store(), dataset, config, calibration,
                                                  work_dir(run_id, "train"), pipeline.run_prefix(run_id, "train"),
                                                  on_progress)
    get_run_logger().info("calibration set: %d pairs from %d training families", built["meta"]["pairs"],
                          built["meta"]["families_used"])
    return built


@task(name="write training manifest", **IO_RETRIES)
def write_train_manifest(run_id: str, dataset: DatasetHandle, config: TrainConfig, trained: Trained,
                         exported: Exported, calibrated: Calibrated) -> TrainManifest:
    """Store the training manifest last (its presence means the half is complete) and show the epochs."""
    manifest = training_stages.write_train_manifest(open_store(), run_id, dataset, config, trained, exported,
                                                    calibrated, host())
    history = _epoch_rows(manifest)
    if history:
        create_table_artifact(history, description=f"training epochs of run {run_id}")
    get_run_logger().info("training manifest: %s", manifest["manifest"]["uri"])
    return manifest


def _epoch_rows(manifest: TrainManifest) -> list[dict]:
    """The per-epoch metrics from the stored metrics.json (verified), rounded for the table."""
    try:
        document = open_store().get_json(manifest["artifacts"]["metrics.json"]["uri"])
    except Exception:  # the table is a nicety; the manifest is what matters
        return []
    keys = ("epoch", "train_loss", "val_auc", "val_accuracy", "val_loss", "epoch_seconds")
    return [{k: round(row[k], 4) if isinstance(row.get(k), float) else row.get(k) for k in keys}
            for row in document.get("epochs", [])]


class TrainingTasks:
    """``kinship.stage_order.TrainingSteps`` as this module's tasks: each method runs the task of its name."""

    def __init__(self, force: bool = False):
        self.force = force  # run the cached steps again even where their inputs were seen before

    def fetch_dataset(self, uri: str) -> DatasetHandle:
        return fetch_dataset(uri)

    def train_model(self, dataset: DatasetHandle, train: TrainConfig, run_id: str) -> Trained:
        return train_model.with_options(refresh_cache=self.force)(dataset, train, run_id)

    def export_onnx(self, dataset: DatasetHandle, model: RefDict, run_id: str) -> Exported:
        return export_onnx.with_options(refresh_cache=self.force)(dataset, model, run_id)

    def build_calibration(self, dataset: DatasetHandle, train: TrainConfig, calibration: CalibrationConfig,
                          run_id: str) -> Calibrated:
        return build_calibration.with_options(refresh_cache=self.force)(dataset, train, calibration, run_id)

    def write_train_manifest(self, run_id: str, dataset: DatasetHandle, train: TrainConfig, trained: Trained,
                             exported: Exported, calibrated: Calibrated) -> TrainManifest:
        return write_train_manifest(run_id, dataset, train, trained, exported, calibrated)

    def clean_work(self, run_id: str) -> None:
        clean_work(run_id)
