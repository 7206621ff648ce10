"""Opening a store: S3 or a local folder, from settings or from a URI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kinship.store.keys import parse_uri
from kinship.store.local import LocalStore
from kinship.store.refs import ArtifactStore
from kinship.store.s3 import S3Store
from kinship.store.settings import StoreSettings


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
