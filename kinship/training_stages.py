"""The training half's stages, one function each: train -> export -> calibrate, then its manifest.

Each reads the data set (``kinship.pipeline.fetch_dataset``) or what an earlier stage stored, writes its outputs
to the artifact store below ``runs/<run_id>/train`` (``kinship.pipeline``'s store layout) and returns their refs.
``write_train_manifest`` stores the half's result last; the engines half (``kinship.engine_stages``) reads it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from kinship.checkpoint_mirror import CheckpointMirror, checkpoint_prefix, prepare_run_dir
from kinship.dataset_cache import hold
from kinship.engines.calibration import CalibrationConfig
from kinship.host import code_commit, stage_host
from kinship.manifests import (
    TRAIN_MANIFEST_FORMAT, Calibrated, DatasetHandle, Exported, RefDict, StageHost, Trained, TrainManifest,
    manifest_header,
)
from kinship.pipeline import ONNX_FILES, as_ref, run_prefix, store_manifest, upload_files
from kinship.progress import Progress, silent
from kinship.storage import ArtifactStore
from kinship.train_config import TrainConfig

log = logging.getLogger(__name__)


def train_stage(store: ArtifactStore, dataset: DatasetHandle, config: TrainConfig, run_dir: Path, prefix: str,
                on_progress: Progress = silent) -> Trained:
    """Train, upload model, metrics, config; each epoch's checkpoint goes to the store as training runs.

    An interrupted training of the same inputs continues: from ``run_dir`` when this host still has it (a
    retried task), else from the checkpoint in the store (a rerun, possibly on another host).
    """
    from kinship.train import train

    run_dir = Path(run_dir)
    saved = checkpoint_prefix(dataset, config)
    source, done = prepare_run_dir(store, saved, run_dir, dataset, config)
    if source:
        log.info("resuming at epoch %d of %d from the checkpoint in %s", done + 1, config.epochs,
                 run_dir if source == "scratch" else store.uri(saved))
    started = time.perf_counter()
    # Fold runs keep their members' checkpoints on this host only (a retried task resumes them there).
    mirror = CheckpointMirror(store, saved, run_dir, dataset, config) if config.folds <= 1 else None
    with hold(dataset.path):  # this host's copy stays while training reads it
        result = train(dataset.path, run_dir, config, resume=bool(source), on_progress=on_progress, on_checkpoint=mirror)
    names = ("model.pt", "metrics.json", "config.json")
    artifacts = upload_files(store, {name: run_dir / name for name in names}, prefix)
    if mirror is not None:
        mirror.finish()
    last = result.history[-1] if result.history else {}
    metrics = {
        "best_val_auc": result.best_auc, "best_epoch": result.best_epoch, "epochs": len(result.history),
        **result.baseline.to_dict(),
        "final_train_loss": last.get("train_loss"), "final_val_auc": last.get("val_auc"),
        "precision": result.precision, "train_seconds": time.perf_counter() - started,
        "resumed": bool(source), "resumed_from": source, "start_epoch": done + 1,
    }
    return {"artifacts": artifacts, "metrics": metrics}


def export_stage(store: ArtifactStore, dataset: DatasetHandle, model: RefDict, work_dir: Path, prefix: str) -> Exported:
    """Fetch ``model.pt`` (verified), export pair/encoder/head ONNX, check them against PyTorch, upload."""
    from kinship.checkpoint import read_checkpoint
    from kinship.export import export_checkpoint, validation_sample

    work_dir = Path(work_dir)
    checkpoint = store.get_file(as_ref(model), work_dir / "model.pt")
    payload = read_checkpoint(checkpoint)
    size = int(payload["model_config"]["image_size"])
    with hold(dataset.path):
        img0, img1 = validation_sample(dataset.path, payload["metadata"], size, count=64)
    files, checks = export_checkpoint(checkpoint, work_dir / "model.onnx", img0, img1)
    artifacts = upload_files(store, dict(zip(ONNX_FILES, files.all())), prefix)
    return {"artifacts": artifacts, "checks": checks, "image_size": size}


def calibration_stage(store: ArtifactStore, dataset: DatasetHandle, config: TrainConfig,
                      calibration: CalibrationConfig, work_dir: Path, prefix: str,
                      on_progress: Progress = silent) -> Calibrated:
    """Draw the INT8 calibration set from the training families (the model's own split) and upload it."""
    from kinship.engines.calibration import build_calibration_set, save_calibration

    with hold(dataset.path):
        built = build_calibration_set(dataset.path, config.image_size, config.split_config(), calibration,
                                      on_progress=on_progress)
    path = save_calibration(built, Path(work_dir) / "calibration.npz")
    meta = built.meta
    summary = {"pairs": meta["pairs"], "counts_by_type": meta["counts_by_type"],
               "families_used": len(meta["families_used"]), "train_families": meta["train_families"],
               "config": meta["config"]}
    return {"artifacts": upload_files(store, {"calibration.npz": path}, prefix), "meta": summary}


def write_train_manifest(store: ArtifactStore, run_id: str, dataset: DatasetHandle, config: TrainConfig,
                         trained: Trained, exported: Exported, calibrated: Calibrated,
                         host: StageHost | None = None) -> TrainManifest:
    """The training half's result, stored last as ``runs/<id>/train/manifest.json`` and returned."""
    manifest: TrainManifest = {
        **manifest_header(TRAIN_MANIFEST_FORMAT, run_id),
        "dataset": dataset.identity(),
        "train_config": asdict(config),
        "metrics": trained["metrics"],
        "export_checks": exported["checks"],
        "calibration": calibrated["meta"],
        "artifacts": {**trained["artifacts"], **exported["artifacts"], **calibrated["artifacts"]},
        "host": host or stage_host(),
        "code_commit": code_commit(),  # lineage: a run of the same data, code and configuration would repeat this one
    }
    return store_manifest(store, manifest, run_prefix(run_id, "train", "manifest.json"))

