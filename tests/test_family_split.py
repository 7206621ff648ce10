"""The stable family split: roles from a keyed hash, the same in every data set version, salt created once."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinship.errors import UserError
from kinship.family_split import HELD_OUT, SALT_KEY, TRAIN, VALIDATION, SplitProportions, StableSplit, stable_split
from kinship.storage import LocalStore, StoreSettings


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", StoreSettings(scratch=tmp_path / "scratch"))


def families(first: int, count: int) -> list[str]:
    return [f"F{number:04d}" for number in range(first, first + count)]


def test_no_family_changes_role_when_a_version_adds_families(store: LocalStore) -> None:
    version_1 = families(1, 120)
    version_2 = version_1 + families(121, 60)
    before = stable_split(store).roles(version_1)
    after = stable_split(store).roles(version_2)  # a later run: the salt is read back, not drawn again
    for role in (TRAIN, VALIDATION, HELD_OUT):
        assert set(before[role]) <= set(after[role])
    # the added families join every role, in proportion (binomial spread for 60 draws: within 0.15)
    added = {role: len(set(after[role]) - set(before[role])) / 60 for role in before}
    assert added[TRAIN] == pytest.approx(0.70, abs=0.15) and added[HELD_OUT] == pytest.approx(0.15, abs=0.12)


def test_proportions_follow_the_thresholds_on_many_families() -> None:
    split = StableSplit("ab" * 32, SplitProportions(0.6, 0.2, 0.2))
    roles = split.roles(families(1, 5000))
    shares = {role: len(members) / 5000 for role, members in roles.items()}
    assert shares == pytest.approx({TRAIN: 0.6, VALIDATION: 0.2, HELD_OUT: 0.2}, abs=0.025)


def test_training_split_leaves_held_out_families_out(store: LocalStore) -> None:
    split = stable_split(store)
    names = families(1, 200)
    training = split.training_split(names)
    held = set(split.held_out(names))
    assert held and not held & (set(training.train) | set(training.val))
    assert sorted(set(training.train) | set(training.val) | held) == names


def test_the_salt_is_created_once_and_differs_between_stores(tmp_path: Path, store: LocalStore) -> None:
    first = stable_split(store)
    assert stable_split(store) == first
    other = stable_split(LocalStore(tmp_path / "other", StoreSettings(scratch=tmp_path / "scratch")))
    assert other.salt != first.salt
    names = families(1, 300)
    assert first.roles(names) != other.roles(names)  # a split nobody can predict without the store's salt


def test_a_concurrent_first_use_keeps_the_salt_that_won(store: LocalStore, monkeypatch) -> None:
    winner = StableSplit("cd" * 32)
    real = store.get_json_versioned
    calls = []

    def read_then_lose(key):
        calls.append(key)
        if len(calls) == 1:  # another run creates the salt right after our read found none
            assert store.put_json_if_version({"format": "kinship-split-salt/1", "salt": winner.salt,
                                              "proportions": {"train": 0.7, "validation": 0.15, "held_out": 0.15}},
                                             SALT_KEY, None)
            return None, None
        return real(key)

    monkeypatch.setattr(store, "get_json_versioned", read_then_lose)
    assert stable_split(store).salt == winner.salt


def test_other_proportions_on_an_existing_store_are_refused(store: LocalStore) -> None:
    stable_split(store)
    with pytest.raises(UserError, match="would move families"):
        stable_split(store, SplitProportions(0.8, 0.1, 0.1))


def test_a_damaged_salt_is_one_line_and_never_replaced(store: LocalStore) -> None:
    store.put_json({"format": "kinship-split-salt/1", "salt": "zz"}, SALT_KEY)
    with pytest.raises(UserError, match="damaged split salt") as error:
        stable_split(store)
    assert "\n" not in str(error.value)
    assert store.get_json(SALT_KEY)["salt"] == "zz"


def test_proportions_must_add_up_to_one() -> None:
    with pytest.raises(UserError, match="add up to 1"):
        SplitProportions(0.7, 0.2, 0.2)
