"""``LocalStore``: objects as plain files in a folder, each digest in a side record under ``.kinship-meta``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, ContextManager

from kinship.files import file_digest, file_lock, unlink_quietly, write_atomic
from kinship.store.base import _Cancel
from kinship.store.keys import StoreURI, validate_key, validate_prefix
from kinship.store.local_files import _copy_atomic, _LocalFile
from kinship.store.refs import ArtifactNotFound
from kinship.store.settings import PRESIGN_MAX_S, StoreSettings
from kinship.store.transfer import _TreeStore

_LOCAL_META_DIR = ".kinship-meta"


class LocalStore(_TreeStore):
    """Objects as plain files under ``root``; digests recorded under ``root/.kinship-meta``."""

    scheme = "file"

    def __init__(self, root: str | Path, settings: StoreSettings | None = None):
        super().__init__(settings or StoreSettings.from_env())
        self.root = Path(root).expanduser().resolve()
        self.prefix = validate_prefix(self.settings.prefix)

    def __repr__(self) -> str:
        return f"LocalStore({self.root})"

    def _object_uri(self, full_key: str) -> str:
        return (self.root / full_key if full_key else self.root).as_uri()

    def _meta_path(self, path: Path) -> Path | None:
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return None  # a file outside this store's root has no record here
        return self.root / _LOCAL_META_DIR / f"{relative.as_posix()}.json"

    def _write_meta(self, path: Path, sha256: str, size: int) -> None:
        meta = self._meta_path(path)
        if meta is not None:
            write_atomic(meta, json.dumps({"sha256": sha256, "size": size}).encode())

    def _upload_file(self, source: _LocalFile, loc: StoreURI, on_bytes: Callable[[int], None], cancel: _Cancel) -> None:
        cancel.check()
        target = Path(loc.key)
        _copy_atomic(source.handle, target)
        self._write_meta(target, source.sha256, source.size)
        on_bytes(source.size)

    def _upload_bytes(self, data: bytes, loc: StoreURI, sha256: str) -> None:
        target = Path(loc.key)
        write_atomic(target, data)
        self._write_meta(target, sha256, len(data))

    def _version(self, loc: StoreURI) -> str | None:
        try:
            return file_digest(Path(loc.key))[0]
        except FileNotFoundError:
            return None

    def _upload_bytes_if(self, data: bytes, loc: StoreURI, sha256: str, version: str | None) -> bool:
        with self._locked(Path(loc.key), exclusive=True):  # compare and write as one; the kernel drops it if we die
            if self._version(loc) != version:
                return False
            self._upload_bytes(data, loc, sha256)
        return True

    def get_json_versioned(self, key: str) -> tuple[Any, str | None]:
        # A file and its digest record are two writes: read them under the lock writers hold.
        with self._locked(Path(self._location(validate_key(key)).key), exclusive=False):
            return super().get_json_versioned(key)

    def _locked(self, path: Path, exclusive: bool) -> ContextManager[None]:
        return file_lock((self._meta_path(path) or path).with_suffix(".lock"), exclusive)

    def _download(self, loc: StoreURI, dest: Path, on_bytes: Callable[[int], None]) -> None:
        source = Path(loc.key)
        if not source.is_file():
            raise ArtifactNotFound(f"no object at {source.as_uri()}")
        shutil.copyfile(source, dest)
        on_bytes(dest.stat().st_size)

    def _read_bytes(self, loc: StoreURI) -> tuple[bytes, str | None]:
        source = Path(loc.key)
        if not source.is_file():
            raise ArtifactNotFound(f"no object at {source.as_uri()}")
        stat = self._stat(loc)
        return source.read_bytes(), stat[1] if stat else None

    def _stat(self, loc: StoreURI) -> tuple[int, str | None] | None:
        path = Path(loc.key)
        if not path.is_file():
            return None
        recorded = _recorded_sha256(self._meta_path(path))
        if recorded is None:
            recorded = _ancestor_record(path, self.root)
        return path.stat().st_size, recorded

    def _delete(self, loc: StoreURI) -> None:
        path = Path(loc.key)
        unlink_quietly(path)
        meta = self._meta_path(path)
        if meta is not None:
            unlink_quietly(meta)

    def _sizes(self, prefix: str) -> dict[str, int]:
        full = self._full_key(prefix)
        base = self.root / full if full else self.root
        strip = len(self.prefix) + 1 if self.prefix else 0
        sizes = {}
        for directory, dirs, names in os.walk(base):
            dirs[:] = [d for d in dirs if not (Path(directory) == self.root and d == _LOCAL_META_DIR)]
            for name in names:
                path = Path(directory) / name
                if ".partial-" not in name and path.is_file():
                    sizes[path.relative_to(self.root).as_posix()[strip:]] = path.stat().st_size
        return sizes

    def _some_keys(self, loc: StoreURI, limit: int) -> list[str]:
        found: list[str] = []
        for directory, dirs, names in os.walk(loc.key):
            dirs[:] = [d for d in dirs if d != _LOCAL_META_DIR]
            found += [f"{directory.rstrip('/')}/{name}" for name in names if ".partial-" not in name]
            if len(found) >= limit:
                break
        return found[:limit]

    def presigned_url(self, key_or_uri: str, expires_s: int = PRESIGN_MAX_S) -> None:
        """None: a folder has no HTTP endpoint to sign for (``S3Store.presigned_url``'s counterpart)."""
        self._to_location(key_or_uri)  # still refuse what is not a location of this store
        return None


def _recorded_sha256(meta: Path | None) -> str | None:
    try:
        return json.loads(meta.read_text())["sha256"] if meta else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ancestor_record(path: Path, root: Path) -> str | None:
    """The digest recorded for ``path`` by a store rooted in a folder above ``root``: a data set version
    (``NAME/versions/<id>``) is written by the store of ``NAME`` and fetched by a store rooted at the version.
    Only a recorded digest is read from there, and every read is verified against it."""
    for folder in root.parents:
        try:
            relative = path.relative_to(folder)
        except ValueError:
            continue
        recorded = _recorded_sha256(folder / _LOCAL_META_DIR / f"{relative.as_posix()}.json")
        if recorded is not None:
            return recorded
    return None
