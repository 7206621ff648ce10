"""What both halves of the job share: run ids and store places, the data set, manifests, the local store.

The stages themselves, one function each, live in ``kinship.training_stages`` (data -> train -> export ->
calibrate) and ``kinship.engine_stages`` (engines -> report). Every stage reads its inputs from an artifact
store (``kinship.storage``) or a verified local copy and writes its outputs back to the store, returning plain
JSON-ready dicts of ``ArtifactRef``s, never a local path. Their order is written once, in ``kinship.stage_order``:
the flows run it with the Prefect tasks of ``tasks/`` (thin wrappers around the stage functions),
``kinship.local_run`` with the stage functions in one process and a ``LocalStore`` (``kinship pipeline``), so the
two modes differ only in who schedules the stages.

Store layout, below the store's root::

    runs/<run_id>/train/    model.pt, metrics.json, config.json, model{,.encoder,.head}.onnx,
                            calibration.npz, manifest.json (the training manifest, written last)
    runs/<run_id>/engines/  <backend>-<variant>/... (one engine folder each), report/ (report.md,
                            report.json, PNGs), manifest.json (the engines manifest, written last)
    runs/<run_id>/report.md, summary.json    the run's final report
    champion.json                            the pointer to the best model so far (``kinship.champion``)
    checkpoints/train/<inputs>/              the resumable epoch checkpoint of one training input (data set
                            sha256 + TrainConfig, not the run id): manifest.json, slot-0/ and slot-1/
                            (last.pt, model.pt), so a rerun on another host continues an interrupted training
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from kinship.dataset_cache import CacheSettings, DatasetCache, manifest_files
from kinship.errors import UserError
from kinship.manifests import DatasetHandle, EnginesManifest, RefDict, TrainManifest, UriOnly
from kinship.progress import Progress, ProgressEvent, silent
from kinship.storage import (
    MANIFEST_NAME, ArtifactRef, ArtifactStore, LocalStore, StoreSettings, file_digest, join_key, parse_json,
    store_from_uri,
)

log = logging.getLogger(__name__)

ONNX_FILES = ("model.onnx", "model.encoder.onnx", "model.head.onnx")
Manifest = TypeVar("Manifest", TrainManifest, EnginesManifest)


# ---------------------------------------------------------------- names and places


def new_run_id(when: datetime | None = None, suffix: str | None = None) -> str:
    """A sortable, unique run id: ``20250101-120000-ab12cd34``."""
    when = when or datetime.now(timezone.utc)
    return f"{when:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(4)}"


# What a run id may be: it names a folder on every host (``work/<run_id>``) and a store prefix (``runs/<run_id>``),
# and a flow takes it as a parameter, so nothing that could climb out of them ('..', '/', '\\', control characters).
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


def validate_run_id(run_id: str) -> str:
    """``run_id`` if it is a safe run id (letters, digits, '-' and '_', at most 100), else one ``UserError``."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise UserError(f"invalid run id {run_id!r}: use 1-100 letters, digits, '-' or '_', starting with a letter "
                        "or digit")
    return run_id


def run_prefix(run_id: str, *parts: str) -> str:
    """The store key below ``runs/<run_id>``."""
    return join_key("runs", validate_run_id(run_id), *parts)


def as_ref(value: ArtifactRef | RefDict) -> ArtifactRef:
    """``value`` as an ``ArtifactRef`` (a stored manifest holds refs as dicts)."""
    return value if isinstance(value, ArtifactRef) else ArtifactRef.from_dict(value)


def upload_files(store: ArtifactStore, files: dict[str, Path], prefix: str) -> dict[str, RefDict]:
    """Each file put below ``prefix`` under its name; the refs by name."""
    return {name: store.put_file(path, join_key(prefix, name)).to_dict() for name, path in files.items()}


# ---------------------------------------------------------------- data


