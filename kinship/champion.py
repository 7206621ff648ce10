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

Lineage and history: every pointer records the data set version, the code commit (``-dirty`` when the checkout
had changes), the training configuration and the engines built. Every promotion, refusal and rollback is also one
object under ``champion-history/`` (never rewritten; named by time, so a listing sorts them), and a rollback is a
compare-and-swap like a promotion: it restores an earlier pointer only if no run was promoted meanwhile.

Two decisions live here: ``promote_if_better`` compares the AUC each run measured on its own validation families
(the rule before data versions; still what the flows call), and ``promote_if_paired_better`` takes the decision of
``kinship.champion_compare`` (both models on the same held-out pairs) and promotes only against the champion
that decision compared with.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from kinship.baseline import REQUIRED_MARGIN, BaselineComparison
from kinship.champion_compare import PairedDecision
from kinship.errors import KinshipError, UserError
from kinship.host import code_commit
from kinship.manifests import EnginesManifest, TrainManifest
from kinship.engine_stages import built_engines
from kinship.storage import VERSION_ID_HEX, ArtifactNotFound, ArtifactStore

CHAMPION_KEY = "champion.json"
CHAMPION_FORMAT = "kinship-champion/1"  # later fields (data_version, code_commit, engines) are additions: readers of /1 still read it
HISTORY_PREFIX = "champion-history"
HISTORY_FORMAT = "kinship-champion-history/1"
PROMOTED, REFUSED, ROLLBACK = "promoted", "refused", "rollback"
SWAP_ATTEMPTS = 10  # each refused swap means another run promoted meanwhile: a handful of runs never exhaust it


class ChampionContention(KinshipError):
    """The pointer kept changing under us: every compare-and-swap attempt found a newer champion."""


class ChampionChanged(UserError):
    """A rollback found the pointer changed between its read and its write: nothing was rolled back."""


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


def data_version(dataset: dict) -> str | None:
    """The data set version a manifest's ``dataset`` names: its ``version``, else the first digits of its manifest
    sha256 (a version is named by them: ``kinship.data_versions``); None when it names neither."""
    version = dataset.get("version") if isinstance(dataset, dict) else None
    sha256 = dataset.get("sha256") if isinstance(dataset, dict) else None
    if isinstance(version, str) and version:
        return version
    return sha256[:VERSION_ID_HEX] if isinstance(sha256, str) and len(sha256) == 64 else None


def lineage(train_manifest: TrainManifest, commit: str | None = None) -> dict:
    """What a run was made from: its data set version, code commit and training configuration (a run with all
    three equal to an earlier one's would train the same model again)."""
    return {"run_id": train_manifest["run_id"], "data_version": data_version(train_manifest["dataset"]),
            "code_commit": commit or train_manifest.get("code_commit") or code_commit(),
            "train_config": train_manifest["train_config"]}


HISTORY_LOOKBACK = 50  # decisions searched for an earlier run of the same inputs


def unchanged_since(store: ArtifactStore, version: str, commit: str, train_config: dict) -> dict | None:
    """The latest decided run (the champion, or a run promoted or refused in the history) made from this data
    version, this code commit and this training configuration, or None. A run that finds one would only train
    the same model again: "nothing new since run X". A commit of ``unknown`` matches nothing."""
    if commit == "unknown":
        return None
    wanted = (version, commit, json.dumps(train_config, sort_keys=True))

    def same(made: dict | None) -> bool:
        made = made or {}
        return (made.get("data_version"), made.get("code_commit"),
                json.dumps(made.get("train_config"), sort_keys=True)) == wanted

    current = read_champion(store)
    if current is not None and same(current):
        return {"run_id": current.get("run_id"), "kind": "champion", "at": current.get("promoted")}
    for entry in read_history(store, HISTORY_LOOKBACK):
        if entry.get("kind") in (PROMOTED, REFUSED) and same(entry.get("lineage")):
            return {"run_id": entry.get("run_id"), "kind": entry.get("kind"), "at": entry.get("at")}
    return None


