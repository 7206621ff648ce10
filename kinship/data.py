"""A data set made ready for learning: read, split by family, decoded once, validation pairs fixed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinship import image_cache
from kinship.errors import UserError
from kinship.layout import DROP_REL_NO_IMAGES, Dataset, Person, dataset_fingerprint, read_dataset
from kinship.pairs import FamilySplit, ImageTable, PairSet, split_families, validation_pairs
from kinship.progress import silent


@dataclass(frozen=True)
class SplitConfig:
    """How validation is held out: a share of whole families chosen by ``seed`` (the seeded split), or, with
    ``stable_salt``, each family's role from a keyed hash of its id (``kinship.family_split``: the store's split,
    the same in every data set version), with the held-out families left out of the data altogether."""

    val_fraction: float = 0.2
    seed: int = 0
    val_pairs_per_relationship: int = 4
    folds: int = 1  # > 1: families dealt into this many groups, group ``fold`` held out
    fold: int = 0
    stable_salt: str = ""  # "" = the seeded split; else the store's split salt (hex)

    def stable(self):
        """The store's ``StableSplit`` this config names (``stable_salt`` set), else None."""
        from kinship.family_split import StableSplit

        return StableSplit(self.stable_salt) if self.stable_salt else None


@dataclass
class PreparedData:
    dataset: Dataset
    table: ImageTable
    pixels: np.ndarray  # [N, S, S, 3] uint8, indexed like ``table``
    split: FamilySplit
    val_pairs: PairSet
    fingerprint: str

    @property
    def image_size(self) -> int:
        return int(self.pixels.shape[1])


def prepare(
    data_dir: Path,
    image_size: int,
    split_config: SplitConfig = SplitConfig(),
    cache_dir: Path | None = None,
    on_progress=silent,
    families: FamilySplit | None = None,
) -> PreparedData:
    """Read ``data_dir`` (RFIW layout), split it by family and decode every image at ``image_size``.

    ``families`` fixes the split instead of ``split_config`` and restricts the data set to those families before
    anything is hashed or decoded: the images of every other family (and of ``test/``) are never opened. The
    recipe search trains this way, so its held-out families stay untouched until the final figure.
    """
    dataset = read_dataset(Path(data_dir), verify_images=False, on_progress=on_progress)
    stable = split_config.stable()
    if families is None and stable is not None:  # held-out families never reach training, early stopping or calibration
        families = stable.training_split({person.family for person in dataset.people.values()})
        if not families.train or not families.val:
            raise UserError(f"{data_dir}: the stable split gives {len(families.train)} training and {len(families.val)} "
                            "validation families: the data set needs more families")
    if families is not None:
        dataset = only_families(dataset, set(families.train) | set(families.val))
    table = ImageTable.from_dataset(dataset)
    split = families or _split(dataset, split_config, data_dir)
    fingerprint = dataset_fingerprint(dataset)
    pixels, unreadable = image_cache.load_or_build(table.paths, image_size, fingerprint, cache_dir, on_progress,
                                                   root=dataset.root)  # no link followed below the listed root
    if unreadable:
        dataset, table, pixels = _without_images(dataset, table, pixels, unreadable)
        split = families or _split(dataset, split_config, data_dir)
    val = validation_pairs(dataset, table, split, split_config.val_pairs_per_relationship, split_config.seed)
    return PreparedData(dataset, table, pixels, split, val, fingerprint)


def _split(dataset: Dataset, config: SplitConfig, data_dir: Path) -> FamilySplit:
    try:
        return split_families(dataset, config.val_fraction, config.seed, config.folds, config.fold)
    except ValueError as error:
        raise UserError(f"{data_dir}: {error}") from error


def only_families(dataset: Dataset, families: set[str]) -> Dataset:
    """The people and relationships of ``families`` only, without the test images and pairs."""
    people = {pid: person for pid, person in dataset.people.items() if person.family in families}
    relationships = [r for r in dataset.relationships if r.p1 in people and r.p2 in people]
    return Dataset(dataset.root, people, relationships, [], [], dataset.report)


def _without_images(dataset: Dataset, table: ImageTable, pixels: np.ndarray, unreadable: dict[int, str]):
    """Drop images that would not decode, counted under their reasons (and people or relationships left
    without images)."""
    bad = {table.paths[i] for i in unreadable}
    people = {}
    for person_id, person in dataset.people.items():
        images = tuple(p for p in person.images if p not in bad)
        if images:
            people[person_id] = Person(person.family, person.mid, images)
    for index, reason in sorted(unreadable.items(), key=lambda item: table.paths[item[0]]):
        dataset.report.count(dataset.report.dropped, reason, str(table.paths[index]))
    relationships = [r for r in dataset.relationships if r.p1 in people and r.p2 in people]
    for _ in range(len(dataset.relationships) - len(relationships)):
        dataset.report.count(dataset.report.dropped, DROP_REL_NO_IMAGES)
    cleaned = Dataset(dataset.root, people, relationships, dataset.test_images, dataset.test_pairs, dataset.report)
    cleaned_table = ImageTable.from_dataset(cleaned)
    index_of = {path: i for i, path in enumerate(table.paths)}
    keep = np.asarray([index_of[path] for path in cleaned_table.paths])
    return cleaned, cleaned_table, np.asarray(pixels[keep])
