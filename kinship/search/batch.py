"""A list of probes against an index (the ``kinship/search`` deployment): a ranked CSV in the store and, when the
probes name their relatives, the metrics.

The probes file is a CSV with a header: ``probe`` (an id), ``image`` (a photo's path below ``images``), and an
optional ``relatives`` (person ids in the index, ';'-separated, on any of the probe's rows). A probe with several
rows has several photos, fused as ``kinship search`` fuses them. With relatives, AP and Rank@k are computed on the
returned top list: AP over the top ``top`` (normalised by every relevant image in the gallery, so a relative left
out of the list costs what it should), Rank@k for k up to ``top``.
"""

from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinship.errors import UserError
from kinship.progress import ProgressEvent, silent
from kinship.search.metrics import RANKS, average_precision, first_hit_rank


@dataclass(frozen=True)
class BatchSearchConfig:
    """The index, the probes CSV, where its photos are (a folder or a pushed data set), where results go."""

    index: str
    probes: str
    images: str
    out: str
    top: int = 50


@dataclass
class BatchSearchResult:
    ranked_csv: str
    probes: int
    metrics: dict | None

    def to_dict(self) -> dict:
        return {"ranked_csv": self.ranked_csv, "probes": self.probes, "metrics": self.metrics}


def read_probes(path: Path, images: Path) -> dict[str, dict]:
    """Probe id -> {photos: [paths], relatives: set of person ids}; a file without the columns is one line."""
    if not path.is_file():
        raise UserError(f"probes file not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"probe", "image"} <= set(reader.fieldnames or ()):
            raise UserError(f"{path}: the header needs 'probe' and 'image' columns (got {reader.fieldnames})")
        probes: dict[str, dict] = {}
        for row in reader:
            entry = probes.setdefault(row["probe"], {"photos": [], "relatives": set()})
            entry["photos"].append(images / row["image"])
            entry["relatives"].update(r for r in (row.get("relatives") or "").split(";") if r)
    if not probes:
        raise UserError(f"{path}: no probes listed")
    return probes


def run_batch(config: BatchSearchConfig, on_progress=silent) -> BatchSearchResult:
    """Rank the index's gallery for every probe; write ``ranked.csv`` (and ``metrics.json``) under ``config.out``."""
    from kinship.search.index import local_images, open_index_store
    from kinship.search.query import embed_photos, hits_of, load_index, rank

    probes = read_probes(_local_file(config.probes), local_images(config.images, on_progress))
    index = load_index(config.index, on_progress=on_progress)
    rows, aps, firsts = [], [], []
    for done, (probe, entry) in enumerate(sorted(probes.items()), start=1):
        order, logits, _ = rank(index, embed_photos(index, entry["photos"]), config.top)
        hits = hits_of(index, order, logits)
        rows.extend((probe, i + 1, h.key, h.person, h.family, f"{h.logit:.6f}") for i, h in enumerate(hits))
        if entry["relatives"]:
            relevant = np.asarray([h.person in entry["relatives"] for h in hits])
            in_gallery = sum(p in entry["relatives"] for p in index.records["person"])
            aps.append(average_precision(relevant) * relevant.sum() / max(in_gallery, 1))
            firsts.append(first_hit_rank(relevant))
        on_progress(ProgressEvent("search probes", done, len(probes)))
    metrics = None
    if aps:
        firsts_array = np.asarray(firsts)
        metrics = {"probes": len(aps), f"mAP@{config.top}": float(np.mean(aps)),
                   **{f"rank@{k}": float(np.mean(firsts_array <= k)) for k in RANKS if k <= config.top}}
    store = open_index_store(config.out, create=True)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(("probe", "rank", "image", "person", "family", "logit"))
    writer.writerows(rows)
    with tempfile.TemporaryDirectory(prefix="kinship-search-") as folder:
        path = Path(folder) / "ranked.csv"
        path.write_text(text.getvalue(), encoding="utf-8")
        ref = store.put_file(path, "ranked.csv")
    if metrics is not None:
        store.put_json(metrics, "metrics.json")
    return BatchSearchResult(ref.uri, len(probes), metrics)


def _local_file(location: str) -> Path:
    """A local path for ``location``: itself, or a verified download of a store object (``s3://...``)."""
    if "://" not in location:
        return Path(location)
    from kinship.store import StoreSettings, parse_uri, store_from_uri

    loc = parse_uri(location)
    parent = location.rsplit("/", 1)[0]
    return store_from_uri(parent, StoreSettings.from_env()).get_file(location) if loc else Path(location)
