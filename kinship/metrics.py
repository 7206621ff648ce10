"""Verification metrics: ROC AUC, thresholds, accuracy, loss, TAR at FAR, per relationship type.

Plain numpy so that every backend (PyTorch, ONNX Runtime, TensorRT) is scored by the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


def sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return np.where(logits >= 0, 1.0 / (1.0 + np.exp(-np.abs(logits))), np.exp(-np.abs(logits)) / (1.0 + np.exp(-np.abs(logits))))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank statistic (ties share their mean rank)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs both related and unrelated pairs")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    # each run of equal scores gets its mean rank, all runs at once (a Python loop per run made a 1000-replicate
    # bootstrap of a few hundred pairs take seconds)
    run_of = np.repeat(np.arange(len(starts)), ends - starts)
    ranks[order] = ((starts + ends - 1) / 2.0 + 1.0)[run_of]
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and the thresholds (score >= t is 'related')."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    distinct = np.flatnonzero(np.diff(sorted_scores)) if len(scores) > 1 else np.array([], dtype=int)
    cut = np.concatenate((distinct, [len(scores) - 1]))
    tps = np.cumsum(sorted_labels)[cut]
    fps = (cut + 1) - tps
    tpr = np.concatenate(([0.0], tps / max(labels.sum(), 1)))
    fpr = np.concatenate(([0.0], fps / max((~labels).sum(), 1)))
    thresholds = np.concatenate(([np.inf], sorted_scores[cut]))
    return fpr, tpr, thresholds


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises TPR - FPR (Youden's J)."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    threshold = thresholds[best]
    return float(threshold if np.isfinite(threshold) else np.max(scores) + 1e-6)


def tar_at_far(labels: np.ndarray, scores: np.ndarray, far: float) -> float:
    """True-accept rate at the largest threshold whose false-accept rate is <= ``far``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    allowed = fpr <= far + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def bce_with_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of ``logits`` against 0/1 ``labels`` (numerically stable form)."""
    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    return float(np.mean((np.asarray(scores) >= threshold) == np.asarray(labels).astype(bool)))


@dataclass
class VerificationReport:
    """Everything reported for one model on one set of labelled pairs."""

    pairs: int
    auc: float
    accuracy: float
    threshold: float
    loss: float | None
    tar_at_far_1e2: float
    accuracy_by_type: dict[str, float] = field(default_factory=dict)
    pairs_by_type: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def verification_report(
    labels: np.ndarray,
    logits: np.ndarray,
    kinds: np.ndarray | None = None,
    threshold: float | None = None,
    logits_are_scores: bool = False,
) -> VerificationReport:
    """Score labelled pairs. ``threshold`` (on the logit) defaults to Youden's J on these pairs.

    With ``logits_are_scores`` the values are similarities, not logits, and no loss is computed.
    """
    labels = np.asarray(labels).astype(np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    if threshold is None:
        threshold = youden_threshold(labels, logits)
    by_type, counts = {}, {}
    if kinds is not None:
        kinds = np.asarray(kinds)
        for kind in sorted(set(kinds.tolist())):
            mask = kinds == kind
            by_type[kind] = accuracy(labels[mask], logits[mask], threshold)
            counts[kind] = int(mask.sum())
    return VerificationReport(
        pairs=len(labels),
        auc=roc_auc(labels, logits),
        accuracy=accuracy(labels, logits, threshold),
        threshold=float(threshold),
        loss=None if logits_are_scores else bce_with_logits(labels, logits),
        tar_at_far_1e2=tar_at_far(labels, logits, 1e-2),
        accuracy_by_type=by_type,
        pairs_by_type=counts,
    )
