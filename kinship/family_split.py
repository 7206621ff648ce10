"""A family split that is stable across data set versions: each family's role from a keyed hash of its id.

A split drawn per data set (``kinship.pairs.split_families``: a seeded shuffle of the families present) moves
families between roles whenever families are added, so the families a champion trained on can sit in the
next version's validation set. Here a family's role depends on its id and on a salt stored once per store,
nothing else: HMAC-SHA256(salt, family id) read as a number in [0, 1) is compared with fixed thresholds (70 / 15 /
15 by default). Adding families never moves one (no ranks, no cuts that depend on how many there are), and new
families fall into each role in proportion. The salt keeps the split unguessable and distinct per store, so
nobody can name families to land them in the held-out set.

The salt and the proportions are stored together (``datasets/.split-salt.json``), created once by
compare-and-swap: two runs that start at once on an empty store agree on one salt. Changing the proportions of an
existing store would move families, so it is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable

from kinship.errors import UserError
from kinship.pairs import FamilySplit

if TYPE_CHECKING:  # annotations only: kinship.data reads a split without the store's modules
    from kinship.store.refs import ArtifactStore

SALT_KEY = "datasets/.split-salt.json"
SALT_FORMAT = "kinship-split-salt/1"
TRAIN, VALIDATION, HELD_OUT = "train", "validation", "held_out"
ROLES = (TRAIN, VALIDATION, HELD_OUT)
SWAP_ATTEMPTS = 5


@dataclass(frozen=True)
class SplitProportions:
    """The share of families in each role; they add up to 1."""

    train: float = 0.70
    validation: float = 0.15
    held_out: float = 0.15

    def __post_init__(self) -> None:
        shares = (self.train, self.validation, self.held_out)
        if any(share < 0 for share in shares) or abs(sum(shares) - 1.0) > 1e-9:
            raise UserError(f"split proportions must be >= 0 and add up to 1, not {shares}")

    def thresholds(self) -> tuple[float, float]:
        """Upper bounds of the train and validation ranges of the hash; held out is the rest."""
        return self.train, self.train + self.validation


@dataclass(frozen=True)
class StableSplit:
    """The store's split: a role for any family id, the same for every data set version."""

    salt: str
    proportions: SplitProportions = SplitProportions()

    def position(self, family: str) -> float:
        """The family's place in [0, 1): HMAC-SHA256 of its id under the salt, first 8 bytes."""
        digest = hmac.new(bytes.fromhex(self.salt), family.encode("utf-8"), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    def role(self, family: str) -> str:
        """``train``, ``validation`` or ``held_out``."""
        position = self.position(family)
        train_end, validation_end = self.proportions.thresholds()
        return TRAIN if position < train_end else VALIDATION if position < validation_end else HELD_OUT

    def roles(self, families: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Role -> the sorted families of ``families`` in it (every role present, possibly empty)."""
        grouped: dict[str, list[str]] = {role: [] for role in ROLES}
        for family in sorted(set(families)):
            grouped[self.role(family)].append(family)
        return {role: tuple(members) for role, members in grouped.items()}

    def training_split(self, families: Iterable[str]) -> FamilySplit:
        """What ``kinship.data.prepare(families=...)`` takes: train and validation; held-out families are left out,
        so no run trains, early-stops or calibrates on them."""
        roles = self.roles(families)
        return FamilySplit(train=roles[TRAIN], val=roles[VALIDATION])

    def held_out(self, families: Iterable[str]) -> tuple[str, ...]:
        """The held-out families among ``families``: where champion and challenger are compared."""
        return self.roles(families)[HELD_OUT]


def stable_split(store: ArtifactStore, proportions: SplitProportions | None = None) -> StableSplit:
    """The split of ``store``: its salt and proportions, created on first use (compare-and-swap, so concurrent
    first uses agree). ``proportions`` other than the stored ones are refused: they would move families."""
    for _ in range(SWAP_ATTEMPTS):
        document, version = store.get_json_versioned(SALT_KEY)
        if document is not None:
            split = _parse(document, store.uri(SALT_KEY))
            if proportions is not None and proportions != split.proportions:
                raise UserError(f"{store.uri(SALT_KEY)}: this store splits families {_shares(split.proportions)}; "
                                f"{_shares(proportions)} would move families between roles")
            return split
        split = StableSplit(secrets.token_hex(32), proportions or SplitProportions())
        if store.put_json_if_version(_document(split), SALT_KEY, None) is not None:
            return split
    raise UserError(f"{store.uri(SALT_KEY)} kept changing while it was being created: try again")


def _document(split: StableSplit) -> dict:
    shares = split.proportions
    return {"format": SALT_FORMAT, "salt": split.salt, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "proportions": {TRAIN: shares.train, VALIDATION: shares.validation, HELD_OUT: shares.held_out}}


def _parse(document: object, uri: str) -> StableSplit:
    """The split a salt document names; anything else is one line (a damaged salt must never be replaced: every
    family's role depends on it)."""
    try:
        if document.get("format") != SALT_FORMAT:
            raise ValueError(f"format {document.get('format')!r}")
        salt, shares = document["salt"], document["proportions"]
        bytes.fromhex(salt)
        if len(salt) < 32:
            raise ValueError("salt too short")
        return StableSplit(salt, SplitProportions(float(shares[TRAIN]), float(shares[VALIDATION]), float(shares[HELD_OUT])))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise UserError(f"{uri}: damaged split salt ({error}); restore it from a backup: a new salt would move "
                        "families between train, validation and held out") from None


def _shares(proportions: SplitProportions) -> str:
    return "/".join(f"{share:.0%}" for share in (proportions.train, proportions.validation, proportions.held_out))
