"""What a store hands back and what it raises: ``ArtifactRef``, the ``ArtifactStore`` protocol, the errors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from kinship.errors import UserError
from kinship.progress import Progress, silent

if TYPE_CHECKING:
    from kinship.manifests import RefDict

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class IntegrityError(UserError):
    """An object's content does not match its recorded sha256/size (or has no record to check against)."""


class ArtifactNotFound(UserError):
    """No object (or no data set, or no bucket) at the given URI."""


class StoreAccessError(UserError):
    """The store refused us (credentials) or could not be reached within the retry window."""


class StoreUnreachable(StoreAccessError):
    """The store could not be reached, or kept failing, for the whole retry window: trouble, not a refusal."""


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


class ArtifactStore(Protocol):
    """What flows and tasks rely on; ``S3Store`` and ``LocalStore`` both provide it."""

    def uri(self, key: str) -> str: ...
    def put_file(self, local_path: str | Path, key: str, on_progress: Progress = silent) -> ArtifactRef: ...
    def put_tree(self, local_dir: str | Path, key_prefix: str, on_progress: Progress = silent) -> list[ArtifactRef]: ...
    def put_shards(self, local_dir: str | Path, key_prefix: str, shard_bytes: int,
                   on_progress: Progress = silent) -> tuple[dict, dict]: ...
    def get_file(self, ref_or_uri: ArtifactRef | str, dest: str | Path | None = None, on_progress: Progress = silent) -> Path: ...
    def get_tree(self, uri_prefix: str, dest: str | Path, on_progress: Progress = silent) -> Path: ...
    def exists(self, key_or_uri: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def put_json(self, obj: Any, key: str) -> ArtifactRef: ...
    def get_json(self, ref_or_uri: ArtifactRef | str) -> Any: ...
    def get_json_versioned(self, key: str) -> tuple[Any, str | None]: ...
    def put_json_if_version(self, obj: Any, key: str, version: str | None) -> ArtifactRef | None: ...
    def write_manifest(self, refs: list[ArtifactRef], key: str) -> ArtifactRef: ...
    def read_manifest(self, ref_or_uri: ArtifactRef | str) -> dict[str, ArtifactRef]: ...


def _check_ref(ref: ArtifactRef, what: str) -> ArtifactRef:
    if not _HEX64.match(ref.sha256) or ref.size < 0:
        raise UserError(f"{what}: malformed record for {ref.uri} (sha256 must be 64 hex digits, size >= 0)")
    return ref
