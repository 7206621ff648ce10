"""The INT8 calibration set: real pairs from the TRAINING families, stratified, stored as one ``.npz``.

Pairs are balanced kin / non-kin, and the kin half is spread evenly over the relationship types
present, so the activation ranges a quantizer sees cover grandparents and siblings as well as the
most common parent-child pairs. Validation families never enter the set: the engines are judged on
them afterwards. The file holds normalised float32 ``img0``/``img1`` (NCHW), labels, types and a JSON
``meta`` (families used, counts per type, image size, data fingerprint, split) and is written atomically.

It also holds what both backends need to feed a quantizer: fixed-size batches per model part and
the TensorRT calibration-cache naming and reuse rules (all plain numpy, testable without a GPU).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kinship import __version__
from kinship.errors import UserError
from kinship.files import write_atomic
from kinship.images import to_network_input
from kinship.engines.precision import Precision
from kinship.layout import UNRELATED, Dataset
from kinship.pairs import FamilySplit, ImageTable, PairSet
from kinship.progress import ProgressEvent, silent

FORMAT = "kinship-calibration/1"


@dataclass(frozen=True)
class CalibrationConfig:
    """How many pairs to draw (``batches * batch_size``) and with which seed."""

    batches: int = 8
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batches < 1 or self.batch_size < 1:
            raise UserError(f"--batches and --batch-size must be at least 1, got {self.batches} and {self.batch_size}")

    @property
    def pairs(self) -> int:
        return self.batches * self.batch_size


@dataclass
class CalibrationSet:
    """Normalised pairs ready for a quantizer, with where they came from."""

    img0: np.ndarray  # [N, 3, S, S] float32
    img1: np.ndarray
    label: np.ndarray  # [N] int64
    kind: np.ndarray  # [N] relationship type, "none" for unrelated
    meta: dict

    def __len__(self) -> int:
        return len(self.label)

    @property
    def image_size(self) -> int:
        return int(self.img0.shape[-1])

    def images(self) -> np.ndarray:
        """Every image of the set once per side, for the encoder: ``[2N, 3, S, S]``."""
        return np.concatenate((self.img0, self.img1))

    def fingerprint(self) -> str:
        """A short content hash: a calibration cache is only reused for the same pairs."""
        digest = hashlib.sha256()
        for array in (self.img0, self.img1):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- drawing pairs


def _spread(total: int, kinds: list[str], rng: np.random.Generator) -> dict[str, int]:
    """Split ``total`` as evenly as possible over ``kinds``; the remainder goes to randomly chosen kinds."""
    base, extra = divmod(total, len(kinds))
    lucky = set(rng.permutation(len(kinds))[:extra].tolist())
    return {kind: base + (1 if i in lucky else 0) for i, kind in enumerate(kinds)}


def _positives(dataset: Dataset, images_of: dict, families: set[str], count: int, rng: np.random.Generator):
    by_kind: dict[str, list] = {}
    for relationship in dataset.relationships:
        if relationship.p1.split("/")[0] in families and relationship.p1 in images_of and relationship.p2 in images_of:
            by_kind.setdefault(relationship.kind, []).append(relationship)
    if not by_kind:
        raise UserError("no relationships with images in the training families: nothing to calibrate on")
    left, right, kinds = [], [], []
    for kind, quota in _spread(count, sorted(by_kind), rng).items():
        if quota == 0:  # fewer pairs than types: some types get none this time
            continue
        pool = by_kind[kind]
        # Walk a permutation (repeated when the quota exceeds the pool) so each relationship is used before any twice.
        order = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-quota // len(pool)))])[:quota]
        for index in order:
            pair = [rng.choice(images_of[pool[index].p1]), rng.choice(images_of[pool[index].p2])]
            rng.shuffle(pair)
            left.append(pair[0])
            right.append(pair[1])
            kinds.append(kind)
    return left, right, kinds


def _negatives(images_of: dict, families: list[str], count: int, rng: np.random.Generator):
    people_of: dict[str, list[str]] = {}
    for person in sorted(images_of):
        if person.split("/")[0] in families:
            people_of.setdefault(person.split("/")[0], []).append(person)
    usable = sorted(people_of)
    if len(usable) < 2:
        raise UserError("unrelated calibration pairs need at least two training families with images")
    left, right = [], []
    for _ in range(count):
        first, second = rng.choice(len(usable), size=2, replace=False)  # two different families
        for side, family in ((left, usable[first]), (right, usable[second])):
            person = people_of[family][rng.integers(len(people_of[family]))]
            side.append(rng.choice(images_of[person]))
    return left, right


def draw_calibration_pairs(dataset: Dataset, table: ImageTable, split: FamilySplit, count: int, seed: int = 0) -> PairSet:
    """``count`` pairs from ``split.train`` only: half kin spread evenly over types, half cross-family."""
    rng = np.random.default_rng([seed, 0x5EED])
    images_of = table.images_of()
    families = set(split.train)
    n_pos = count // 2
    pos_left, pos_right, pos_kinds = _positives(dataset, images_of, families, n_pos, rng)
    neg_left, neg_right = _negatives(images_of, sorted(families), count - n_pos, rng)
    pairs = PairSet(
        left=np.asarray(pos_left + neg_left, dtype=np.int64),
        right=np.asarray(pos_right + neg_right, dtype=np.int64),
        label=np.concatenate((np.ones(len(pos_left), np.int64), np.zeros(len(neg_left), np.int64))),
        kind=np.asarray(pos_kinds + [UNRELATED] * len(neg_left), dtype=object),
    )
    return pairs.shuffled(rng)


# --------------------------------------------------------------------------- the set on disk


def build_calibration_set(
    data_dir: Path,
    image_size: int,
    split_config=None,
    config: CalibrationConfig = CalibrationConfig(),
    cache_dir: Path | None = None,
    on_progress: Callable[[ProgressEvent], None] = silent,
) -> CalibrationSet:
    """Read ``data_dir``, split it by family like training did, and draw the calibration pairs."""
    from kinship.data import SplitConfig, prepare

    split_config = split_config or SplitConfig()
    prepared = prepare(Path(data_dir), image_size, split_config, cache_dir, on_progress)
    return calibration_from_prepared(prepared, split_config, config, data_dir)


def calibration_from_prepared(prepared, split_config, config: CalibrationConfig, data_dir: Path | str = "") -> CalibrationSet:
    """The calibration set of an already prepared data set (``kinship.data.PreparedData``)."""
    pairs = draw_calibration_pairs(prepared.dataset, prepared.table, prepared.split, config.pairs, config.seed)
    families = sorted({prepared.table.person_of[i].split("/")[0] for i in np.concatenate((pairs.left, pairs.right))})
    kinds, counts = np.unique(pairs.kind.astype(str), return_counts=True)
    meta = {
        "format": FORMAT,
        "data_dir": str(data_dir),
        "data_fingerprint": prepared.fingerprint,
        "image_size": prepared.image_size,
        "split": {"val_fraction": split_config.val_fraction, "seed": split_config.seed},
        "config": asdict(config),
        "pairs": len(pairs),
        "counts_by_type": {str(k): int(c) for k, c in zip(kinds, counts)},
        "families_used": families,
        "train_families": len(prepared.split.train),
        "val_families": list(prepared.split.val),
        "code_version": __version__,
    }
    return CalibrationSet(
        img0=to_network_input(np.asarray(prepared.pixels[pairs.left])),
        img1=to_network_input(np.asarray(prepared.pixels[pairs.right])),
        label=pairs.label, kind=pairs.kind.astype(str), meta=meta,
    )


def save_calibration(calibration: CalibrationSet, path: Path) -> Path:
    """Write the set to ``path`` (``.npz``) through a temp name, so a half-written file never appears."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(f"calibration file must end in .npz, got {path}")
    return write_atomic(path, lambda handle: np.savez(
        handle, img0=calibration.img0, img1=calibration.img1, label=calibration.label,
        kind=calibration.kind.astype(str), meta=np.asarray(json.dumps(calibration.meta)),
    ))


