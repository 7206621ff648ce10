"""The epoch checkpoint of a training, mirrored to the store and restored from it on any host.

A training input (data set sha256 + ``TrainConfig``, not the run id) has one stored checkpoint, below
``checkpoints/train/<inputs>/``: ``manifest.json`` and two slots (``slot-0/``, ``slot-1/``) of ``last.pt`` and
``model.pt``. ``CheckpointMirror`` uploads after each epoch, ``restore_checkpoint`` brings it back for a rerun
(possibly on another host), ``prepare_run_dir`` decides where a training continues from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from kinship.errors import UserError
from kinship.host import stage_host
from kinship.manifests import CHECKPOINT_FORMAT, CheckpointManifest, DatasetHandle
from kinship.storage import ArtifactRef, ArtifactStore, StoreAccessError, join_key
from kinship.train_config import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("checkpoints/last.pt", "model.pt")  # what train() needs to continue, relative to its run folder


def resume_possible(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``run_dir`` holds an interrupted run of exactly ``config`` (a retried task continues it)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError):
        return False
    started = (run_dir / "checkpoints" / "last.pt").is_file() or (config.folds > 1 and (run_dir / "fold-1").is_dir())
    return started and saved == asdict(config)


def checkpoint_prefix(dataset: DatasetHandle, config: TrainConfig) -> str:
    """Store folder of the epoch checkpoint of one training input: the data set's sha256 and the whole config.

    Not the run id: a rerun after a lost host has a new run id and must find the checkpoint of the same work.
    """
    inputs = json.dumps({"dataset": dataset.sha256, "train": asdict(config)}, sort_keys=True)
    return join_key("checkpoints", "train", hashlib.sha256(inputs.encode()).hexdigest()[:32])


def checkpoint_epoch(run_dir: Path) -> int:
    """Epochs done by the checkpoint in ``run_dir`` (loaded with ``weights_only``: never arbitrary code)."""
    from kinship.checkpoint import read_checkpoint

    return int(read_checkpoint(run_dir / CHECKPOINT_FILES[0])["state"]["epoch"])


class CheckpointMirror:
    """Copies ``train()``'s epoch checkpoint to the store after each epoch (its ``on_checkpoint`` hook).

    Epochs alternate between two slots: the manifest always names the slot not being written, so an
    upload cut short never damages the checkpoint the manifest points to.
    """

    def __init__(self, store: ArtifactStore, prefix: str, run_dir: Path, dataset: DatasetHandle, config: TrainConfig):
        self.store, self.prefix, self.run_dir, self.dataset, self.config = store, prefix, Path(run_dir), dataset, config

    def __call__(self, epoch: int) -> None:
        if epoch >= self.config.epochs:
            return  # the training is done: ``finish`` marks it complete instead
        try:
            self.upload()
        except Exception as error:  # training goes on; the next epoch's checkpoint is uploaded again
            log.warning("could not store the epoch checkpoint in %s: %s", self.store.uri(self.prefix), error)

    def _manifest(self, epoch: int, files: dict, complete: bool) -> CheckpointManifest:
        return {"format": CHECKPOINT_FORMAT, "dataset": self.dataset.identity(), "train_config": asdict(self.config),
                "epoch": epoch, "complete": complete, "files": files,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": stage_host()}

    def upload(self) -> int:
        """Store the checkpoint now in the run folder (files first, manifest last); returns its epoch."""
        epoch = checkpoint_epoch(self.run_dir)
        slot = join_key(self.prefix, f"slot-{epoch % 2}")
        files = {name: self.store.put_file(self.run_dir / name, join_key(slot, name)).to_dict()
                 for name in CHECKPOINT_FILES}
        self.store.put_json(self._manifest(epoch, files, complete=False), join_key(self.prefix, "manifest.json"))
        log.info("epoch %d checkpoint stored in %s", epoch, self.store.uri(slot))
        return epoch

    def finish(self) -> None:
        """Mark the training complete: a later run of the same inputs trains afresh instead of resuming."""
        epoch = checkpoint_epoch(self.run_dir)
        self.store.put_json(self._manifest(epoch, {}, complete=True), join_key(self.prefix, "manifest.json"))


def restore_checkpoint(store: ArtifactStore, prefix: str, run_dir: Path, dataset: DatasetHandle,
                       config: TrainConfig) -> int:
    """Download the stored checkpoint of these inputs into an empty ``run_dir``; the epochs it holds (0: none).

    Every file is verified against the manifest's sha256 and the checkpoint is loaded with ``weights_only``;
    a damaged or foreign checkpoint is reported and ignored (training starts over), never trusted.
    """
    key = join_key(prefix, "manifest.json")
    if not store.exists(key):
        return 0
    try:
        epoch = _fetch_checkpoint(store, store.get_json(store.uri(key)), run_dir, dataset, config)
    except StoreAccessError:
        raise  # the store is unreachable: worth a retry, not a silent restart from scratch
    except (UserError, AttributeError, KeyError, TypeError, ValueError) as error:  # a malformed manifest too
        log.warning("ignoring the stored checkpoint %s: %s", store.uri(key), error)
        epoch = 0
    if not epoch:
        shutil.rmtree(run_dir, ignore_errors=True)
    return epoch


def _fetch_checkpoint(store: ArtifactStore, manifest: CheckpointManifest, run_dir: Path, dataset: DatasetHandle,
                      config: TrainConfig) -> int:
    from kinship.train import save_config

    if manifest.get("format") != CHECKPOINT_FORMAT or manifest.get("dataset", {}).get("sha256") != dataset.sha256:
        raise UserError("not a checkpoint of this data set")
    if manifest.get("train_config") != asdict(config):
        raise UserError("not a checkpoint of this training configuration")
    epoch = int(manifest["epoch"])
    if manifest.get("complete") or not 0 < epoch < config.epochs:
        return 0  # finished (or empty): nothing to continue
    for name in CHECKPOINT_FILES:
        store.get_file(ArtifactRef.from_dict(manifest["files"][name]), run_dir / name)  # sha256-verified before it lands
    if checkpoint_epoch(run_dir) != epoch:
        raise UserError(f"its last.pt holds another epoch than the manifest's {epoch}")
    save_config(run_dir, config, dataset.path)  # train(resume=True) reads the configuration from the run folder
    return epoch


def prepare_run_dir(store: ArtifactStore, prefix: str, run_dir: Path, dataset: DatasetHandle,
                    config: TrainConfig) -> tuple[str | None, int]:
    """Where training continues from: this host's run folder (a retried task), the store (a rerun), or nowhere."""
    if resume_possible(run_dir, config):
        return "scratch", checkpoint_epoch(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run of another configuration: never mix the two
    epoch = restore_checkpoint(store, prefix, run_dir, dataset, config)
    return ("store", epoch) if epoch else (None, 0)
