"""Synthetic families in the Kaggle RFIW layout, drawn by one of several generators ("styles").

The pedigree (families, relationships, test pairs) and the file layout are shared; a style decides how
traits are drawn, inherited and photographed (``kinship.synth_style``); every style, the default ``faces``
included, is a module of ``kinship.synth_styles``. Randomness is seeded per family, person and photo, so the
output is byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import importlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from kinship.errors import UserError
from kinship.files import atomic_folder
from kinship.layout import RELATIONSHIP_TYPES, UNRELATED
from kinship.progress import ProgressEvent, silent
from kinship.synth_style import Style, StyleSettings, encode_jpeg, negative_distance  # noqa: F401  (re-exported)
# The faces style lived in this module: its names are still importable from here.
from kinship.synth_styles.faces import (  # noqa: F401
    BLEND, EYES, FORELOCK, FOUNDER_SPREAD, GREY, HAIR, HAIR_STYLES, LIPS, POLYGENIC, SKIN, TRAITS, Face, FacesStyle,
    Painter, Shot, T, _around, _beard, _colour, _colours, _freckles, _light, _mouth_y, _nose_tip, _paint_beard,
    _paint_body, _paint_ears, _paint_eyes_and_brows, _paint_glasses, _paint_hair_back, _paint_hair_front, _paint_mouth,
    _paint_nose_and_mouth, _paint_skin_marks, _palette, _pose_matrix, _rgb, _wall, face_of, paint_background,
    paint_subject, render_photo, shot_of,
)

# Split codes keep the seed streams of train families, test families and test pairs apart.
TRAIN, TEST, PAIRS = 1, 2, 3


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``images_per_person`` and ``test_images_per_person`` are inclusive ranges."""

    families: int = 800  # ~3,900 people: with 200 (~1,000 people) a small CNN overfits at validation AUC ~0.85
    test_families: int = 40
    size: int = 224
    seed: int = 0
    images_per_person: tuple[int, int] = (3, 7)
    test_images_per_person: tuple[int, int] = (1, 3)
    grandchildren_rate: float = 0.45  # share of families with a third generation
    mutation: float = 0.015  # standard deviation added to each inherited trait (traits live in [0, 1])
    nuisance: float = 1.0  # scales per-photo variation (pose, lighting, background); 0 = studio photos
    workers: int = 2
    style: str = "faces"  # which generator draws the people (``kinship synth --style``)

    def validate(self) -> None:
        """Raise ``UserError`` naming the first bad value."""
        if self.seed < 0:
            raise UserError(f"--seed must be 0 or more, got {self.seed}")
        if self.families < 1:
            raise UserError(f"--families must be at least 1, got {self.families}")
        if self.test_families < 0:
            raise UserError(f"--test-families must be 0 or more, got {self.test_families}")
        if self.test_families == 1:
            raise UserError("--test-families must be 0 or at least 2 (unrelated test pairs need two families), got 1")
        if self.size < 32:
            raise UserError(f"--size must be at least 32 pixels, got {self.size}")
        for name, (low, high) in (("images_per_person", self.images_per_person),
                                  ("test_images_per_person", self.test_images_per_person)):
            if not 1 <= low <= high <= 50:
                raise UserError(f"{name} must be a range 1 <= low <= high <= 50, got {low}-{high}")
        if not 0 <= self.nuisance <= 3:
            raise UserError(f"nuisance must be between 0 and 3, got {self.nuisance}")
        if not (0 <= self.grandchildren_rate <= 1 and 0 <= self.mutation <= 0.5):
            raise UserError(f"grandchildren_rate must be in [0, 1] and mutation in [0, 0.5], got "
                            f"{self.grandchildren_rate} and {self.mutation}")
        if self.workers < 1:
            raise UserError(f"workers must be at least 1, got {self.workers}")
        if self.style not in STYLE_NAMES:
            raise UserError(f"unknown style {self.style!r}: choose one of {', '.join(STYLE_NAMES)}")

    def style_settings(self) -> StyleSettings:
        return StyleSettings(seed=self.seed, nuisance=self.nuisance, mutation=self.mutation)


@dataclass
class SynthSummary:
    """What ``generate`` wrote."""

    out: Path
    families: int
    test_families: int
    people: int
    images: int
    test_images: int
    relationships: dict[str, int]  # type -> count, train set
    test_pairs: int
    bytes: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return (self.images + self.test_images) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "out": str(self.out), "families": self.families, "test_families": self.test_families,
            "people": self.people, "images": self.images, "test_images": self.test_images,
            "relationships": dict(self.relationships), "relationships_total": sum(self.relationships.values()),
            "test_pairs": self.test_pairs, "bytes": self.bytes, "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
        }


