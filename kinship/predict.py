"""Using a model: the Kaggle submission file, and the kinship probability of two photos."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinship.errors import UserError
from kinship.files import write_atomic
from kinship.evaluate import test_pixels
from kinship.images import load_face_for_user, to_network_input
from kinship.inference import PairScorer, open_scorer, score_image_pairs, validation_threshold
from kinship.layout import read_dataset
from kinship.metrics import sigmoid
from kinship.progress import silent

UNSCORABLE_PROBABILITY = 0.5  # a pair with an unreadable image gets "don't know", not a guess


@dataclass
class SubmissionSummary:
    path: Path
    pairs: int
    unique_images: int
    unscorable_pairs: int


def write_submission(model_path: Path, data_dir: Path, out: Path, on_progress=silent, scorer: PairScorer | None = None) -> SubmissionSummary:
    """Write ``img_pair,is_related`` (a probability) for every pair in sample_submission.csv."""
    scorer = scorer or open_scorer(model_path)
    dataset = read_dataset(Path(data_dir), verify_images=False)
    if not dataset.test_pairs:
        raise UserError(f"{data_dir}: no test pairs to score (sample_submission.csv missing or empty)")
    names = sorted({name for p in dataset.test_pairs for name in (p.left, p.right)})
    pixels, unreadable = test_pixels(dataset.root, names, scorer.image_size, on_progress)
    index = {name: i for i, name in enumerate(names)}
    left = np.asarray([index[p.left] for p in dataset.test_pairs])
    right = np.asarray([index[p.right] for p in dataset.test_pairs])
    probabilities = sigmoid(score_image_pairs(scorer, pixels, left, right))
    bad = np.isin(left, list(unreadable)) | np.isin(right, list(unreadable))
    probabilities[bad] = UNSCORABLE_PROBABILITY
    _write_csv_atomic(Path(out), [(f"{p.left}-{p.right}", prob) for p, prob in zip(dataset.test_pairs, probabilities)])
    return SubmissionSummary(Path(out), len(dataset.test_pairs), len(names), int(bad.sum()))


def _write_csv_atomic(path: Path, rows) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["img_pair", "is_related"])
    writer.writerows((pair, f"{prob:.6f}") for pair, prob in rows)
    write_atomic(path, text.getvalue())


@dataclass
class Prediction:
    probability: float
    logit: float
    threshold: float | None  # validation threshold on the logit, when the model records one
    related: bool | None


def predict_pair(model_path: Path, image_a: Path, image_b: Path, scorer: PairScorer | None = None) -> Prediction:
    """The probability that the people in two photos are blood relatives."""
    scorer = scorer or open_scorer(model_path)
    a = to_network_input(load_face_for_user(image_a, scorer.image_size)[None])
    b = to_network_input(load_face_for_user(image_b, scorer.image_size)[None])
    logit = float(scorer.pair(a, b)[0])
    threshold = validation_threshold(scorer)
    return Prediction(float(sigmoid(logit)), logit, threshold, None if threshold is None else logit >= threshold)
