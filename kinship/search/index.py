"""A family-search index: a gallery's embeddings in shards in the store (or a folder), with a manifest.

Layout under the index's URI::

    index.json                 the manifest (format ``kinship-index/1``), written after every shard
    model/<file>               the model the gallery was embedded with (a query embeds its probe with it)
    shards/<n>-<sha16>.npz     ``embeddings`` [n, D] float32 and ``keys`` [n], named by content, never rewritten

The manifest lists every image (key, person, family when the path says it, sha256 of the image file, shard,
row) and every shard's ref. A rebuild reads it first: an image whose key and digest are unchanged, embedded by
the same model, in a shard that downloads intact (its sha256 checked against the manifest, bypassing this host's
cache) is not embedded again; everything else is. Because the manifest is rewritten after each shard, a build
stopped half way resumes with the images it had not reached. Unreadable images are counted and named in the
manifest, never fatal. Shards no manifest names any more are deleted at the end.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from kinship.errors import UserError
from kinship.files import file_digest
from kinship.progress import ProgressEvent, silent

FORMAT = "kinship-index/1"
MANIFEST = "index.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
_FAMILY, _MEMBER = re.compile(r"^F\d+$"), re.compile(r"^MID\d+$")


@dataclass(frozen=True)
class IndexBuildConfig:
    """What to embed (``images``: a folder, or a data set pushed with ``kinship data push``), with which model, where
    the index goes (``out``: ``s3://BUCKET/indexes/NAME`` or a local folder) and how many images a shard holds."""

    model: str
    images: str
    out: str
    shard_images: int = 4096
    batch_size: int = 128


@dataclass
class IndexBuildResult:
    """What a build did: images in the index, embedded now, reused, shards written and kept, images left out."""

    index: str
    images: int
    embedded: int
    reused: int
    shards_written: int
    shards_kept: int
    damaged_shards: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"index": self.index, "images": self.images, "embedded": self.embedded, "reused": self.reused,
                "shards_written": self.shards_written, "shards_kept": self.shards_kept,
                "damaged_shards": self.damaged_shards, "bad_images": len(self.bad), "bad": self.bad}


@dataclass(frozen=True)
class GalleryImage:
    """One image to index: its key (path below the images' root), owner when the path says so, file digest."""

    key: str
    path: Path
    sha256: str
    person: str
    family: str


def open_index_store(uri: str, fresh_cache: bool = False, create: bool = False):
    """The store rooted at an index: ``s3://...`` or a local folder (plain path or ``file://``; made when ``create``,
    else a missing one is a one-line error). With
    ``fresh_cache`` every read downloads and verifies the stored object itself, never this host's cached copy:
    a build must find a damaged shard in the store, not serve around it."""
    from kinship.store import LocalStore, StoreSettings, store_from_uri

    settings = StoreSettings.from_env()
    if fresh_cache:
        settings = replace(settings, scratch=Path(tempfile.mkdtemp(prefix="kinship-index-")))
    if "://" in uri:
        return store_from_uri(uri.rstrip("/"), settings)
    if create:
        Path(uri).mkdir(parents=True, exist_ok=True)
    elif not Path(uri).is_dir():
        raise UserError(f"no index at {uri} (no such folder)")
    return LocalStore(Path(uri).resolve(), replace(settings, prefix=""))


def owner_of(key: str) -> tuple[str, str]:
    """(person, family) from an RFIW-style key ``.../FXXXX/MIDn/photo.jpg``; ('', '') when the path does not say."""
    parts = PurePosixPath(key).parts
    if len(parts) >= 3 and _FAMILY.match(parts[-3]) and _MEMBER.match(parts[-2]):
        return f"{parts[-3]}/{parts[-2]}", parts[-3]
    return "", ""


def list_images(root: Path, on_progress=silent) -> list[GalleryImage]:
    """Every image file below ``root`` (by suffix; links and special files are never followed), with its digest."""
    if not root.is_dir():
        raise UserError(f"images folder not found: {root}")
    found = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if name.lower().endswith(IMAGE_SUFFIXES) and path.is_file() and not path.is_symlink():
                found.append(path)
    images = []
    for done, path in enumerate(found, start=1):
        key = path.relative_to(root).as_posix()
        images.append(GalleryImage(key, path, file_digest(path)[0], *owner_of(key)))
        if done % 256 == 0 or done == len(found):
            on_progress(ProgressEvent("hash images", done, len(found)))
    return images


