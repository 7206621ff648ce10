"""This host's copies of pushed data sets: one copy per content, shared by every flow on the host, capped in size.

Layout, below ``$KINSHIP_SCRATCH/datasets``::

    <sha16>/              the data set as fetched (its manifest last: a folder with one is complete)
    .locks/<sha16>.lock   flock: exclusive while a copy is filled, verified or evicted; shared while a stage reads it
    .entries/<sha16>.json size on disk, source URI, when filled and when last used (least recently used goes first)

and beside it ``$KINSHIP_SCRATCH/images/<key>.npy`` (``kinship.image_cache``: the decoded pixels of a data set at one
size, often larger than the set itself), whose ``.json`` sidecar records the same, and ``$KINSHIP_SCRATCH/cache/sha256``
(``kinship.storage.HashCache``: every file a store read downloaded, models and checkpoints included, whose
modification time is its last use); the cap covers all three.

The last-used time is written by us on every use, not read from atime: most mounts are ``relatime``, so atime
says little. Eviction (after each fill) removes the least recently used copies until the total is under the cap,
never one that a stage is reading (it holds a shared lock) or that was used within the grace period (a flow
between its fetch and its training step holds no lock yet).

Every reuse is verified: each file's size and sha256 against the copy's manifest (whose own sha256 is the
entry's name), so a damaged or edited copy is fetched again instead of training on it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Mapping

from kinship.errors import UserError
from kinship.files import PARTIAL_MARK, file_digest, file_lock, write_atomic
from kinship.shards import is_sharded, parse_manifest

log = logging.getLogger(__name__)

GiB = 1024**3
DEFAULT_MAX_GB = 50.0
DEFAULT_GRACE_S = 900.0
VERIFY_MODES = ("full", "size")
IMAGES_FOLDER = "images"  # decoded-image arrays (kinship.image_cache), under the same cap
DOWNLOADS = "cache"  # kinship.storage.HashCache's verified downloads (cache/sha256/ab/abcd...), under the same cap
_LOCKS = ".locks"
_ENTRIES = ".entries"


def scratch_root(environ: Mapping[str, str] | None = None) -> Path:
    """This host's scratch folder: ``$KINSHIP_SCRATCH`` (``~`` expanded), by default ``~/.cache/kinship``. The
    data set copies, decoded images, downloads and run working folders all live below it."""
    env = os.environ if environ is None else environ
    scratch = env.get("KINSHIP_SCRATCH")
    return Path(scratch).expanduser() if scratch else Path.home() / ".cache" / "kinship"


@dataclass(frozen=True)
class CacheSettings:
    """Where the copies live, the cap on their total size on disk, how a reuse is checked, the grace period."""

    root: Path
    max_bytes: int = int(DEFAULT_MAX_GB * GiB)
    verify: str = "full"
    grace_s: float = DEFAULT_GRACE_S

    @classmethod
    def from_env(cls, scratch: Path, environ: Mapping[str, str] | None = None) -> CacheSettings:
        """``KINSHIP_CACHE_MAX_GB`` (default 50), ``KINSHIP_CACHE_VERIFY`` (full|size, default full) and
        ``KINSHIP_CACHE_GRACE_S`` (default 900); a bad value is one line naming it."""
        env = os.environ if environ is None else environ
        verify = verify_mode(env)
        return cls(Path(scratch) / "datasets", int(_number(env, "KINSHIP_CACHE_MAX_GB", DEFAULT_MAX_GB) * GiB),
                   verify, _number(env, "KINSHIP_CACHE_GRACE_S", DEFAULT_GRACE_S))


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UserError(f"{name}={text!r}: expected a number >= 0")
    return value


@dataclass(frozen=True)
class CacheOutcome:
    """What ``obtain`` did: the copy's folder, ``hit`` / ``filled`` / ``refilled`` (a damaged copy replaced),
    seconds spent verifying, and the copies evicted to stay under the cap."""

    path: Path
    status: str
    verify_s: float
    evicted: tuple[str, ...]
    problem: str | None = None


@dataclass(frozen=True)
class EntryInfo:
    name: str
    bytes: int
    last_used: float
    uri: str


class DatasetCache:
    """The copies of one host (see the module's docstring)."""

    def __init__(self, settings: CacheSettings):
        self.settings = settings
        self.root = settings.root

    def entry_path(self, sha256: str) -> Path:
        return self.root / sha256[:16]

    def obtain(self, sha256: str, uri: str, fill: Callable[[Path], None],
               expected: Callable[[Path], dict[str, tuple[str, int]]]) -> CacheOutcome:
        """The verified copy of the data set whose manifest has ``sha256``: reused when it verifies, else made by
        ``fill(folder)`` (which must leave the folder complete or absent). ``expected(folder)`` reads the copy's
        manifest: relative path -> (sha256, size). Concurrent callers on this host wait for one fill."""
        path = self.entry_path(sha256)
        # A reuse needs only a shared lock, so it never waits for another flow's training on the same copy (which
        # holds a shared lock while it reads); filling or replacing a copy takes the exclusive one.
        with self._locked(path.name, exclusive=False):
            started = time.perf_counter()
            problem = self._problem(path, sha256, expected) if path.is_dir() else "absent"
            verify_s = time.perf_counter() - started
            if problem is None:
                self._record(path.name, uri, None, filled=False)
                return CacheOutcome(path, "hit", verify_s, tuple(self.evict(keep={path.name})))
        with self._locked(path.name, exclusive=True):
            status, problem = "filled", None
            if path.is_dir():  # damaged, or filled by another flow while we waited for the lock
                started = time.perf_counter()
                problem = self._problem(path, sha256, expected)
                verify_s += time.perf_counter() - started
                if problem is None:
                    status = "hit"
                else:
                    log.warning("cached copy %s failed verification (%s): fetching it again", path, problem)
                    shutil.rmtree(path)
                    status = "refilled"
            self._remove_partials(path)
            if status != "hit":
                fill(path)
                self._record(path.name, uri, _disk_bytes(path), filled=True)
            else:
                self._record(path.name, uri, None, filled=False)
        return CacheOutcome(path, status, verify_s, tuple(self.evict(keep={path.name})), problem)

    def check_fits(self, needed: int, what: str) -> None:
        """Raise one ``UserError`` naming ``what`` when a copy of ``needed`` bytes is larger than the whole cap:
        eviction runs only after a fill, so it cannot bound the fill itself."""
        if needed > self.settings.max_bytes:
            raise UserError(f"{what}: {needed / GiB:.2f} GB is more than this host's cache may hold "
                            f"(KINSHIP_CACHE_MAX_GB={self.settings.max_bytes / GiB:g}); raise the cap to fetch it")

    def entries(self) -> list[EntryInfo]:
        """The recorded copies and decoded-image arrays (named ``images/<key>``), least recently used first."""
        found = []
        records = [(record, record.stem) for record in _glob(self.root / _ENTRIES, "*.json")]
        records += [(meta, f"{IMAGES_FOLDER}/{meta.stem}") for meta in _glob(self._images, "*.json")]
        for record, name in records:
            try:
                data = json.loads(record.read_text())
                found.append(EntryInfo(name, int(data["bytes"]), float(data["last_used"]),
                                       str(data.get("uri", data.get("fingerprint", "")))))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a record being rewritten, damaged, or older than these fields: judged next time
        return sorted(found, key=lambda entry: (entry.last_used, entry.name))

    @property
    def _images(self) -> Path:
        return self.root.parent / IMAGES_FOLDER

    def _download_path(self, name: str) -> Path:
        sha256 = name.split("/", 1)[1]
        return self.root.parent / DOWNLOADS / "sha256" / sha256[:2] / sha256

    def _downloads(self) -> list[EntryInfo]:
        """The download cache's files as entries: no record of their own, their mtime is their last use (a hit
        touches it). Files being filled (temporary names) are not entries yet."""
        found = []
        for path in _glob(self.root.parent / DOWNLOADS / "sha256", "??/*"):
            if PARTIAL_MARK in path.name:
                continue
            try:
                info = path.lstat()
            except OSError:
                continue  # evicted or replaced meanwhile
            found.append(EntryInfo(f"{DOWNLOADS}/{path.name}", info.st_blocks * 512, info.st_mtime, "download cache"))
        return found

    def _exists(self, name: str) -> bool:
        if name.startswith(f"{DOWNLOADS}/"):
            return self._download_path(name).is_file()
        if name.startswith(f"{IMAGES_FOLDER}/"):
            return (self._images / f"{name.split('/', 1)[1]}.npy").is_file()
        return (self.root / name).is_dir()

    def evict(self, keep: set[str] = frozenset()) -> list[str]:
        """Remove least recently used copies until the total is within the cap; returns the names removed."""
        everything = sorted([*self.entries(), *self._downloads()], key=lambda entry: (entry.last_used, entry.name))
        entries = [entry for entry in everything if self._exists(entry.name)]
        total = sum(entry.bytes for entry in entries)
        removed: list[str] = []
        now = time.time()
        for entry in entries:
            if total <= self.settings.max_bytes:
                break
            if entry.name in keep or now - entry.last_used < self.settings.grace_s:
                continue
            if self._remove_unless_busy(entry.name):
                total -= entry.bytes
                removed.append(entry.name)
                log.info("evicted cached %s (%s, %.1f MB, unused for %.0f s) to stay under %.1f GB",
                         entry.name, entry.uri, entry.bytes / 1e6, now - entry.last_used, self.settings.max_bytes / GiB)
        if total > self.settings.max_bytes:
            log.warning("data set cache %s holds %.1f GB, over its cap of %.1f GB: the rest is in use or used in the "
                        "last %.0f s", self.root, total / GiB, self.settings.max_bytes / GiB, self.settings.grace_s)
        return removed

    # ------------------------------------------------------------ internals

    def _problem(self, path: Path, sha256: str, expected: Callable[[Path], dict[str, tuple[str, int]]]) -> str | None:
        """Why the copy at ``path`` cannot be reused, or None."""
        from kinship.store.keys import MANIFEST_NAME

        manifest = path / MANIFEST_NAME
        if not manifest.is_file():
            return "no manifest (incomplete)"
        if file_digest(manifest)[0] != sha256:
            return "its manifest differs"
        try:
            files = expected(path)
        except (UserError, ValueError, OSError) as error:
            return f"unreadable manifest ({error})"
        return verify_files(path, files, self.settings.verify == "full")

    def _locked(self, name: str, exclusive: bool) -> ContextManager[None]:
        return file_lock(self.root / _LOCKS / f"{name}.lock", exclusive)

    def _remove_unless_busy(self, name: str) -> bool:
        if name.startswith(f"{DOWNLOADS}/"):
            # No lock guards a downloaded file (a reader gets its path): the grace period does, as evict checks
            # before this. A reader that has it open keeps reading it after the unlink.
            self._download_path(name).unlink(missing_ok=True)
            return True
        images = name.startswith(f"{IMAGES_FOLDER}/")
        key = name.split("/", 1)[1] if images else name
        lock = (self._images if images else self.root) / _LOCKS / f"{key}.lock"
        try:
            with file_lock(lock, wait=False):
                if images:
                    (self._images / f"{key}.npy").unlink(missing_ok=True)
                    (self._images / f"{key}.json").unlink(missing_ok=True)
                else:
                    shutil.rmtree(self.root / key, ignore_errors=True)
                    (self.root / _ENTRIES / f"{key}.json").unlink(missing_ok=True)
        except BlockingIOError:
            return False  # a stage is reading it, or a fill is under way
        return True

    def _remove_partials(self, path: Path) -> None:
        """Half-assembled folders of this entry left by a killed fetch (we hold its lock: no fill is running)."""
        for leftover in self.root.glob(f".{path.name}*{PARTIAL_MARK}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _record(self, name: str, uri: str, size: int | None, filled: bool) -> None:
        record = self.root / _ENTRIES / f"{name}.json"
        previous = {}
        if record.is_file():
            try:
                previous = json.loads(record.read_text())
            except (OSError, ValueError):
                previous = {}
        now = time.time()
        data = {"uri": uri, "bytes": size if size is not None else previous.get("bytes", 0),
                "filled": now if filled else previous.get("filled", now), "last_used": now}
        if size is None and "bytes" not in previous:
            data["bytes"] = _disk_bytes(self.root / name)
        write_atomic(record, json.dumps(data).encode())


def _glob(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def host_lock(folder: Path, key: str) -> ContextManager[None]:
    """The exclusive lock of entry ``key`` of a cache folder (``folder/.locks/<key>.lock``)."""
    return file_lock(Path(folder) / _LOCKS / f"{key}.lock")


def verify_mode(environ: Mapping[str, str] | None = None) -> str:
    """``KINSHIP_CACHE_VERIFY``: ``full`` (sha256, the default) or ``size``; a bad value is one line."""
    env = os.environ if environ is None else environ
    verify = env.get("KINSHIP_CACHE_VERIFY", "full").strip() or "full"
    if verify not in VERIFY_MODES:
        raise UserError(f"KINSHIP_CACHE_VERIFY={verify!r}: expected one of {', '.join(VERIFY_MODES)}")
    return verify


def evict_host_cache(scratch: Path, keep: set[str] = frozenset()) -> list[str]:
    """Bring this host's cache under ``scratch`` within its cap (settings from the environment)."""
    return DatasetCache(CacheSettings.from_env(scratch)).evict(keep)


def hold(folder: Path) -> ContextManager[None]:
    """Hold ``folder``, when it is a cached copy (else nothing happens), against eviction while a stage reads it."""
    folder = Path(folder)
    lock = folder.parent / _LOCKS / f"{folder.name}.lock"
    if not lock.is_file():
        return nullcontext()
    return file_lock(lock, exclusive=False)


def verify_files(root: Path, files: dict[str, tuple[str, int]], full: bool, workers: int = 4) -> str | None:
    """None when every listed file under ``root`` has its size (and, when ``full``, its sha256); else the first
    problem, naming the file. Hashing runs on a few threads (hashlib releases the GIL on large reads)."""
    names = sorted(files)

    def check(chunk: list[str]) -> str | None:
        for name in chunk:
            sha256, size = files[name]
            path = root / name
            try:
                if path.is_symlink() or path.stat().st_size != size:
                    return f"{name}: size differs or not a regular file"
                if full and file_digest(path)[0] != sha256:
                    return f"{name}: sha256 differs"
            except OSError:
                return f"{name}: missing"
        return None

    chunks = [names[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = [problem for problem in pool.map(check, chunks) if problem]
    return min(problems) if problems else None


def manifest_files(document: object, dataset_uri: str, name: str) -> dict[str, tuple[str, int]]:
    """Relative path -> (sha256, size) of every file a data set manifest lists: the sharded format names them
    directly; the per-object format by URI, made relative to ``dataset_uri``."""
    from kinship.store.keys import validate_key

    if is_sharded(document):
        manifest = parse_manifest(document, name, validate_key)
        return {path: (entry.sha256, entry.size) for path, entry in manifest.files.items()}
    if not isinstance(document, dict):
        raise UserError(f"{name}: not a manifest (expected a JSON object)")
    base = dataset_uri.rstrip("/") + "/"
    files = {}
    for entry in document.values():
        uri = str(entry["uri"])
        if not uri.startswith(base):
            raise UserError(f"{name}: entry {uri} lies outside the data set {dataset_uri}")
        files[validate_key(uri[len(base):], f"file name in {name}")] = (str(entry["sha256"]), int(entry["size"]))
    return files


def _disk_bytes(folder: Path) -> int:
    """Space the folder takes on disk (allocated blocks: many small photos take more than their sizes add to)."""
    total = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                continue
    return total