# --------------------------------------------------------------------------- pedigree


@dataclass
class Member:
    """One person of a family: ``index`` is 0-based creation order, ``mid`` its folder name."""

    index: int
    sex: str  # "m" or "f"
    age: int
    traits: np.ndarray
    father: int | None = None
    mother: int | None = None

    @property
    def mid(self) -> str:
        return f"MID{self.index + 1}"


def _founder(rng: np.random.Generator, style: Style, index: int, sex: str, age: int) -> Member:
    return Member(index, sex, age, style.founder(rng))


def _child(rng: np.random.Generator, style: Style, index: int, father: Member, mother: Member, age: int) -> Member:
    traits = style.child(rng, father.traits, mother.traits)
    sex = "m" if rng.random() < 0.5 else "f"
    return Member(index, sex, age, traits, father.index, mother.index)


def build_family(rng: np.random.Generator, config: SynthConfig, style: Style | None = None) -> list[Member]:
    """Two founders, 1-4 children and, in some families, in-laws with grandchildren."""
    style = style if style is not None else make_style(config)
    three_generations = rng.random() < config.grandchildren_rate
    elder_age = int(rng.integers(58, 82)) if three_generations else int(rng.integers(30, 56))
    members = [_founder(rng, style, 0, "m", elder_age + int(rng.integers(0, 5))), _founder(rng, style, 1, "f", elder_age)]
    for _ in range(int(rng.integers(1, 5))):
        age = int(rng.integers(max(1, elder_age - 42), elder_age - 19))
        members.append(_child(rng, style, len(members), members[0], members[1], age))
    if three_generations:
        children = members[2:]
        married = rng.choice(len(children), size=min(len(children), int(rng.integers(1, 3))), replace=False)
        for which in sorted(int(i) for i in married):
            _add_grandchildren(rng, style, members, children[which])
    return members


def _add_grandchildren(rng: np.random.Generator, style: Style, members: list[Member], parent: Member) -> None:
    # The in-law is a founder: no blood relation to anyone but their own children.
    in_law_sex = "f" if parent.sex == "m" else "m"
    in_law = _founder(rng, style, len(members), in_law_sex, max(20, parent.age + int(rng.integers(-4, 5))))
    members.append(in_law)
    father, mother = (parent, in_law) if parent.sex == "m" else (in_law, parent)
    for _ in range(int(rng.integers(1, 4))):
        age = int(rng.integers(1, max(2, min(parent.age, in_law.age) - 18)))
        members.append(_child(rng, style, len(members), father, mother, age))


def relationships(members: list[Member]) -> list[tuple[Member, Member, str]]:
    """Blood relations ``(p1, p2, type)``: parent/grandparent first, siblings in MID order."""
    result = []
    for a in members:
        for b in members:
            kind = _relation(members, a, b)
            if kind is not None:
                result.append((a, b, kind))
    return result


def _relation(members: list[Member], a: Member, b: Member) -> str | None:
    parents_of_b = {b.father, b.mother} - {None}
    elder = "f" if a.sex == "m" else "m"
    younger = "s" if b.sex == "m" else "d"
    if a.index in parents_of_b:
        return elder + younger
    if any(a.index in {members[p].father, members[p].mother} for p in parents_of_b):
        return "g" + elder + "g" + younger
    if a.index < b.index and b.father is not None and (a.father, a.mother) == (b.father, b.mother):
        return {"mm": "bb", "ff": "ss"}.get(a.sex + b.sex, "sibs")
    return None


# Every style lives in kinship/synth_styles/, each module exporting ``STYLE``; imported on use so that generating
# one style never pays for the others (``faces`` is imported anyway: this module re-exports its names).
STYLE_MODULES = {
    "faces": "kinship.synth_styles.faces",
    "mosaic": "kinship.synth_styles.mosaic",
    "eigen": "kinship.synth_styles.eigen",
    "critters": "kinship.synth_styles.critters",
}
STYLE_NAMES = tuple(STYLE_MODULES)


def make_style(config: "SynthConfig") -> Style:
    """The generator named by ``config.style``, built with the data set's seed and nuisance."""
    return _style(config.style, config.style_settings())


@lru_cache(maxsize=8)
def _style(name: str, settings: StyleSettings) -> Style:
    # Cached: a style may build fixed tables (bases, palettes) once per data set, not once per family.
    if name not in STYLE_MODULES:
        raise UserError(f"unknown style {name!r}: choose one of {', '.join(STYLE_NAMES)}")
    return importlib.import_module(STYLE_MODULES[name]).STYLE(settings)


