"""Scoring a test set two ways, timed: the two-input model on every pair, against the encoder once per
unique image and the head per pair (``kinship.inference.score_image_pairs``). Both must give the same logits."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from kinship.progress import ProgressEvent, silent


@dataclass
class ScoringComparison:
    """Wall time to score one test set both ways (median of ``repeats``, the two ways alternating)."""

    pairs: int
    unique_images: int
    batch: int
    repeats: int
    two_input_s: float
    encoder_head_s: float
    two_input_pairs_per_s: float
    encoder_head_pairs_per_s: float
    gain: float  # encoder_head_pairs_per_s / two_input_pairs_per_s
    expected_gain: float  # image encodings saved: 2 * pairs / unique_images
    max_abs_diff: float  # between the two ways' logits: they must agree

    def to_dict(self) -> dict:
        return asdict(self)


def score_two_input(engine, pixels: np.ndarray, left: np.ndarray, right: np.ndarray, batch: int) -> np.ndarray:
    """Logits from the two-input model, both images of every pair encoded (normalisation included)."""
    from kinship.images import to_network_input

    chunks = []
    for start in range(0, len(left), batch):
        img0 = to_network_input(np.asarray(pixels[left[start : start + batch]]))
        img1 = to_network_input(np.asarray(pixels[right[start : start + batch]]))
        chunks.append(engine.run_pairs(img0, img1))
    return np.concatenate(chunks).astype(np.float64)


def score_encoder_head(engine, pixels: np.ndarray, left: np.ndarray, right: np.ndarray, batch: int) -> np.ndarray:
    """Logits from embedding each unique image once, then the head per pair (``score_image_pairs``)."""
    from types import SimpleNamespace

    from kinship.inference import score_image_pairs

    halves = SimpleNamespace(embed=engine.embed, head=engine.head)
    return score_image_pairs(halves, pixels, np.asarray(left), np.asarray(right), batch_size=batch)


def bench_test_set_scoring(
    engine,
    pixels: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    batch: int = 64,
    repeats: int = 3,
    on_progress: Callable[[ProgressEvent], None] = silent,
) -> ScoringComparison:
    """Time scoring the pairs ``(left[i], right[i])`` of uint8 NHWC ``pixels`` both ways.

    The engine must offer ``embed`` and ``head`` (its encoder and head companions); an engine whose
    ``embed`` returns None cannot score the second way and raises ``ValueError``.
    """
    left, right = np.asarray(left), np.asarray(right)
    probe = np.asarray(pixels[left[:1]])
    from kinship.images import to_network_input

    if engine.embed(to_network_input(probe)) is None:
        raise ValueError(f"{getattr(engine, 'path', engine)} has no encoder/head companions to score with")
    ways = {"two_input": score_two_input, "encoder_head": score_encoder_head}
    times: dict[str, list[float]] = {name: [] for name in ways}
    logits: dict[str, np.ndarray] = {}
    for step in range(repeats):
        for name, score in ways.items():
            start = time.perf_counter()
            logits[name] = score(engine, pixels, left, right, batch)
            times[name].append(time.perf_counter() - start)
        on_progress(ProgressEvent("score test set both ways", step + 1, repeats))
    two, split = float(np.median(times["two_input"])), float(np.median(times["encoder_head"]))
    pairs, unique = len(left), len(np.unique(np.concatenate((left, right))))
    return ScoringComparison(
        pairs, unique, batch, repeats, two, split, pairs / two, pairs / split, two / split, 2 * pairs / unique,
        float(np.max(np.abs(logits["two_input"] - logits["encoder_head"]))),
    )
