"""What the stages hand each other and store: the data set handle and the manifests' formats.

Light on purpose (no torch, no numpy): the orchestrating flow and the in-process runner both import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRAIN_MANIFEST_FORMAT = "kinship-train-manifest/1"
ENGINES_MANIFEST_FORMAT = "kinship-engines-manifest/1"
CHECKPOINT_FORMAT = "kinship-train-checkpoint/1"


@dataclass(frozen=True)
class DatasetHandle:
    """A data set ready on this host: where it came from, what its content is, and the local folder."""

    uri: str
    sha256: str  # sha256 of its store manifest, or the data set fingerprint for a folder used in place
    path: Path

    def identity(self) -> dict:
        """What manifests record about the data set (no local path)."""
        return {"uri": self.uri, "sha256": self.sha256}
