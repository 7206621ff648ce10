"""Decode every image once into a uint8 array at the training size, kept on disk between runs.

Training then indexes a memory-mapped ``[N, S, S, 3]`` array instead of decoding a JPEG per step.
The cache file is keyed by the images' content fingerprint and the size, so new data or another
size builds a new cache and stale entries are never read. In the host's cache (``$KINSHIP_SCRATCH/images``) the
arrays share the data set copies' cap and least-recently-used eviction (``kinship.dataset_cache``), are decoded
once per host under a file lock, and are verified on reuse like them. An array evicted while mapped stays readable
to whoever mapped it (the kernel keeps an unlinked file until its last mapping goes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from kinship.dataset_cache import IMAGES_FOLDER, evict_host_cache, host_lock, scratch_root, verify_mode
from kinship.files import file_digest, open_regular, stream_digest, write_atomic
from kinship.images import UnreadableImage, load_face, max_image_pixels
from kinship.progress import ProgressEvent, silent

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$KINSHIP_SCRATCH/images`` (default ``~/.cache/kinship/images``), under the host cache's cap."""
    return scratch_root() / IMAGES_FOLDER


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
    root: Path | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """The ``[len(paths), size, size, 3]`` uint8 array (read-only) and index -> reason of each image that
    would not decode.

    Unusable images (corrupt, truncated, over the pixel limit, a link) are left black and listed with their
    reason (``UnreadableImage.reason`` and its subclasses'), so one decode pass both checks and caches;
    callers drop the listed indices. ``root``: the data set folder ``paths`` were listed under; each image is
    then reached from it through no link (``images.open_rgb``), whatever was swapped in since the listing.
    """
    evict = cache_dir is None  # the host's shared cache is kept under the cap; a caller's own folder is not
    cache_dir = Path(cache_dir or default_cache_dir())
    key = cache_key(fingerprint, paths, size)
    array_path = cache_dir / f"{key}.npy"
    meta_path = array_path.with_suffix(".json")
    with host_lock(cache_dir, key):  # one decode per host: a concurrent flow waits, then reuses
        meta = _verified_meta(array_path, meta_path)
        if meta is not None:
            on_progress(ProgressEvent("decode images (cached)", len(paths), len(paths)))
            write_atomic(meta_path, json.dumps({**meta, "last_used": time.time()}))
            unreadable = _reasons(meta["unreadable"])
        else:
            pixels, unreadable = decode_all(paths, size, on_progress, workers, root)
            # the array first, its sidecar last: a crash mid-write never leaves a complete-looking cache
            write_atomic(array_path, lambda handle: np.save(handle, pixels))
            sha256, nbytes = file_digest(array_path)
            write_atomic(meta_path, json.dumps({
                "images": len(paths), "size": size, "fingerprint": fingerprint, "sha256": sha256, "bytes": nbytes,
                "last_used": time.time(), "unreadable": {str(i): r for i, r in unreadable.items()}}))
    if evict:
        evict_host_cache(cache_dir.parent, keep={f"{IMAGES_FOLDER}/{key}"})
    return np.load(array_path, mmap_mode="r"), unreadable


def _verified_meta(array_path: Path, meta_path: Path) -> dict | None:
    """The sidecar of a cached array that is intact (its size, and its sha256 unless KINSHIP_CACHE_VERIFY=size),
    else None after removing both: a damaged array is decoded again, never trained on."""
    if not (array_path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    recorded = meta.get("sha256"), meta.get("bytes")
    if recorded[0] is None:  # written before digests were kept: trust it once, record its digest now
        meta.update(zip(("sha256", "bytes"), file_digest(array_path)))
        return meta
    if array_path.stat().st_size == recorded[1] and (verify_mode() == "size" or file_digest(array_path)[0] == recorded[0]):
        return meta
    log.warning("cached image array %s failed verification: decoding again", array_path)
    array_path.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
    return None


def _reasons(recorded: dict | list) -> dict[int, str]:
    # caches written before reasons were kept hold a plain list of indices
    if isinstance(recorded, list):
        return {int(index): UnreadableImage.reason for index in recorded}
    return {int(index): reason for index, reason in recorded.items()}


def decode_all(paths: Sequence[Path], size: int, on_progress=silent, workers: int | None = None,
               root: Path | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Decode ``paths`` into one uint8 array, and index -> reason of each that would not decode (with ``root``,
    a folder on the way from it that became a link is such a reason: ``images.open_rgb``).

    Pillow releases the GIL, so threads use every core. The pixel limit is read once, before any decode."""
    pixels = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    unreadable: dict[int, str] = {}
    workers = workers or min(8, os.cpu_count() or 1)
    max_pixels = max_image_pixels()

    def decode(index: int) -> int:
        try:
            pixels[index] = load_face(paths[index], size, max_pixels, root)
        except UnreadableImage as error:
            unreadable[index] = error.reason
        return index

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, _ in enumerate(pool.map(decode, range(len(paths))), start=1):
            if done % 64 == 0 or done == len(paths):
                on_progress(ProgressEvent("decode images", done, len(paths)))
    return pixels, dict(sorted(unreadable.items()))


def content_fingerprint(paths: Sequence[Path], root: Path | None = None) -> str:
    """sha256 over the bytes of ``paths`` in order: a cache key for image sets outside a Dataset.

    With ``root`` (the folder the paths were listed below) each file is opened folder by folder below it, never
    through a link (``files.open_regular``); one that cannot be opened so counts by its name alone, as the decode
    leaves it black and names it."""
    digest = hashlib.sha256()
    for path in paths:
        if root is None:
            digest.update(bytes.fromhex(file_digest(path)[0]))
            continue
        try:
            with open_regular(path, root=root) as handle:
                digest.update(bytes.fromhex(stream_digest(handle)[0]))
        except (OSError, ValueError):
            digest.update(f"unreadable:{Path(path).relative_to(root).as_posix()}".encode())
    return digest.hexdigest()
