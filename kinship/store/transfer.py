"""Trees and shards: ``put_tree`` uploads a folder (one object per file, or packed in tar shards) with its
manifest written last, so a tree without a manifest is an interrupted push, never a complete-looking one;
``get_tree`` fetches one, verified, into a folder that appears only when complete. Incomplete multipart uploads an
interrupted push left behind are aborted: those of a tree's keys before it is pushed again."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from kinship.errors import UserError
from kinship.files import temp_sibling, unlink_quietly
from kinship.progress import Progress, ProgressEvent, silent
from kinship.shards import (
    SHARD_FOLDER, MemberEntry, PackedShard, ShardedManifest, ShardEntry, is_sharded, pack_shards, parse_manifest,
    refuse_file_folder_clash, unpack_shard,
)
from kinship.store.base import _BaseStore, _Cancel, _json_bytes, _manifest_entries
from kinship.store.cache import verify_file
from kinship.store.keys import (
    MANIFEST_NAME, StoreURI, _child, _parent, _relative_key, join_key, parse_uri, validate_key, validate_prefix,
)
from kinship.store.local_files import _regular_file, _tree_files, count_not_followed
from kinship.store.refs import ArtifactNotFound, ArtifactRef, IntegrityError

# A local write that fails so fails again: no space or quota, a read-only disk, a path a file already takes
_LOCAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
                                 errno.ENAMETOOLONG})
LISTED_SKIPS = 1000  # skipped names carried in a progress event (the count is always exact)

# The store's log lines keep the name they had when the store was one module: tests and users filter on it.
log = logging.getLogger("kinship.storage")


class _TreeStore(_BaseStore):
    """``_BaseStore`` plus whole trees; the class ``S3Store`` and ``LocalStore`` derive from."""

    def put_tree(self, local_dir: str | Path, key_prefix: str, on_progress: Progress = silent,
                 shard_bytes: int | None = None) -> list[ArtifactRef]:
        """Upload every regular file under ``local_dir`` below ``key_prefix``, then the manifest, last.

        With ``shard_bytes`` the files travel packed in tar shards of about that size (``kinship.shards``; the
        manifest is then the sharded format and the refs returned are the shards'); else one object per file.
        Idempotent: files (shards) whose object already has the same size and sha256 are not sent again. Symbolic links
        (to files or folders) and special files inside ``local_dir`` are skipped: never followed nor read (the
        folder itself may be a link: the caller named it). Incomplete multipart uploads of the tree's keys, left
        by an interrupted push, are aborted first. The final progress event carries ``uploaded``, ``skipped``
        (unchanged) and ``bytes`` counts, ``skipped_links`` and ``skipped_link_names`` (relative paths).
        """
        root, prefix = Path(local_dir), validate_prefix(key_prefix)
        files, not_followed = _files_to_push(root, prefix)
        if shard_bytes:
            refs, counts = self._put_shards(root, prefix, files, shard_bytes, on_progress)
        else:
            known = self._known_digests(prefix)
            self._abort_stale_uploads([key for _, key in files])
            refs, counts = self._upload_all(files, known, on_progress, root)
            self.write_manifest(refs, join_key(prefix, MANIFEST_NAME))
        info = {**counts, "files": len(files), "skipped_links": len(not_followed),
                "skipped_link_names": not_followed[:LISTED_SKIPS]}
        on_progress(ProgressEvent("push", len(files), len(files), info))
        return refs

    def put_shards(self, local_dir: str | Path, key_prefix: str, shard_bytes: int,
                   on_progress: Progress = silent) -> tuple[dict, dict]:
        """Pack ``local_dir`` into shards and upload those not stored yet below ``key_prefix``/shards; write no
        manifest and remove nothing. Returns the sharded manifest document (for the caller to store: a data set
        version) and the counts of ``put_tree``'s final event.

        Shards already stored are shared, not replaced: versions of one data set keep one pool of shards, so a
        version that adds families sends only the shards that changed, and no shard an older version names is
        removed here (``kinship.data_versions.prune`` does, once no kept version names it).
        """
        root, prefix = Path(local_dir), validate_prefix(key_prefix)
        files, not_followed = _files_to_push(root, prefix)
        shards, members, counts, _ = self._send_shards(root, prefix, files, shard_bytes, on_progress)
        info = {**counts, "shards": len(shards), "files": len(files), "skipped_links": len(not_followed),
                "skipped_link_names": not_followed[:LISTED_SKIPS]}
        on_progress(ProgressEvent("push", len(files), len(files), info))
        return ShardedManifest(tuple(shards), members).to_json(), info

    def _put_shards(self, root: Path, prefix: str, files: list[tuple[Path, str]], shard_bytes: int,
                    on_progress: Progress) -> tuple[list[ArtifactRef], dict]:
        """Pack and send the shards (``_send_shards``), then the sharded manifest, last; then the shards an earlier
        push left that the new manifest no longer names (a reader of the old manifest sees "changed")."""
        shards, members, counts, known = self._send_shards(root, prefix, files, shard_bytes, on_progress)
        shard_store_key = lambda entry: join_key(prefix, entry.key)  # noqa: E731
        counts["shards"] = len(shards)
        self.put_json(ShardedManifest(tuple(shards), members).to_json(), join_key(prefix, MANIFEST_NAME))
        refs = [ArtifactRef(uri=self.uri(key), key=key, sha256=entry.sha256, size=entry.size)
                for key, entry in ((shard_store_key(entry), entry) for entry in shards)]
        for key in sorted(set(known) - {ref.key for ref in refs}):
            self._delete(self._location(key))
            counts["removed"] += 1
        return refs, counts

    def _send_shards(self, root: Path, prefix: str, files: list[tuple[Path, str]], shard_bytes: int,
                     on_progress: Progress) -> tuple[list[ShardEntry], dict[str, MemberEntry], dict, dict]:
        """Pack ``files`` into shards and upload each as soon as it is packed (packing is one core's work, the
        uploads wait on the network: they overlap); a shard already stored with its size is not sent. Returns the
        shards (sorted by key), the members, the counts and the shard keys found stored before."""
        named = [(path, path.relative_to(root).as_posix()) for path, _ in files]
        shard_prefix = join_key(prefix, SHARD_FOLDER)
        shard_store_key = lambda entry: join_key(prefix, entry.key)  # noqa: E731
        known = {key: (size, None) for key, size in self._sizes(shard_prefix).items()}
        counts = {"uploaded": 0, "skipped": 0, "bytes": 0, "shards": 0, "removed": 0}
        shards: list[ShardEntry] = []
        members: dict[str, MemberEntry] = {}
        done_files = [0]
        remove_stale_pack_folders(Path(self.settings.scratch) / "tmp")
        work = Path(self.settings.scratch) / "tmp" / f"pack-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        cancel = _Cancel()
        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.max_workers))
        in_flight = threading.BoundedSemaphore(max(2, self.settings.max_workers * 2))  # packed, not yet sent

        def send(packed: PackedShard) -> tuple[PackedShard, bool]:
            try:
                key = shard_store_key(packed.entry)
                if key not in known and packed.entry.size >= self.settings.multipart_threshold:
                    self._abort_stale_uploads([key])  # parts of the same shard left by a killed push
                _, sent = self._upload_if_changed(packed.path, key, known.get(key), cancel)
                return packed, sent
            finally:
                unlink_quietly(packed.path)
                in_flight.release()

        def collect(future) -> None:
            packed, sent = future.result()
            shards.append(packed.entry)
            members.update(packed.members)
            counts["uploaded" if sent else "skipped"] += 1
            counts["bytes"] += packed.entry.size if sent else 0
            done_files[0] += packed.entry.members
            on_progress(ProgressEvent("push", done_files[0], len(files), dict(counts)))

        futures = []
        try:
            for packed in pack_shards(named, work, shard_bytes, root=root):
                in_flight.acquire()
                futures.append(pool.submit(send, packed))
            for future in as_completed(futures):
                collect(future)
        except BaseException:
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        pool.shutdown()
        shards.sort(key=lambda entry: entry.key)
        return shards, members, counts, known

    def _known_digests(self, prefix: str) -> dict[str, tuple[int, str | None]]:
        """Objects already under ``prefix``: size plus the sha256 from the previous manifest, if any."""
        sizes = self._sizes(prefix)
        manifest_key = join_key(prefix, MANIFEST_NAME)
        previous: dict[str, ArtifactRef] = {}
        if manifest_key in sizes:
            try:
                previous = self.read_manifest(manifest_key)
            except UserError:
                previous = {}  # a damaged old manifest only costs us re-checking each object
        return {key: (size, previous[key].sha256 if key in previous else None) for key, size in sizes.items()}

    def _upload_all(self, files: list[tuple[Path, str]], known: dict, on_progress: Progress,
                    root: Path | None = None) -> tuple[list[ArtifactRef], dict]:
        """Upload ``files`` in parallel. On an interrupt or error, queued files are dropped and the transfers under
        way are cancelled (each aborts its multipart upload) before the error goes on: without this, Ctrl-C
        waited for every queued file to be sent (measured: an interrupted push still completed its upload)."""
        counts = {"uploaded": 0, "skipped": 0, "bytes": 0}
        refs: list[ArtifactRef] = []
        cancel = _Cancel()
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.settings.max_workers, len(files))))
        try:
            futures = [pool.submit(self._upload_if_changed, path, key, known.get(key), cancel, root)
                       for path, key in files]
            for done, future in enumerate(as_completed(futures), start=1):
                ref, sent = future.result()
                refs.append(ref)
                counts["uploaded" if sent else "skipped"] += 1
                counts["bytes"] += ref.size if sent else 0
                on_progress(ProgressEvent("push", done, len(files), dict(counts)))
        except BaseException:
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        return sorted(refs, key=lambda ref: ref.key), counts

    def _upload_if_changed(self, path: Path, key: str, known: tuple[int, str | None] | None,
                           cancel: _Cancel, root: Path | None = None) -> tuple[ArtifactRef, bool]:
        with _regular_file(path, root) as source:
            ref = ArtifactRef(uri=self.uri(key), key=key, sha256=source.sha256, size=source.size)
            if known is not None and known[0] == source.size:
                recorded = known[1]
                if recorded is None:  # no manifest entry (an interrupted push): ask the object itself
                    found = self._stat(self._location(key))
                    recorded = found[1] if found else None
                if recorded == source.sha256:
                    return ref, False
            self._upload_file(source, self._location(key), lambda count: None, cancel)
        return ref, True

    def get_tree(self, uri_prefix: str, dest: str | Path, on_progress: Progress = silent) -> Path:
        """Download the data set at ``uri_prefix`` (its manifest names every file) into the folder ``dest``.

        The tree is assembled under a temporary name and renamed into place only when every file is verified.
        A ``dest`` already holding the same manifest is returned untouched.
        """
        prefix_loc = self._to_location(uri_prefix, allow_empty_key=True)
        manifest_loc = _child(prefix_loc, MANIFEST_NAME)
        if self._stat(manifest_loc) is None:
            raise ArtifactNotFound(self._no_dataset(prefix_loc))
        manifest_uri = self._uri_of(manifest_loc)
        document = self.get_json(manifest_uri)
        sharded = parse_manifest(document, manifest_uri, validate_key) if is_sharded(document) else None
        manifest = None if sharded else self._manifest_refs(document, manifest_uri)
        manifest_bytes = _json_bytes(document if sharded else _manifest_entries(manifest.values()))
        dest = Path(dest)
        if (dest / MANIFEST_NAME).is_file() and (dest / MANIFEST_NAME).read_bytes() == manifest_bytes:
            return dest
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise UserError(f"destination {dest} exists and is not an empty folder")
        try:
            if sharded:
                shards_at = shard_base(prefix_loc, manifest_bytes)
                return self._assemble_shards(shards_at, sharded, manifest_bytes, dest, on_progress)
            return self._assemble_tree(prefix_loc, manifest, manifest_bytes, dest, on_progress)
        except OSError as error:
            if error.errno not in _LOCAL_WRITE_ERRNOS:
                raise
            # a full disk or a tree this manifest cannot make: the same on every try, so one line, not retried
            raise UserError(f"{manifest_uri}: cannot write the data set into {dest.parent}: "
                            f"{error.strerror or error} ({error.filename or dest})") from None

    def _assemble_shards(self, prefix_loc: StoreURI, manifest: ShardedManifest, manifest_bytes: bytes, dest: Path,
                         on_progress: Progress) -> Path:
        """Download the shards concurrently (each large one in ranged parts), verify each against its sha256, unpack
        it with every member checked, into a temporary folder renamed into place only when all are there."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_sibling(dest)
        downloads = temp_sibling(dest.with_name(f"{dest.name}-shards"))
        total = sum(shard.size for shard in manifest.shards)
        done = [0]
        lock = threading.Lock()

        def on_bytes(count: int) -> None:
            with lock:
                done[0] += count
                on_progress(ProgressEvent("fetch", done[0], total, {"unit": "bytes"}))

        def fetch_one(index: int, shard: ShardEntry) -> None:
            loc = _child(prefix_loc, shard.key)
            ref = ArtifactRef(uri=self._uri_of(loc), key=loc.key, sha256=shard.sha256, size=shard.size)
            part = downloads / f"{index:06d}.tar"
            try:
                self._download(loc, part, on_bytes)
                verify_file(part, ref)
                unpack_shard(part, temp, manifest, index, ref.uri)
            finally:
                unlink_quietly(part)

        workers = max(1, min(self.settings.max_workers, len(manifest.shards)))
        # the unpacked files, plus the shards being downloaded at once (each is deleted once unpacked)
        in_flight = sum(sorted((shard.size for shard in manifest.shards), reverse=True)[:workers])
        check_room(dest.parent, manifest.total_bytes + in_flight, self._uri_of(prefix_loc))
        try:
            temp.mkdir()
            downloads.mkdir()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for future in as_completed([pool.submit(fetch_one, i, s) for i, s in enumerate(manifest.shards)]):
                    future.result()
            _move_into_place(temp, dest, manifest_bytes)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
            shutil.rmtree(downloads, ignore_errors=True)
        return dest


    def _assemble_tree(self, prefix_loc: StoreURI, manifest: dict[str, ArtifactRef], manifest_bytes: bytes, dest: Path, on_progress: Progress) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_sibling(dest)
        relative = {_relative_key(parse_uri(ref.uri), prefix_loc): ref for ref in manifest.values()}
        refuse_file_folder_clash(relative, self._uri_of(_child(prefix_loc, MANIFEST_NAME)))
        targets = [(ref, temp / path) for path, ref in relative.items()]
        workers = max(1, min(self.settings.max_workers, len(targets)))
        # each file lands in the download cache first, then is copied into the tree (on the same disk, or not)
        total = sum(ref.size for ref in manifest.values())
        check_room(dest.parent, total, self._uri_of(prefix_loc))
        check_room(self.cache.root.parent, total, self._uri_of(prefix_loc))
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(self.get_file, ref, target) for ref, target in targets]
                for done, future in enumerate(as_completed(futures), start=1):
                    future.result()
                    on_progress(ProgressEvent("fetch", done, len(targets)))
            _move_into_place(temp, dest, manifest_bytes)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        return dest


