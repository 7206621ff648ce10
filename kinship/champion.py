"""The champion: a small JSON pointer in the store to the best model so far, replaced only by a better one.

Scheduled retraining must never replace a better model with a worse one, so a run is promoted only if
its validation ROC AUC is strictly higher than the champion's (ties keep the champion: a rerun of the
same configuration changes nothing). The pointer names the run, its AUC, the data set and the
manifests, so a consumer can fetch the model with every byte verified.

The read-compare-write is not atomic: two runs finishing at the same moment could both read the old
champion. Runs of the ``kinship`` flow are serialised by the ``rocm`` pool (one training at a time),
which keeps that window to the few milliseconds between read and write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from kinship.storage import ArtifactNotFound, ArtifactStore

CHAMPION_KEY = "champion.json"
CHAMPION_FORMAT = "kinship-champion/1"


@dataclass(frozen=True)
class Decision:
    """Whether a candidate replaces the champion, and why, in one line."""

    promote: bool
    reason: str


def decide(candidate_auc: float | None, champion: dict | None) -> Decision:
    """Promote only a candidate with a real AUC strictly above the champion's (or when there is none)."""
    if candidate_auc is None or not math.isfinite(candidate_auc):
        return Decision(False, "the new model has no validation AUC: nothing to compare, champion kept")
    if champion is None:
        return Decision(True, f"no champion yet: the new model (AUC {candidate_auc:.4f}) becomes champion")
    current = champion.get("val_auc")
    if not isinstance(current, (int, float)) or not math.isfinite(current):
        return Decision(True, f"the champion records no usable AUC: replaced by the new model (AUC {candidate_auc:.4f})")
    if candidate_auc > current:
        return Decision(True, f"AUC {candidate_auc:.4f} beats the champion's {current:.4f} (run {champion.get('run_id')})")
    return Decision(False, f"AUC {candidate_auc:.4f} does not beat the champion's {current:.4f} "
                           f"(run {champion.get('run_id')}): champion kept")


def read_champion(store: ArtifactStore) -> dict | None:
    """The current champion pointer, or None when there is none yet (a damaged pointer is an error)."""
    try:
        return store.get_json(CHAMPION_KEY)
    except ArtifactNotFound:
        return None


def champion_record(train_manifest: dict, engines_manifest: dict, previous: dict | None) -> dict:
    """The pointer written for a promoted run."""
    artifacts = train_manifest["artifacts"]
    return {
        "format": CHAMPION_FORMAT,
        "run_id": train_manifest["run_id"],
        "val_auc": train_manifest["metrics"]["best_val_auc"],
        "dataset": train_manifest["dataset"],
        "train_config": train_manifest["train_config"],
        "model": artifacts["model.onnx"],
        "checkpoint": artifacts["model.pt"],
        "train_manifest": train_manifest["manifest"],
        "engines_manifest": engines_manifest["manifest"],
        "promoted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "previous": {"run_id": previous.get("run_id"), "val_auc": previous.get("val_auc")} if previous else None,
    }


def promote_if_better(store: ArtifactStore, train_manifest: dict, engines_manifest: dict) -> dict:
    """Compare the run with the champion and rewrite the pointer only if the run is better.

    Returns ``{"promoted", "reason", "candidate_auc", "previous", "champion"}`` (``champion``: the pointer
    in force afterwards, with its own ref under ``pointer``).
    """
    previous = read_champion(store)
    candidate = train_manifest["metrics"].get("best_val_auc")
    decision = decide(candidate, previous)
    current = previous
    if decision.promote:
        current = champion_record(train_manifest, engines_manifest, previous)
        current = {**current, "pointer": store.put_json(current, CHAMPION_KEY).to_dict()}
    return {"promoted": decision.promote, "reason": decision.reason, "candidate_auc": candidate,
            "previous": previous, "champion": current, "uri": store.uri(CHAMPION_KEY)}