# --------------------------------------------------------------------------- families -> files


def _seed(config: SynthConfig, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, *path]))


@dataclass
class FamilyResult:
    """What one worker made of one family: ids, relations and (test split) the encoded photos."""

    split: int
    family: str
    members: list[tuple[str, str]]  # (mid, sex)
    relations: list[tuple[str, str, str]]  # (p1 mid, p2 mid, type)
    photos: dict[str, list[str]] = field(default_factory=dict)  # mid -> file names (train)
    test_photos: dict[str, list[bytes]] = field(default_factory=dict)  # mid -> JPEG bytes (test)
    heritable: dict[str, np.ndarray] = field(default_factory=dict)  # mid -> oracle features (test)


def make_family(config: SynthConfig, split: int, number: int, root: Path) -> FamilyResult:
    """Build and draw family ``number`` of ``split``; train photos go to ``root/train/FXXXX/MIDn``."""
    style = make_style(config)
    rng = _seed(config, split, number)
    members = build_family(rng, config, style)
    name = f"F{number:04d}" if split == TRAIN else f"T{number:04d}"
    result = FamilyResult(split, name, [(m.mid, m.sex) for m in members],
                          [(a.mid, b.mid, kind) for a, b, kind in relationships(members)])
    low, high = config.images_per_person if split == TRAIN else config.test_images_per_person
    photo_number = 0
    for member in members:
        person_rng = _seed(config, split, number, member.index + 1)
        look = style.appearance(member.traits, member.sex, member.age, person_rng)
        count = int(person_rng.integers(low, high + 1))
        if split == TEST:
            result.heritable[member.mid] = style.oracle_features(member.traits)
        for k in range(count):
            photo_number += 1
            data = style.photo(look, _seed(config, split, number, member.index + 1, k + 1), config.size)
            if split == TRAIN:
                folder = root / "train" / name / member.mid
                folder.mkdir(parents=True, exist_ok=True)
                file_name = f"P{number:04d}{photo_number:03d}_face1.jpg"  # unique: <= 14 people x 50 photos
                (folder / file_name).write_bytes(data)
                result.photos.setdefault(member.mid, []).append(file_name)
            else:
                result.test_photos.setdefault(member.mid, []).append(data)
    return result


def _family_job(args: tuple) -> FamilyResult:
    return make_family(*args)


def _run_families(config: SynthConfig, root: Path, on_progress) -> Iterator[FamilyResult]:
    jobs = [(config, TRAIN, n, root) for n in range(1, config.families + 1)]
    jobs += [(config, TEST, n, root) for n in range(1, config.test_families + 1)]
    total, images = len(jobs), 0
    on_progress(ProgressEvent("families", 0, total, {"images": 0}))
    if config.workers == 1:
        results: Iterator[FamilyResult] = map(_family_job, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=config.workers, mp_context=get_context("spawn"))
        results = pool.map(_family_job, jobs, chunksize=2)  # ordered: output never depends on timing
    try:
        for done, result in enumerate(results, start=1):
            images += sum(len(v) for v in result.photos.values()) + sum(len(v) for v in result.test_photos.values())
            on_progress(ProgressEvent("families", done, total, {"images": images}))
            yield result
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_train_tables(root: Path, train: list[FamilyResult]) -> dict[str, int]:
    rows = [(f"{r.family}/{a}", f"{r.family}/{b}", kind) for r in train for a, b, kind in r.relations]
    _write_csv(root / "train_relationships.csv", ["p1", "p2"], [row[:2] for row in rows])
    _write_csv(root / "relationship_types.csv", ["p1", "p2", "type"], rows)
    counts = {kind: 0 for kind in RELATIONSHIP_TYPES}
    for row in rows:
        counts[row[2]] += 1
    return counts


def _write_test_set(config: SynthConfig, root: Path, test: list[FamilyResult]) -> tuple[int, int]:
    """Write test/faceNNNNN.jpg (numbered in a shuffled order, so names say nothing about families)
    and balanced related/unrelated pairs in sample_submission.csv and test_labels.csv."""
    rng = _seed(config, PAIRS)
    photos = [(r.family, mid, data) for r in test for mid, datas in r.test_photos.items() for data in datas]
    numbers = rng.permutation(len(photos)) + 1
    names: dict[tuple[str, str], list[str]] = {}
    (root / "test").mkdir()
    for (family, mid, data), number in zip(photos, numbers):
        name = f"face{int(number):05d}.jpg"
        (root / "test" / name).write_bytes(data)
        names.setdefault((family, mid), []).append(name)
    pairs = _test_pairs(rng, test, names)
    _write_csv(root / "sample_submission.csv", ["img_pair", "is_related"], [(pair, 0) for pair, _, _ in pairs])
    _write_csv(root / "test_labels.csv", ["img_pair", "is_related", "relationship"], pairs)
    _write_oracle(root, test, names)
    return len(photos), len(pairs)


