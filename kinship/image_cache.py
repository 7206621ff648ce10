"""Decode every image once into a uint8 array at the training size, kept on disk between runs.

Training then indexes a memory-mapped ``[N, S, S, 3]`` array instead of decoding a JPEG per step.
The cache file is keyed by the images' content fingerprint and the size, so new data or another
size builds a new cache and stale entries are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from kinship.files import file_digest, write_atomic
from kinship.images import UnreadableImage, load_face, max_image_pixels
from kinship.progress import ProgressEvent, silent


def default_cache_dir() -> Path:
    """``$KINSHIP_SCRATCH/images`` (default ``~/.cache/kinship/images``)."""
    scratch = os.environ.get("KINSHIP_SCRATCH") or Path.home() / ".cache" / "kinship"
    return Path(scratch) / "images"


def cache_key(fingerprint: str, paths: Sequence[Path], size: int) -> str:
    """A key over the data's content fingerprint, the image order and the size."""
    digest = hashlib.sha256(f"{fingerprint}|{size}|".encode())
    for path in paths:
        digest.update(str(path).encode() + b"\0")
    return digest.hexdigest()[:32]


def load_or_build(
    paths: Sequence[Path],
    size: int,
    fingerprint: str,
    cache_dir: Path | None = None,
    on_progress=silent,
    workers: int | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """The ``[len(paths), size, size, 3]`` uint8 array (read-only) and index -> reason of each image that
    would not decode.

    Unusable images (corrupt, truncated, over the pixel limit, a link) are left black and listed with their
    reason (``UnreadableImage.reason`` and its subclasses'), so one decode pass both checks and caches;
    callers drop the listed indices.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    key = cache_key(fingerprint, paths, size)
    array_path = cache_dir / f"{key}.npy"
    meta_path = array_path.with_suffix(".json")
    if array_path.exists() and meta_path.exists():
        on_progress(ProgressEvent("decode images (cached)", len(paths), len(paths)))
        return np.load(array_path, mmap_mode="r"), _reasons(json.loads(meta_path.read_text())["unreadable"])
    pixels, unreadable = decode_all(paths, size, on_progress, workers)
    meta = {"images": len(paths), "size": size, "fingerprint": fingerprint, "unreadable": {str(i): r for i, r in unreadable.items()}}
    # the array first, its sidecar last: a crash mid-write never leaves a complete-looking cache
    write_atomic(array_path, lambda handle: np.save(handle, pixels))
    write_atomic(meta_path, json.dumps(meta))
    return np.load(array_path, mmap_mode="r"), unreadable


def _reasons(recorded: dict | list) -> dict[int, str]:
    # caches written before reasons were kept hold a plain list of indices
    if isinstance(recorded, list):
        return {int(index): UnreadableImage.reason for index in recorded}
    return {int(index): reason for index, reason in recorded.items()}


def decode_all(paths: Sequence[Path], size: int, on_progress=silent, workers: int | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Decode ``paths`` into one uint8 array, and index -> reason of each that would not decode.

    Pillow releases the GIL, so threads use every core. The pixel limit is read once, before any decode."""
    pixels = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    unreadable: dict[int, str] = {}
    workers = workers or min(8, os.cpu_count() or 1)
    max_pixels = max_image_pixels()

    def decode(index: int) -> int:
        try:
            pixels[index] = load_face(paths[index], size, max_pixels)
        except UnreadableImage as error:
            unreadable[index] = error.reason
        return index

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, _ in enumerate(pool.map(decode, range(len(paths))), start=1):
            if done % 64 == 0 or done == len(paths):
                on_progress(ProgressEvent("decode images", done, len(paths)))
    return pixels, dict(sorted(unreadable.items()))


def content_fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over the bytes of ``paths`` in order: a cache key for image sets outside a Dataset."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(bytes.fromhex(file_digest(path)[0]))
    return digest.hexdigest()
