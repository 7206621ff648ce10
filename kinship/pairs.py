"""Family-held-out splits and pair sampling over a ``Dataset``.

Images are addressed by their index in an ``ImageTable`` so that pairs are small integer arrays and
the decoded pixels live once in an ``ImageCache``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinship.layout import UNRELATED, Dataset, Relationship


@dataclass(frozen=True)
class ImageTable:
    """Every usable training image in a fixed order, with the person it shows."""

    paths: tuple[Path, ...]
    person_of: tuple[str, ...]  # person id per image

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> "ImageTable":
        paths, owners = [], []
        for person_id in sorted(dataset.people):
            for path in dataset.people[person_id].images:
                paths.append(path)
                owners.append(person_id)
        return cls(tuple(paths), tuple(owners))

    def images_of(self) -> dict[str, np.ndarray]:
        """Person id -> indices of that person's images."""
        result: dict[str, list[int]] = {}
        for index, person_id in enumerate(self.person_of):
            result.setdefault(person_id, []).append(index)
        return {person_id: np.asarray(indices) for person_id, indices in result.items()}

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class FamilySplit:
    """Whole families: the ones trained on and the ones held out for validation."""

    train: tuple[str, ...]
    val: tuple[str, ...]


def split_families(dataset: Dataset, val_fraction: float = 0.2, seed: int = 0, folds: int = 1, fold: int = 0) -> FamilySplit:
    """Hold out ``val_fraction`` of the families that have relationships (never people or pairs).

    With ``folds`` > 1 the families are dealt into that many groups instead and group ``fold`` is held
    out, so the folds' validation sets cover every family exactly once (``val_fraction`` is then unused).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    related_families = sorted({r.p1.split("/")[0] for r in dataset.relationships})
    if len(related_families) < max(2, folds):
        raise ValueError(f"a family-held-out split needs at least {max(2, folds)} families with relationships, "
                         f"found {len(related_families)}")
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    order = np.random.default_rng(seed).permutation(len(related_families))
    if folds > 1:
        held_out = set(np.array_split(order, folds)[fold].tolist())
    else:
        held_out = set(order[: min(len(related_families) - 1, max(1, round(val_fraction * len(related_families))))].tolist())
    val = tuple(sorted(related_families[i] for i in held_out))
    train = tuple(sorted(f for i, f in enumerate(related_families) if i not in held_out))
    return FamilySplit(train=train, val=val)


@dataclass
class PairSet:
    """Image pairs as index arrays into an ``ImageTable``, labelled 1 (kin) or 0, each with a type."""

    left: np.ndarray
    right: np.ndarray
    label: np.ndarray
    kind: np.ndarray  # relationship type per pair, "none" for unrelated

    def __len__(self) -> int:
        return len(self.label)

    def shuffled(self, rng: np.random.Generator) -> "PairSet":
        order = rng.permutation(len(self))
        return PairSet(self.left[order], self.right[order], self.label[order], self.kind[order])

    def batches(self, batch_size: int):
        """Yield PairSets of at most ``batch_size`` pairs, in order."""
        for start in range(0, len(self), batch_size):
            chunk = slice(start, start + batch_size)
            yield PairSet(self.left[chunk], self.right[chunk], self.label[chunk], self.kind[chunk])


class PairSampler:
    """Balanced kin / non-kin image pairs drawn from a set of families.

    Positives come from the relationships inside the families; negatives pair people of two
    different families. Every call to ``epoch`` draws fresh images and fresh negatives.
    """

    def __init__(self, dataset: Dataset, table: ImageTable, families: tuple[str, ...], seed: int = 0):
        family_set = set(families)
        images_of = table.images_of()
        self.relationships: list[Relationship] = [
            r for r in dataset.relationships
            if r.p1.split("/")[0] in family_set and r.p1 in images_of and r.p2 in images_of
        ]
        self.people = [p for p in sorted(images_of) if p.split("/")[0] in family_set]
        if not self.relationships:
            raise ValueError("no relationships with images in the chosen families")
        self.images_of = images_of
        self.family_index = np.asarray([sorted(family_set).index(p.split("/")[0]) for p in self.people])
        self.seed = seed

    def epoch(self, index: int, pairs_per_relationship: int = 1) -> PairSet:
        """The pairs of epoch ``index``: deterministic for (seed, index), fresh across epochs."""
        rng = np.random.default_rng([self.seed, index])
        positives = self._positives(rng, pairs_per_relationship)
        negatives = self._negatives(rng, len(positives[0]))
        pairs = PairSet(
            left=np.concatenate((positives[0], negatives[0])),
            right=np.concatenate((positives[1], negatives[1])),
            label=np.concatenate((np.ones(len(positives[0]), np.int64), np.zeros(len(negatives[0]), np.int64))),
            kind=np.concatenate((positives[2], np.full(len(negatives[0]), UNRELATED, dtype=object))),
        )
        return pairs.shuffled(rng)

    def _positives(self, rng: np.random.Generator, repeats: int):
        left, right, kinds = [], [], []
        for relationship in self.relationships:
            for _ in range(repeats):
                pair = [rng.choice(self.images_of[relationship.p1]), rng.choice(self.images_of[relationship.p2])]
                rng.shuffle(pair)  # the model must not learn that p1 is the elder
                left.append(pair[0])
                right.append(pair[1])
                kinds.append(relationship.kind)
        return np.asarray(left), np.asarray(right), np.asarray(kinds, dtype=object)

    def _negatives(self, rng: np.random.Generator, count: int):
        n = len(self.people)
        first = rng.integers(0, n, size=count)
        second = rng.integers(0, n, size=count)
        same_family = self.family_index[first] == self.family_index[second]
        while same_family.any():  # redraw until every negative crosses families
            second[same_family] = rng.integers(0, n, size=int(same_family.sum()))
            same_family = self.family_index[first] == self.family_index[second]
        left = np.asarray([rng.choice(self.images_of[self.people[i]]) for i in first])
        right = np.asarray([rng.choice(self.images_of[self.people[i]]) for i in second])
        return left, right


def validation_pairs(
    dataset: Dataset, table: ImageTable, split: FamilySplit, pairs_per_relationship: int = 4, seed: int = 0
) -> PairSet:
    """A fixed, balanced set of image pairs from the held-out families (the same for every model)."""
    sampler = PairSampler(dataset, table, split.val, seed=seed + 10_007)
    return sampler.epoch(0, pairs_per_relationship=pairs_per_relationship)
