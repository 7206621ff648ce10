"""The store's stable split in training data, and champion vs challenger on the same held-out pairs (issue 24)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kinship.champion_compare import decide
from kinship.challenge import held_out_families, score_held_out
from kinship.data import SplitConfig, prepare
from kinship.family_split import StableSplit
from kinship.layout import read_dataset


def _salt_with_every_role(data: Path) -> str:
    """A fixed salt under which the tiny set has at least two families in each role (24 families, 70/15/15)."""
    families = {p.family for p in read_dataset(data, verify_images=False).people.values()}
    for number in range(200):
        salt = f"{number:064x}"
        roles = StableSplit(salt).roles(families)
        if all(len(members) >= 2 for members in roles.values()):
            return salt
    raise AssertionError("no salt in 200 gives every role two families")


def test_a_stable_split_never_reads_a_held_out_family(tiny_data: Path) -> None:
    salt = _salt_with_every_role(tiny_data)
    split = StableSplit(salt)
    held = set(held_out_families(tiny_data, split))
    prepared = prepare(tiny_data, 32, SplitConfig(stable_salt=salt))
    read = {person.split("/")[0] for person in prepared.table.person_of}
    assert held and not (read & held)  # not trained on, not validated on, not even decoded
    assert set(prepared.split.train) | set(prepared.split.val) == read
    roles = split.roles(read | held)
    assert set(prepared.split.val) == set(roles["validation"]) and set(prepared.split.train) == set(roles["train"])
    # the seeded split of the same folder reads every family
    assert held <= {p.split("/")[0] for p in prepare(tiny_data, 32, SplitConfig()).table.person_of}


def test_the_same_model_twice_is_not_promoted_and_the_pairs_are_paired(tiny_data: Path, tiny_onnx: Path) -> None:
    salt = _salt_with_every_role(tiny_data)
    held = score_held_out(tiny_data, StableSplit(salt), tiny_onnx, tiny_onnx)
    scores = held.scores
    assert held.pairs == len(scores.label) > 0 and set(scores.family) <= set(held.families)
    np.testing.assert_array_equal(scores.champion, scores.challenger)  # one model: the same score pair for pair
    decision = decide(scores, replicates=200)
    assert not decision.promote and decision.overall.difference == 0.0
    assert "not clear of 0" in decision.reason or "raw pixels" in decision.reason
    assert decision.table()[0]["pixel_auc"] == pytest.approx(decision.overall.pixel_auc, abs=1e-4)


def test_too_few_held_out_families_is_one_line(tiny_data: Path, tiny_onnx: Path) -> None:
    from kinship.errors import UserError

    families = {p.family for p in read_dataset(tiny_data, verify_images=False).people.values()}
    salt = next(f"{n:064x}" for n in range(500) if len(StableSplit(f"{n:064x}").held_out(families)) < 2)
    with pytest.raises(UserError, match=r"held-out families under the store's split: too few") as refused:
        score_held_out(tiny_data, StableSplit(salt), tiny_onnx, tiny_onnx)
    assert "\n" not in str(refused.value)
