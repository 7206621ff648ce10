"""Champion and challenger on the same pairs: a paired bootstrap over families of the difference of their AUCs.

Two validation AUCs measured on different families are not comparable (a harder split blocks a better model for
ever, an easier one promotes a worse one), so at promotion both models score the **same** held-out pairs, with
raw-pixel cosine on those pairs as the floor. Pairs of one family share photos and people, so they are not
independent draws: the bootstrap resamples whole families (a family drawn twice contributes its pairs twice), and
each replicate scores both models on the same resample, so what they have in common (a hard family) cancels out
of the difference. The challenger is promoted only when the lower bound of the difference's interval is above 0
and it still beats raw pixels by ``required_margin``.

Plain numpy, and no store: the caller scores the pairs (``kinship.inference``) and hands the arrays in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from kinship.baseline import REQUIRED_MARGIN
from kinship.errors import UserError
from kinship.metrics import roc_auc

DEFAULT_LEVEL = 0.95
DEFAULT_REPLICATES = 1000  # percentile bounds of a 95 % interval want about a thousand replicates (Efron & Tibshirani)
ALL_TYPES = "all"


@dataclass(frozen=True)
class PairedScores:
    """Per-pair arrays, one entry per held-out pair, all in the same order.

    ``family``: the family the pair is resampled with (for an unrelated pair, its first person's family);
    ``relationship``: the type of a related pair (anything for an unrelated one: it is not read).
    """

    family: np.ndarray
    label: np.ndarray
    relationship: np.ndarray
    champion: np.ndarray
    challenger: np.ndarray
    pixels: np.ndarray

    @classmethod
    def from_lists(cls, family, label, relationship, champion, challenger, pixels) -> "PairedScores":
        """Arrays from any sequences; lengths that differ or a set without both labels is one line."""
        arrays = cls(np.asarray(family).astype(str), np.asarray(label).astype(bool), np.asarray(relationship).astype(str),
                     *(np.asarray(scores, dtype=np.float64) for scores in (champion, challenger, pixels)))
        lengths = {len(value) for value in asdict(arrays).values()}
        if len(lengths) != 1:
            raise UserError(f"paired scores: arrays of different lengths {sorted(lengths)}")
        if arrays.label.all() or not arrays.label.any():
            raise UserError("paired scores: the held-out pairs need both related and unrelated pairs")
        return arrays


@dataclass(frozen=True)
class ComparisonRow:
    """One row of the decision table: both AUCs on the same pairs, the difference and its bootstrap interval."""

    relationship: str
    pairs: int
    families: int
    champion_auc: float
    challenger_auc: float
    pixel_auc: float
    difference: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedDecision:
    """Whether the challenger replaces the champion, why (one line), and the table behind it."""

    promote: bool
    reason: str
    level: float
    required_margin: float
    replicates: int
    seed: int
    rows: tuple[ComparisonRow, ...]

    @property
    def overall(self) -> ComparisonRow:
        return self.rows[0]

    def table(self) -> list[dict]:
        """The rows as dicts (a Prefect table artifact, the run report), the overall row first."""
        return [{key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(row).items()}
                for row in self.rows]

    def to_dict(self) -> dict:
        """Everything, JSON-ready: what a run manifest or the champion history records."""
        return {"promote": self.promote, "reason": self.reason, "level": self.level,
                "required_margin": self.required_margin, "replicates": self.replicates, "seed": self.seed,
                "rows": self.table()}


def compare(scores: PairedScores, level: float = DEFAULT_LEVEL, replicates: int = DEFAULT_REPLICATES,
            seed: int = 0) -> tuple[ComparisonRow, ...]:
    """The overall row, then one per relationship type (its related pairs against every unrelated pair)."""
    if not 0.0 < level < 1.0:
        raise UserError(f"level must be between 0 and 1, not {level}")
    rows = [_row(ALL_TYPES, scores, level, replicates, seed)]
    for kind in sorted(set(scores.relationship[scores.label])):
        keep = ~scores.label | (scores.relationship == kind)
        rows.append(_row(kind, _subset(scores, keep), level, replicates, seed))
    return tuple(rows)


def decide(scores: PairedScores, level: float = DEFAULT_LEVEL, required_margin: float = REQUIRED_MARGIN,
           replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> PairedDecision:
    """Promote only when the lower bound of the AUC difference (challenger - champion) is above 0 and the
    challenger beats raw pixels on the same pairs by at least ``required_margin``."""
    rows = compare(scores, level, replicates, seed)
    row = rows[0]
    interval = f"{row.difference:+.4f} ({level:.0%} interval {row.low:+.4f} to {row.high:+.4f}, {row.families} families)"
    over_pixels = row.challenger_auc - row.pixel_auc
    if over_pixels < required_margin:
        promote, reason = False, (f"the new model's AUC {row.challenger_auc:.4f} is {over_pixels:+.4f} over raw pixels "
                                  f"on the same pairs, less than the required {required_margin}: champion kept")
    elif not row.low > 0:
        promote, reason = False, (f"AUC {row.challenger_auc:.4f} against the champion's {row.champion_auc:.4f} on the "
                                  f"same pairs: difference {interval} is not clear of 0: champion kept")
    else:
        promote, reason = True, (f"AUC {row.challenger_auc:.4f} against the champion's {row.champion_auc:.4f} on the "
                                 f"same pairs: difference {interval}: promoted")
    return PairedDecision(promote, reason, level, required_margin, replicates, seed, rows)


def _row(kind: str, scores: PairedScores, level: float, replicates: int, seed: int) -> ComparisonRow:
    champion, challenger = roc_auc(scores.label, scores.champion), roc_auc(scores.label, scores.challenger)
    low, high = _interval(scores, level, replicates, seed)
    return ComparisonRow(kind, int(len(scores.label)), int(len(set(scores.family))), champion, challenger,
                         roc_auc(scores.label, scores.pixels), challenger - champion, low, high)


def _interval(scores: PairedScores, level: float, replicates: int, seed: int) -> tuple[float, float]:
    """Percentile interval of the AUC difference over resamples of whole families, the same for both models."""
    families, index = np.unique(scores.family, return_inverse=True)
    members = [np.flatnonzero(index == i) for i in range(len(families))]
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(replicates):
        chosen = np.concatenate([members[i] for i in rng.integers(0, len(families), len(families))])
        labels = scores.label[chosen]
        if labels.all() or not labels.any():
            continue  # a resample without both kinds of pair has no AUC: drawn again by the next replicate
        differences.append(roc_auc(labels, scores.challenger[chosen]) - roc_auc(labels, scores.champion[chosen]))
    if not differences:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(np.asarray(differences), [tail, 1.0 - tail])
    return float(low), float(high)


def _subset(scores: PairedScores, keep: np.ndarray) -> PairedScores:
    return PairedScores(*(value[keep] for value in (scores.family, scores.label, scores.relationship,
                                                    scores.champion, scores.challenger, scores.pixels)))