def _files_to_push(root: Path, prefix: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """The regular files below ``root`` with their keys, and the names not followed (links, special files); a folder
    that is missing or has nothing to send is one line."""
    if not root.is_dir():
        raise UserError(f"not a folder: {root}")
    files, not_followed = _tree_files(root, prefix)
    if not_followed:  # info, not warning: the CLI prints its own line, and the final event carries the names
        log.info("%s: skipped %s, not followed: %s", root, count_not_followed(len(not_followed)),
                 ", ".join(not_followed[:5]) + (", ..." if len(not_followed) > 5 else ""))
    if not files:
        extra = f" (skipped {count_not_followed(len(not_followed))}, not followed)" if not_followed else ""
        raise UserError(f"no files to upload in {root}{extra}")
    return files, not_followed


VERSIONS_FOLDER = "versions"  # NAME/versions/<id>/: one immutable version of the data set NAME
VERSION_ID_HEX = 16  # a version is named by this many hex digits of its manifest's sha256
_VERSION_ID = re.compile(rf"^[0-9a-f]{{{VERSION_ID_HEX}}}$")


def manifest_digest(document: dict) -> str:
    """The sha256 of a manifest document as the store writes it (``put_json``): what a host's cache names its copy
    by, and, in its first ``VERSION_ID_HEX`` digits, the name of the data set version it is."""
    return hashlib.sha256(_json_bytes(document)).hexdigest()


def version_id(manifest_bytes: bytes) -> str:
    """The name of the data set version whose manifest is ``manifest_bytes`` (as stored)."""
    return hashlib.sha256(manifest_bytes).hexdigest()[:VERSION_ID_HEX]


def shard_base(prefix_loc: StoreURI, manifest_bytes: bytes) -> StoreURI:
    """Where the shards of the data set at ``prefix_loc`` live: the folder itself, or, for a version
    (``NAME/versions/<id>``), the data set's shared pool in ``NAME/``. A version folder whose name is not its
    manifest's digest is refused (a damaged or misplaced version), so a manifest is never read against the shards
    of another data set."""
    parts = prefix_loc.key.rstrip("/").split("/")
    if len(parts) < 3 or parts[-2] != VERSIONS_FOLDER or not _VERSION_ID.match(parts[-1]):
        return prefix_loc
    if version_id(manifest_bytes) != parts[-1]:
        raise IntegrityError(f"{prefix_loc.key}: the version's manifest is damaged (its sha256 begins "
                             f"{version_id(manifest_bytes)}, not {parts[-1]}): push the data set again")
    return _parent(_parent(prefix_loc))


STALE_PACK_S = 24 * 3600  # a pack folder not named by a process id (or on another host) is stale after this
_PACK = re.compile(r"^pack-(?:(\d+)-)?[0-9a-f]{12}$")


def remove_stale_pack_folders(tmp: Path) -> list[str]:
    """Remove the shard-packing folders (``pack-<pid>-<random>``) that a killed push left under ``tmp``: those whose
    process is gone, and any older than ``STALE_PACK_S``; never a live push's. Returns the names removed."""
    removed = []
    for folder in _glob_dirs(tmp, "pack-*"):
        match = _PACK.match(folder.name)
        if match is None:
            continue
        try:
            old = time.time() - folder.stat().st_mtime > STALE_PACK_S
        except OSError:
            continue
        if old or (match.group(1) and not _process_alive(int(match.group(1)))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        log.info("removed %d packing folder(s) a killed push left in %s", len(removed), tmp)
    return removed


def _glob_dirs(folder: Path, pattern: str) -> list[Path]:
    return [path for path in folder.glob(pattern) if path.is_dir() and not path.is_symlink()] if folder.is_dir() else []


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def check_room(folder: Path, needed: int, what: str) -> None:
    """Raise one ``UserError`` naming ``what`` unless the disk holding ``folder`` has ``needed`` bytes free: checked
    before a fetch writes anything, so a data set too large for the disk fails at once instead of filling it."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise UserError(f"{what}: needs {needed / 1e9:.2f} GB on the disk of {folder}, which has "
                        f"{free / 1e9:.2f} GB free; nothing was fetched")


def _move_into_place(temp: Path, dest: Path, manifest_bytes: bytes) -> None:
    """Finish an assembled tree: its manifest last, then the rename that makes it visible at ``dest`` (an empty
    ``dest`` folder is replaced)."""
    (temp / MANIFEST_NAME).write_bytes(manifest_bytes)
    if dest.exists():
        dest.rmdir()
    os.replace(temp, dest)
