"""The Kaggle RFIW layout: train/FXXXX/MIDn/*.jpg, train_relationships.csv, test/*.jpg, sample_submission.csv.

Reading is tolerant of the untidy real download (each oddity is counted in ``CheckReport``);
only a missing ``train/``, a missing relationships file or a CSV without the expected columns is fatal.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from kinship.errors import UserError
from kinship.images import UnreadableImage, open_rgb
from kinship.progress import ProgressEvent, silent

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
    image_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> how many decoded images have it

    @property
    def common_size(self) -> str | None:
        """The most common image size (``"224x224"``), or None when no image was decoded."""
        return _majority_size(self.image_sizes)

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


# --- reading -------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_FORMAT_OF_EXTENSION = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
PREFERRED_SIZE = "224x224"  # the Kaggle crops; wins a tie for the most common size

RELATIONSHIPS_FILE = "train_relationships.csv"
TYPES_FILE = "relationship_types.csv"
SUBMISSION_FILE = "sample_submission.csv"
LABELS_FILE = "test_labels.csv"

# Reasons counted in CheckReport.dropped / .fixed (stable strings: tables, JSON and tests use them).
DROP_REL_NO_FOLDER = "relationship naming a person with no folder"
DROP_REL_NO_IMAGES = "relationship naming a person with no usable images"
DROP_REL_DUPLICATE = "duplicate relationship"
DROP_REL_SELF = "self-relationship"
DROP_REL_MALFORMED = "malformed relationship row"
DROP_EMPTY_MEMBER = "empty member folder"
DROP_UNREADABLE_MEMBER = "member folder with no readable images"
DROP_EMPTY_FAMILY = "family folder with no member folders"
DROP_CORRUPT_IMAGE = "corrupt or truncated image"
DROP_STRAY_FILE = "stray file (not an image)"
DROP_PAIR_UNREADABLE = "test pair naming an unreadable image"
FIX_GRAYSCALE = "grayscale image (converted to RGB)"
FIX_OTHER_SIZE = "image of another size (resized on load)"
FIX_WRONG_FORMAT = "image format does not match its extension (e.g. PNG named .jpg)"

_PAIR_SPLIT = re.compile(r"\.(?:jpe?g|png)-", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def read_dataset(
    root: Path, *, verify_images: bool = True, on_progress: Callable[[ProgressEvent], None] = silent
) -> Dataset:
    """Read a data set in the Kaggle RFIW layout at ``root``, dropping and counting what is unusable.

    The folders are listed and the CSVs parsed first so that their fatal mistakes (missing file, missing
    columns, a bad ``img_pair`` line) surface before the slow part. The CSVs are streamed row by row:
    ``train_relationships.csv`` costs memory for its distinct usable pairs, not for its size. Then every
    image is decoded once (progress stage ``"check images"``) unless ``verify_images`` is False, in which
    case files are only listed.
    Raises ``UserError`` for a missing folder, ``train/``, relationships file, expected column, or a bad
    ``img_pair`` line; everything else is counted in ``Dataset.report``.
    """
    root = Path(root)
    _require_layout(root)
    report = CheckReport()
    candidates = _scan_train(root, report)
    relationship_rows = _read_relationship_rows(root, set(candidates), report)
    types = _read_types(root, relationship_rows)
    test_files = _scan_test(root, report)
    raw_pairs = _read_test_pairs(root, test_files, report)
    all_images = [path for paths in candidates.values() for path in paths]
    all_images += [root / "test" / name for name in test_files or []]
    if verify_images:
        unusable = _verify_images(root, all_images, report, on_progress)
    else:
        unusable = set()
        report.notes.append("images listed, not decoded (verify_images=False)")
    people = _build_people(root, candidates, unusable, report)
    relationships = _resolve_relationships(relationship_rows, types, people, report)
    test_images = [name for name in test_files or [] if root / "test" / name not in unusable]
    test_pairs = _usable_pairs(raw_pairs, set(test_images), report)
    _fill_counts(report, people, relationships, test_images, test_pairs)
    return Dataset(root, people, relationships, test_images, test_pairs, report)


def _require_layout(root: Path) -> None:
    if not root.exists():
        raise UserError(f"data set folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a folder: {root} (expected a data set in the Kaggle RFIW layout)")
    if not (root / "train").is_dir():
        raise UserError(f"{root / 'train'}: folder missing (expected train/FXXXX/MIDn/*.jpg)")
    if not (root / RELATIONSHIPS_FILE).is_file():
        raise UserError(f"{root / RELATIONSHIPS_FILE}: file missing (expected columns p1,p2)")


def _fill_counts(report, people, relationships, test_images, test_pairs) -> None:
    report.families = len({person.family for person in people.values()})
    report.people = len(people)
    report.images = sum(len(person.images) for person in people.values())
    report.relationships = len(relationships)
    report.test_images = len(test_images)
    report.test_pairs = len(test_pairs)


# --- CSVs ----------------------------------------------------------------------------------------


@contextmanager
def _open_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[Any, list[int]]]:
    """A csv reader over the open file, past its header, and the column index of each ``required`` name.

    Rows are read from the file as they are asked for (the csv module bounds a field at 128 KiB), so no
    CSV is ever held in memory whole. Decoding and CSV errors met while reading become one-line ``UserError``s.
    """
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in required if name not in header]
            if missing:
                found = ",".join(header) or "nothing"
                raise UserError(f"{path.name}: expected columns {','.join(required)}, found {found}")
            yield reader, [header.index(name) for name in required]
    except UnicodeDecodeError as error:
        raise UserError(f"{path.name}: not a UTF-8 text CSV ({error.reason})") from error
    except csv.Error as error:
        raise UserError(f"{path.name}: not a valid CSV ({error})") from error


def _read_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of ``path``, one at a time, as (line number, required column -> stripped value); header is
    line 1, blank lines are skipped."""
    with _open_csv(path, required) as (reader, columns):
        for cells in reader:
            if any(cell.strip() for cell in cells):
                yield reader.line_num, {name: _cell(cells, i) for name, i in zip(required, columns)}


