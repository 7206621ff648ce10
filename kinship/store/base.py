"""What every store does one object at a time, whatever holds the bytes: addressing, verified file and JSON reads
and writes, compare-and-swap, manifests. ``S3Store`` and ``LocalStore`` provide the ``_``-primitives; trees are
``kinship.store.transfer``'s."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from kinship.errors import UserError
from kinship.progress import Progress, ProgressEvent, silent
from kinship.shards import is_sharded
from kinship.store.cache import HashCache
from kinship.store.keys import MANIFEST_NAME, StoreURI, _parent, parse_uri, validate_key, validate_prefix
from kinship.store.local_files import _copy_atomic, _LocalFile, _regular_file
from kinship.store.refs import _HEX64, ArtifactNotFound, ArtifactRef, IntegrityError, _check_ref
from kinship.store.settings import StoreSettings


class _BaseStore:
    """Everything that does not depend on where bytes live; subclasses provide the ``_``-primitives."""

    settings: StoreSettings
    scheme: str

    def __init__(self, settings: StoreSettings):
        self.settings = settings
        self.cache = HashCache(settings.scratch)

    prefix: str = ""

    # primitives -------------------------------------------------------
    def _object_uri(self, full_key: str) -> str:
        """URI of ``full_key`` (prefix included; empty for the store's root)."""
        raise NotImplementedError

    def _full_key(self, key: str) -> str:
        return "/".join(part for part in (self.prefix, key) if part)

    def uri(self, key: str) -> str:
        """The URI of the object at ``key`` (relative to this store's root)."""
        return self._object_uri(self._full_key(validate_key(key)))

    def _location(self, key: str) -> StoreURI:
        return parse_uri(self.uri(key))

    def _upload_file(self, source: _LocalFile, loc: StoreURI, on_bytes: Callable[[int], None], cancel: _Cancel) -> None:
        """Store ``source`` at ``loc``; stop early once ``cancel`` is set."""
        raise NotImplementedError

    def _abort_stale_uploads(self, keys: list[str]) -> int:
        """Abort incomplete uploads of exactly ``keys``; how many. Only S3 has any (multipart uploads)."""
        return 0

    def _upload_bytes(self, data: bytes, loc: StoreURI, sha256: str) -> None:
        raise NotImplementedError

    def _download(self, loc: StoreURI, dest: Path, on_bytes: Callable[[int], None]) -> None:
        raise NotImplementedError

    def _read_bytes(self, loc: StoreURI) -> tuple[bytes, str | None]:
        raise NotImplementedError

    def _stat(self, loc: StoreURI) -> tuple[int, str | None] | None:
        raise NotImplementedError

    def _version(self, loc: StoreURI) -> str | None:
        """An opaque version of the object at ``loc`` that changes with every write; None when absent."""
        raise NotImplementedError

    def _upload_bytes_if(self, data: bytes, loc: StoreURI, sha256: str, version: str | None) -> bool:
        """Write ``data`` only if the object is still at ``version`` (None: only if absent); False if not."""
        raise NotImplementedError

    def _sizes(self, prefix: str) -> dict[str, int]:
        raise NotImplementedError

    def _some_keys(self, loc: StoreURI, limit: int) -> list[str]:
        """Up to ``limit`` keys (S3) or file paths (local) below the folder-like ``loc``, in no set order."""
        raise NotImplementedError

    def _delete(self, loc: StoreURI) -> None:
        """Remove the object at ``loc`` (and its digest record); absent already is fine."""
        raise NotImplementedError

    # addressing -------------------------------------------------------
    def _to_location(self, key_or_uri: str, allow_empty_key: bool = False) -> StoreURI:
        if "://" in key_or_uri:
            loc = parse_uri(key_or_uri, allow_empty_key)
        elif allow_empty_key:
            loc = parse_uri(self._object_uri(self._full_key(validate_prefix(key_or_uri))), allow_empty_key=True)
        else:
            loc = parse_uri(self.uri(key_or_uri))
        if loc.scheme != self.scheme:
            raise UserError(f"{key_or_uri!r} is not a {self.scheme}:// location; open it with store_from_uri")
        return loc

    def _resolve(self, ref_or_uri: ArtifactRef | str) -> ArtifactRef:
        """An ``ArtifactRef`` as is; a URI or key becomes one from the digest recorded at upload."""
        if isinstance(ref_or_uri, ArtifactRef):
            self._to_location(ref_or_uri.uri)
            return _check_ref(ref_or_uri, "get")
        loc = self._to_location(ref_or_uri)
        uri = self._uri_of(loc)
        stat = self._stat(loc)
        if stat is None:
            name = loc.key.rsplit("/", 1)[-1]
            if name == MANIFEST_NAME:  # a data set is fetched through its manifest: say which data set is missing
                raise ArtifactNotFound(self._no_dataset(_parent(loc)))
            raise ArtifactNotFound(f"no object at {uri}")
        size, sha256 = stat
        if not sha256 or not _HEX64.match(sha256):
            raise IntegrityError(f"{uri}: no sha256 recorded for this object; fetch it through its ArtifactRef or manifest")
        return ArtifactRef(uri=uri, key=loc.key, sha256=sha256, size=size)

    def _uri_of(self, loc: StoreURI) -> str:
        return f"s3://{loc.bucket}/{loc.key}" if loc.scheme == "s3" else Path(loc.key).as_uri()

    # public API -------------------------------------------------------
    def put_file(self, local_path: str | Path, key: str, on_progress: Progress = silent) -> ArtifactRef:
        """Upload one regular file under ``key`` (relative to this store's root) and return its ref.

        A symbolic link or special file is refused (one line), as ``put_tree`` skips them: never followed.
        """
        path = Path(local_path)
        if not os.path.lexists(path) or path.is_dir():
            raise UserError(f"not a file: {path}")
        key = validate_key(key)
        loc = self._location(key)
        with _regular_file(path) as source:
            done = [0]

            def on_bytes(count: int) -> None:
                done[0] += count
                on_progress(ProgressEvent(f"upload {path.name}", done[0], source.size))

            if source.size >= self.settings.multipart_threshold:  # only a multipart upload can be left half-done
                self._abort_stale_uploads([key])
            self._upload_file(source, loc, on_bytes, _Cancel())
        return ArtifactRef(uri=self.uri(key), key=key, sha256=source.sha256, size=source.size)

    def get_file(self, ref_or_uri: ArtifactRef | str, dest: str | Path | None = None, on_progress: Progress = silent) -> Path:
        """Verified local copy of an object: the cache path, or ``dest`` (a file path, or a folder: existing or ending in /).

        Raises ``IntegrityError`` on any size/sha256 mismatch, leaving nothing at ``dest``.
        """
        ref = self._resolve(ref_or_uri)
        cached = self.cache.lookup(ref)
        if cached is None:
            loc = self._to_location(ref.uri)
            done = [0]

            def on_bytes(count: int) -> None:
                done[0] += count
                on_progress(ProgressEvent(f"download {Path(loc.key).name}", done[0], ref.size))

            cached = self.cache.fill(ref, lambda temp: self._download(loc, temp, on_bytes))
        if dest is None:
            return cached
        wants_folder = str(dest).endswith(("/", os.sep))
        dest = Path(dest)
        if wants_folder or dest.is_dir():
            dest = dest / Path(ref.key).name
        return _copy_atomic(cached, dest)

    def exists(self, key_or_uri: str) -> bool:
        """Whether an object exists at the key (relative to this store) or URI."""
        return self._stat(self._to_location(key_or_uri)) is not None

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys (relative to this store's root) under the folder-like ``prefix``."""
        return sorted(self._sizes(validate_prefix(prefix)))

    def delete(self, key: str) -> None:
        """Remove the object at ``key`` (relative to this store's root); absent already is fine. Only pruning calls
        this: every other object of the store is written once and kept."""
        self._delete(self._location(validate_key(key)))

    def put_json(self, obj: Any, key: str) -> ArtifactRef:
        """Store a small JSON document atomically (e.g. the champion pointer)."""
        key = validate_key(key)
        data = _json_bytes(obj)
        sha256 = hashlib.sha256(data).hexdigest()
        self._upload_bytes(data, self._location(key), sha256)
        return ArtifactRef(uri=self.uri(key), key=key, sha256=sha256, size=len(data))

    def get_json_versioned(self, key: str) -> tuple[Any, str | None]:
        """A JSON document (verified like ``get_json``) and the version it was read at; ``(None, None)`` if absent.

        The version is read before the body: if a writer comes between the two, the body is the newer one
        and the older version makes the next ``put_json_if_version`` fail, so the caller decides again.
        """
        version = self._version(self._location(validate_key(key)))
        if version is None:
            return None, None
        try:
            return self.get_json(self.uri(key)), version
        except ArtifactNotFound:  # deleted between the two reads: absent now
            return None, None

    def put_json_if_version(self, obj: Any, key: str, version: str | None) -> ArtifactRef | None:
        """Compare-and-swap: store ``obj`` at ``key`` only if the object is still at ``version`` (from
        ``get_json_versioned``; None: only if there is none). None when another writer came first."""
        key = validate_key(key)
        data = _json_bytes(obj)
        sha256 = hashlib.sha256(data).hexdigest()
        if not self._upload_bytes_if(data, self._location(key), sha256, version):
            return None
        return ArtifactRef(uri=self.uri(key), key=key, sha256=sha256, size=len(data))

    def get_json(self, ref_or_uri: ArtifactRef | str) -> Any:
        """Read a JSON document, verified against the ref, or else against the digest recorded with it."""
        target = ref_or_uri.uri if isinstance(ref_or_uri, ArtifactRef) else ref_or_uri
        loc = self._to_location(target)
        uri = self._uri_of(loc)
        data, recorded = self._read_bytes(loc)  # one read: content and record come from the same version
        expected = _check_ref(ref_or_uri, "get_json") if isinstance(ref_or_uri, ArtifactRef) else None
        sha256 = hashlib.sha256(data).hexdigest()
        want = expected.sha256 if expected else recorded
        if not want:
            raise IntegrityError(f"{uri}: no sha256 recorded for this object; read it through its ArtifactRef")
        if sha256 != want or (expected and expected.size != len(data)):
            raise IntegrityError(f"{uri}: sha256 mismatch (expected {want[:16]}..., got {sha256[:16]}...)")
        return parse_json(data, uri)

    def write_manifest(self, refs: list[ArtifactRef], key: str) -> ArtifactRef:
        """Store ``{key: {sha256, size, uri}}`` for ``refs`` as JSON under ``key``."""
        return self.put_json(_manifest_entries(refs), key)

    def read_manifest(self, ref_or_uri: ArtifactRef | str) -> dict[str, ArtifactRef]:
        """Read a manifest written by ``write_manifest``/``put_tree``: key -> ``ArtifactRef``."""
        data = self.get_json(ref_or_uri)
        return self._manifest_refs(data, ref_or_uri.uri if isinstance(ref_or_uri, ArtifactRef) else ref_or_uri)

    def _manifest_refs(self, data: Any, name: str) -> dict[str, ArtifactRef]:
        if is_sharded(data):
            raise UserError(f"{name}: a sharded data set manifest names shards, not objects; fetch it with get_tree")
        if not isinstance(data, dict):
            raise UserError(f"{name}: not a manifest (expected a JSON object)")
        try:
            refs = {validate_key(k): ArtifactRef.from_dict({"key": k, **v}) for k, v in data.items()}
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{name}: malformed manifest entry ({error})") from None
        for ref in refs.values():
            _check_ref(ref, name)
            parse_uri(ref.uri)
        return refs


    def _no_dataset(self, prefix_loc: StoreURI) -> str:
        """Why there is no data set at ``prefix_loc``, in one line naming it: nothing there, a folder of data
        sets, or files without a manifest (an interrupted push)."""
        uri = self._uri_of(prefix_loc)
        uri = uri if uri.endswith("/") else f"{uri}/"
        if prefix_loc.scheme == "s3" and not prefix_loc.key:
            return f"no data set at {uri}: name its folder inside the bucket, e.g. s3://{prefix_loc.bucket}/datasets/NAME"
        keys = self._some_keys(prefix_loc, 1000)
        if not keys:
            return f"no data set at {uri}: nothing is stored there (check the URI; `kinship data push DIR URI` creates one)"
        below = sorted(key for key in keys if key.endswith(f"/{MANIFEST_NAME}"))
        if below:
            example = self._uri_of(replace(prefix_loc, key=below[0].rsplit("/", 1)[0]))
            return f"no data set at {uri}: it holds data sets in sub-folders, e.g. {example}"
        return f"no data set at {uri}: {MANIFEST_NAME} is missing (an interrupted push? push it again)"


def parse_json(data: bytes, name: str) -> Any:
    """The JSON document in ``data``; anything else is one ``UserError`` naming ``name`` (bad syntax or encoding,
    and nesting deep enough to exhaust Python's recursion, which a hostile store can send as a manifest)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise UserError(f"{name}: not valid JSON (nested too deeply)") from None
    except ValueError as error:
        raise UserError(f"{name}: not valid JSON ({error})") from None


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _manifest_entries(refs: Any) -> dict:
    return {ref.key: {"sha256": ref.sha256, "size": ref.size, "uri": ref.uri} for ref in refs}


class _Cancel:
    """Lets the thread that runs ``put_tree`` stop the uploads its workers run: no new attempt starts, and the
    transfers under way are cancelled (s3transfer then aborts the multipart upload it began)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._transfers: set = set()

    def set(self) -> None:
        self._event.set()
        with self._lock:
            for transfer in self._transfers:
                transfer.cancel()

    def check(self) -> None:
        """Raise ``_Cancelled`` once ``set`` was called."""
        if self._event.is_set():
            raise _Cancelled("upload cancelled")

    @contextmanager
    def tracking(self, transfer: Any) -> Iterator[None]:
        """While the block runs, ``set`` cancels ``transfer`` (an s3transfer future)."""
        with self._lock:
            self._transfers.add(transfer)
        if self._event.is_set():
            transfer.cancel()  # set between the check and the tracking
        try:
            yield
        finally:
            with self._lock:
                self._transfers.discard(transfer)


class _Cancelled(Exception):
    """An upload stopped because another one of the same ``put_tree`` failed or was interrupted (never shown: the
    thread running ``put_tree`` raises that failure)."""
