"""Search metrics as RFIW Track 3 reports them: mean average precision and CMC Rank@k, overall and per
relationship type. Plain numpy over a score matrix, so every scorer (a model, raw pixels, random) is judged
by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RANKS = (1, 5, 10, 20, 50)


def average_precision(relevant_in_rank_order: np.ndarray) -> float:
    """AP of one ranking: the mean, over relevant items, of the precision at that item's rank (0 if none)."""
    hits = np.asarray(relevant_in_rank_order, dtype=bool)
    if not hits.any():
        return 0.0
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def first_hit_rank(relevant_in_rank_order: np.ndarray) -> int:
    """1-based rank of the first relevant item (a large number when there is none)."""
    hits = np.flatnonzero(np.asarray(relevant_in_rank_order, dtype=bool))
    return int(hits[0]) + 1 if len(hits) else np.iinfo(np.int32).max


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices from the highest score down; ties keep gallery order (a stable sort, so results are repeatable)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


@dataclass
class SearchMetrics:
    """mAP and CMC over a set of probes (``rank_at[k]``: share of probes with a relative in the top k)."""

    probes: int
    mean_ap: float
    rank_at: dict[int, float]

    def to_dict(self) -> dict:
        return {"probes": self.probes, "mAP": self.mean_ap, **{f"rank@{k}": v for k, v in self.rank_at.items()}}


@dataclass
class SearchReport:
    """Metrics over every probe and per relationship type of the relative found."""

    overall: SearchMetrics
    by_type: dict[str, SearchMetrics] = field(default_factory=dict)
    gallery: int = 0

    def to_dict(self) -> dict:
        return {"gallery": self.gallery, **self.overall.to_dict(),
                "by_type": {kind: m.to_dict() for kind, m in self.by_type.items()}}


def search_metrics(scores: np.ndarray, relevant: np.ndarray, ranks: tuple[int, ...] = RANKS) -> SearchMetrics:
    """mAP and Rank@k of ``scores`` ``[probes, gallery]`` against the boolean ``relevant`` of the same shape.

    A probe without any relevant image is left out (it has nothing to find); ``mask`` in ``search_report``
    uses that to score one relationship type at a time.
    """
    aps, firsts = [], []
    for row_scores, row_relevant in zip(np.asarray(scores), np.asarray(relevant, dtype=bool)):
        if not row_relevant.any():
            continue
        ordered = row_relevant[rank_order(row_scores)]
        aps.append(average_precision(ordered))
        firsts.append(first_hit_rank(ordered))
    firsts_array = np.asarray(firsts)
    return SearchMetrics(probes=len(aps), mean_ap=float(np.mean(aps)) if aps else 0.0,
                         rank_at={k: float(np.mean(firsts_array <= k)) if len(firsts) else 0.0 for k in ranks})


def search_report(scores: np.ndarray, kinds: np.ndarray, ranks: tuple[int, ...] = RANKS) -> SearchReport:
    """The overall metrics and, per relationship type, the metrics with only that type's relatives relevant.

    ``kinds`` ``[probes, gallery]`` holds the relationship type of each relevant image ('' for the others). For a
    type, the other relatives' images are taken out of the ranking (scored -inf and not relevant, so they sit last
    and count for nothing): finding a grandparent is judged by where the grandparent ranks among non-relatives.
    """
    kinds = np.asarray(kinds, dtype=object)
    relevant = kinds != ""
    scores = np.asarray(scores, dtype=np.float64)
    by_type = {}
    for kind in sorted(set(kinds[relevant].tolist())):
        of_kind = kinds == kind
        masked = np.where(relevant & ~of_kind, -np.inf, scores)
        by_type[kind] = search_metrics(masked, of_kind, ranks)
    return SearchReport(search_metrics(scores, relevant, ranks), by_type, gallery=scores.shape[1])


def random_scores(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """The random baseline: every gallery image an independent uniform score."""
    return np.random.default_rng(seed).random(shape)
