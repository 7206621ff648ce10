"""Judge an engine against the FP32 reference on real validation pairs.

The reference is the exported ONNX model run by ONNX Runtime in FP32 on the CPU (the model the
export already checked against PyTorch), whatever backend the engine uses. For each engine:
max and mean absolute logit difference, the share of kin/non-kin decisions that agree at the
validation threshold, and ROC AUC / accuracy / loss on the validation split (``kinship.metrics``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kinship.images import to_network_input
from kinship.metrics import verification_report

BATCH = 256


@dataclass
class ValidationData:
    """Normalised validation pairs with labels, types and the decision threshold (on the logit)."""

    img0: np.ndarray
    img1: np.ndarray
    label: np.ndarray
    kind: np.ndarray
    threshold: float | None = None
    threshold_source: str = ""

    def __len__(self) -> int:
        return len(self.label)


def validation_data(prepared, limit: int = 0) -> ValidationData:
    """The fixed validation pairs of ``prepared`` (a ``kinship.data.PreparedData``), at most ``limit`` (0 = all)."""
    pairs = prepared.val_pairs
    count = len(pairs) if limit <= 0 else min(limit, len(pairs))
    return ValidationData(
        img0=to_network_input(np.asarray(prepared.pixels[pairs.left[:count]])),
        img1=to_network_input(np.asarray(prepared.pixels[pairs.right[:count]])),
        label=np.asarray(pairs.label[:count]), kind=np.asarray(pairs.kind[:count]).astype(str),
    )


def choose_threshold(data: ValidationData, recorded: float | None, reference_logits: np.ndarray) -> ValidationData:
    """Use the threshold recorded at training time; without one, Youden's J on the reference logits."""
    from kinship.metrics import youden_threshold

    if recorded is not None:
        data.threshold, data.threshold_source = float(recorded), "model metadata (chosen on validation at training)"
    else:
        data.threshold = youden_threshold(data.label, reference_logits)
        data.threshold_source = "Youden's J of the FP32 reference on these pairs (none recorded in the model)"
    return data


def engine_logits(engine, data: ValidationData, batch: int = BATCH) -> np.ndarray:
    """The engine's pair-model logits for every validation pair, in batches."""
    return np.concatenate([
        np.asarray(engine.run_pairs(data.img0[s : s + batch], data.img1[s : s + batch]), dtype=np.float64).reshape(-1)
        for s in range(0, len(data), batch)
    ])


def companion_logits(engine, data: ValidationData, batch: int = BATCH) -> np.ndarray | None:
    """Logits through the engine's encoder + head (None when it has none), to check the companions too."""
    results = []
    for s in range(0, len(data), batch):
        e0, e1 = engine.embed(data.img0[s : s + batch]), engine.embed(data.img1[s : s + batch])
        if e0 is None:
            return None
        scores = engine.head(e0, e1)
        if scores is None:
            return None
        results.append(np.asarray(scores, dtype=np.float64).reshape(-1))
    return np.concatenate(results)


@dataclass
class Agreement:
    """How far an engine's logits are from the reference's, and how often the decision is the same."""

    pairs: int
    max_abs_diff: float
    mean_abs_diff: float
    decision_agreement: float  # share of pairs on the same side of the threshold
    threshold: float


def compare_logits(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> Agreement:
    """Differences and decision agreement of ``candidate`` against ``reference`` logits."""
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    candidate = np.asarray(candidate, dtype=np.float64).reshape(-1)
    if reference.shape != candidate.shape or reference.size == 0:
        raise ValueError(f"logit arrays differ in shape or are empty: {reference.shape} vs {candidate.shape}")
    difference = np.abs(reference - candidate)
    same = (reference >= threshold) == (candidate >= threshold)
    return Agreement(len(reference), float(difference.max()), float(difference.mean()), float(same.mean()), float(threshold))


@dataclass(frozen=True)
class ValidationPolicy:
    """When an engine counts as a faithful copy of the FP32 model (flagged, never fatal)."""

    max_auc_drop: float = 0.01
    min_decision_agreement: float = 0.97


@dataclass
class ValidationResult:
    agreement: Agreement
    metrics: dict  # kinship.metrics.VerificationReport as a dict
    auc_delta: float  # engine AUC - reference AUC
    acceptable: bool
    companion_max_abs_diff: float | None = None  # encoder+head path vs the pair path of the same engine
    logits: np.ndarray | None = field(default=None, repr=False)  # the engine's logits (kept out of to_dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "logits"}


def validate_logits(
    reference: np.ndarray, candidate: np.ndarray, data: ValidationData, reference_auc: float,
    companion: np.ndarray | None = None, policy: ValidationPolicy = ValidationPolicy(),
) -> ValidationResult:
    """The whole judgement from logits alone (no engine needed: testable with any arrays)."""
    agreement = compare_logits(reference, candidate, data.threshold)
    report = verification_report(data.label, candidate, data.kind, threshold=data.threshold)
    delta = report.auc - reference_auc
    acceptable = -delta <= policy.max_auc_drop and agreement.decision_agreement >= policy.min_decision_agreement
    companion_diff = None
    if companion is not None:
        companion_diff = float(np.abs(np.asarray(companion, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)).max())
    return ValidationResult(agreement, report.to_dict(), float(delta), bool(acceptable), companion_diff,
                            np.asarray(candidate, dtype=np.float64))


def validate_engine(engine, data: ValidationData, reference: np.ndarray, reference_auc: float,
                    policy: ValidationPolicy = ValidationPolicy()) -> ValidationResult:
    """Run ``engine`` on the validation pairs and judge it against the reference logits."""
    candidate = engine_logits(engine, data)
    return validate_logits(reference, candidate, data, reference_auc, companion_logits(engine, data), policy)


def reference_engine(onnx_path: Path):
    """The FP32 reference: the exported file as it is, in ONNX Runtime on the CPU."""
    from kinship.engines.onnxruntime_backend import OrtEngine

    return OrtEngine.open(Path(onnx_path), None)