def local_images(images: str, on_progress=silent) -> Path:
    """A folder of the images: ``images`` itself, or this host's verified copy of a data set pushed to the store."""
    if images.startswith("s3://") or images.startswith("file://"):
        from kinship.pipeline import fetch_dataset

        return Path(fetch_dataset(images, on_progress=on_progress).path)
    return Path(images)


def model_digest(path: Path) -> str:
    """The model's identity: sha256 over its file(s) (an ONNX model with its encoder and head beside it)."""
    digest = hashlib.sha256()
    for part in model_files(path):
        digest.update(bytes.fromhex(file_digest(part)[0]))
    return digest.hexdigest()


def model_files(path: Path) -> list[Path]:
    """The files that make the model: the ``.pt``, or the ``.onnx`` pair model with its encoder and head."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if path.suffix == ".onnx":
        from kinship.export import companion_paths

        return list(companion_paths(path).all())
    return [path]


def read_manifest(store) -> dict | None:
    """The index's manifest, or None when there is none yet (a damaged one is a one-line error naming it)."""
    if not store.exists(MANIFEST):
        return None
    manifest = store.get_json(store.uri(MANIFEST))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{store.uri(MANIFEST)} is not a {FORMAT} index manifest")
    return manifest


RECORD_FIELDS = ("keys", "sha256", "person", "family")  # string arrays in every shard beside ``embeddings``


def load_shard(store, entry: dict) -> tuple[np.ndarray, dict[str, list[str]]]:
    """A shard's embeddings and image records (key, sha256, person, family), verified against its manifest entry:
    ``IntegrityError`` (a one-line ``UserError``) when its content is not the one the manifest recorded."""
    from kinship.store import ArtifactRef

    ref = ArtifactRef.from_dict(entry["ref"])
    path = store.get_file(ref)
    try:
        with np.load(path, allow_pickle=False) as data:
            embeddings = np.asarray(data["embeddings"], dtype=np.float32)
            records = {name: [str(v) for v in data[name]] for name in RECORD_FIELDS}
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{ref.uri}: not an index shard ({error})") from None
    if any(len(values) != len(embeddings) for values in records.values()) or len(embeddings) != entry["images"]:
        raise UserError(f"{ref.uri}: shard does not hold the images its manifest lists")
    return embeddings, records


def reusable_embeddings(store, manifest: dict | None, model_sha: str, images: Sequence[GalleryImage],
                        on_progress=silent) -> tuple[dict[str, np.ndarray], list[dict], list[str]]:
    """From the previous manifest: key -> embedding of each unchanged image in an intact shard, the shard entries
    that stay as they are (every image in them unchanged and still present), and the keys of damaged shards."""
    from kinship.store import IntegrityError

    if manifest is None or manifest.get("model_sha256") != model_sha:
        return {}, [], []
    digest_now = {image.key: image.sha256 for image in images}
    reused, kept, damaged = {}, [], []
    shards = manifest.get("shards", [])
    for done, entry in enumerate(shards, start=1):
        try:
            embeddings, records = load_shard(store, entry)
        except (IntegrityError, UserError):
            damaged.append(entry["ref"]["key"])  # rebuilt from its images below: never used
            continue
        valid = [digest_now.get(k) == d for k, d in zip(records["keys"], records["sha256"])]
        reused.update({k: row for k, row, ok in zip(records["keys"], embeddings, valid) if ok})
        if all(valid):
            kept.append({**entry, "keys": records["keys"]})
        on_progress(ProgressEvent("check shards", done, len(shards)))
    return reused, kept, damaged


