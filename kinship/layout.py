"""The Kaggle RFIW layout: train/FXXXX/MIDn/*.jpg, train_relationships.csv, test/*.jpg, sample_submission.csv.

Reading is tolerant of the untidy real download and of hostile files (each oddity is counted in
``CheckReport``): one bad image, CSV row or link costs that image, row or link, never the data set.
Symbolic links and special files are never followed or read. Only a missing (or linked) ``train/`` or
relationships file, or a CSV whose header lacks a required column, is fatal.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Reading a CSV row by row is kinship.csv_rows'; its names stay importable from here, under the names used below.
from kinship.csv_rows import (  # noqa: F401
    _BOM, DROP_ROW_NOT_UTF8, DROP_ROW_TOO_LONG, DROP_ROW_UNPARSEABLE, MAX_CSV_LINE, _header, _physical_lines, _rows,
)
from kinship.csv_rows import cell as _cell
from kinship.csv_rows import count_row as _count_row
from kinship.csv_rows import open_csv as _open_csv
from kinship.csv_rows import read_csv as _read_csv
from kinship.csv_rows import shown as _shown
from kinship.csv_rows import split_row as _split_row  # noqa: F401
from kinship.errors import UserError
from kinship.files import open_regular, stream_digest
from kinship.images import NotRegularFile, UnreadableImage, max_image_pixels, open_rgb
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
                bucket.append(_printable(example))


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

# Reasons counted in CheckReport.dropped / .fixed (stable strings: tables, JSON and tests use them). An image that
# cannot be decoded is counted under its exception's own ``reason`` (``kinship.images.UnreadableImage`` and kin).
DROP_REL_NO_FOLDER = "relationship naming a person with no folder"
DROP_REL_NO_IMAGES = "relationship naming a person with no usable images"
DROP_REL_DUPLICATE = "duplicate relationship"
DROP_REL_SELF = "self-relationship"
DROP_REL_MALFORMED = "malformed relationship row"
DROP_EMPTY_MEMBER = "empty member folder"
DROP_UNREADABLE_MEMBER = "member folder with no readable images"
DROP_EMPTY_FAMILY = "family folder with no member folders"
DROP_LINK = NotRegularFile.reason
DROP_STRAY_FILE = "stray file (not an image)"
DROP_PAIR_UNREADABLE = "test pair naming an unreadable image"
DROP_PAIR_MALFORMED = "test pair row whose img_pair is not two image names"
DROP_PAIR_MISSING = "test pair naming an image not in test/"
DROP_TYPE_UNKNOWN = "relationship type row with an unknown type"
DROP_LABEL_MALFORMED = "test label row that cannot be used"
FIX_GRAYSCALE = "grayscale image (converted to RGB)"
FIX_OTHER_SIZE = "image of another size (resized on load)"
FIX_WRONG_FORMAT = "image format does not match its extension (e.g. PNG named .jpg)"

_PAIR_SPLIT = re.compile(r"\.(?:jpe?g|png)-", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # C0, C1, bidi overrides


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
    types = _read_types(root, relationship_rows, report)
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
    for name, kind in (("train", "folder"), (RELATIONSHIPS_FILE, "file")):
        if (root / name).is_symlink():
            raise UserError(f"{root / name}: a symbolic link (not followed: a data set's files must lie inside its folder)")
    if not (root / "train").is_dir():
        raise UserError(f"{root / 'train'}: folder missing (expected train/FXXXX/MIDn/*.jpg)")
    if not _is_regular(root / RELATIONSHIPS_FILE):
        raise UserError(f"{root / RELATIONSHIPS_FILE}: file missing (expected columns p1,p2)")


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _optional_file(root: Path, name: str, report: CheckReport) -> Path | None:
    """``root/name`` if it is a regular file; a link or special file there is counted and ignored."""
    path = root / name
    if _is_regular(path):
        return path
    if os.path.lexists(path) and not path.is_dir():
        report.count(report.dropped, DROP_LINK, name)
    return None


def _fill_counts(report, people, relationships, test_images, test_pairs) -> None:
    report.families = len({person.family for person in people.values()})
    report.people = len(people)
    report.images = sum(len(person.images) for person in people.values())
    report.relationships = len(relationships)
    report.test_images = len(test_images)
    report.test_pairs = len(test_pairs)


# --- CSVs ----------------------------------------------------------------------------------------


def _read_relationship_rows(root: Path, folders: set[str], report: CheckReport) -> list[tuple[int, str, str]]:
    """(line, p1, p2) of each distinct pair of existing member folders in train_relationships.csv.

    Rows are streamed; a malformed row, a self-relationship, a row naming a person with no folder, or a
    repeat of a pair already kept is counted in ``report`` and forgotten as it is read. So memory follows
    the distinct usable pairs (at most people squared), never the file's length. The loop allocates as
    little as it can per row: the real file has thousands of rows, a hostile one millions.
    """
    seen: set[tuple[str, str]] = set()  # each kept pair, in sorted order
    kept = []
    with _open_csv(root / RELATIONSHIPS_FILE, ("p1", "p2"), report) as (rows, columns):
        first, second = columns["p1"], columns["p2"]
        for line, cells in rows:
            p1, p2 = _cell(cells, first), _cell(cells, second)
            pair = (p1, p2) if p1 < p2 else (p2, p1)
            reason = _relationship_problem(p1, p2, pair in seen, folders)
            if reason is None:
                seen.add(pair)
                kept.append((line, p1, p2))
            else:
                _count_dropped_row(report, reason, line, p1, p2)
    return kept


def _count_dropped_row(report: CheckReport, reason: str, line: int, p1: str, p2: str) -> None:
    if len(report.examples.get(reason, ())) < 5:
        _count_row(report, reason, RELATIONSHIPS_FILE, line, f": {_shown(p1, 40)[1:-1]},{_shown(p2, 40)[1:-1]}")
    else:
        _count_row(report, reason, RELATIONSHIPS_FILE, line)


def _read_types(root: Path, rows: list[tuple[int, str, str]], report: CheckReport) -> dict[tuple[str, str], str]:
    """(p1, p2) -> type from the synthetic generator's relationship_types.csv, for the pairs of ``rows`` only.

    A row with an unknown type is counted and skipped (its relationship stays, typed ``kin``)."""
    path = _optional_file(root, TYPES_FILE, report)
    if path is None:
        return {}
    wanted = {frozenset((p1, p2)) for _, p1, p2 in rows}
    types: dict[tuple[str, str], str] = {}
    for line, row in _read_csv(path, ("p1", "p2", "type"), report):
        if row["type"] not in RELATIONSHIP_TYPES:
            _count_row(report, DROP_TYPE_UNKNOWN, TYPES_FILE, line, f": {_shown(row['type'], 40)}")
        elif frozenset((row["p1"], row["p2"])) in wanted:
            types[(row["p1"], row["p2"])] = row["type"]
    return types


def _printable(text: str, limit: int = 200) -> str:
    """``text`` safe for one terminal line: control characters (a newline, an escape sequence) escaped, cut."""
    text = _UNPRINTABLE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    """Every usable img_pair of sample_submission.csv, checked against test/.

    A row whose img_pair is not two plain image names, or names an image missing from test/, is counted
    with its line number and skipped (a submission then lacks it: ``data check`` says so first)."""
    path = _optional_file(root, SUBMISSION_FILE, report)
    if test_files is None or path is None:
        if test_files is not None:
            report.notes.append(f"no {SUBMISSION_FILE}: no test pairs")
        elif path is not None:
            report.notes.append(f"{SUBMISSION_FILE} ignored: there is no test/ folder")
        return []
    labels = _read_labels(root, report)
    present = set(test_files)
    pairs = []
    for line, row in _read_csv(path, ("img_pair", "is_related"), report):
        checked = _checked_pair(row["img_pair"], line, present, report)
        if checked is None:
            continue
        left, right = checked
        label, kind = labels.get((left, right), labels.get((right, left), (None, None)))
        pairs.append(TestPair(line, left, right, label, kind))
    if labels and all(pair.label is None for pair in pairs):
        report.notes.append(f"{LABELS_FILE} matches no img_pair of {SUBMISSION_FILE}")
    return pairs


def _checked_pair(value: str, line: int, present: set[str], report: CheckReport) -> tuple[str, str] | None:
    try:
        left, right = parse_img_pair(value)
    except ValueError as error:
        _count_row(report, DROP_PAIR_MALFORMED, SUBMISSION_FILE, line, f": img_pair {_shown(value)} {error}")
        return None
    for name in (left, right):
        if name not in present:
            _count_row(report, DROP_PAIR_MISSING, SUBMISSION_FILE, line, f": {_shown(name)}")
            return None
    return left, right


def _read_labels(root: Path, report: CheckReport) -> dict[tuple[str, str], tuple[int, str | None]]:
    """(left, right) -> (is_related, relationship) from test_labels.csv (synthetic sets), if any.

    ``relationship`` is optional; a row that cannot be used is counted with its line number and skipped."""
    path = _optional_file(root, LABELS_FILE, report)
    if path is None:
        return {}
    allowed = set(RELATIONSHIP_TYPES) | {UNKNOWN_TYPE, UNRELATED}
    labels = {}
    for line, row in _read_csv(path, ("img_pair", "is_related"), report, optional=("relationship",)):
        problem, pair = _label_problem(row, allowed)
        if problem:
            _count_row(report, DROP_LABEL_MALFORMED, LABELS_FILE, line, f": {problem}")
        else:
            labels[pair] = (int(row["is_related"]), row["relationship"] or None)
    return labels


def _label_problem(row: dict[str, str], allowed: set[str]) -> tuple[str | None, tuple[str, str] | None]:
    try:
        pair = parse_img_pair(row["img_pair"])
    except ValueError as error:
        return f"img_pair {_shown(row['img_pair'])} {error}", None
    if row["is_related"] not in ("0", "1"):
        return f"is_related {_shown(row['is_related'])} is not 0 or 1", None
    if row["relationship"] and row["relationship"] not in allowed:
        return f"unknown relationship {_shown(row['relationship'])}", None
    return None, pair


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
    """Sub-folders of ``folder`` (sorted); files and hidden entries beside them are counted as stray,
    symbolic links and special files as links (never followed)."""
    folders = []
    for entry in _listing(folder):
        if entry.is_symlink() or not (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)):
            report.count(report.dropped, DROP_LINK, _relative(root, Path(entry.path)))
        elif entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            folders.append(Path(entry.path))
        else:
            report.count(report.dropped, DROP_STRAY_FILE, _relative(root, Path(entry.path)))
    return folders


def _image_files(root: Path, folder: Path, report: CheckReport) -> list[Path]:
    """Image files of ``folder`` (by extension, sorted); links and special files are counted as links,
    anything else as stray."""
    images = []
    for entry in _listing(folder):
        if entry.is_symlink() or not (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)):
            report.count(report.dropped, DROP_LINK, _relative(root, Path(entry.path)))
        elif entry.is_file(follow_symlinks=False) and _is_plain_image_name(entry.name):
            images.append(Path(entry.path))
        else:
            report.count(report.dropped, DROP_STRAY_FILE, _relative(root, Path(entry.path)))
    return images


def _listing(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _scan_test(root: Path, report: CheckReport) -> list[str] | None:
    """Image file names in test/, or None when there is no test/ folder (a train-only data set)."""
    folder = root / "test"
    if folder.is_symlink():
        report.count(report.dropped, DROP_LINK, "test")
        report.notes.append("test/ is a symbolic link (not followed): train-only data set")
        return None
    if not folder.is_dir():
        report.notes.append("no test/ folder: train-only data set")
        return None
    return [path.name for path in _image_files(root, folder, report)]


# --- images --------------------------------------------------------------------------------------


def _inspect(root: Path, path: Path, max_pixels: int) -> dict | str:
    """What decoding ``path`` had to fix, or the reason it cannot be used (a ``CheckReport`` reason).

    Opened from ``root`` through no link: a listed folder swapped for a link since the listing is a counted link,
    never a read of what it points to."""
    try:
        _, fixes = open_rgb(path, max_pixels, root=root)
    except UnreadableImage as error:
        return error.reason
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
    max_pixels = max_image_pixels()  # read once: a bad setting is one error, not one per image
    on_progress(ProgressEvent("check images", 0, total))
    with ThreadPoolExecutor(max_workers=_decode_threads()) as pool:
        outcomes = pool.map(lambda path: _inspect(root, path, max_pixels), paths)
        for done, (path, fixes) in enumerate(zip(paths, outcomes), start=1):
            if isinstance(fixes, str):
                unusable.add(path)
                report.count(report.dropped, fixes, _relative(root, path))
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
    Renaming the root folder does not change it; editing one image byte does. Each image is read from the root
    through no link (``_image_digest``).
    Raises ``UserError`` when an image is gone or has become a link since the data set was read.
    """
    images = [path for person in dataset.people.values() for path in person.images]
    images += [dataset.root / "test" / name for name in dataset.test_images]
    entries = sorted(_relative(dataset.root, path) for path in images)
    digest = hashlib.sha256(b"kinship-dataset-v1\n")
    for done, relative in enumerate(entries, start=1):
        sha256, size = _image_digest(dataset.root, relative)
        digest.update(f"image\t{relative}\t{size}\t{sha256}\n".encode())
        on_progress(ProgressEvent("fingerprint", done, len(entries)))
    for row in sorted((r.p1, r.p2, r.kind) for r in dataset.relationships):
        digest.update(("relationship\t" + "\t".join(row) + "\n").encode())
    for pair in sorted((p.left, p.right, str(p.label), str(p.kind)) for p in dataset.test_pairs):
        digest.update(("test_pair\t" + "\t".join(pair) + "\n").encode())
    return digest.hexdigest()


def _image_digest(root: Path, relative: str) -> tuple[str, int]:
    """(sha256, size) of the image at ``relative`` below ``root``, reached folder by folder through no link: a
    folder replaced by a link after the listing would otherwise put an outside file's bytes in the fingerprint."""
    try:
        with open_regular(root / relative, root=root) as handle:
            return stream_digest(handle)
    except OSError as error:
        raise UserError(f"{_printable(str(root / relative))}: changed while the data set was read "
                        f"({error.strerror or error}); read it again") from None
