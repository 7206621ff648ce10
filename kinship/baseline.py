"""The raw-pixel baseline: how far cosine similarity of pixels gets without any learning.

It sets the bar a trained model must clear, and tells whether a data set is too easy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kinship.data import PreparedData
from kinship.metrics import verification_report

BASELINE_SIZE = 64  # the pixels compared; larger sizes change the AUC by < 0.01 on the synthetic set
# A model must beat raw-pixel cosine on the same validation pairs by this much to count as having learnt
# anything: below it, it is flagged everywhere it is reported and never promoted to champion.
REQUIRED_MARGIN = 0.02


@dataclass
class BaselineResult:
    auc: float
    accuracy: float
    tar_at_far_1e2: float
    pairs: int
    val_families: int
    image_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def pixel_cosine(pixels: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosine similarity of the flattened raw RGB pixels of each (left, right) image pair."""
    a = pixels[left].reshape(len(left), -1).astype(np.float32)
    b = pixels[right].reshape(len(right), -1).astype(np.float32)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def pixel_baseline(prepared: PreparedData) -> BaselineResult:
    """Score the validation pairs of ``prepared`` by raw-pixel cosine similarity."""
    pairs = prepared.val_pairs
    scores = pixel_cosine(prepared.pixels, pairs.left, pairs.right)
    report = verification_report(pairs.label, scores, logits_are_scores=True)
    return BaselineResult(
        auc=report.auc,
        accuracy=report.accuracy,
        tar_at_far_1e2=report.tar_at_far_1e2,
        pairs=report.pairs,
        val_families=len(prepared.split.val),
        image_size=prepared.image_size,
    )


@dataclass(frozen=True)
class BaselineComparison:
    """A model's validation AUC beside raw-pixel cosine on the same pairs."""

    model_auc: float
    pixel_auc: float

    @property
    def margin(self) -> float:
        return self.model_auc - self.pixel_auc

    @property
    def beats_baseline(self) -> bool:
        return self.margin >= REQUIRED_MARGIN

    def sentence(self) -> str:
        """One line for tables, logs and reports; says plainly when the model has not learnt enough."""
        verdict = "" if self.beats_baseline else f": FLAGGED, not {REQUIRED_MARGIN} above raw pixels"
        return (f"validation AUC {self.model_auc:.4f} vs raw-pixel cosine {self.pixel_auc:.4f} "
                f"({self.margin:+.4f}{verdict})")

    def to_dict(self) -> dict:
        return {"pixel_baseline_auc": self.pixel_auc, "margin_over_baseline": self.margin,
                "beats_baseline": self.beats_baseline, "required_margin": REQUIRED_MARGIN}
