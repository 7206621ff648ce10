"""Family folds: K models, each holding out a different group of families, exported as one ensemble.

The strongest public RFIW entries averaged models over family folds: each model sees most families, the
folds' held-out groups cover every family once (so the cross-validated AUC uses every family), and the
mean of the members' logits is steadier than any one of them. A fold run folder holds ``fold-1`` ..
``fold-K`` (ordinary run folders) and, beside them, the ensemble's ``model.pt`` and ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from kinship.baseline import BaselineComparison
from kinship.checkpoint import load_model, model_payload, save_atomic
from kinship.model import EnsembleNet
from kinship.train_config import TrainConfig


@dataclass(frozen=True)
class FoldSummary:
    """The members' validation AUCs (each on its own held-out families) and what they say together."""

    val_aucs: tuple[float, ...]
    pixel_aucs: tuple[float, ...]
    best_epochs: tuple[int, ...]
    thresholds: tuple[float, ...]

    @property
    def cv_auc(self) -> float:
        return float(np.mean(self.val_aucs))

    @property
    def cv_std(self) -> float:
        return float(np.std(self.val_aucs, ddof=1)) if len(self.val_aucs) > 1 else 0.0

    @property
    def baseline(self) -> BaselineComparison:
        return BaselineComparison(self.cv_auc, float(np.mean(self.pixel_aucs)))

    def metrics_document(self, precision: str) -> dict:
        """``metrics.json`` of the ensemble: the cross-validated AUC stands where a single run's best AUC would."""
        return {"best_epoch": max(self.best_epochs), "best_val_auc": self.cv_auc, **self.baseline.to_dict(),
                "precision": precision, "folds": len(self.val_aucs), "cv_auc": self.cv_auc, "cv_auc_std": self.cv_std,
                "fold_val_aucs": list(self.val_aucs), "fold_pixel_aucs": list(self.pixel_aucs), "epochs": []}


def member_configs(config: TrainConfig) -> list[TrainConfig]:
    """One configuration per fold: the same recipe, a different group of held-out families."""
    return [replace(config, fold=k) for k in range(config.folds)]


def member_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold-{fold + 1}"


def any_member_started(run_dir: Path, config: TrainConfig) -> bool:
    return any((member_dir(run_dir, k) / "checkpoints" / "last.pt").exists() for k in range(config.folds))


def save_ensemble(run_dir: Path, config: TrainConfig, summary: FoldSummary) -> Path:
    """Join the members' best models into one ``model.pt`` (mean of logits) beside the fold folders."""
    loaded = [load_model(member_dir(run_dir, k) / "model.pt") for k in range(config.folds)]
    ensemble = EnsembleNet.of([model for model, _ in loaded])
    metadata = {
        "train_config": asdict(config),
        "data_fingerprint": loaded[0][1].get("data_fingerprint"),
        # Every family was trained on by K-1 members: no family is held out from the ensemble as a whole.
        "val_families": [],
        "epoch": max(summary.best_epochs),
        "val_auc": summary.cv_auc,
        "cv_auc_std": summary.cv_std,
        "fold_val_aucs": list(summary.val_aucs),
        "val_threshold": float(np.mean(summary.thresholds)),  # the members' logits are averaged, so are thresholds
    }
    path = Path(run_dir) / "model.pt"
    save_atomic(model_payload(ensemble, metadata), path)
    return path
