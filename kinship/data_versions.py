"""Data set versions: every push an immutable version named by its manifest's digest, a ``latest`` pointer moved
by compare-and-swap, and what references each version (so a prune keeps it).

Layout below a data set's URI ``…/datasets/NAME``::

    shards/                       the tar shards of every version, one pool: a shard's key carries its digest,
                                  so a version that adds families sends only the shards that changed
    versions/<id>/kinship-manifest.json   one version: the sharded manifest; <id> = the first 16 hex digits of
                                  its sha256, which is also what a host's cache names its copy by
    versions/<id>/version.json    when it was pushed and what it holds (families, people, images), for listings
    latest                        {"version", "sha256", ...}: the version a plain ``…/NAME`` means now
    kinship-manifest.json         a copy of the latest version's manifest, for readers that do not resolve
    uses/<id>/<time>-<run>.json   a run that trained on version <id> (``record_use``), kept by ``prune --days``

A data set pushed before versions (a manifest in ``NAME/`` and no ``latest``) is still read as itself; its first
versioned push adopts it as a version. ``resolve_dataset`` turns any of these URIs into one exact version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Mapping

from kinship.errors import UserError
from kinship.progress import Progress, silent
from kinship.shards import SHARD_FOLDER, is_sharded
from kinship.store.keys import MANIFEST_NAME
from kinship.store.opening import store_from_uri
from kinship.store.refs import ArtifactNotFound, ArtifactStore
from kinship.store.settings import StoreSettings
from kinship.store.transfer import VERSION_ID_HEX, VERSIONS_FOLDER, manifest_digest

log = logging.getLogger(__name__)

LATEST_KEY = "latest"
LATEST_FORMAT = "kinship-dataset-latest/1"
VERSION_INFO = "version.json"
VERSION_FORMAT = "kinship-dataset-version/1"
USES_FOLDER = "uses"
PUSHED_EVENT = "kinship.dataset.pushed"
SWAP_ATTEMPTS = 10
EVENT_TIMEOUT_S = 10.0  # a push waits this long (twice at most) on a Prefect server that does not answer
_VERSION = re.compile(r"^[0-9a-f]{4,64}$")
_IMAGE = re.compile(r"\.(jpe?g|png|bmp|gif|webp)$", re.IGNORECASE)


class DatasetVersionError(UserError):
    """A data set's pointer or version is missing or damaged: one line, exit 2, a failed flow run."""


@dataclass(frozen=True)
class ResolvedDataset:
    """One exact version of a data set, as a run records it.

    ``uri``: what to fetch (``…/NAME/versions/<id>``, or ``…/NAME`` for a set pushed before versions);
    ``name_uri``: ``…/NAME``; ``version``: the version id; ``sha256``: its manifest's digest (what
    ``kinship.pipeline.fetch_dataset`` returns as ``DatasetHandle.sha256``); ``versioned``: False for an old set.
    """

    name_uri: str
    uri: str
    version: str
    sha256: str
    versioned: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PushResult:
    """What a versioned push did: ``created`` a new version, ``moved`` the ``latest`` pointer (from ``previous``)."""

    dataset: ResolvedDataset
    created: bool
    moved: bool
    previous: str | None
    counts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class VersionInfo:
    """One version as ``kinship data versions`` lists it."""

    version: str
    sha256: str
    created: str | None
    families: int
    people: int
    images: int
    files: int
    bytes: int
    latest: bool
    references: tuple[str, ...]


# ---------------------------------------------------------------- push


def push_version(local_dir: str | Path, name_uri: str, shard_bytes: int, settings: StoreSettings | None = None,
                 on_progress: Progress = silent) -> PushResult:
    """Push ``local_dir`` as a version of the data set at ``name_uri``: shards first (only those not stored yet),
    then the version's description and manifest, then ``latest`` by compare-and-swap, then the root copy of the
    manifest. Pushing the content of an existing version creates nothing (``created`` False)."""
    name_uri = name_uri.rstrip("/")
    store = store_from_uri(name_uri, settings or StoreSettings.from_env())
    document, counts = store.put_shards(local_dir, "", shard_bytes, on_progress)
    sha256 = manifest_digest(document)
    version = sha256[:VERSION_ID_HEX]
    _adopt_unversioned(store)
    created = not store.exists(_manifest_key(version))
    if created:
        store.put_json(_describe(document, version, sha256), _info_key(version))
        store.put_json(document, _manifest_key(version))  # last: a version without its manifest does not exist
    previous, moved = _move_latest(store, version, sha256)
    if moved:
        _mirror_latest(store)
    dataset = ResolvedDataset(name_uri, f"{name_uri}/{VERSIONS_FOLDER}/{version}", version, sha256, True)
    return PushResult(dataset, created, moved, previous, counts)


