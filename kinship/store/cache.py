"""The content-addressed download cache: every verified read is kept under its sha256, so a second read of the same
content downloads nothing, and a damaged entry is dropped rather than served."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from kinship.files import file_digest, temp_sibling, unlink_quietly
from kinship.store.refs import ArtifactRef, IntegrityError


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
