"""Queries against an index: one person's photos in, the gallery ranked by the trained pair head out.

The gallery is loaded from the index's shards (each verified against the manifest), the probe photos embedded
with the model stored in the index, and the ranking made by ``scoring.GalleryScorer``'s fast path (exact head on a
shortlist) or, with ``exact``, the head over every image. Several photos are fused by ``FUSION``: the measured
choice (README, "Family search").
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kinship.errors import UserError
from kinship.progress import ProgressEvent, silent
from kinship.search.index import MANIFEST, load_shard, open_index_store, read_manifest
from kinship.search.scoring import FastConfig, GalleryScorer, HeadWeights, best, checked, head_weights_of_model

# The head on the mean of a probe's photo embeddings. On the four styles' search splits it matched the mean of the
# photos' logits within 0.001 mAP either way (README, "Family search"), and it costs one query, not one per photo.
FUSION = "embeddings"


@dataclass
class Hit:
    key: str
    person: str
    family: str
    logit: float


@dataclass
class SearchResult:
    """The ranked gallery images for one probe, the gallery's size and how they were scored."""

    hits: list[Hit]
    gallery: int
    method: str
    probe_photos: int = 0

    def to_dict(self) -> dict:
        return {"gallery": self.gallery, "method": self.method, "probe_photos": self.probe_photos,
                "hits": [h.__dict__ for h in self.hits]}


@dataclass
class LoadedIndex:
    """An index in memory: embeddings, per-image records, the model file and its scorer, the head's weights."""

    embeddings: np.ndarray
    records: dict[str, list[str]]
    model: Path
    scorer: object
    weights: HeadWeights | None
    fast: GalleryScorer | None = field(default=None)


def load_index(uri: str, model: Path | None = None, config: FastConfig = FastConfig(), on_progress=silent
               ) -> LoadedIndex:
    """Read an index (every shard verified), its model (or ``model``), and prepare the fast path."""
    from kinship.inference import open_scorer

    store = open_index_store(uri)
    manifest = read_manifest(store)
    if manifest is None:
        raise UserError(f"no index at {uri} (no {MANIFEST}): build it with `kinship index build`")
    if not manifest.get("complete"):
        raise UserError(f"{store.uri(MANIFEST)}: the build did not finish; run `kinship index build` again to resume")
    parts, records = [], {}
    for done, entry in enumerate(manifest["shards"], start=1):
        embeddings, shard_records = load_shard(store, entry)
        parts.append(embeddings)
        for name, values in shard_records.items():
            records.setdefault(name, []).extend(values)
        on_progress(ProgressEvent("load shards", done, len(manifest["shards"])))
    if not parts:
        raise UserError(f"{uri}: the index holds no images")
    model = Path(model) if model else _fetch_model(store, manifest)
    scorer = open_scorer(model)
    gallery = np.concatenate(parts)
    weights = head_weights_of_model(model)
    weights = checked(weights, scorer.head, gallery.shape[1]) if weights else None
    fast = GalleryScorer(gallery, weights, config) if weights is not None else None
    return LoadedIndex(gallery, records, model, scorer, weights, fast)


def _fetch_model(store, manifest: dict) -> Path:
    """The index's model files in one local folder (an ONNX model needs its encoder and head beside it)."""
    from kinship.store import ArtifactRef

    folder = Path(tempfile.mkdtemp(prefix="kinship-index-model-"))
    paths = [store.get_file(ArtifactRef.from_dict(ref), f"{folder}/") for ref in manifest["model"]]
    return paths[0]


def embed_photos(index: LoadedIndex, photos: Sequence[Path]) -> np.ndarray:
    """The probe photos' embeddings (a missing or unreadable photo is a one-line error naming it)."""
    from kinship.images import load_face_for_user, to_network_input

    faces = np.stack([load_face_for_user(Path(p), index.scorer.image_size) for p in photos])
    return np.asarray(index.scorer.embed(to_network_input(faces)), dtype=np.float32)


def rank(index: LoadedIndex, photos: np.ndarray, top: int, exact: bool = False, fusion: str = FUSION
         ) -> tuple[np.ndarray, np.ndarray, str]:
    """The ``top`` gallery rows for the probe embeddings ``photos`` (fused by ``fusion``), their logits, the method."""
    from kinship.search.eval import fuse, gallery_logits

    if fusion == "embeddings":
        photos = fuse(photos, "embeddings", lambda p: p)[None]
    top = min(top, len(index.embeddings))
    if exact or index.fast is None:
        logits = np.mean([gallery_logits(index.scorer, index.weights, p, index.embeddings) for p in photos], axis=0)
        rows, scores = best(np.arange(len(logits)), logits, top)
        return rows, scores, "exact head over the whole gallery"
    # Each photo's shortlist, then every photo's exact logit on their union: the fused score is exact there.
    config = index.fast.config
    shortlist = np.unique(np.concatenate([_shortlist(index.fast, p, max(config.shortlist, top)) for p in photos]))
    logits = np.mean([index.weights.logits(p, index.embeddings[shortlist]) for p in photos], axis=0)
    rows, scores = best(shortlist, logits, top)
    return rows, scores, (f"exact head on a {config.stage} shortlist of {config.shortlist} per photo"
                          f"{f' (PCA {config.rank})' if config.rank else ''}")


def _shortlist(fast: GalleryScorer, probe: np.ndarray, size: int) -> np.ndarray:
    first = fast.first_stage(probe)
    size = min(size, len(first))
    return np.argpartition(-first, size - 1)[:size] if size < len(first) else np.arange(len(first))


def search_index(uri: str, photos: Sequence[Path], top: int = 50, model: Path | None = None, exact: bool = False,
                 on_progress=silent) -> SearchResult:
    """Rank the gallery of the index at ``uri`` for the person in ``photos``."""
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    index = load_index(uri, model, on_progress=on_progress)
    rows, logits, method = rank(index, embed_photos(index, photos), top, exact)
    return SearchResult(hits_of(index, rows, logits), len(index.embeddings), method, len(photos))


def hits_of(index: LoadedIndex, rows: np.ndarray, logits: np.ndarray) -> list[Hit]:
    return [Hit(index.records["keys"][r], index.records["person"][r], index.records["family"][r], float(s))
            for r, s in zip(rows, logits)]
