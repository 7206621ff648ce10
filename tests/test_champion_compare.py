"""The paired bootstrap: champion and challenger on the same held-out pairs, resampled by family."""

from __future__ import annotations

import numpy as np
import pytest

from kinship.champion_compare import ALL_TYPES, PairedScores, decide
from kinship.errors import UserError

TYPES = ("fs", "md", "sibs")


def held_out_pairs(families: int = 40, per_family: int = 12, seed: int = 1) -> dict:
    """Pairs of ``families`` families, half related (of three types), with a family-level difficulty shared by
    every model (what the paired resampling cancels)."""
    rng = np.random.default_rng(seed)
    family = np.repeat([f"F{i:04d}" for i in range(families)], per_family)
    label = np.tile([True, False], families * per_family // 2)
    relationship = np.where(label, np.resize(TYPES, len(label)), "")
    hardness = np.repeat(rng.normal(0, 0.6, families), per_family)
    return {"family": family, "label": label, "relationship": relationship, "hardness": hardness, "rng": rng}


def scores(pairs: dict, signal: float) -> np.ndarray:
    return signal * pairs["label"] + pairs["hardness"] * pairs["label"] + pairs["rng"].normal(0, 1, len(pairs["label"]))


def paired(pairs: dict, champion: np.ndarray, challenger: np.ndarray) -> PairedScores:
    return PairedScores.from_lists(pairs["family"], pairs["label"], pairs["relationship"], champion, challenger,
                                   scores(pairs, 0.3))


def test_two_nearly_equal_models_are_not_promoted() -> None:
    pairs = held_out_pairs()
    champion = scores(pairs, 1.2)
    challenger = champion + pairs["rng"].normal(0, 0.02, len(champion))  # the same model, retrained: tiny noise
    decision = decide(paired(pairs, champion, challenger), replicates=200)
    row = decision.overall
    assert not decision.promote and row.low < 0 < row.high, decision.reason
    assert "not clear of 0" in decision.reason


def test_a_clearly_better_model_is_promoted() -> None:
    pairs = held_out_pairs()
    champion = scores(pairs, 0.8)
    challenger = scores(pairs, 2.0)
    decision = decide(paired(pairs, champion, challenger), replicates=200)
    assert decision.promote and decision.overall.low > 0, decision.reason
    assert decision.overall.challenger_auc - decision.overall.pixel_auc >= 0.02


def test_a_model_not_far_enough_above_raw_pixels_is_not_promoted() -> None:
    pairs = held_out_pairs()
    champion = scores(pairs, 0.0)
    challenger = scores(pairs, 1.5)
    decision = decide(paired(pairs, champion, challenger), required_margin=0.9, replicates=200)
    assert not decision.promote and "raw pixels" in decision.reason


def test_the_decision_is_reproducible_and_has_a_row_per_relationship_type() -> None:
    pairs = held_out_pairs()
    data = paired(pairs, scores(pairs, 0.8), scores(pairs, 1.1))
    first, second = decide(data, replicates=200, seed=7), decide(data, replicates=200, seed=7)
    assert first == second
    table = first.table()
    assert [row["relationship"] for row in table] == [ALL_TYPES, *sorted(TYPES)]
    assert set(table[0]) == {"relationship", "pairs", "families", "champion_auc", "challenger_auc", "pixel_auc",
                             "difference", "low", "high"}
    assert first.to_dict()["rows"] == table


def test_the_resampling_is_paired_and_by_family() -> None:
    """With every pair of a family scored alike by both models except for a per-family shift of the challenger, an
    unpaired or per-pair bootstrap would see far more spread than the paired one over families."""
    pairs = held_out_pairs(families=30)
    champion = scores(pairs, 1.0)
    decision = decide(paired(pairs, champion, champion), replicates=100)
    row = decision.overall
    assert row.difference == 0 and row.low == 0 and row.high == 0 and not decision.promote


def test_bad_input_is_one_line() -> None:
    with pytest.raises(UserError, match="different lengths"):
        PairedScores.from_lists(["F1"], [True, False], ["fs", ""], [0.1, 0.2], [0.1, 0.2], [0.1, 0.2])
    with pytest.raises(UserError, match="both related and unrelated"):
        PairedScores.from_lists(["F1", "F2"], [True, True], ["fs", "fs"], [0.1, 0.2], [0.1, 0.2], [0.1, 0.2])