def _cell(cells: list[str], index: int) -> str:
    return cells[index].strip() if index < len(cells) else ""


def _read_relationship_rows(root: Path, folders: set[str], report: CheckReport) -> list[tuple[int, str, str]]:
    """(line, p1, p2) of each distinct pair of existing member folders in train_relationships.csv.

    Rows are streamed; a malformed row, a self-relationship, a row naming a person with no folder, or a
    repeat of a pair already kept is counted in ``report`` and forgotten as it is read. So memory follows
    the distinct usable pairs (at most people squared), never the file's length. The loop allocates as
    little as it can per row: the real file has thousands of rows, a hostile one millions.
    """
    seen: set[tuple[str, str]] = set()  # each kept pair, in sorted order
    kept = []
    with _open_csv(root / RELATIONSHIPS_FILE, ("p1", "p2")) as (reader, (first, second)):
        for cells in reader:
            p1, p2 = _cell(cells, first), _cell(cells, second)
            if not (p1 or p2 or any(cell.strip() for cell in cells)):
                continue  # a blank line
            pair = (p1, p2) if p1 < p2 else (p2, p1)
            reason = _relationship_problem(p1, p2, pair in seen, folders)
            if reason is None:
                seen.add(pair)
                kept.append((reader.line_num, p1, p2))
            else:
                _count_dropped_row(report, reason, reader.line_num, p1, p2)
    return kept


def _count_dropped_row(report: CheckReport, reason: str, line: int, p1: str, p2: str) -> None:
    # the example text is only built while the reason still collects examples (a million drops stay cheap)
    full = len(report.examples.get(reason, ())) >= 5
    report.count(report.dropped, reason, None if full else f"{RELATIONSHIPS_FILE} line {line}: {p1},{p2}")


def _read_types(root: Path, rows: list[tuple[int, str, str]]) -> dict[tuple[str, str], str]:
    """(p1, p2) -> type from the synthetic generator's relationship_types.csv, for the pairs of ``rows`` only."""
    path = root / TYPES_FILE
    if not path.is_file():
        return {}
    wanted = {frozenset((p1, p2)) for _, p1, p2 in rows}
    types: dict[tuple[str, str], str] = {}
    for line, row in _read_csv(path, ("p1", "p2", "type")):
        if row["type"] not in RELATIONSHIP_TYPES:
            expected = ", ".join(RELATIONSHIP_TYPES)
            raise UserError(f"{TYPES_FILE} line {line}: unknown type {_shown(row['type'])} (expected one of {expected})")
        if frozenset((row["p1"], row["p2"])) in wanted:
            types[(row["p1"], row["p2"])] = row["type"]
    return types


