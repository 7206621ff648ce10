"""The artifact store: files whose content is checked on every read, in S3-compatible storage or a folder.

Every object is written with its sha256 (S3 user metadata ``x-amz-meta-sha256``; a side record for
``LocalStore``) and handed back as an ``ArtifactRef``. A read verifies size and sha256 against the ref
(or manifest, or the recorded digest when only a URI is given) before anything reaches the caller, and
keeps a content-addressed copy in the scratch folder so a second read of the same content downloads
nothing. Credentials come from boto3's default chain; settings never hold secrets.

Data sets are trees: ``put_tree`` uploads the files, then writes a manifest ``{key: {sha256, size, uri}}``
last, so a tree without a manifest is an interrupted push, never a complete-looking one. Only regular files are
uploaded: symbolic links and special files inside a folder are skipped and named, never followed nor read, so a
push cannot carry a file from outside its folder (``/etc/passwd`` planted as a photo) into shared storage.

Multipart uploads that an interrupted push left behind are aborted: those of a tree's keys before it is pushed
again, and the ones under way when an upload fails or is interrupted.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, ContextManager, Iterator, Mapping, Protocol
from urllib.parse import unquote, urlsplit

from kinship.dataset_cache import scratch_root
from kinship.errors import UserError
from kinship.files import (
    NotRegularFile, file_digest, file_lock, open_regular, stream_digest, temp_sibling, unlink_quietly, write_atomic,
)
from kinship.progress import Progress, ProgressEvent, silent
from kinship.shards import (
    SHARD_FOLDER, MemberEntry, PackedShard, ShardedManifest, ShardEntry, is_sharded, pack_shards, parse_manifest,
    refuse_file_folder_clash, unpack_shard,
)

if TYPE_CHECKING:
    from kinship.manifests import RefDict

MiB = 1024 * 1024
PRESIGN_MAX_S = 7 * 24 * 3600  # the longest a presigned URL may live: 7 days, SigV4's limit
MANIFEST_NAME = "kinship-manifest.json"
_SHA_META = "sha256"
_STALE_WRITE = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")  # a conditional write lost
_LOCAL_META_DIR = ".kinship-meta"
_JSON_LIMIT = 64 * MiB
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# A local write that fails so fails again: no space or quota, a read-only disk, a path a file already takes
_LOCAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
                                 errno.ENAMETOOLONG})
NOT_FOLLOWED = "symbolic link or special file"  # what put_tree skips, in messages
LISTED_SKIPS = 1000  # skipped names carried in a progress event (the count is always exact)

log = logging.getLogger(__name__)


class IntegrityError(UserError):
    """An object's content does not match its recorded sha256/size (or has no record to check against)."""


class ArtifactNotFound(UserError):
    """No object (or no data set, or no bucket) at the given URI."""


class StoreAccessError(UserError):
    """The store refused us (credentials) or could not be reached within the retry window."""


class StoreUnreachable(StoreAccessError):
    """The store could not be reached, or kept failing, for the whole retry window: trouble, not a refusal."""


