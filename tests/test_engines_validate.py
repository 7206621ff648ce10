"""Validation maths: logit differences, decision agreement, AUC change and the acceptance policy."""

from __future__ import annotations

import numpy as np
import pytest

from kinship.engines.validate import (
    ValidationData, ValidationPolicy, choose_threshold, compare_logits, validate_logits,
)
from kinship.metrics import roc_auc


def _data(labels, threshold=0.0) -> ValidationData:
    labels = np.asarray(labels)
    empty = np.zeros((len(labels), 3, 2, 2), np.float32)
    return ValidationData(empty, empty, labels, np.array(["fd"] * len(labels)), threshold, "test")


def test_compare_logits_by_hand():
    reference = np.array([-2.0, -0.5, 0.5, 3.0])
    candidate = np.array([-2.0, 0.25, 0.5, 2.0])  # differences 0, .75, 0, 1; pair 2 changes side
    agreement = compare_logits(reference, candidate, threshold=0.0)
    assert agreement.pairs == 4
    assert agreement.max_abs_diff == pytest.approx(1.0)
    assert agreement.mean_abs_diff == pytest.approx(1.75 / 4)
    assert agreement.decision_agreement == pytest.approx(0.75)
    # The decision is taken at the threshold, not at zero.
    assert compare_logits(reference, candidate, threshold=1.0).decision_agreement == pytest.approx(1.0)


def test_compare_logits_refuses_mismatched_arrays():
    with pytest.raises(ValueError):
        compare_logits(np.zeros(3), np.zeros(4), 0.0)
    with pytest.raises(ValueError):
        compare_logits(np.zeros(0), np.zeros(0), 0.0)


def test_identical_logits_are_acceptable_and_lose_nothing():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = labels * 1.5 + rng.normal(size=200)
    result = validate_logits(logits, logits, _data(labels), roc_auc(labels, logits), companion=logits + 1e-3)
    assert result.auc_delta == 0.0 and result.acceptable
    assert result.agreement.max_abs_diff == 0.0 and result.agreement.decision_agreement == 1.0
    assert result.companion_max_abs_diff == pytest.approx(1e-3)
    assert result.metrics["pairs"] == 200 and "logits" not in result.to_dict()


def test_policy_flags_a_degraded_engine():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    reference = labels * 2.0 + rng.normal(size=400)
    noisy = reference + rng.normal(scale=3.0, size=400)  # much worse ranking and many flipped decisions
    result = validate_logits(reference, noisy, _data(labels), roc_auc(labels, reference))
    assert result.auc_delta < -0.01 and not result.acceptable
    lenient = ValidationPolicy(max_auc_drop=1.0, min_decision_agreement=0.0)
    assert validate_logits(reference, noisy, _data(labels), roc_auc(labels, reference), policy=lenient).acceptable


def test_threshold_comes_from_the_model_or_youden():
    labels = np.array([0, 0, 1, 1])
    reference = np.array([-1.0, 0.2, 0.4, 2.0])
    recorded = choose_threshold(_data(labels, None), 0.3, reference)
    assert recorded.threshold == 0.3 and "metadata" in recorded.threshold_source
    derived = choose_threshold(_data(labels, None), None, reference)
    assert derived.threshold == pytest.approx(0.4) and "Youden" in derived.threshold_source