def _describe(document: dict, version: str, sha256: str) -> dict:
    """What ``version.json`` says: counted from the manifest's file names (``train/FXXXX/MIDn/*.jpg``)."""
    files = document.get("files", {})
    train = [name.split("/") for name in files if name.startswith("train/") and _IMAGE.search(name)]
    return {"format": VERSION_FORMAT, "version": version, "sha256": sha256,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "families": len({parts[1] for parts in train if len(parts) > 2}),
            "people": len({tuple(parts[1:3]) for parts in train if len(parts) > 3}),
            "images": len(train), "files": len(files), "bytes": sum(entry["size"] for entry in files.values())}


def _adopt_unversioned(store: ArtifactStore) -> None:
    """A data set pushed before versions (sharded, no ``latest``) becomes a version, so its first versioned push
    keeps it listed, resolvable by its id and safe from ``prune`` while a champion references it."""
    if store.exists(LATEST_KEY) or not store.exists(MANIFEST_NAME):
        return
    document = store.get_json(MANIFEST_NAME)
    if not is_sharded(document):
        return  # one object per file, addressed by URI below NAME/: it cannot move into versions/
    sha256 = manifest_digest(document)
    version = sha256[:VERSION_ID_HEX]
    if not store.exists(_manifest_key(version)):
        store.put_json({**_describe(document, version, sha256), "created": None, "adopted": True}, _info_key(version))
        store.put_json(document, _manifest_key(version))


