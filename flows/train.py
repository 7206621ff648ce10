"""``kinship-train``: fetch the data set, train, export and check ONNX, draw the calibration set, publish."""

from __future__ import annotations

from prefect import flow

from flows.naming import train_run_name
from kinship.engines.calibration import CalibrationConfig
from kinship.manifests import TrainManifest
from kinship.stage_order import training_half
from kinship.train_config import TrainConfig
from tasks.runtime import new_run_id_for_this_run
from tasks.training import TrainingTasks


@flow(name="kinship-train", flow_run_name=train_run_name)
def train_flow(dataset_uri: str, train: TrainConfig = TrainConfig(), calibration: CalibrationConfig = CalibrationConfig(),
               run_id: str | None = None, force: bool = False) -> TrainManifest:
    """Train on the data set pushed at ``dataset_uri``; return the training manifest (store URIs, sha256, metrics).

    The steps, in ``kinship.stage_order.training_half``'s order, are the tasks of ``tasks.training``.
    """
    return training_half(TrainingTasks(force), dataset_uri, train, calibration, run_id or new_run_id_for_this_run())