def fetch_dataset(uri: str, settings: StoreSettings | None = None, on_progress: Progress = silent) -> DatasetHandle:
    """This host's verified copy of the data set pushed at ``uri`` (``kinship.dataset_cache``).

    The copy is named by the manifest's digest and shared by every flow on the host: a second fetch of the same
    content downloads nothing (each file is re-verified instead), and concurrent fetches wait for one download.
    """
    settings = settings or StoreSettings.from_env()
    uri = uri.rstrip("/")
    store = store_from_uri(uri, settings)
    manifest = store.get_file(f"{uri}/{MANIFEST_NAME}")  # verified against the digest recorded at push
    sha256, _ = file_digest(manifest)
    cache = DatasetCache(CacheSettings.from_env(settings.scratch))

    def fill(dest: Path) -> None:
        listed = manifest_files(parse_json(manifest.read_bytes(), f"{uri}/{MANIFEST_NAME}"), uri, f"{uri}/{MANIFEST_NAME}")
        cache.check_fits(sum(size for _, size in listed.values()), uri)
        store.get_tree(uri, dest, on_progress)
        if file_digest(dest / MANIFEST_NAME)[0] != sha256:
            shutil.rmtree(dest, ignore_errors=True)
            raise UserError(f"{uri} changed while it was being fetched (its manifest was replaced): fetch again")

    def expected(copy: Path) -> dict[str, tuple[str, int]]:
        return manifest_files(parse_json((copy / MANIFEST_NAME).read_bytes(), f"{copy / MANIFEST_NAME}"), uri,
                              f"{copy / MANIFEST_NAME}")

    started = time.perf_counter()
    outcome = cache.obtain(sha256, uri, fill, expected)
    seconds = time.perf_counter() - started
    log.info("data set %s: %s in %.1f s (verified in %.1f s)%s", uri,
             {"hit": "this host's copy reused", "filled": "fetched", "refilled": "damaged copy fetched again"}[outcome.status],
             seconds, outcome.verify_s, f"; evicted {len(outcome.evicted)} older copies" if outcome.evicted else "")
    on_progress(ProgressEvent("data set ready", 1, 1, {"cache": outcome.status, "seconds": seconds,
                                                       "verify_s": outcome.verify_s, "evicted": list(outcome.evicted)}))
    return DatasetHandle(uri, sha256, outcome.path)


def local_dataset(folder: Path, on_progress: Progress = silent) -> DatasetHandle:
    """A data set folder used in place (in-process mode); its content fingerprint stands in for a manifest."""
    from kinship.layout import dataset_fingerprint, read_dataset

    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise UserError(f"data set folder not found: {folder}")
    dataset = read_dataset(folder, verify_images=False, on_progress=on_progress)
    return DatasetHandle(folder.as_uri(), dataset_fingerprint(dataset, on_progress), folder)


# ---------------------------------------------------------------- manifests


def store_manifest(store: ArtifactStore, manifest: Manifest, key: str) -> Manifest:
    """``manifest`` stored at ``key``, returned with its own ref under ``"manifest"``."""
    ref = store.put_json(manifest, key)
    return {**manifest, "manifest": ref.to_dict()}


def read_manifest(store: ArtifactStore, ref_or_uri: RefDict | UriOnly | str, expected_format: str) -> Any:
    """A manifest read back (verified against its ref, or the digest recorded with it) and format-checked: a
    ``TrainManifest`` or an ``EnginesManifest`` (``kinship.manifests``), as ``expected_format`` says."""
    target = as_ref(ref_or_uri) if isinstance(ref_or_uri, dict) else ref_or_uri
    manifest = store.get_json(target)
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        name = ref_or_uri["uri"] if isinstance(ref_or_uri, dict) else ref_or_uri
        raise UserError(f"{name} is not a {expected_format} manifest")
    uri = target.uri if isinstance(target, ArtifactRef) else target
    if "manifest" not in manifest:
        manifest["manifest"] = {"uri": uri}
    return manifest


# ---------------------------------------------------------------- the local store


def open_local_store(out: Path) -> LocalStore:
    """The in-process mode's store: ``out/store``, with the scratch settings of the environment."""
    settings = replace(StoreSettings.from_env(), prefix="")
    return LocalStore(Path(out) / "store", settings)