def _move_latest(store: ArtifactStore, version: str, sha256: str) -> tuple[str | None, bool]:
    """Point ``latest`` at ``version`` (compare-and-swap); returns the version it named before and whether it
    moved (False: it already named ``version``)."""
    for _ in range(SWAP_ATTEMPTS):
        current, tag = store.get_json_versioned(LATEST_KEY)
        previous = _latest_version(current, store.uri(LATEST_KEY)) if current is not None else None
        if previous == version:
            return previous, False
        pointer = {"format": LATEST_FORMAT, "version": version, "sha256": sha256, "previous": previous,
                   "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if store.put_json_if_version(pointer, LATEST_KEY, tag) is not None:
            return previous, True
    raise DatasetVersionError(f"{store.uri(LATEST_KEY)} kept changing under {SWAP_ATTEMPTS} pushes: push again")


def _mirror_latest(store: ArtifactStore) -> None:
    """Copy the latest version's manifest to ``NAME/kinship-manifest.json`` (the same bytes: the same digest, so
    the same cached copy on every host). Re-read after writing: a push that moved ``latest`` after ours but
    mirrored before us is mirrored again, so the copy ends on what ``latest`` names."""
    for _ in range(SWAP_ATTEMPTS):
        pointer = store.get_json(LATEST_KEY)
        version = _latest_version(pointer, store.uri(LATEST_KEY))
        store.put_json(store.get_json(_manifest_key(version)), MANIFEST_NAME)
        if _latest_version(store.get_json(LATEST_KEY), store.uri(LATEST_KEY)) == version:
            return


# ---------------------------------------------------------------- resolve


def split_version(uri: str) -> tuple[str, str | None]:
    """``…/NAME@VERSION`` -> (``…/NAME``, ``VERSION``); ``…/NAME`` -> (``…/NAME``, None)."""
    uri = uri.rstrip("/")
    head, _, last = uri.rpartition("/")
    if "@" not in last:
        return uri, None
    name, _, version = last.partition("@")
    if not name or not _VERSION.match(version):
        raise DatasetVersionError(f"{uri}: a version is NAME@ID, ID the hex digits `kinship data versions` lists")
    return f"{head}/{name}", version


def resolve_dataset(uri: str, settings: StoreSettings | None = None) -> ResolvedDataset:
    """The exact version ``uri`` means now: ``…/NAME`` the latest (read once: record the answer, and fetch
    ``.uri``), ``…/NAME@ID`` that version (``ID`` may be shortened while it stays unique), ``…/NAME/versions/ID``
    itself, and a data set pushed before versions itself. Missing or damaged: ``DatasetVersionError``."""
    name_uri, wanted = split_version(uri)
    store = store_from_uri(name_uri, settings or StoreSettings.from_env())
    parts = name_uri.split("/")
    if wanted is None and len(parts) > 2 and parts[-2] == VERSIONS_FOLDER:
        return _version_of(store_from_uri("/".join(parts[:-2]), store.settings), "/".join(parts[:-2]), parts[-1])
    if wanted is not None:
        return _version_of(store, name_uri, _unique_version(store, name_uri, wanted))
    pointer, _ = store.get_json_versioned(LATEST_KEY)
    if pointer is not None:
        version = _latest_version(pointer, store.uri(LATEST_KEY))
        resolved = _version_of(store, name_uri, version)
        if resolved.sha256 != pointer.get("sha256"):
            raise DatasetVersionError(f"{store.uri(LATEST_KEY)} names version {version} with sha256 "
                                      f"{str(pointer.get('sha256'))[:16]}, but its manifest has {resolved.sha256[:16]}")
        return resolved
    if not store.exists(MANIFEST_NAME):
        raise DatasetVersionError(f"no data set at {name_uri}: neither a {LATEST_KEY} pointer nor {MANIFEST_NAME} "
                                  "(check the URI; `kinship data push DIR URI` creates one)")
    sha256 = _manifest_sha256(store, MANIFEST_NAME)
    return ResolvedDataset(name_uri, name_uri, sha256[:VERSION_ID_HEX], sha256, False)


def _version_of(store: ArtifactStore, name_uri: str, version: str) -> ResolvedDataset:
    key = _manifest_key(version)
    if not store.exists(key):
        raise DatasetVersionError(f"{name_uri}: no version {version} (its manifest {store.uri(key)} is missing; "
                                  "`kinship data versions` lists them)")
    sha256 = _manifest_sha256(store, key)
    if not sha256.startswith(version):
        raise DatasetVersionError(f"{store.uri(key)}: damaged version manifest (sha256 {sha256[:16]}, not {version})")
    return ResolvedDataset(name_uri, f"{name_uri}/{VERSIONS_FOLDER}/{version}", version, sha256, True)


def _manifest_sha256(store: ArtifactStore, key: str) -> str:
    """The digest of a stored manifest, from its bytes (verified against the digest recorded at upload)."""
    return manifest_digest(store.get_json(key))


def _unique_version(store: ArtifactStore, name_uri: str, wanted: str) -> str:
    if len(wanted) >= VERSION_ID_HEX:
        return wanted[:VERSION_ID_HEX]
    matches = [version for version in _version_ids(store) if version.startswith(wanted)]
    if len(matches) != 1:
        found = "no version" if not matches else f"{len(matches)} versions ({', '.join(matches[:4])})"
        raise DatasetVersionError(f"{name_uri}@{wanted}: {found} begin with {wanted}")
    return matches[0]


def _latest_version(pointer: object, uri: str) -> str:
    version = pointer.get("version") if isinstance(pointer, dict) else None
    if not isinstance(pointer, dict) or pointer.get("format") != LATEST_FORMAT or not isinstance(version, str) \
            or not re.fullmatch(rf"[0-9a-f]{{{VERSION_ID_HEX}}}", version):
        raise DatasetVersionError(f"{uri}: damaged data set pointer (expected {LATEST_FORMAT} naming a version); "
                                  "push the data set again to rewrite it")
    return version


# ---------------------------------------------------------------- uses, listing, prune


def record_use(dataset: ResolvedDataset, run_id: str, settings: StoreSettings | None = None,
               when: datetime | None = None) -> str:
    """Record that run ``run_id`` trained on ``dataset`` (a tiny object below ``NAME/uses/<id>/``), so ``prune
    --days`` keeps the version; returns its URI. Call it once the run has resolved its data set."""
    store = store_from_uri(dataset.name_uri, settings or StoreSettings.from_env())
    when = when or datetime.now(timezone.utc)
    key = f"{USES_FOLDER}/{dataset.version}/{when.strftime('%Y%m%dT%H%M%SZ')}-{_safe(run_id)}.json"
    store.put_json({"run_id": run_id, "version": dataset.version, "sha256": dataset.sha256,
                    "recorded": when.isoformat(timespec="seconds")}, key)
    return store.uri(key)


def uses(store: ArtifactStore) -> dict[str, list[tuple[datetime, str]]]:
    """Version -> (time, run) of every recorded use, read from the keys alone (no object is downloaded)."""
    found: dict[str, list[tuple[datetime, str]]] = {}
    for key in store.list(USES_FOLDER):
        match = re.fullmatch(rf"{USES_FOLDER}/([0-9a-f]+)/(\d{{8}}T\d{{6}}Z)-(.+)\.json", key)
        if match:
            when = datetime.strptime(match.group(2), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            found.setdefault(match.group(1), []).append((when, match.group(3)))
    return found


def list_versions(name_uri: str, settings: StoreSettings | None = None,
                  champion_store: ArtifactStore | None = None) -> list[VersionInfo]:
    """Every version of the data set, newest first, with what references it: ``latest``, the champion and its
    history (in ``champion_store``, when given) and the runs recorded by ``record_use``."""
    name_uri = split_version(name_uri)[0]
    store = store_from_uri(name_uri, settings or StoreSettings.from_env())
    latest = _current_latest(store)
    references = _references(store, champion_store)
    infos = []
    for version in _version_ids(store):
        try:
            info = store.get_json(_info_key(version))
        except ArtifactNotFound:
            info = {}
        sha256 = str(info.get("sha256") or "")
        infos.append(VersionInfo(version, sha256, info.get("created"), int(info.get("families", 0)),
                                 int(info.get("people", 0)), int(info.get("images", 0)), int(info.get("files", 0)),
                                 int(info.get("bytes", 0)), version == latest,
                                 tuple(references.get(version, []) + references.get(sha256, []))))
    return sorted(infos, key=lambda info: (info.created or "", info.version), reverse=True)


@dataclass(frozen=True)
class PruneResult:
    """Versions removed and kept (with why), and shards removed; ``dry_run``: nothing was removed."""

    removed: tuple[str, ...]
    kept: dict[str, str]
    shards_removed: int
    dry_run: bool


def prune(name_uri: str, keep: int, days: float, settings: StoreSettings | None = None,
          champion_store: ArtifactStore | None = None, dry_run: bool = False,
          now: datetime | None = None) -> PruneResult:
    """Remove versions beyond the newest ``keep``, except ``latest``, any version the champion or its history
    references (in ``champion_store``) and any a run recorded within ``days``; then the shards no remaining
    version (nor the root manifest) names. Do not run it while a push of the same data set is under way: a shard
    that push found already stored could be removed under it."""
    if keep < 1:
        raise UserError(f"--keep must be at least 1, not {keep}")
    versions = list_versions(name_uri, settings, champion_store)
    store = store_from_uri(split_version(name_uri)[0], settings or StoreSettings.from_env())
    since = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    recent = {version for version, found in uses(store).items() if any(when >= since for when, _ in found)}
    kept: dict[str, str] = {}
    for index, info in enumerate(versions):
        why = ("latest" if info.latest else f"among the newest {keep}" if index < keep
               else next((ref for ref in info.references if ref.startswith("champion")), None)
               or (f"used by a run in the last {days:g} days" if info.version in recent else None))
        if why:
            kept[info.version] = why
    removed = tuple(info.version for info in versions if info.version not in kept)
    if dry_run:
        return PruneResult(removed, kept, 0, True)
    for version in removed:
        for key in [_manifest_key(version), *store.list(f"{VERSIONS_FOLDER}/{version}"), *store.list(f"{USES_FOLDER}/{version}")]:
            store.delete(key)
    return PruneResult(removed, kept, _remove_unnamed_shards(store), False)


def _remove_unnamed_shards(store: ArtifactStore) -> int:
    named: set[str] = set()
    manifests = [_manifest_key(version) for version in _version_ids(store)]
    for key in manifests + ([MANIFEST_NAME] if store.exists(MANIFEST_NAME) else []):
        document = store.get_json(key)
        if is_sharded(document):
            named |= {shard["key"] for shard in document["shards"]}
    unnamed = [key for key in store.list(SHARD_FOLDER) if key not in named]
    for key in unnamed:
        store.delete(key)
    return len(unnamed)


def _references(store: ArtifactStore, champion_store: ArtifactStore | None) -> dict[str, list[str]]:
    """Version id or manifest sha256 -> what references it."""
    from kinship.champion import dataset_references

    references = dict(dataset_references(champion_store)) if champion_store is not None else {}
    for version, found in uses(store).items():
        runs = [run for _, run in sorted(found, reverse=True)]
        references.setdefault(version, []).append(f"runs {', '.join(runs[:3])}" + (f" (+{len(runs) - 3})" if len(runs) > 3 else ""))
    return references


def _current_latest(store: ArtifactStore) -> str | None:
    pointer, _ = store.get_json_versioned(LATEST_KEY)
    return _latest_version(pointer, store.uri(LATEST_KEY)) if pointer is not None else None


def _version_ids(store: ArtifactStore) -> list[str]:
    """The versions that exist: those whose manifest is stored."""
    suffix = f"/{MANIFEST_NAME}"
    return sorted({key[len(VERSIONS_FOLDER) + 1:-len(suffix)] for key in store.list(VERSIONS_FOLDER)
                   if key.endswith(suffix) and key.count("/") == 2})


def _manifest_key(version: str) -> str:
    return f"{VERSIONS_FOLDER}/{version}/{MANIFEST_NAME}"


def _info_key(version: str) -> str:
    return f"{VERSIONS_FOLDER}/{version}/{VERSION_INFO}"


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(run_id))[:100] or "run"


# ---------------------------------------------------------------- pull and the pushed event


def pull(uri: str, dest: Path, settings: StoreSettings | None = None, on_progress: Progress = silent) -> tuple[ResolvedDataset, Path]:
    """Resolve ``uri`` and fetch that version through this host's cache, as the flows do
    (``kinship.pipeline.fetch_dataset``), then copy it into ``dest`` (missing or empty; one holding the same
    manifest is left as it is)."""
    from kinship.pipeline import fetch_dataset  # the flows' fetch; imported only when something is fetched

    resolved = resolve_dataset(uri, settings)
    handle = fetch_dataset(resolved.uri, settings, on_progress)
    dest = Path(dest)
    if (dest / MANIFEST_NAME).is_file() and (dest / MANIFEST_NAME).read_bytes() == (handle.path / MANIFEST_NAME).read_bytes():
        return resolved, dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"destination {dest} exists and is not an empty folder")
    if dest.exists():
        dest.rmdir()
    temp = dest.with_name(f".{dest.name}.pull-{uuid.uuid4().hex[:8]}")
    shutil.copytree(handle.path, temp, ignore=shutil.ignore_patterns(".kinship-*"))
    os.replace(temp, dest)
    return resolved, dest