def _shown(value: str, limit: int = 80) -> str:
    """``value`` quoted for a one-line message: control characters escaped, long values cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def parse_img_pair(value: str) -> tuple[str, str]:
    """Split an ``img_pair`` (``face05508.jpg-face01210.jpg``) into two plain file names.

    Splits on the ``-`` that follows an image extension, so names containing dashes still work.
    Raises ``ValueError`` saying why when the value is not exactly two plain image file names.
    """
    if _CONTROL.search(value):
        raise ValueError("contains a control character")
    if "/" in value or "\\" in value:
        raise ValueError("is not two plain file names inside test/ (contains a path separator)")
    splits = list(_PAIR_SPLIT.finditer(value))
    if len(splits) != 1:
        raise ValueError("is not exactly two image file names joined by '-' (like a.jpg-b.jpg)")
    left, right = value[: splits[0].end() - 1], value[splits[0].end() :]
    for name in (left, right):
        if not _is_plain_image_name(name):
            raise ValueError(f"names {_shown(name)}, not a plain image file name (.jpg, .jpeg, .png)")
    return left, right


def _is_plain_image_name(name: str) -> bool:
    if name.startswith(".") or any(char in name for char in "/\\:") or _CONTROL.search(name):
        return False
    stem, dot, extension = name.rpartition(".")
    return bool(stem) and dot == "." and f".{extension.lower()}" in IMAGE_EXTENSIONS


def _read_test_pairs(root: Path, test_files: list[str] | None, report: CheckReport) -> list[TestPair]:
    """Every img_pair of sample_submission.csv, checked against test/; a bad line is a ``UserError``."""
    path = root / SUBMISSION_FILE
    if test_files is None or not path.is_file():
        if test_files is not None:
            report.notes.append(f"no {SUBMISSION_FILE}: no test pairs")
        elif path.is_file():
            report.notes.append(f"{SUBMISSION_FILE} ignored: there is no test/ folder")
        return []
    labels = _read_labels(root)
    present = set(test_files)
    pairs = []
    for line, row in _read_csv(path, ("img_pair", "is_related")):
        left, right = _checked_pair(row["img_pair"], line, present)
        label, kind = labels.get((left, right), labels.get((right, left), (None, None)))
        pairs.append(TestPair(line, left, right, label, kind))
    if labels and all(pair.label is None for pair in pairs):
        report.notes.append(f"{LABELS_FILE} matches no img_pair of {SUBMISSION_FILE}")
    return pairs


def _checked_pair(value: str, line: int, present: set[str]) -> tuple[str, str]:
    where = f"{SUBMISSION_FILE} line {line}: img_pair {_shown(value)}"
    try:
        left, right = parse_img_pair(value)
    except ValueError as error:
        raise UserError(f"{where} {error}") from None
    for name in (left, right):
        if name not in present:
            raise UserError(f"{where} names {name}, which is not an image file in test/")
    return left, right


def _read_labels(root: Path) -> dict[tuple[str, str], tuple[int, str | None]]:
    """(left, right) -> (is_related, relationship) from test_labels.csv (synthetic sets), if any."""
    path = root / LABELS_FILE
    if not path.is_file():
        return {}
    allowed = set(RELATIONSHIP_TYPES) | {UNKNOWN_TYPE, UNRELATED}
    labels = {}
    for line, row in _read_csv(path, ("img_pair", "is_related", "relationship")):
        try:
            pair = parse_img_pair(row["img_pair"])
        except ValueError as error:
            raise UserError(f"{LABELS_FILE} line {line}: img_pair {_shown(row['img_pair'])} {error}") from None
        if row["is_related"] not in ("0", "1"):
            raise UserError(f"{LABELS_FILE} line {line}: is_related {_shown(row['is_related'])} is not 0 or 1")
        kind = row["relationship"] or None
        if kind is not None and kind not in allowed:
            raise UserError(f"{LABELS_FILE} line {line}: unknown relationship {_shown(kind)}")
        labels[pair] = (int(row["is_related"]), kind)
    return labels


# --- folders -------------------------------------------------------------------------------------


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _scan_train(root: Path, report: CheckReport) -> dict[str, list[Path]]:
    """Person id -> candidate image files (sorted), for every member folder, even an empty one."""
    candidates: dict[str, list[Path]] = {}
    for family in _entries(root, root / "train", report):
        members = _entries(root, family, report)
        if not members:
            report.count(report.dropped, DROP_EMPTY_FAMILY, _relative(root, family))
        for member in members:
            candidates[f"{family.name}/{member.name}"] = _image_files(root, member, report)
    return candidates


def _entries(root: Path, folder: Path, report: CheckReport) -> list[Path]:
    """Sub-folders of ``folder`` (sorted); files and hidden entries beside them are counted as stray."""
    folders = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            folders.append(entry)
        else:
            report.count(report.dropped, DROP_STRAY_FILE, _relative(root, entry))
    return folders


def _image_files(root: Path, folder: Path, report: CheckReport) -> list[Path]:
    """Image files of ``folder`` (by extension, sorted); anything else is counted as stray."""
    images = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and _is_plain_image_name(entry.name):
            images.append(entry)
        else:
            report.count(report.dropped, DROP_STRAY_FILE, _relative(root, entry))
    return images


def _scan_test(root: Path, report: CheckReport) -> list[str] | None:
    """Image file names in test/, or None when there is no test/ folder (a train-only data set)."""
    folder = root / "test"
    if not folder.is_dir():
        report.notes.append("no test/ folder: train-only data set")
        return None
    return [path.name for path in _image_files(root, folder, report)]


# --- images --------------------------------------------------------------------------------------


def _inspect(path: Path) -> dict | None:
    """What decoding ``path`` had to fix, or None when it cannot be decoded."""
    try:
        _, fixes = open_rgb(path)
    except UnreadableImage:
        return None
    return fixes


def _verify_images(
    root: Path, paths: list[Path], report: CheckReport, on_progress: Callable[[ProgressEvent], None]
) -> set[Path]:
    """Decode every image once; count what was fixed; return the unusable ones.

    Pillow releases the GIL while decoding, so a few threads make this I/O-and-decode loop faster.
    """
    unusable: set[Path] = set()
    sizes: dict[Path, str] = {}
    total = len(paths)
    on_progress(ProgressEvent("check images", 0, total))
    with ThreadPoolExecutor(max_workers=_decode_threads()) as pool:
        for done, (path, fixes) in enumerate(zip(paths, pool.map(_inspect, paths)), start=1):
            if fixes is None:
                unusable.add(path)
                report.count(report.dropped, DROP_CORRUPT_IMAGE, _relative(root, path))
            else:
                sizes[path] = "{}x{}".format(*fixes["size"])
                _count_fixes(root, path, fixes, report)
            on_progress(ProgressEvent("check images", done, total, {"unreadable": len(unusable)}))
    _count_sizes(root, sizes, report)
    return unusable


def _decode_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _count_fixes(root: Path, path: Path, fixes: dict, report: CheckReport) -> None:
    if fixes.get("grayscale"):
        report.count(report.fixed, FIX_GRAYSCALE, _relative(root, path))
    if fixes.get("format") != _FORMAT_OF_EXTENSION[path.suffix.lower()]:
        report.count(report.fixed, FIX_WRONG_FORMAT, f"{_relative(root, path)} ({fixes.get('format')})")


def _count_sizes(root: Path, sizes: dict[Path, str], report: CheckReport) -> None:
    for size in sizes.values():
        report.image_sizes[size] = report.image_sizes.get(size, 0) + 1
    report.image_sizes = dict(sorted(report.image_sizes.items(), key=lambda item: (-item[1], item[0])))
    common = report.common_size
    for path, size in sizes.items():
        if size != common:
            report.count(report.fixed, FIX_OTHER_SIZE, f"{_relative(root, path)} ({size})")


def _majority_size(sizes: dict[str, int]) -> str | None:
    if not sizes:
        return None
    return max(sizes, key=lambda size: (sizes[size], size == PREFERRED_SIZE, size))


# --- people and pairs ----------------------------------------------------------------------------


def _build_people(
    root: Path, candidates: dict[str, list[Path]], unusable: set[Path], report: CheckReport
) -> dict[str, Person]:
    people = {}
    for person_id, paths in candidates.items():
        usable = tuple(path for path in paths if path not in unusable)
        if usable:
            family, mid = person_id.split("/")
            people[person_id] = Person(family, mid, usable)
        else:
            reason = DROP_UNREADABLE_MEMBER if paths else DROP_EMPTY_MEMBER
            report.count(report.dropped, reason, f"train/{person_id}")
    return people


def _resolve_relationships(
    rows: list[tuple[int, str, str]],
    types: dict[tuple[str, str], str],
    people: dict[str, Person],
    report: CheckReport,
) -> list[Relationship]:
    """Usable relationships: the distinct rows kept while reading whose two people have usable images."""
    result = []
    for line, p1, p2 in rows:
        if p1 not in people or p2 not in people:
            _count_dropped_row(report, DROP_REL_NO_IMAGES, line, p1, p2)
        elif (p1, p2) not in types and (p2, p1) in types:
            # types like "fd" are directional: keep the orientation the types file gives
            result.append(Relationship(p2, p1, types[(p2, p1)]))
        else:
            result.append(Relationship(p1, p2, types.get((p1, p2), UNKNOWN_TYPE)))
    return result


def _relationship_problem(p1: str, p2: str, repeated: bool, folders: set[str]) -> str | None:
    # the folder test comes before the duplicate test so that only kept pairs need remembering
    if not (_looks_like_person_id(p1) and _looks_like_person_id(p2)):
        return DROP_REL_MALFORMED
    if p1 == p2:
        return DROP_REL_SELF
    if p1 not in folders or p2 not in folders:
        return DROP_REL_NO_FOLDER
    if repeated:
        return DROP_REL_DUPLICATE
    return None


def _looks_like_person_id(value: str) -> bool:
    # ``FAMILY/MID``: exactly one slash, with text on both sides (tested without splitting: it runs once per row)
    return value.count("/") == 1 and not value.startswith("/") and not value.endswith("/")


def _usable_pairs(pairs: list[TestPair], usable: set[str], report: CheckReport) -> list[TestPair]:
    result = []
    for pair in pairs:
        if pair.left in usable and pair.right in usable:
            result.append(pair)
        else:
            report.count(report.dropped, DROP_PAIR_UNREADABLE, f"{SUBMISSION_FILE} line {pair.line}")
    return result


# --- fingerprint ---------------------------------------------------------------------------------


def dataset_fingerprint(dataset: Dataset, on_progress: Callable[[ProgressEvent], None] = silent) -> str:
    """sha256 naming the data set's content: every usable image, relationship and test pair.

    Each usable image contributes (path relative to the root, size in bytes, sha256 of its bytes),
    sorted by path; then the relationship rows and the test pairs (with their labels), sorted.
    Renaming the root folder does not change it; editing one image byte does.
    """
    images = [path for person in dataset.people.values() for path in person.images]
    images += [dataset.root / "test" / name for name in dataset.test_images]
    entries = sorted((_relative(dataset.root, path), path) for path in images)
    digest = hashlib.sha256(b"kinship-dataset-v1\n")
    for done, (relative, path) in enumerate(entries, start=1):
        digest.update(f"image\t{relative}\t{path.stat().st_size}\t{_file_sha256(path)}\n".encode())
        on_progress(ProgressEvent("fingerprint", done, len(entries)))
    for row in sorted((r.p1, r.p2, r.kind) for r in dataset.relationships):
        digest.update(("relationship\t" + "\t".join(row) + "\n").encode())
    for pair in sorted((p.left, p.right, str(p.label), str(p.kind)) for p in dataset.test_pairs):
        digest.update(("test_pair\t" + "\t".join(pair) + "\n").encode())
    return digest.hexdigest()


def _file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
