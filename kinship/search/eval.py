"""`kinship search-eval`: a model's family search on a data set's held-out families, beside two baselines on the
same split (random ranking, raw-pixel cosine), overall and per relationship type of the relative found.

A probe has several photos; the model's ranking fuses them (``fusion``): the mean of each photo's head logits
('scores') or the head on the mean of the photos' embeddings ('embeddings'). Both are reported, so the choice is
measured; the baselines fuse by mean of scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kinship.data import PreparedData, SplitConfig, prepare
from kinship.errors import UserError
from kinship.images import to_network_input
from kinship.progress import ProgressEvent, silent
from kinship.search.metrics import SearchReport, random_scores, search_report
from kinship.search.scoring import HeadWeights, checked, head_weights_of_model
from kinship.search.split import SearchSplit, SearchSplitConfig, search_split

FUSIONS = ("scores", "embeddings")


@dataclass(frozen=True)
class SearchEvalConfig:
    """The held-out families (the model's own validation split: ``val_fraction`` and ``seed`` as it was trained,
    or the ``held_out`` list of a families file) and how probes and gallery are drawn from them."""

    split: SearchSplitConfig = field(default_factory=SearchSplitConfig)
    val_fraction: float = 0.2
    seed: int = 0
    held_out: tuple[str, ...] = ()
    batch_size: int = 256


@dataclass
class SearchEvaluation:
    """Each ranking's report (the model under each fusion, raw pixels, random) and the split's sizes."""

    reports: dict[str, SearchReport]
    split: dict
    scorer: str

    def to_dict(self) -> dict:
        return {"split": self.split, "scorer": self.scorer,
                "rankings": {name: report.to_dict() for name, report in self.reports.items()}}


def held_out_families(path: Path) -> tuple[str, ...]:
    """The ``held_out`` list of a families JSON file (as ``kinship tune`` writes it)."""
    try:
        families = json.loads(Path(path).read_text())["held_out"]
    except FileNotFoundError:
        raise UserError(f"families file not found: {path}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a families file with a 'held_out' list ({error})") from None
    return tuple(str(f) for f in families)


def head_weights_for(scorer, model: Path) -> HeadWeights | None:
    """The head of ``model`` as numpy weights, checked against the scorer's own head; None where it does not
    decompose (the seed head, an engine folder): then the scorer's head itself is run, exactly, in batches."""
    weights = head_weights_of_model(model)
    return checked(weights, scorer.head, weights.dim if weights else 0)


def gallery_logits(scorer, weights: HeadWeights | None, probe: np.ndarray, gallery: np.ndarray,
                   batch_size: int = 4096) -> np.ndarray:
    """Exact head logits of one probe embedding against every gallery embedding."""
    if weights is not None:
        return weights.logits(probe, gallery)
    return np.concatenate([
        np.asarray(scorer.head(np.repeat(probe[None], len(gallery[s : s + batch_size]), 0).astype(np.float32),
                               np.ascontiguousarray(gallery[s : s + batch_size], dtype=np.float32))).ravel()
        for s in range(0, len(gallery), batch_size)])


def embed_rows(scorer, pixels: np.ndarray, rows: np.ndarray, batch_size: int = 256, on_progress=silent) -> np.ndarray:
    """Embeddings of ``pixels[rows]`` (uint8 NHWC), in batches, with a progress event per batch."""
    out = []
    for start in range(0, len(rows), batch_size):
        out.append(scorer.embed(to_network_input(np.asarray(pixels[rows[start : start + batch_size]]))))
        on_progress(ProgressEvent("embed images", min(start + batch_size, len(rows)), len(rows)))
    return np.concatenate(out).astype(np.float32)


def model_scores(scorer, weights: HeadWeights | None, split: SearchSplit, pixels: np.ndarray, batch_size: int = 256,
                 on_progress=silent) -> dict[str, np.ndarray]:
    """Per fusion, ``[probes, gallery]`` head logits of the model (every image embedded once)."""
    gallery = embed_rows(scorer, pixels, split.gallery, batch_size, on_progress)
    rows: dict[str, list[np.ndarray]] = {fusion: [] for fusion in FUSIONS}
    for probe in split.probes:
        photos = embed_rows(scorer, pixels, np.asarray(probe.images), batch_size)
        for fusion in FUSIONS:
            rows[fusion].append(fuse(photos, fusion, lambda p: gallery_logits(scorer, weights, p, gallery)))
    return {fusion: np.stack(scores) for fusion, scores in rows.items()}


def fuse(photos: np.ndarray, fusion: str, score) -> np.ndarray:
    """One probe's gallery scores from its photos' embeddings: mean of per-photo ``score``s, or ``score`` of the
    mean embedding (re-normalised to unit length, as the encoder's embeddings are)."""
    if fusion not in FUSIONS:
        raise UserError(f"unknown fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    if fusion == "scores":
        return np.mean([score(p) for p in photos], axis=0)
    mean = photos.mean(0)
    return score((mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32))


def pixel_scores(split: SearchSplit, pixels: np.ndarray) -> np.ndarray:
    """Raw-pixel cosine of every probe photo with every gallery image, averaged over the probe's photos."""
    gallery = _unit_rows(pixels, split.gallery)
    return np.stack([(_unit_rows(pixels, np.asarray(p.images)) @ gallery.T).mean(0) for p in split.probes])


def _unit_rows(pixels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    flat = np.asarray(pixels[rows]).reshape(len(rows), -1).astype(np.float32)
    return flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-12)


def prepare_split(data: Path, image_size: int, config: SearchEvalConfig, on_progress=silent
                  ) -> tuple[PreparedData, SearchSplit]:
    """The data set decoded at ``image_size`` and its search split on the held-out families."""
    prepared = prepare(Path(data), image_size, SplitConfig(val_fraction=config.val_fraction, seed=config.seed),
                       on_progress=on_progress)
    held_out = config.held_out or prepared.split.val
    return prepared, search_split(prepared.dataset, prepared.table, held_out, config.split)


def evaluate_search(model: Path, data: Path, config: SearchEvalConfig = SearchEvalConfig(),
                    on_progress=silent) -> SearchEvaluation:
    """The model's search metrics under each fusion, raw-pixel cosine and random ranking, on one split."""
    from kinship.inference import open_scorer

    scorer = open_scorer(Path(model))
    weights = head_weights_for(scorer, Path(model))
    prepared, split = prepare_split(data, scorer.image_size, config, on_progress)
    _, kinds = split.relevance()
    scores = model_scores(scorer, weights, split, prepared.pixels, config.batch_size, on_progress)
    reports = {f"model, mean of {fusion}": search_report(scores[fusion], kinds) for fusion in FUSIONS}
    reports["raw-pixel cosine"] = search_report(pixel_scores(split, prepared.pixels), kinds)
    reports["random"] = search_report(random_scores(kinds.shape, config.split.seed), kinds)
    name = "numpy head (decomposed, checked)" if weights else "the model's own head (exact, batched)"
    return SearchEvaluation(reports, split.summary(), name)
