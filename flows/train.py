"""``kinship-train``: fetch the data set, train, export and check ONNX, draw the calibration set, publish."""

from __future__ import annotations

from prefect import flow

from flows.naming import train_run_name
from kinship.engines.calibration import CalibrationConfig
from kinship.train_config import TrainConfig
from tasks.data import clean_work, fetch_data_set
from tasks.runtime import new_run_id_for_this_run
from tasks.training import build_calibration, export_onnx, train_model, write_train_manifest


@flow(name="kinship-train", flow_run_name=train_run_name)
def train_flow(dataset_uri: str, train: TrainConfig = TrainConfig(), calibration: CalibrationConfig = CalibrationConfig(),
               run_id: str | None = None, force: bool = False) -> dict:
    """Train on the data set pushed at ``dataset_uri``; return the training manifest (store URIs, sha256, metrics)."""
    run_id = run_id or new_run_id_for_this_run()
    dataset = fetch_data_set(dataset_uri)
    trained = train_model.with_options(refresh_cache=force)(dataset, train, run_id)
    exported = export_onnx.with_options(refresh_cache=force)(dataset, trained["artifacts"]["model.pt"], run_id)
    calibrated = build_calibration.with_options(refresh_cache=force)(dataset, train, calibration, run_id)
    manifest = write_train_manifest(run_id, dataset, train, trained, exported, calibrated)
    clean_work(run_id)
    return manifest