def build_index(config: IndexBuildConfig, on_progress=silent) -> IndexBuildResult:
    """Embed the images of ``config.images`` into the index at ``config.out``, reusing what a previous (or
    interrupted) build left intact; the manifest is rewritten after every shard, so a stop loses one shard at most."""
    model = Path(config.model)
    model_sha = model_digest(model)
    store = open_index_store(config.out, fresh_cache=True, create=True)
    images = list_images(local_images(config.images, on_progress), on_progress)
    manifest = read_manifest(store)
    reused, kept, damaged = reusable_embeddings(store, manifest, model_sha, images, on_progress)
    kept_keys = {key for entry in kept for key in entry["keys"]}
    pending = [image for image in images if image.key not in kept_keys]
    scorer = _embedder(model, pending, reused)
    state = {"format": FORMAT, "model_sha256": model_sha, "model": _store_model(store, model, manifest, model_sha),
             "image_size": getattr(scorer, "image_size", None), "shards": [_entry(e) for e in kept], "bad": {},
             "complete": False}
    written = embedded = 0
    for start in range(0, len(pending), config.shard_images):
        chunk = pending[start : start + config.shard_images]
        rows, fresh, bad = _embed_chunk(scorer, chunk, reused, config.batch_size)
        state["bad"].update(bad)
        embedded += fresh
        good = [image for image in chunk if image.key not in bad]
        if good:
            state["shards"].append(_write_shard(store, len(state["shards"]), good, rows))
            written += 1
        store.put_json(state, MANIFEST)
        on_progress(ProgressEvent("embed gallery", min(start + config.shard_images, len(pending)), len(pending),
                                  {"embedded": embedded}))
    state["complete"] = True
    store.put_json(state, MANIFEST)
    _remove_unlisted_shards(store, state)
    total = sum(entry["images"] for entry in state["shards"])
    return IndexBuildResult(config.out, total, embedded, total - embedded, written, len(kept), damaged,
                            state["bad"])


def _entry(entry: dict) -> dict:
    return {"ref": entry["ref"], "images": entry["images"]}


def _embedder(model: Path, pending: list[GalleryImage], reused: dict):
    """The model's scorer, opened only when some image needs embedding (a no-op rebuild loads no model)."""
    if all(image.key in reused for image in pending):
        return None
    from kinship.inference import open_scorer

    return open_scorer(model)


def _embed_chunk(scorer, chunk: list[GalleryImage], reused: dict, batch_size: int
                 ) -> tuple[dict[str, np.ndarray], int, dict[str, str]]:
    """Embeddings of one shard's images (reused where possible), how many were embedded now, and the unreadable."""
    from kinship.images import UnreadableImage, load_face, to_network_input

    rows = {image.key: reused[image.key] for image in chunk if image.key in reused}
    todo = [image for image in chunk if image.key not in reused]
    bad, fresh = {}, 0
    for start in range(0, len(todo), batch_size):
        faces, keys = [], []
        for image in todo[start : start + batch_size]:
            try:
                faces.append(load_face(image.path, scorer.image_size))
                keys.append(image.key)
            except UnreadableImage as error:
                bad[image.key] = error.reason
        if faces:
            embeddings = np.asarray(scorer.embed(to_network_input(np.stack(faces))), dtype=np.float32)
            rows.update(zip(keys, embeddings))
            fresh += len(keys)
    return rows, fresh, bad


def _write_shard(store, number: int, images: list[GalleryImage], rows: dict[str, np.ndarray]) -> dict:
    """Write one shard (named by its content, so an existing shard is never overwritten) and return its entry."""
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=np.stack([rows[image.key] for image in images]).astype(np.float32),
             keys=np.asarray([i.key for i in images]), sha256=np.asarray([i.sha256 for i in images]),
             person=np.asarray([i.person for i in images]), family=np.asarray([i.family for i in images]))
    data = buffer.getvalue()
    name = f"shards/{number:05d}-{hashlib.sha256(data).hexdigest()[:16]}.npz"
    with tempfile.TemporaryDirectory(prefix="kinship-shard-") as folder:
        path = Path(folder) / Path(name).name
        path.write_bytes(data)
        ref = store.put_file(path, name)
    return {"ref": ref.to_dict(), "images": len(images)}


def _store_model(store, model: Path, manifest: dict | None, model_sha: str) -> list[dict]:
    """The model's files in the index (once per model), so a query on any host embeds its probe the same way."""
    if manifest is not None and manifest.get("model_sha256") == model_sha and manifest.get("model"):
        return manifest["model"]
    return [store.put_file(part, f"model/{part.name}").to_dict() for part in model_files(model)]


def _remove_unlisted_shards(store, state: dict) -> None:
    """Delete shards the final manifest does not name (replaced or damaged): the index holds only what it uses."""
    listed = {entry["ref"]["key"] for entry in state["shards"]}
    for key in store.list("shards/"):
        if key not in listed:
            store.delete(key)