def load_calibration(path: Path) -> CalibrationSet:
    """Read a file written by ``save_calibration``; anything else is a one-line UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"calibration file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("img0", "img1", "label", "kind", "meta")}
        meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{path} is not a kinship calibration file ({type(error).__name__}: {error})") from error
    if meta.get("format") != FORMAT or arrays["img0"].shape != arrays["img1"].shape or arrays["img0"].ndim != 4:
        raise UserError(f"{path} is not a kinship calibration file (format {meta.get('format')!r}, expected {FORMAT!r})")
    return CalibrationSet(arrays["img0"].astype(np.float32), arrays["img1"].astype(np.float32),
                          arrays["label"], arrays["kind"], meta)


def check_compatible(calibration: CalibrationSet, image_size: int, val_families: tuple[str, ...] = ()) -> None:
    """Refuse a set at the wrong image size, or one that drew from families now held out for validation."""
    if calibration.image_size != image_size:
        raise UserError(f"calibration set is {calibration.image_size}px but the model takes {image_size}px: "
                        f"rerun kinship calibrate with --image-size {image_size}")
    leaked = sorted(set(calibration.meta.get("families_used", ())) & set(val_families))
    if leaked:
        raise UserError(f"calibration set uses validation families ({', '.join(leaked[:3])}...): "
                        "it was drawn with another split; rerun kinship calibrate with the model's split")


def calibration_for(variant: str, calibration: Path | None, image_size: int) -> CalibrationSet | None:
    """The calibration set an INT8 variant quantizes with, checked against the model's image size; None for
    the other variants. Without a file an INT8 variant is a UserError that says how to make one."""
    if not Precision.parse(variant).is_int8:
        return None
    if calibration is None:
        raise UserError(f"{variant} needs a calibration set: run kinship calibrate, then pass --calibration FILE")
    calibration_set = load_calibration(calibration)
    check_compatible(calibration_set, image_size)
    return calibration_set


# --------------------------------------------------------------------------- feeding a quantizer


def fixed_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Equal-size batches over aligned arrays (TensorRT calibrates at one fixed shape).

    A remainder shorter than ``batch_size`` is dropped; a set shorter than one batch is tiled to fill it.
    """
    count = len(next(iter(arrays.values())))
    if any(len(a) != count for a in arrays.values()) or count == 0:
        raise ValueError("calibration arrays must be non-empty and of equal length")
    if count < batch_size:
        reps = -(-batch_size // count)
        arrays = {k: np.concatenate([a] * reps)[:batch_size] for k, a in arrays.items()}
        count = batch_size
    return [
        {k: np.ascontiguousarray(a[s : s + batch_size]) for k, a in arrays.items()}
        for s in range(0, count - batch_size + 1, batch_size)
    ]


def part_arrays(
    calibration: CalibrationSet, part: str, embed: Callable[[np.ndarray], np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Input arrays for one model part: pairs, single images, or FP32 embeddings (``embed`` needed for the head)."""
    if part == "pair":
        return {"img0": calibration.img0, "img1": calibration.img1}
    if part == "encoder":
        return {"image": calibration.images()}
    if part == "head":
        if embed is None:
            raise ValueError("the head is calibrated on embeddings: pass the FP32 encoder as embed")
        return {"emb0": embed(calibration.img0), "emb1": embed(calibration.img1)}
    raise ValueError(f"unknown model part {part!r}")


def cache_path(out_dir: Path, part: str, calibration: CalibrationSet, model_digest: str, method: str,
               release: str) -> Path:
    """Where TensorRT's calibration table for this (model, part, pairs, method) lives, for one TensorRT release and
    GPU (``release``: ``tensorrt_compat.release_key``, which names the file as the timing cache's does).

    The name carries a digest of the four inputs, so a rebuild with the same inputs reuses the table and any
    change (new weights, new pairs) misses it instead of silently applying stale scales.
    """
    key = hashlib.sha256(f"{model_digest}|{part}|{calibration.fingerprint()}|{method}".encode()).hexdigest()[:12]
    return Path(out_dir) / f"calibration-{release}-{part}-{key}.cache"


@dataclass(frozen=True)
class CalibrationTable:
    """TensorRT's calibration table for one part on disk, stamped with the release and GPU that wrote it.

    The file is a first line ``kinship-calibration <release>`` and then TensorRT's table as it gave it: a table from
    another release or GPU (a copied out folder, a file from before the stamp) is refused with one line and TensorRT
    calibrates afresh, as the timing cache does."""

    path: Path
    release: str

    def _stamp(self) -> bytes:
        return f"kinship-calibration {self.release}\n".encode()

    def read(self, on_refused: Callable[[str], None]) -> bytes | None:
        """TensorRT's table, or None (TensorRT then calibrates from the batches)."""
        stored = read_cache(self.path)
        if stored is None:
            return None
        if stored.startswith(self._stamp()):
            return stored[len(self._stamp()):] or None
        first = stored.split(b"\n", 1)[0][:80].decode("ascii", "replace")
        on_refused(f"calibration table {self.path.name} was written by another TensorRT or GPU "
                   f"(first line {first!r}, this is {self.release}): calibrating afresh")
        return None

    def write(self, table: bytes) -> None:
        write_cache(self.path, self._stamp() + bytes(table))


def read_cache(path: Path) -> bytes | None:
    """The stored table, or None (TensorRT then calibrates from the batches)."""
    path = Path(path)
    return path.read_bytes() if path.is_file() and path.stat().st_size > 0 else None


def write_cache(path: Path, table: bytes) -> None:
    """Store a calibration (or timing) table whole or not at all: TensorRT may read it in the next build."""
    write_atomic(path, bytes(table))
