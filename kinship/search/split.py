"""The search protocol on our data: probes and a gallery drawn from families the model never trained on.

RFIW Track 3 takes one probe subject per family (all their photos) and a gallery of every other face. Here the
families come from a family-held-out split: some give one probe each (a member with at least one blood relative
in the family) and the rest of their members to the gallery; other held-out families are distractors, all of
their members in the gallery and none a probe. A gallery image is relevant to a probe when it shows a blood
relative (a row of ``train_relationships.csv``); in-laws of the probe's family are negatives, as strangers are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kinship.errors import UserError
from kinship.layout import Dataset
from kinship.pairs import ImageTable


@dataclass(frozen=True)
class SearchSplitConfig:
    """How a search split is drawn from held-out families.

    ``probe_families``: how many families give a probe (0: half of the eligible ones, so the other half can be
    distractors). ``distractor_families``: how many of the remaining held-out families join the gallery
    (-1: all of them); this sets the gallery's size.
    """

    probe_families: int = 0
    distractor_families: int = -1
    seed: int = 0


@dataclass(frozen=True)
class Probe:
    """One probe subject: their photos (indices into the image table) and their relatives in the gallery."""

    person: str
    images: tuple[int, ...]
    relatives: dict[str, str]  # gallery person id -> relationship type (the probe's relation to them)


@dataclass(frozen=True)
class SearchSplit:
    """Probes and the gallery (indices into the image table, with the person each shows)."""

    probes: tuple[Probe, ...]
    gallery: np.ndarray
    gallery_person: tuple[str, ...]
    probe_families: tuple[str, ...]
    distractor_families: tuple[str, ...]

    def relevance(self) -> tuple[np.ndarray, np.ndarray]:
        """``[probes, gallery]``: whether each gallery image shows a relative, and that relative's type ('' if not)."""
        kinds = np.full((len(self.probes), len(self.gallery)), "", dtype=object)
        for row, probe in enumerate(self.probes):
            for column, person in enumerate(self.gallery_person):
                kinds[row, column] = probe.relatives.get(person, "")
        return kinds != "", kinds

    def summary(self) -> dict:
        return {"probes": len(self.probes), "probe_images": sum(len(p.images) for p in self.probes),
                "gallery_images": len(self.gallery), "gallery_people": len(set(self.gallery_person)),
                "probe_families": len(self.probe_families), "distractor_families": len(self.distractor_families)}


def relatives_of(dataset: Dataset) -> dict[str, dict[str, str]]:
    """Person -> {blood relative: type of the relation}, both directions (a relationship row is symmetric)."""
    result: dict[str, dict[str, str]] = {}
    for relationship in dataset.relationships:
        result.setdefault(relationship.p1, {})[relationship.p2] = relationship.kind
        result.setdefault(relationship.p2, {})[relationship.p1] = relationship.kind
    return result


def search_split(dataset: Dataset, table: ImageTable, held_out: Sequence[str],
                 config: SearchSplitConfig = SearchSplitConfig()) -> SearchSplit:
    """Draw probes and gallery from the ``held_out`` families of ``dataset`` (images indexed as in ``table``)."""
    rng = np.random.default_rng(config.seed)
    images_of = table.images_of()
    relatives = relatives_of(dataset)
    families = dataset.families()
    candidates = {f: _probe_candidates(families.get(f, []), relatives, images_of) for f in sorted(set(held_out))}
    eligible = [f for f, people in candidates.items() if people]
    if not eligible:
        raise UserError("no held-out family has a member with a blood relative with photos: nothing to search for")
    count = config.probe_families or max(1, len(eligible) // 2)
    chosen = sorted(rng.permutation(eligible)[:count].tolist())
    rest = [f for f in rng.permutation(sorted(candidates)).tolist() if f not in chosen]
    distractors = sorted(rest if config.distractor_families < 0 else rest[: config.distractor_families])
    probes = []
    for family in chosen:
        person = candidates[family][int(rng.integers(len(candidates[family])))]
        probes.append(Probe(person, tuple(int(i) for i in images_of[person]),
                            {p: k for p, k in relatives[person].items() if p in images_of}))
    gallery_people = [p for f in chosen + distractors for p in families.get(f, [])
                      if p in images_of and p not in {probe.person for probe in probes}]
    gallery = np.concatenate([images_of[p] for p in sorted(gallery_people)]).astype(np.int64)
    owners = tuple(table.person_of[i] for i in gallery)
    return SearchSplit(tuple(probes), gallery, owners, tuple(chosen), tuple(distractors))


def _probe_candidates(people: list[str], relatives: dict[str, dict[str, str]],
                      images_of: dict[str, np.ndarray]) -> list[str]:
    """Members with photos who have at least one blood relative with photos: only they can be probes."""
    return [p for p in people if p in images_of and any(r in images_of for r in relatives.get(p, {}))]
