"""The champion: a small JSON pointer in the store to the best model so far, replaced only by a better one.

Scheduled retraining must never replace a better model with a worse one, so a run is promoted only if
its validation ROC AUC beats raw-pixel cosine on the same pairs by ``required_margin`` (0.02: a model that
does not has learnt nothing worth deploying) and is strictly higher than the champion's (ties keep the champion: a rerun of the
same configuration changes nothing). The pointer names the run, its AUC, the data set and the
manifests, so a consumer can fetch the model with every byte verified.

Concurrent promotions (several ``kinship`` runs finishing together, on any number of hosts) are a
compare-and-swap: the pointer is rewritten only if it is still the version the decision was made
against. On S3 that is a conditional PUT (``If-Match`` on the ETag read before deciding, or
``If-None-Match: *`` when there is no champion yet; AWS S3, SeaweedFS and MinIO refuse a stale one with
412); a refused write re-reads the new champion and decides again. A local store (the in-process
``kinship pipeline``) compares content digests under an exclusive file lock. Both are the store's
``get_json_versioned`` / ``put_json_if_version``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from kinship.baseline import REQUIRED_MARGIN, BaselineComparison
from kinship.errors import KinshipError
from kinship.manifests import EnginesManifest, TrainManifest
from kinship.pipeline import built_engines
from kinship.storage import ArtifactNotFound, ArtifactStore

CHAMPION_KEY = "champion.json"
CHAMPION_FORMAT = "kinship-champion/1"
SWAP_ATTEMPTS = 10  # each refused swap means another run promoted meanwhile: a handful of runs never exhaust it


class ChampionContention(KinshipError):
    """The pointer kept changing under us: every compare-and-swap attempt found a newer champion."""


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


def below_baseline(metrics: dict, required_margin: float = REQUIRED_MARGIN) -> str | None:
    """Why a model may not be promoted for failing to beat raw pixels by ``required_margin``, or None.

    Runs trained before the baseline was measured carry no ``pixel_baseline_auc`` and are judged by AUC alone.
    """
    pixel = metrics.get("pixel_baseline_auc")
    auc = metrics.get("best_val_auc")
    if not isinstance(pixel, (int, float)) or not isinstance(auc, (int, float)):
        return None
    comparison = BaselineComparison(auc, pixel)
    return None if comparison.margin >= required_margin else comparison.sentence()


def read_champion(store: ArtifactStore) -> dict | None:
    """The current champion pointer, or None when there is none yet (a damaged pointer is an error)."""
    try:
        return store.get_json(CHAMPION_KEY)
    except ArtifactNotFound:
        return None


def champion_record(train_manifest: TrainManifest, engines_manifest: EnginesManifest, previous: dict | None) -> dict:
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


def _outcome(store: ArtifactStore, promoted: bool, reason: str, candidate, previous: dict | None,
             champion: dict | None) -> dict:
    return {"promoted": promoted, "reason": reason, "candidate_auc": candidate, "previous": previous,
            "champion": champion, "uri": store.uri(CHAMPION_KEY)}


def promote_if_better(store: ArtifactStore, train_manifest: TrainManifest, engines_manifest: EnginesManifest,
                      attempts: int = SWAP_ATTEMPTS, required_margin: float = REQUIRED_MARGIN) -> dict:
    """Compare the run with the champion and rewrite the pointer only if the run is better (compare-and-swap).

    Returns ``{"promoted", "reason", "candidate_auc", "previous", "champion", "uri"}`` (``champion``: the
    pointer in force afterwards, with its own ref under ``pointer`` when this call wrote it).
    """
    candidate, run_id = train_manifest["metrics"].get("best_val_auc"), train_manifest["run_id"]
    if not built_engines(engines_manifest):
        current = read_champion(store)
        return _outcome(store, False, f"run {run_id} has no built engine: nothing to deploy, champion kept",
                        candidate, current, current)
    below = below_baseline(train_manifest["metrics"], required_margin)
    if below:
        current = read_champion(store)
        return _outcome(store, False, f"run {run_id}: {below}: champion kept", candidate, current, current)
    for _ in range(attempts):
        previous, version = store.get_json_versioned(CHAMPION_KEY)
        if previous and previous.get("run_id") == run_id and previous.get("val_auc") == candidate:
            # An earlier attempt of this run wrote the pointer (its answer was lost): nothing to do.
            return _outcome(store, True, f"run {run_id} is already the champion (AUC {candidate:.4f})",
                            candidate, previous.get("previous"), previous)
        decision = decide(candidate, previous)
        if not decision.promote:
            return _outcome(store, False, decision.reason, candidate, previous, previous)
        record = champion_record(train_manifest, engines_manifest, previous)
        ref = store.put_json_if_version(record, CHAMPION_KEY, version)  # None: another run promoted meanwhile
        if ref is not None:
            return _outcome(store, True, decision.reason, candidate, previous, {**record, "pointer": ref.to_dict()})
    raise ChampionContention(f"{store.uri(CHAMPION_KEY)} changed under each of {attempts} attempts to promote "
                             f"run {run_id}: try again")