@dataclass(frozen=True)
class StoreSettings:
    """Where artifacts live and how transfers behave. Holds no secrets: credentials come from boto3's chain."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    bucket: str | None = None
    prefix: str = ""
    scratch: Path = field(default_factory=lambda: scratch_root({}))
    multipart_threshold: int = 8 * MiB
    multipart_chunksize: int = 8 * MiB
    # botocore's own quick retries of one request (throttling, 5xx, a dropped connection): 3 retries after the
    # first try; a fraction of a second in all on a refused connection (measured: 4 sends in 0.2 s), up to 7 s
    # when the server asks to slow down (503 SlowDown).
    max_attempts: int = 3
    retry_mode: str = "standard"
    # Our retries around a whole transfer or call, for a server that is down or restarting: backoff from
    # retry_base_delay doubling up to retry_max_delay (each +-50 % jitter), for retry_window seconds after the
    # first failure, then one StoreAccessError naming the endpoint and key. Total retry window: 45 s, so an
    # outage of 30 s is survived with margin (tests/test_faults_s3.py, KINSHIP_TEST_OUTAGE_S=35: a 35.8 s
    # outage, 10-11 retries per transfer). Against a closed port the give-up came after 45.2 s and 16 attempts;
    # a host that drops packets instead adds up to 4 x connect_timeout for the last attempt.
    retry_window: float = 45.0
    retry_base_delay: float = 0.5
    retry_max_delay: float = 4.0
    max_workers: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # An incomplete multipart upload of a key being pushed is aborted when this process began it, or when it is
    # older than this: a younger one of another process may be a concurrent push of the same key (two pushes of
    # one set, two runs sharing a checkpoint slot), which an abort would kill with NoSuchUpload. What a killed
    # push left younger than this, a later push or the bucket's lifecycle rule (a day, in the local stack) removes.
    stale_upload_s: float = 3600.0

    def __post_init__(self) -> None:
        validate_endpoint(self.endpoint_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoreSettings:
        """Read the standard AWS variables plus ``KINSHIP_BUCKET``, ``KINSHIP_PREFIX``, ``KINSHIP_SCRATCH`` and
        ``KINSHIP_RETRY_WINDOW`` (seconds, default 45) and ``KINSHIP_STALE_UPLOAD_S`` (seconds, default 3600)."""
        env = os.environ if environ is None else environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        bucket = env.get("KINSHIP_BUCKET") or None
        return cls(
            endpoint_url=endpoint,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            bucket=validate_bucket(bucket) if bucket else None,
            prefix=validate_prefix(env.get("KINSHIP_PREFIX", "")),
            scratch=scratch_root(env),
            retry_window=_seconds(env, "KINSHIP_RETRY_WINDOW", cls.retry_window),
            stale_upload_s=_seconds(env, "KINSHIP_STALE_UPLOAD_S", cls.stale_upload_s),
        )


@dataclass(frozen=True)
class ArtifactRef:
    """One stored object: where it is and what its content must be. Stage results and manifests carry it as a
    plain dict (``kinship.manifests.RefDict``, the same four keys): Prefect persists results as dicts."""

    uri: str
    key: str
    sha256: str
    size: int

    def to_dict(self) -> RefDict:
        """The ref as the stage results and manifests carry it."""
        return {"uri": self.uri, "key": self.key, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: RefDict | Mapping[str, Any]) -> ArtifactRef:
        """The ref a ``RefDict`` (or any mapping with its four keys) names."""
        return cls(uri=str(data["uri"]), key=str(data["key"]), sha256=str(data["sha256"]), size=int(data["size"]))


@dataclass(frozen=True)
class StoreURI:
    """A parsed ``s3://bucket/key`` or ``file:///path`` (for ``file`` the key is the absolute path)."""

    scheme: str
    bucket: str
    key: str


