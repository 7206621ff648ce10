"""The shared vocabulary of engines: precisions, backends, what every engine offers, the engine folder format.

An engine is a folder ``<out>/<backend>-<variant>/`` holding the pair model, its encoder and head
companions (so a test set can embed each unique image once) and ``engine.json``, the sidecar that
says which backend runs the files, at which precision, and how they were built. A folder is built
under a temporary name and renamed when complete, so a failed build never leaves anything that
looks like an engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from kinship.engines.config import BACKENDS, CALIBRATION_METHODS, check_backend_name  # noqa: F401 (vocabulary)
from kinship.errors import UserError
from kinship.files import atomic_folder

PARTS = ("pair", "encoder", "head")
SIDECAR = "engine.json"
SIDECAR_FORMAT = "kinship-engine/1"
ENGINE_SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}


@dataclass
class PhaseTimes:
    """Where one inference call's time went, in milliseconds; None where the backend cannot tell."""

    h2d_ms: float | None
    compute_ms: float
    d2h_ms: float | None
    enqueue_ms: float | None


class Engine(Protocol):
    backend: str
    precision: str
    path: Path
    image_size: int

    def run_pairs(self, img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
        """Normalised NCHW float32 pairs -> logits float32 ``[B]``."""
        ...

    def run_pairs_timed(self, img0: np.ndarray, img1: np.ndarray) -> tuple[np.ndarray, PhaseTimes]: ...

    def embed(self, images: np.ndarray) -> np.ndarray | None: ...

    def head(self, emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray | None: ...


def variant_dir(out_dir: Path, backend: str, precision: str) -> Path:
    """An engine's folder: ``<out>/<backend>-<precision>`` (``onnxruntime-int8-qdq``)."""
    return Path(out_dir) / f"{backend}-{precision}"


# An engine folder is built in ``kinship.files.atomic_folder``; ``staged_dir`` is the tests' older name for it.
staged_dir = atomic_folder


def write_sidecar(folder: Path, record: dict) -> Path:
    """Write ``engine.json`` (backend, variant, precision, image size, part files, notes) into ``folder``."""
    path = Path(folder) / SIDECAR
    payload = {"format": SIDECAR_FORMAT, **record}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def read_sidecar(engine_path: Path) -> dict | None:
    """The sidecar beside ``engine_path`` (or inside it, for a folder), or None when there is none."""
    engine_path = Path(engine_path)
    path = engine_path / SIDECAR if engine_path.is_dir() else engine_path.parent / SIDECAR
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not a readable engine sidecar: {error}") from error
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{path} is not a kinship engine sidecar (expected format {SIDECAR_FORMAT!r})")
    return record


def file_sizes(folder: Path, parts: dict[str, str]) -> dict[str, int]:
    return {part: (Path(folder) / name).stat().st_size for part, name in parts.items()}
