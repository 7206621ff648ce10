"""The Kaggle RFIW layout: train/FXXXX/MIDn/*.jpg, train_relationships.csv, test/*.jpg, sample_submission.csv.

Reading is tolerant of the untidy real download (each oddity is counted in ``CheckReport``);
only a missing ``train/``, a missing relationships file or a CSV without the expected columns is fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RELATIONSHIP_TYPES = ("fd", "fs", "md", "ms", "bb", "ss", "sibs", "gfgd", "gfgs", "gmgd", "gmgs")
UNKNOWN_TYPE = "kin"  # the real train_relationships.csv carries no type
UNRELATED = "none"


@dataclass(frozen=True)
class Person:
    """One member folder, ``family/mid`` (e.g. ``F0002/MID1``), with its usable images."""

    family: str
    mid: str
    images: tuple[Path, ...]

    @property
    def id(self) -> str:
        return f"{self.family}/{self.mid}"


@dataclass(frozen=True)
class Relationship:
    """A blood relation between two people ids, with its type (``fd``.., or ``kin`` when unknown)."""

    p1: str
    p2: str
    kind: str = UNKNOWN_TYPE


@dataclass(frozen=True)
class TestPair:
    """One ``img_pair`` line of sample_submission.csv (``line`` is 1-based, header = line 1)."""

    line: int
    left: str
    right: str
    label: int | None = None  # from test_labels.csv when present (synthetic sets)
    kind: str | None = None


@dataclass
class CheckReport:
    """What reading found: counts of what was kept and, per reason, what was dropped or fixed."""

    families: int = 0
    people: int = 0
    images: int = 0
    relationships: int = 0
    test_images: int = 0
    test_pairs: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count (image/person/relationship dropped)
    fixed: dict[str, int] = field(default_factory=dict)  # reason -> count (kept after a fix: grayscale, resize..)
    notes: list[str] = field(default_factory=list)  # e.g. "no test/ folder: train-only data set"
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few offending paths

    def count(self, table: dict[str, int], reason: str, example: str | None = None) -> None:
        table[reason] = table.get(reason, 0) + 1
        if example is not None:
            bucket = self.examples.setdefault(reason, [])
            if len(bucket) < 5:
                bucket.append(example)


@dataclass
class Dataset:
    """A data set in the RFIW layout, as read from ``root``."""

    root: Path
    people: dict[str, Person]  # id -> Person, only people with at least one usable image
    relationships: list[Relationship]  # only those whose two people are both in ``people``
    test_images: list[str]  # file names inside test/, usable ones
    test_pairs: list[TestPair]
    report: CheckReport

    def families(self) -> dict[str, list[str]]:
        """Family id -> ids of its people (sorted)."""
        result: dict[str, list[str]] = {}
        for person in sorted(self.people.values(), key=lambda p: p.id):
            result.setdefault(person.family, []).append(person.id)
        return result