ORACLE_FILE = "oracle.npz"  # the heritable features behind each test photo (the generator's truth)
RECORD_FILE = "synth.json"  # how the set was generated


def _write_oracle(root: Path, test: list[FamilyResult], names: dict) -> None:
    images, features = [], []
    for r in test:
        for mid, vector in r.heritable.items():
            for name in names.get((r.family, mid), []):
                images.append(name)
                features.append(vector)
    np.savez(root / ORACLE_FILE, images=np.asarray(images), features=np.asarray(features, dtype=np.float64))


def oracle_scores(data_dir: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    """The generator's own kin score for test image pairs ``(a.jpg, b.jpg)``: how much signal there is to find.

    Reads ``oracle.npz`` and ``synth.json`` written by ``generate``; raises ``UserError`` for other data sets.
    """
    data_dir = Path(data_dir)
    try:
        record = json.loads((data_dir / RECORD_FILE).read_text())
        with np.load(data_dir / ORACLE_FILE) as oracle:
            row = {str(name): i for i, name in enumerate(oracle["images"])}
            features = np.asarray(oracle["features"])
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{data_dir}: no generator truth ({ORACLE_FILE}, {RECORD_FILE}); only `kinship synth` sets have it") from error
    style = make_style(SynthConfig(style=record.get("style", "faces"), seed=record.get("seed", 0)))
    left = features[[row[a] for a, _ in pairs]]
    right = features[[row[b] for _, b in pairs]]
    return style.oracle_similarity(left, right)


def _write_record(root: Path, config: SynthConfig) -> None:
    record = {k: v for k, v in asdict(config).items() if k != "workers"}
    (root / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _test_pairs(rng: np.random.Generator, test: list[FamilyResult], names: dict) -> list[tuple[str, int, str]]:
    related = []
    for r in test:
        for a, b, kind in r.relations:
            left, right = rng.choice(names[(r.family, a)]), rng.choice(names[(r.family, b)])
            related.append((f"{left}-{right}", 1, kind))
    # Never ask for more unrelated pairs than exist (only tiny test sets come near that).
    sizes = [sum(len(v) for (family, _), v in names.items() if family == r.family) for r in test]
    possible = sum(sizes) ** 2 - sum(n * n for n in sizes)
    if len(related) > possible:
        related = [related[int(i)] for i in sorted(rng.permutation(len(related))[:possible])]
    people = sorted(names)
    unrelated: set[str] = set()
    while len(unrelated) < len(related):
        a, b = (people[int(i)] for i in rng.choice(len(people), 2, replace=False))
        if a[0] != b[0]:
            unrelated.add(f"{rng.choice(names[a])}-{rng.choice(names[b])}")
    pairs = related + [(pair, 0, UNRELATED) for pair in sorted(unrelated)]
    return [pairs[int(i)] for i in rng.permutation(len(pairs))]


def _disk_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def check_target(out: Path, force: bool) -> None:
    """Refuse an existing non-empty ``out`` unless ``force`` (and then only if it looks like a data set)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"--out {out} exists and is not empty (use --force to replace it)")
        if not (out / "train_relationships.csv").exists():
            raise UserError(f"--out {out} is not empty and does not look like a data set; refusing to replace it")


def generate(config: SynthConfig, out: Path, on_progress: Callable[[ProgressEvent], None] = silent,
             force: bool = False) -> SynthSummary:
    """Write a synthetic RFIW data set to ``out``; built in a temp folder beside it, renamed at the end."""
    config.validate()
    out = Path(out)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with atomic_folder(out) as staging:  # a killed run never leaves a set that looks complete
        (staging / "train").mkdir(parents=True)
        results = list(_run_families(config, staging, on_progress))
        train = [r for r in results if r.split == TRAIN]
        test = [r for r in results if r.split == TEST]
        counts = _write_train_tables(staging, train)
        test_images, test_pairs = _write_test_set(config, staging, test) if test else (0, 0)
        _write_record(staging, config)
        size_on_disk = _disk_bytes(staging)
    return SynthSummary(
        out=out, families=len(train), test_families=len(test), people=sum(len(r.members) for r in train),
        images=sum(len(v) for r in train for v in r.photos.values()), test_images=test_images,
        relationships=counts, test_pairs=test_pairs, bytes=size_on_disk, seconds=time.perf_counter() - started,
    )