class ArtifactStore(Protocol):
    """What flows and tasks rely on; ``S3Store`` and ``LocalStore`` both provide it."""

    def uri(self, key: str) -> str: ...
    def put_file(self, local_path: str | Path, key: str, on_progress: Progress = silent) -> ArtifactRef: ...
    def put_tree(self, local_dir: str | Path, key_prefix: str, on_progress: Progress = silent) -> list[ArtifactRef]: ...
    def get_file(self, ref_or_uri: ArtifactRef | str, dest: str | Path | None = None, on_progress: Progress = silent) -> Path: ...
    def get_tree(self, uri_prefix: str, dest: str | Path, on_progress: Progress = silent) -> Path: ...
    def exists(self, key_or_uri: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def put_json(self, obj: Any, key: str) -> ArtifactRef: ...
    def get_json(self, ref_or_uri: ArtifactRef | str) -> Any: ...
    def get_json_versioned(self, key: str) -> tuple[Any, str | None]: ...
    def put_json_if_version(self, obj: Any, key: str, version: str | None) -> ArtifactRef | None: ...
    def write_manifest(self, refs: list[ArtifactRef], key: str) -> ArtifactRef: ...
    def read_manifest(self, ref_or_uri: ArtifactRef | str) -> dict[str, ArtifactRef]: ...


# ---------------------------------------------------------------- keys and URIs


def validate_key(key: str, what: str = "key") -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``UserError`` naming it."""
    if not isinstance(key, str) or not key:
        raise UserError(f"empty {what}")
    problem = _key_problem(key)
    if problem:
        raise UserError(f"invalid {what} {key!r}: {problem}")
    return key


def _key_problem(key: str) -> str | None:
    if _CONTROL.search(key):
        return "control characters are not allowed"
    if "\\" in key:
        return "backslashes are not allowed (use /)"
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        return "must be relative, not an absolute path"
    if len(key.encode("utf-8")) > 1024:
        return "longer than 1024 bytes"
    segments = key.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "empty, '.' and '..' path segments are not allowed"
    if segments[0].startswith(".kinship"):
        return "names starting with .kinship are reserved"
    return None


def validate_prefix(prefix: str, what: str = "prefix") -> str:
    """Like ``validate_key`` but allows an empty prefix and drops one trailing slash."""
    prefix = (prefix or "").removesuffix("/")
    return validate_key(prefix, what) if prefix else ""


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        raise UserError(f"{name}={value!r}: expected a number of seconds between 0 and 86400")
    return seconds


def validate_endpoint(endpoint: str | None) -> str | None:
    """Return ``endpoint`` if it is an ``http(s)://host[:port]`` URL without credentials in it, else raise."""
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or _CONTROL.search(endpoint):
        raise UserError(f"invalid S3 endpoint {_redacted(endpoint)!r}: expected http(s)://host[:port]")
    if parts.username or parts.password:
        # settings are printed and logged: a secret in the URL would go with them
        raise UserError(f"S3 endpoint {_redacted(endpoint)!r} carries credentials: use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    return endpoint


def _redacted(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url.rpartition("@")[2]


def validate_bucket(bucket: str) -> str:
    """Return ``bucket`` if it is a valid S3 bucket name, else raise ``UserError``."""
    if not _BUCKET.match(bucket or "") or ".." in bucket:
        raise UserError(f"invalid bucket name {bucket!r}: 3-63 lowercase letters, digits, '.' or '-'")
    return bucket


def join_key(*parts: str) -> str:
    """Join key parts with '/', ignoring empty ones, and validate the result."""
    return validate_key("/".join(part.strip("/") for part in parts if part and part.strip("/")))


def parse_uri(uri: str, allow_empty_key: bool = False) -> StoreURI:
    """Parse and validate ``s3://bucket/key`` or ``file:///absolute/path``; raise ``UserError`` otherwise."""
    if not isinstance(uri, str) or "://" not in uri:
        raise UserError(f"not a store URI: {uri!r} (expected s3://bucket/key or file:///path)")
    if _CONTROL.search(uri):
        raise UserError(f"invalid URI {uri!r}: control characters are not allowed")
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        raise UserError(f"invalid URI {uri!r}: no query or fragment allowed")
    if parts.scheme == "s3":
        key = parts.path.lstrip("/")
        key = validate_prefix(key, "key") if allow_empty_key else validate_key(key.removesuffix("/") or "", "key")
        return StoreURI("s3", validate_bucket(parts.netloc), key)
    if parts.scheme == "file":
        return StoreURI("file", "", _file_path(uri, parts.netloc, parts.path))
    raise UserError(f"unsupported URI scheme in {uri!r}: use s3:// or file://")


def _file_path(uri: str, netloc: str, path: str) -> str:
    path = unquote(path)
    if netloc not in ("", "localhost") or not path.startswith("/"):
        raise UserError(f"invalid URI {uri!r}: file URIs need an absolute local path (file:///...)")
    if any(segment in (".", "..") for segment in path.split("/")) or "\\" in path or _CONTROL.search(path):
        raise UserError(f"invalid URI {uri!r}: '.', '..', backslashes and control characters are not allowed")
    return path.rstrip("/") or "/"


@dataclass(frozen=True)
class _LocalFile:
    """A regular file opened for upload, with the digest of the bytes read from that same handle."""

    path: Path
    handle: BinaryIO
    sha256: str
    size: int


def _open_regular(path: Path, root: Path | None = None) -> BinaryIO:
    """``files.open_regular``, its refusals as one-line ``UserError``s naming the path."""
    try:
        return open_regular(path, root=root)
    except NotRegularFile:
        raise UserError(f"not a regular file ({NOT_FOLLOWED}, not followed): {path}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None


@contextmanager
def _regular_file(path: Path, root: Path | None = None) -> Iterator[_LocalFile]:
    """``path`` opened by ``_open_regular`` and hashed; uploads read the same handle, so the bytes sent are the
    bytes hashed from the file that was checked, even if the path (or, below ``root``, a folder on it) is swapped
    for a link meanwhile."""
    with _open_regular(path, root) as handle:
        sha256, size = stream_digest(handle)
        yield _LocalFile(path, handle, sha256, size)


def _check_ref(ref: ArtifactRef, what: str) -> ArtifactRef:
    if not _HEX64.match(ref.sha256) or ref.size < 0:
        raise UserError(f"{what}: malformed record for {ref.uri} (sha256 must be 64 hex digits, size >= 0)")
    return ref


def _copy_atomic(source: Path | BinaryIO, dest: Path) -> Path:
    """Copy ``source`` (a path, or an open file read from its start) to ``dest`` through a temporary name, so
    ``dest`` is either absent or complete."""
    if isinstance(source, Path):
        with open(source, "rb") as handle:
            return write_atomic(dest, lambda out: shutil.copyfileobj(handle, out, 4 * MiB))
    source.seek(0)
    return write_atomic(dest, lambda out: shutil.copyfileobj(source, out, 4 * MiB))


# ---------------------------------------------------------------- the cache


class HashCache:
    """Verified files under ``scratch/cache/sha256/ab/abcdef...``: the name is the content's digest, the modification
    time the last use. The host cache's cap (``kinship.dataset_cache``) evicts them least recently used first."""

    def __init__(self, scratch: Path):
        self.root = Path(scratch) / "cache" / "sha256"

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def lookup(self, ref: ArtifactRef) -> Path | None:
        """The cached copy of ``ref``'s content, re-hashed so a damaged cache entry is dropped, not served."""
        path = self.path(ref.sha256)
        if not path.is_file():
            return None
        if file_digest(path) == (ref.sha256, ref.size):
            try:
                os.utime(path)  # its last use: the host cache's cap evicts the least recently used first
            except OSError:
                pass  # a cache another user filled: it is still served, only its age stays
            return path
        unlink_quietly(path)  # damaged: fetch again rather than serve it
        return None

    def fill(self, ref: ArtifactRef, fetch: Callable[[Path], None]) -> Path:
        """Fetch into a temporary file, verify it against ``ref``, then move it into the cache."""
        final = self.path(ref.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_sibling(final)
        try:
            fetch(temp)
            verify_file(temp, ref)
            temp.chmod(0o444)  # cached content is shared by every later read; nobody should edit it
            os.replace(temp, final)
        finally:
            unlink_quietly(temp)
        return final


def verify_file(path: Path, ref: ArtifactRef) -> None:
    """Raise ``IntegrityError`` unless ``path`` has exactly ``ref``'s size and sha256."""
    size = path.stat().st_size if path.exists() else -1
    if size != ref.size:
        raise IntegrityError(f"{ref.uri}: size mismatch (expected {ref.size} bytes, got {size}); nothing was kept")
    sha256, _ = file_digest(path)
    if sha256 != ref.sha256:
        raise IntegrityError(
            f"{ref.uri}: sha256 mismatch (expected {ref.sha256[:16]}..., got {sha256[:16]}...); nothing was kept"
        )


# ---------------------------------------------------------------- shared behaviour


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
        root = Path(local_dir)
        if not root.is_dir():
            raise UserError(f"not a folder: {root}")
        prefix = validate_prefix(key_prefix)
        files, not_followed = _tree_files(root, prefix)
        if not_followed:  # info, not warning: the CLI prints its own line, and the final event carries the names
            log.info("%s: skipped %s, not followed: %s", root, count_not_followed(len(not_followed)),
                     ", ".join(not_followed[:5]) + (", ..." if len(not_followed) > 5 else ""))
        if not files:
            extra = f" (skipped {count_not_followed(len(not_followed))}, not followed)" if not_followed else ""
            raise UserError(f"no files to upload in {root}{extra}")
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

    def _put_shards(self, root: Path, prefix: str, files: list[tuple[Path, str]], shard_bytes: int,
                    on_progress: Progress) -> tuple[list[ArtifactRef], dict]:
        """Pack ``files`` into shards and upload each as soon as it is packed (packing is one core's work, the
        uploads wait on the network: they overlap). Then the sharded manifest, last; then the shards an earlier
        push left that the new manifest no longer names (a reader of the old manifest sees "changed")."""
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
        counts["shards"] = len(shards)
        self.put_json(ShardedManifest(tuple(shards), members).to_json(), join_key(prefix, MANIFEST_NAME))
        refs = [ArtifactRef(uri=self.uri(key), key=key, sha256=entry.sha256, size=entry.size)
                for key, entry in ((shard_store_key(entry), entry) for entry in shards)]
        for key in sorted(set(known) - {ref.key for ref in refs}):
            self._delete(self._location(key))
            counts["removed"] += 1
        return refs, counts

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
                return self._assemble_shards(prefix_loc, sharded, manifest_bytes, dest, on_progress)
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


def _parent(loc: StoreURI) -> StoreURI:
    """``loc`` one level up (the bucket's root for a top-level S3 key)."""
    parent = loc.key.rsplit("/", 1)[0] if "/" in loc.key else ""
    return replace(loc, key=parent or ("/" if loc.scheme == "file" else ""))


def _child(loc: StoreURI, name: str) -> StoreURI:
    """``loc`` one level down; works for S3 keys and absolute file paths alike."""
    return replace(loc, key=f"{loc.key.rstrip('/')}/{name}" if loc.key else name)


def _relative_key(loc: StoreURI, prefix: StoreURI) -> str:
    """The part of ``loc`` below ``prefix``; a manifest entry outside its data set is refused."""
    if (loc.scheme, loc.bucket) != (prefix.scheme, prefix.bucket):
        raise UserError(f"manifest entry {loc.key} lies outside the data set {prefix.key}")
    base = prefix.key.rstrip("/")
    if base and base != "/" and not loc.key.startswith(base + "/"):
        raise UserError(f"manifest entry {loc.key} lies outside the data set {prefix.key}")
    relative = loc.key[len(base) + 1 :] if base and base != "/" else loc.key.lstrip("/")
    return validate_key(relative, "manifest entry")


def _tree_files(root: Path, prefix: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """(file, key) for every regular file below ``root``, and the sorted relative paths of what is not followed.

    Entries are judged as lstat sees them: a symbolic link (to a file or a folder, dangling or not) and a special
    file (fifo, socket, device) is named, never followed, opened or descended into. A top-level manifest from
    ``get_tree`` is left out (it is written anew, last).
    """
    files: list[tuple[Path, str]] = []
    not_followed: list[str] = []
    pending = [root]
    while pending:
        for entry in _entries(pending.pop()):
            path = Path(entry.path)
            relative = path.relative_to(root).as_posix()
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
            elif not entry.is_file(follow_symlinks=False):
                not_followed.append(relative)
            elif relative != MANIFEST_NAME:
                files.append((path, join_key(prefix, validate_key(relative, f"file name in {root}"))))
    return sorted(files, key=lambda item: item[1]), sorted(not_followed)


def count_not_followed(count: int) -> str:
    """``"1 symbolic link or special file"``, ``"3 symbolic links or special files"``."""
    return f"{count} {NOT_FOLLOWED}" if count == 1 else f"{count} symbolic links or special files"


def _entries(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder``; an unreadable folder is one line, not a silently smaller data set."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise UserError(f"cannot read folder {folder}: {error.strerror}") from None


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


# ---------------------------------------------------------------- S3


class S3Store(_BaseStore):
    """Objects in an S3-compatible bucket (AWS, SeaweedFS, MinIO...) under ``settings.prefix``."""

    scheme = "s3"

    def __init__(self, settings: StoreSettings, client: Any = None):
        if not settings.bucket:
            raise UserError("no bucket configured: set KINSHIP_BUCKET or use an s3://bucket/... URI")
        super().__init__(settings)
        self.bucket = validate_bucket(settings.bucket)
        self.prefix = validate_prefix(settings.prefix)
        self.client = client or make_s3_client(settings)
        self._transfer_config = _transfer_config(settings)
        self._own_uploads: set[str] = set()  # upload ids of the multipart uploads this process began
        events = getattr(getattr(self.client, "meta", None), "events", None)
        if events is not None:
            events.register("after-call.s3.CreateMultipartUpload", self._note_upload)

    def _note_upload(self, parsed: dict | None = None, **_: Any) -> None:
        """botocore's after-call hook of CreateMultipartUpload (s3transfer's too): remember the upload as ours."""
        upload_id = (parsed or {}).get("UploadId")
        if upload_id:
            self._own_uploads.add(upload_id)

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix}, endpoint={self.settings.endpoint_url or 'aws'})"

    def _object_uri(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    def _upload_file(self, source: _LocalFile, loc: StoreURI, on_bytes: Callable[[int], None], cancel: _Cancel) -> None:
        extra = {"Metadata": {_SHA_META: source.sha256}}
        multipart = source.size >= self.settings.multipart_threshold
        attempts = itertools.count(1)

        def attempt() -> None:
            cancel.check()
            if next(attempts) > 1 and multipart:  # the failed attempt's parts, if its own abort missed the server
                self._abort_incomplete([loc.key], quick=True)
            self._transfer(source.handle, loc, extra, on_bytes, cancel)

        try:
            # S3 makes an object visible only when its PUT (or multipart completion) succeeds: never half-written.
            self._call(f"upload {source.path} to s3://{loc.bucket}/{loc.key}", attempt)
        except BaseException as error:
            if multipart and not isinstance(error, StoreUnreachable):  # a gone server cannot be asked to abort
                self._abort_incomplete([loc.key], quick=True)
            raise

    def _transfer(self, handle: BinaryIO, loc: StoreURI, extra: dict, on_bytes: Callable[[int], None],
                  cancel: _Cancel) -> None:
        """One upload through s3transfer, from the start of ``handle``, which ``cancel`` can stop from another
        thread. On any exception, an interrupt included, the manager cancels the transfer and waits for
        s3transfer's cleanup, which aborts the multipart upload it began."""
        from boto3.s3.transfer import ProgressCallbackInvoker, create_transfer_manager

        # s3transfer closes the file of a single-request upload: give it a duplicate, so a retry can read ours again.
        with os.fdopen(os.dup(handle.fileno()), "rb") as body:
            body.seek(0)
            with create_transfer_manager(self.client, self._transfer_config) as manager:
                transfer = manager.upload(body, loc.bucket, loc.key, extra_args=extra,
                                          subscribers=[ProgressCallbackInvoker(on_bytes)])
                with cancel.tracking(transfer):
                    transfer.result()

    def _abort_stale_uploads(self, keys: list[str]) -> int:
        return self._abort_incomplete([self._location(key).key for key in keys])

    def _abort_incomplete(self, full_keys: list[str], quick: bool = False) -> int:
        """Abort the incomplete multipart uploads of exactly ``full_keys`` in this bucket that this process began
        or that are older than ``settings.stale_upload_s`` (never another process's upload under way); how many.

        Parts of an upload that was never completed nor aborted stay stored (and billed) without being listed as
        objects. A store that will not list uploads (no right to, not implemented) is a warning, not a failed
        push. ``quick``, on the way out of a failure: one try, and nothing raised but an interrupt, so the
        failure itself is what the caller sees; what is left, the next push of these keys or the bucket's
        lifecycle rule removes.
        """
        wanted = set(full_keys)
        prefix = os.path.commonprefix(sorted(wanted))
        what = f"abort incomplete uploads under s3://{self.bucket}/{prefix}"
        if not quick:
            try:
                return self._call(what, lambda: self._abort_listed(prefix, wanted))
            except StoreAccessError as error:
                if isinstance(error, StoreUnreachable):
                    raise
                log.warning("%s; left to the bucket's lifecycle rule, if it has one", error)
                return 0
        try:
            with _s3_errors(what, self.settings.endpoint_url):
                return self._abort_listed(prefix, wanted)
        except Exception as error:  # noqa: BLE001  (never mask the failure being handled)
            log.info("%s: not done (%s: %s)", what, type(error).__name__, error)
            return 0

    def _abortable(self, upload: dict) -> bool:
        """Whether a listed multipart upload is ours, or old enough that no live push can still be sending it."""
        if upload["UploadId"] in self._own_uploads:
            return True
        initiated = upload.get("Initiated")
        if not isinstance(initiated, datetime):
            return False  # no age given: it may be another push's, under way
        age = datetime.now(timezone.utc) - (initiated if initiated.tzinfo else initiated.replace(tzinfo=timezone.utc))
        return age.total_seconds() >= self.settings.stale_upload_s

    def _abort_listed(self, prefix: str, wanted: set[str]) -> int:
        from botocore.exceptions import ClientError

        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
        stale = [(item["Key"], item["UploadId"]) for page in pages for item in page.get("Uploads", [])
                 if item["Key"] in wanted and self._abortable(item)]
        for key, upload_id in stale:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "NoSuchUpload":  # gone meanwhile: fine
                    raise
        if stale:
            log.info("aborted %d incomplete multipart upload(s) under s3://%s/%s", len(stale), self.bucket, prefix)
        return len(stale)

    def _upload_bytes(self, data: bytes, loc: StoreURI, sha256: str) -> None:
        self._call(f"write s3://{loc.bucket}/{loc.key}", lambda: self.client.put_object(
            Bucket=loc.bucket, Key=loc.key, Body=data, Metadata={_SHA_META: sha256}, ContentType="application/json"))

    def _download(self, loc: StoreURI, dest: Path, on_bytes: Callable[[int], None]) -> None:
        def attempt() -> None:
            unlink_quietly(dest)
            self.client.download_file(loc.bucket, loc.key, str(dest), Config=self._transfer_config, Callback=on_bytes)

        self._call(f"download s3://{loc.bucket}/{loc.key}", attempt)

    def _read_bytes(self, loc: StoreURI) -> tuple[bytes, str | None]:
        def attempt() -> tuple[bytes, str | None]:
            response = self.client.get_object(Bucket=loc.bucket, Key=loc.key)
            if response.get("ContentLength", 0) > _JSON_LIMIT:
                raise UserError(f"s3://{loc.bucket}/{loc.key} is too large to read as JSON")
            return response["Body"].read(), response.get("Metadata", {}).get(_SHA_META)

        return self._call(f"read s3://{loc.bucket}/{loc.key}", attempt)

    def _stat(self, loc: StoreURI) -> tuple[int, str | None] | None:
        try:
            head = self._call(f"stat s3://{loc.bucket}/{loc.key}",
                              lambda: self.client.head_object(Bucket=loc.bucket, Key=loc.key))
        except ArtifactNotFound:
            return None
        return int(head["ContentLength"]), head.get("Metadata", {}).get(_SHA_META)

    def _version(self, loc: StoreURI) -> str | None:
        try:
            return self._call(f"stat s3://{loc.bucket}/{loc.key}",
                              lambda: self.client.head_object(Bucket=loc.bucket, Key=loc.key))["ETag"]
        except ArtifactNotFound:
            return None

    def _upload_bytes_if(self, data: bytes, loc: StoreURI, sha256: str, version: str | None) -> bool:
        from botocore.exceptions import ClientError, ParamValidationError

        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}  # S3 conditional writes

        def put() -> bool:
            try:
                self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, Metadata={_SHA_META: sha256},
                                       ContentType="application/json", **condition)
            except ParamValidationError as error:
                if not any(name in str(error) for name in condition):
                    raise
                raise UserError(_no_conditional_writes(f"s3://{loc.bucket}/{loc.key}", next(iter(condition)))) from None
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                if code in _STALE_WRITE or status in ("409", "412"):
                    return False
                raise
            return True

        return self._call(f"write s3://{loc.bucket}/{loc.key} if unchanged", put)

    def _sizes(self, prefix: str) -> dict[str, int]:
        full = self._full_key(prefix)
        listing_prefix = f"{full}/" if full else ""
        strip = len(f"{self.prefix}/") if self.prefix else 0

        def attempt() -> dict[str, int]:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=listing_prefix)
            return {item["Key"][strip:]: int(item["Size"]) for page in pages for item in page.get("Contents", [])}

        return self._call(f"list s3://{self.bucket}/{listing_prefix}", attempt)

    def _delete(self, loc: StoreURI) -> None:
        self._call(f"delete s3://{loc.bucket}/{loc.key}",
                   lambda: self.client.delete_object(Bucket=loc.bucket, Key=loc.key))

    def _some_keys(self, loc: StoreURI, limit: int) -> list[str]:
        prefix = f"{loc.key}/" if loc.key else ""
        response = self._call(f"list s3://{loc.bucket}/{prefix}", lambda: self.client.list_objects_v2(
            Bucket=loc.bucket, Prefix=prefix, MaxKeys=limit))
        return [item["Key"] for item in response.get("Contents", [])]

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``; while the server is unreachable or failing, retry it with backoff (see StoreSettings).

        S3's refusals (no such object, access denied) become one-line ``UserError``s at once, never retried.
        A server still failing ``retry_window`` seconds after the first failure is one ``StoreAccessError``
        naming the endpoint and the object.
        """
        first_failure = None
        for attempt in itertools.count(1):
            try:
                with _s3_errors(what, self.settings.endpoint_url):
                    return action()
            except _ServerTrouble as trouble:
                now = time.monotonic()
                first_failure = first_failure or now
                remaining = self.settings.retry_window - (now - first_failure)
                if remaining <= 0:
                    raise StoreUnreachable(
                        f"{what}: gave up after {attempt} attempts over {now - first_failure:.0f} s, "
                        f"S3 endpoint {self.settings.endpoint_url or 'AWS'} unreachable or failing ({trouble})"
                    ) from None
                delay = min(self.settings.retry_max_delay, self.settings.retry_base_delay * 2 ** (attempt - 1))
                delay = min(remaining, delay * (0.5 + random.random()))  # jitter: parallel transfers spread out
                log.warning("%s: attempt %d failed (%s); retrying in %.1f s", what, attempt, trouble, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def presigned_url(self, key_or_uri: str, expires_s: int = PRESIGN_MAX_S) -> str:
        """A URL that GETs the object for ``expires_s`` seconds (1 s to ``PRESIGN_MAX_S``) without credentials.

        Signed locally (no request is made): a missing object answers 404 only when the URL is used.
        """
        if not 1 <= expires_s <= PRESIGN_MAX_S:
            raise ValueError(f"expires_s must be between 1 s and 7 days, got {expires_s}")
        loc = self._to_location(key_or_uri)
        return self.client.generate_presigned_url("get_object", Params={"Bucket": loc.bucket, "Key": loc.key},
                                                  ExpiresIn=int(expires_s))


class _ServerTrouble(Exception):
    """The server could not be reached or failed (5xx) even after botocore's own retries: worth retrying."""

    def __init__(self, error: BaseException):
        text = " ".join(str(error).split())  # one line, whatever botocore put in it
        super().__init__(f"{type(error).__name__}: {text[:200]}")


BOTOCORE_CONDITIONAL_PUT = "1.35.69"  # the first botocore whose put_object takes IfMatch (S3's API of 2024-11-25)


def _no_conditional_writes(what: str, parameter: str) -> str:
    """The one line for a botocore too old to send a conditional write (permanent: installing a newer one fixes it)."""
    import botocore

    return (f"write {what}: botocore {botocore.__version__} cannot send a conditional write ({parameter} on "
            f"put_object, which the champion's compare-and-swap needs): install boto3/botocore >= "
            f"{BOTOCORE_CONDITIONAL_PUT} (pip install -U 'boto3>={BOTOCORE_CONDITIONAL_PUT}')")


def _transient_errors() -> tuple[type[BaseException], ...]:
    from boto3.exceptions import RetriesExceededError
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError
    from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceeded

    return (ConnectionError, HTTPClientError, IncompleteReadError, RetriesExceededError, TransferRetriesExceeded)


@contextmanager
def _s3_errors(what: str, endpoint: str | None) -> Iterator[None]:
    """Turn S3's refusals into ``UserError``s that name the object; a dead or failing server into ``_ServerTrouble``."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    try:
        yield
    except _transient_errors() as error:
        raise _ServerTrouble(error) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise StoreAccessError(f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
    except (ClientError, S3UploadFailedError) as error:
        client_error = error if isinstance(error, ClientError) else error.__context__
        if not isinstance(client_error, ClientError):
            raise
        if _status(client_error) in (500, 502, 503, 504):  # the server failing, not refusing (501 would not pass)
            raise _ServerTrouble(client_error) from None
        raise _translate_client_error(client_error, what, endpoint) from None


def _status(error: Any) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _translate_client_error(error: Any, what: str, endpoint: str | None) -> Exception:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchKey", "NotFound"):
        return ArtifactNotFound(f"{what}: no such object")
    if code == "NoSuchBucket":  # a misspelt bucket is a mistake in the URI: waiting will not create it
        return ArtifactNotFound(f"{what}: the bucket does not exist at {endpoint or 'AWS'}")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == 403:
        return StoreAccessError(f"{what}: access denied ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    return StoreAccessError(f"{what}: {code or status} {error.response.get('Error', {}).get('Message', '')}".rstrip())


def make_s3_client(settings: StoreSettings) -> Any:
    """A boto3 S3 client for ``settings``: botocore retries, timeouts, path-style addressing for custom endpoints."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.region,
        retries={"max_attempts": settings.max_attempts, "mode": settings.retry_mode},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=max(10, settings.max_workers * 4),
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
        signature_version="s3v4",
    )
    return boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url, config=config)


def _transfer_config(settings: StoreSettings) -> Any:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=settings.multipart_threshold,
        multipart_chunksize=settings.multipart_chunksize,
        max_concurrency=4,
        use_threads=True,
    )
    # Uploads read an open file (never a path a link could be swapped into), and s3transfer holds each part of
    # such a file in memory: 4 parts in flight + 2 read ahead, not its default 10 (80 MiB per file at 8 MiB).
    config.max_in_memory_upload_chunks = 6
    return config


# ---------------------------------------------------------------- local folder


class LocalStore(_BaseStore):
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
        meta = self._meta_path(path)
        try:
            recorded = json.loads(meta.read_text())["sha256"] if meta else None
        except (OSError, ValueError, KeyError):
            recorded = None
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


# ---------------------------------------------------------------- choosing a store


def store_from_settings(settings: StoreSettings | None = None) -> ArtifactStore:
    """``S3Store`` when a bucket is configured, else a ``LocalStore`` in ``scratch/store`` (in-process mode)."""
    settings = settings or StoreSettings.from_env()
    if settings.bucket:
        return S3Store(settings)
    return LocalStore(settings.scratch / "store", settings)


def store_from_uri(uri: str, settings: StoreSettings | None = None) -> ArtifactStore:
    """A store rooted at ``uri`` (``s3://bucket/prefix`` or ``file:///folder``); endpoint etc. from ``settings``."""
    settings = settings or StoreSettings.from_env()
    loc = parse_uri(uri, allow_empty_key=True)
    if loc.scheme == "s3":
        return S3Store(replace(settings, bucket=loc.bucket, prefix=loc.key))
    return LocalStore(Path(loc.key), replace(settings, prefix=""))