def pushed_event(result: PushResult) -> dict:
    """The Prefect event a push that made or moved a version sends: resource ``kinship.dataset.NAME`` with the
    version in its labels and payload, the version as a related resource (what an automation matches on)."""
    dataset = result.dataset
    name = dataset.name_uri.rstrip("/").rsplit("/", 1)[-1]
    version_labels = {"kinship.dataset.uri": dataset.name_uri, "kinship.dataset.version": dataset.version,
                      "kinship.dataset.version_uri": dataset.uri, "kinship.dataset.sha256": dataset.sha256}
    return {"id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(), "event": PUSHED_EVENT,
            "resource": {"prefect.resource.id": f"kinship.dataset.{name}", "prefect.resource.name": name,
                         **version_labels},
            "related": [{"prefect.resource.id": f"kinship.dataset-version.{name}.{dataset.version}",
                         "prefect.resource.role": "dataset-version", **version_labels}],
            "payload": {**dataset.to_dict(), "created": result.created, "previous": result.previous}}


def emit_pushed_event(result: PushResult, environ: Mapping[str, str] = os.environ) -> str | None:
    """Send ``pushed_event`` to the Prefect server (``POST /api/events``, the REST twin of the ``/events/in``
    websocket Prefect's own client uses) when ``PREFECT_API_URL`` is set. Returns a warning line when it could not
    be sent (the push itself succeeded: the nightly schedule still catches up), else None."""
    if not environ.get("PREFECT_API_URL"):
        return None
    import urllib.error
    import urllib.request
    from base64 import b64encode

    from kinship.server_retries import PrefectApi, with_server_retries

    found = PrefectApi.from_env(environ)
    api = PrefectApi(found.api_url, found.auth_string, timeout=EVENT_TIMEOUT_S)
    headers = {"Content-Type": "application/json"}
    if api.auth_string:
        headers["Authorization"] = f"Basic {b64encode(api.auth_string.encode()).decode()}"
    request = urllib.request.Request(f"{api.api_url}/events", data=json.dumps([pushed_event(result)]).encode(),
                                     headers=headers, method="POST")

    def send() -> bytes:
        with urllib.request.urlopen(request, timeout=api.timeout) as response:
            return response.read()

    try:
        with_server_retries(send, retries=1)  # the event carries its id: a resend is the same event
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"could not send the {PUSHED_EVENT} event to {api.api_url} ({error}): no run was started by it"
    return None