def champion_record(train_manifest: TrainManifest, engines_manifest: EnginesManifest, previous: dict | None,
                    commit: str | None = None) -> dict:
    """The pointer written for a promoted run, with its lineage: data version, code commit, configuration, engines.

    ``commit``: the code the run trained with; the train manifest's ``code_commit`` when it records one, else the
    commit of the code promoting it (the same checkout on the usual single-commit deployment)."""
    artifacts = train_manifest["artifacts"]
    return {
        "format": CHAMPION_FORMAT,
        "run_id": train_manifest["run_id"],
        "val_auc": train_manifest["metrics"]["best_val_auc"],
        "dataset": train_manifest["dataset"],
        "data_version": data_version(train_manifest["dataset"]),
        "code_commit": commit or train_manifest.get("code_commit") or code_commit(),
        "engines": built_engines(engines_manifest),
        "train_config": train_manifest["train_config"],
        "model": artifacts["model.onnx"],
        "checkpoint": artifacts["model.pt"],
        "train_manifest": train_manifest["manifest"],
        "engines_manifest": engines_manifest["manifest"],
        "promoted": datetime.now(timezone.utc).isoformat(timespec="microseconds"),  # orders the history
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
    pointer in force afterwards, with its own ref under ``pointer`` when this call wrote it). The outcome is also
    a ``champion-history/`` entry.
    """
    outcome = _promote_by_own_auc(store, train_manifest, engines_manifest, attempts, required_margin)
    outcome = {**outcome, "lineage": lineage(train_manifest)}
    append_history(store, outcome, train_manifest["run_id"])
    return outcome


def _promote_by_own_auc(store: ArtifactStore, train_manifest: TrainManifest, engines_manifest: EnginesManifest,
                        attempts: int, required_margin: float) -> dict:
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


# ---------------------------------------------------------------- the paired decision


def promote_if_paired_better(store: ArtifactStore, train_manifest: TrainManifest, engines_manifest: EnginesManifest,
                             decision: PairedDecision | None, compared_with: str | None,
                             required_margin: float = REQUIRED_MARGIN, commit: str | None = None) -> dict:
    """Promote the run on ``decision`` (``kinship.champion_compare.decide``: both models on the same held-out
    pairs), by compare-and-swap, only while the champion is still run ``compared_with`` (None: there was none,
    and ``decision`` is None: the run then needs only to beat raw pixels by ``required_margin`` on its own
    metrics). A champion that changed meanwhile keeps its place: the run was not compared with it.

    Returns ``promote_if_better``'s dict plus ``decision`` (its ``to_dict()``, or None); one history entry.
    """
    run_id, candidate = train_manifest["run_id"], train_manifest["metrics"].get("best_val_auc")
    outcome = _paired_outcome(store, train_manifest, engines_manifest, decision, compared_with, required_margin, commit)
    outcome = {**outcome, "candidate_auc": candidate, "decision": decision.to_dict() if decision else None,
               "lineage": lineage(train_manifest, commit)}
    append_history(store, outcome, run_id)
    return outcome


def _paired_outcome(store: ArtifactStore, train_manifest: TrainManifest, engines_manifest: EnginesManifest,
                    decision: PairedDecision | None, compared_with: str | None, required_margin: float,
                    commit: str | None) -> dict:
    run_id, candidate = train_manifest["run_id"], train_manifest["metrics"].get("best_val_auc")
    previous, version = store.get_json_versioned(CHAMPION_KEY)
    current = previous.get("run_id") if previous else None
    if not built_engines(engines_manifest):
        return _outcome(store, False, f"run {run_id} has no built engine: nothing to deploy, champion kept",
                        candidate, previous, previous)
    if current == run_id:  # an earlier attempt of this call wrote the pointer (its answer was lost)
        return _outcome(store, True, f"run {run_id} is already the champion", candidate, previous.get("previous"), previous)
    if current != compared_with:
        return _outcome(store, False, f"the champion changed to run {current} while run {run_id} was compared with "
                                      f"{compared_with or 'no champion'}: champion kept (compare again)",
                        candidate, previous, previous)
    if decision is None:
        below = below_baseline(train_manifest["metrics"], required_margin)
        if below:
            return _outcome(store, False, f"run {run_id}: {below}: champion kept", candidate, previous, previous)
        reason = f"no champion yet: run {run_id} becomes champion"
    elif not decision.promote:
        return _outcome(store, False, decision.reason, candidate, previous, previous)
    else:
        reason = decision.reason
    record = champion_record(train_manifest, engines_manifest, previous, commit)
    if decision is not None:
        record["comparison"] = {**decision.to_dict(), "rows": decision.table()[:1], "champion_run_id": compared_with}
    ref = store.put_json_if_version(record, CHAMPION_KEY, version)
    if ref is None:
        now = read_champion(store)
        return _outcome(store, False, f"the champion changed to run {now.get('run_id') if now else None} while run "
                                      f"{run_id} was being promoted: champion kept (compare again)", candidate, now, now)
    return _outcome(store, True, reason, candidate, previous, {**record, "pointer": ref.to_dict()})


# ---------------------------------------------------------------- history and rollback


def append_history(store: ArtifactStore, outcome: dict, run_id: str, kind: str | None = None) -> str:
    """Record one promotion, refusal or rollback under ``champion-history/`` (a new object, never rewritten);
    returns its key. A promotion is named by its pointer's time, so a retried call that finds it already
    written adds nothing."""
    kind = kind or (PROMOTED if outcome.get("promoted") else REFUSED)
    pointer = outcome.get("champion") or {}
    at = pointer.get("promoted") if kind != REFUSED and pointer.get("run_id") == run_id else None
    at = at or datetime.now(timezone.utc).isoformat(timespec="microseconds")
    entry = {"format": HISTORY_FORMAT, "kind": kind, "at": at, "run_id": run_id, "reason": outcome.get("reason"),
             "candidate_auc": outcome.get("candidate_auc"), "decision": outcome.get("decision"),
             "previous": _brief(outcome.get("previous")), "champion": _without_ref(pointer) or None,
             "lineage": outcome.get("lineage")}
    key = f"{HISTORY_PREFIX}/{_stamp(at)}-{kind}-{_safe(run_id)}.json"
    store.put_json_if_version(entry, key, None)  # None back: this very entry is there already
    return key


def read_history(store: ArtifactStore, limit: int | None = None) -> list[dict]:
    """History entries, newest first (``limit``: only that many); a damaged entry is one line."""
    keys = sorted((key for key in store.list(HISTORY_PREFIX) if key.endswith(".json")), reverse=True)
    return [{**store.get_json(key), "key": key} for key in keys[:limit]]


def history_rows(entries: list[dict]) -> list[dict]:
    """The history as a table (a Prefect table artifact, ``kinship champion history``): one row per entry."""
    rows = []
    for entry in entries:
        pointer = entry.get("champion") or {}
        commit = str(pointer.get("code_commit") or "")
        rows.append({"at": entry.get("at"), "kind": entry.get("kind"), "run": entry.get("run_id"),
                     "champion": pointer.get("run_id"), "data_version": pointer.get("data_version"),
                     "code_commit": commit[:12] + ("-dirty" if "-dirty" in commit else ""),
                     "reason": entry.get("reason")})
    return rows


def rollback(store: ArtifactStore, reason: str, to_run: str | None = None) -> dict:
    """Make an earlier champion the champion again (the one before the current one, or run ``to_run``), by
    compare-and-swap: if any run is promoted between the read and the write, nothing is rolled back
    (``ChampionChanged``), so no concurrent promotion is lost. The pointer restored is the one that run was
    promoted with (from the history), with the rollback recorded in it; the rollback is a history entry too."""
    if not reason or not reason.strip():
        raise UserError("a rollback needs a --reason")
    current, version = store.get_json_versioned(CHAMPION_KEY)
    if current is None:
        raise UserError(f"{store.uri(CHAMPION_KEY)}: there is no champion to roll back")
    target = to_run or (current.get("previous") or {}).get("run_id")
    if not target:
        raise UserError(f"champion run {current.get('run_id')} has no previous champion: name one with --to RUN")
    if target == current.get("run_id"):
        raise UserError(f"run {target} is already the champion")
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    record = {**_pointer_of(store, target), "promoted": now, "previous": _brief(current),
              "rollback": {"from_run_id": current.get("run_id"), "reason": reason.strip(), "at": now}}
    ref = store.put_json_if_version(record, CHAMPION_KEY, version)
    if ref is None:
        latest = read_champion(store) or {}
        raise ChampionChanged(f"the champion changed to run {latest.get('run_id')} while rolling back: nothing was "
                              "rolled back; see `kinship champion show` and try again")
    outcome = _outcome(store, True, f"rolled back from run {current.get('run_id')} to run {target}: {reason.strip()}",
                       record.get("val_auc"), current, {**record, "pointer": ref.to_dict()})
    append_history(store, outcome, target, ROLLBACK)
    return outcome


def _pointer_of(store: ArtifactStore, run_id: str) -> dict:
    """The pointer run ``run_id`` was last made champion with, from the history."""
    for entry in read_history(store):
        pointer = entry.get("champion") or {}
        if entry.get("kind") in (PROMOTED, ROLLBACK) and pointer.get("run_id") == run_id:
            return {key: value for key, value in pointer.items() if key != "rollback"}
    raise UserError(f"run {run_id} was never champion according to {store.uri(HISTORY_PREFIX)}/: cannot roll back to it")


def dataset_references(store: ArtifactStore) -> dict[str, list[str]]:
    """Data set manifest sha256 -> what references it: the champion and every pointer in its history (what a
    prune must keep)."""
    references: dict[str, list[str]] = {}

    def add(pointer: dict | None, label: str) -> None:
        sha256 = ((pointer or {}).get("dataset") or {}).get("sha256")
        if isinstance(sha256, str) and label not in references.setdefault(sha256, []):
            references[sha256].append(label)

    current = read_champion(store)
    add(current, f"champion (run {current.get('run_id')})" if current else "")
    for entry in read_history(store):
        add(entry.get("champion"), f"champion history (run {(entry.get('champion') or {}).get('run_id')})")
    return references


def _brief(pointer: dict | None) -> dict | None:
    return {"run_id": pointer.get("run_id"), "val_auc": pointer.get("val_auc")} if pointer else None


def _without_ref(pointer: dict) -> dict:
    return {key: value for key, value in pointer.items() if key != "pointer"}


def _stamp(at: str) -> str:
    """A key-safe, sortable form of an ISO time (``2025-01-02T03:04:05.123456+00:00`` -> ``20250102T030405123456``)."""
    digits = re.sub(r"[^0-9T]", "", at.split("+")[0])
    return digits.ljust(21, "0")


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(run_id))[:100] or "run"
