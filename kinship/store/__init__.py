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

One module per concept: ``keys`` (keys and URIs), ``settings``, ``refs`` (refs, errors, the protocol),
``local_files`` (reading without following links), ``cache`` (the download cache), ``base`` (one object at a
time), ``transfer`` (trees and shards), ``s3``, ``local``, ``opening`` (a store from settings or a URI).
"""

from kinship.store.base import parse_json
from kinship.store.cache import HashCache, verify_file
from kinship.store.keys import (
    MANIFEST_NAME, StoreURI, join_key, parse_uri, validate_bucket, validate_endpoint, validate_key, validate_prefix,
)
from kinship.store.local import LocalStore
from kinship.store.local_files import NOT_FOLLOWED, count_not_followed
from kinship.store.opening import store_from_settings, store_from_uri
from kinship.store.refs import (
    ArtifactNotFound, ArtifactRef, ArtifactStore, IntegrityError, StoreAccessError, StoreUnreachable,
)
from kinship.store.s3 import BOTOCORE_CONDITIONAL_PUT, S3Store, make_s3_client
from kinship.store.settings import PRESIGN_MAX_S, MiB, StoreSettings
from kinship.store.transfer import (
    LISTED_SKIPS, STALE_PACK_S, VERSION_ID_HEX, VERSIONS_FOLDER, check_room, manifest_digest, remove_stale_pack_folders,
    shard_base, version_id,
)

__all__ = [
    "BOTOCORE_CONDITIONAL_PUT", "LISTED_SKIPS", "MANIFEST_NAME", "NOT_FOLLOWED", "PRESIGN_MAX_S", "STALE_PACK_S",
    "ArtifactNotFound", "ArtifactRef", "ArtifactStore", "HashCache", "IntegrityError", "LocalStore", "MiB", "S3Store",
    "StoreAccessError", "StoreSettings", "StoreURI", "StoreUnreachable", "VERSIONS_FOLDER", "VERSION_ID_HEX",
    "check_room", "count_not_followed", "join_key", "make_s3_client", "manifest_digest", "parse_json", "parse_uri",
    "remove_stale_pack_folders", "shard_base", "store_from_settings", "store_from_uri", "validate_bucket",
    "validate_endpoint", "validate_key", "validate_prefix", "verify_file", "version_id",
]
