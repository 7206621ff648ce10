"""Evaluation of any model file on the validation families (and the test pairs when labels exist)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kinship import image_cache
from kinship.data import PreparedData, prepare
from kinship.inference import PairScorer, open_scorer, score_image_pairs, validation_threshold
from kinship.metrics import VerificationReport, verification_report
from kinship.progress import silent
from kinship.train_config import TrainConfig


@dataclass
class EvaluationReport:
    model: str
    validation: VerificationReport
    recorded_threshold: float | None  # chosen at training time, if the file carries it
    test: VerificationReport | None = None  # only when the data set has test_labels.csv
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "validation": self.validation.to_dict(),
            "recorded_threshold": self.recorded_threshold,
            "test": self.test.to_dict() if self.test else None,
            "notes": self.notes,
        }


def train_config_of(scorer: PairScorer) -> TrainConfig:
    """The training configuration recorded in a checkpoint or an ONNX file (for its family split)."""
    if "train_config" in scorer.metadata:
        return TrainConfig.from_dict(scorer.metadata["train_config"])
    recorded = scorer.metadata.get("kinship.train_config")
    return TrainConfig.from_dict(json.loads(recorded)) if recorded else TrainConfig()


def evaluate_model(model_path: Path, data_dir: Path, on_progress=silent, scorer: PairScorer | None = None) -> EvaluationReport:
    """Score the validation pairs of the model's own family split; test pairs too when labelled."""
    scorer = scorer or open_scorer(model_path)
    config = train_config_of(scorer)
    prepared = prepare(Path(data_dir), scorer.image_size, config.split_config(), on_progress=on_progress)
    pairs = prepared.val_pairs
    logits = score_image_pairs(scorer, prepared.pixels, pairs.left, pairs.right)
    validation = verification_report(pairs.label, logits, pairs.kind)
    report = EvaluationReport(str(model_path), validation, validation_threshold(scorer))
    if config.folds > 1:
        report.notes.append(f"{config.folds}-fold ensemble: the other members trained on these validation families, so "
                            "this validation AUC is optimistic; the cross-validated AUC is in the run's metrics.json")
    report.test = _test_report(scorer, prepared, validation.threshold, report.notes, on_progress)
    return report


def _test_report(scorer, prepared: PreparedData, threshold: float, notes: list[str], on_progress) -> VerificationReport | None:
    pairs = [p for p in prepared.dataset.test_pairs if p.label is not None]
    if not pairs:
        notes.append("no test labels: test pairs not scored")
        return None
    names = sorted({name for p in pairs for name in (p.left, p.right)})
    pixels, unreadable = test_pixels(prepared.dataset.root, names, scorer.image_size, on_progress)
    index = {name: i for i, name in enumerate(names)}
    bad = {names[i] for i in unreadable}
    usable = [p for p in pairs if p.left not in bad and p.right not in bad]
    if len(usable) < len(pairs):
        notes.append(f"{len(pairs) - len(usable)} test pairs skipped: unreadable image")
    left = np.asarray([index[p.left] for p in usable])
    right = np.asarray([index[p.right] for p in usable])
    logits = score_image_pairs(scorer, pixels, left, right)
    labels = np.asarray([p.label for p in usable])
    kinds = np.asarray([p.kind or ("none" if p.label == 0 else "kin") for p in usable])
    return verification_report(labels, logits, kinds, threshold=threshold)


def test_pixels(root: Path, names: list[str], size: int, on_progress=silent):
    """Decoded test images (cached like the training images) and the indices that would not decode."""
    paths = [Path(root) / "test" / name for name in names]
    # read below the set's root without following a link anywhere on the way, as the training images are
    fingerprint = image_cache.content_fingerprint(paths, root=Path(root))
    return image_cache.load_or_build(paths, size, fingerprint, on_progress=on_progress, root=Path(root))
