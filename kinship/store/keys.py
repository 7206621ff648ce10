"""Object keys and store URIs: validation of keys, prefixes, buckets and endpoints, and ``s3://`` / ``file://``
parsing. Everything a user or a manifest names is checked here before any store is asked about it."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from kinship.errors import UserError

MANIFEST_NAME = "kinship-manifest.json"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StoreURI:
    """A parsed ``s3://bucket/key`` or ``file:///path`` (for ``file`` the key is the absolute path)."""

    scheme: str
    bucket: str
    key: str


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
