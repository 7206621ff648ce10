"""Pretraining on generated families: the encoder learns kinship from a mixture of synthetic styles.

``pretrain`` draws each style's families with ``kinship.synth.generate`` into ``P/data/<style>`` (reused when
its ``synth.json`` says it was drawn with the same settings), merges them into one RFIW-layout set
``P/data/mixture`` with every family renamed ``<style>-<family>`` (styles number their families alike, so
without the prefix ``F0001`` of two styles would be one family), and trains our normal model on it into ``P``
itself: ``P/model.pt`` is a run's model like any other, which ``kinship train --init`` fine-tunes and
``kinship tune --init`` may choose as its start. ``P/pretrain.json`` records what went in and how it scored.

Only train families are drawn: pretraining never needs test pairs, and validation families come from the
mixture's own split.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kinship.errors import UserError
from kinship.files import atomic_folder, write_atomic
from kinship.progress import Progress, ProgressEvent, silent
from kinship.synth import RECORD_FILE, STYLE_NAMES, SynthConfig, generate
from kinship.train_config import TrainConfig

DATA_FOLDER = "data"
MIXTURE = "mixture"
RECORD = "pretrain.json"
MIXTURE_RECORD = "mixture.json"
# What a training run leaves in its folder: removed by --force so that train() starts afresh (data/ is kept).
RUN_FILES = ("checkpoints", "model.pt", "metrics.json", "config.json", RECORD)


@dataclass(frozen=True)
class PretrainConfig:
    """What to pretrain on and how. ``train`` is the recipe (default ``TrainConfig()``); its image size is
    always ``image_size``, the size the families are drawn at."""

    styles: tuple[str, ...] = ("mosaic", "critters", "eigen")
    families: int = 150  # per style
    image_size: int = 64
    seed: int = 0  # every style is drawn with it: P/data/<style> is `kinship synth --style <style> --seed <seed>`
    workers: int = 2  # processes drawing families (the output does not depend on it)
    train: TrainConfig | None = None

    def validate(self) -> None:
        """Raise ``UserError`` naming the first bad value."""
        if not self.styles:
            raise UserError("--styles names no style: choose from " + ", ".join(STYLE_NAMES))
        unknown = [style for style in self.styles if style not in STYLE_NAMES]
        if unknown:
            raise UserError(f"unknown style {unknown[0]!r}: choose from {', '.join(STYLE_NAMES)}")
        if len(set(self.styles)) != len(self.styles):
            raise UserError(f"--styles names a style twice: {','.join(self.styles)}")
        for style in self.styles:
            self.synth_config(style).validate()
        recipe = self.train_config()
        # what --init and the recipe search can start from: one residual model, no pretrained trunk, no ensemble
        if recipe.arch != "residual" or recipe.backbone or recipe.folds != 1:
            raise UserError(f"pretraining trains one residual model: got arch {recipe.arch!r}, "
                            f"backbone {recipe.backbone!r}, folds {recipe.folds}")

    def synth_config(self, style: str) -> SynthConfig:
        """How one style's families are drawn."""
        return SynthConfig(families=self.families, test_families=0, size=self.image_size, seed=self.seed,
                           workers=self.workers, style=style)

    def train_config(self) -> TrainConfig:
        """The recipe, at the size the families were drawn at."""
        return replace(self.train or TrainConfig(), image_size=self.image_size)


@dataclass
class MixtureSummary:
    """What ``merge_styles`` wrote: families, people and images per style."""

    root: Path
    families: dict[str, int] = field(default_factory=dict)
    people: dict[str, int] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    relationships: int = 0


@dataclass
class PretrainResult:
    """What ``pretrain`` made: the model, the mixture it learned from and how well it did."""

    out: Path
    styles: tuple[str, ...]
    mixture: MixtureSummary
    train_config: TrainConfig
    best_epoch: int
    best_val_auc: float
    pixel_val_auc: float
    precision: str
    minutes: float
    reused: tuple[str, ...] = ()  # styles whose generated set was already there

    @property
    def model(self) -> Path:
        return self.out / "model.pt"

    def as_dict(self) -> dict:
        """The ``pretrain.json`` document (and ``--json``'s output)."""
        return {
            "model": str(self.model), "styles": list(self.styles), "mixture": str(self.mixture.root),
            "families": dict(self.mixture.families), "families_total": sum(self.mixture.families.values()),
            "people": dict(self.mixture.people), "images": dict(self.mixture.images),
            "images_total": sum(self.mixture.images.values()), "relationships": self.mixture.relationships,
            "reused_styles": list(self.reused), "best_epoch": self.best_epoch, "best_val_auc": self.best_val_auc,
            "pixel_val_auc": self.pixel_val_auc, "precision": self.precision, "minutes": round(self.minutes, 3),
            "train_config": asdict(self.train_config),
        }


def parse_styles(text: str) -> tuple[str, ...]:
    """``"mosaic,critters"`` as a tuple of style names (checked by ``PretrainConfig.validate``)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def pretrain(config: PretrainConfig, out: Path, on_progress: Progress = silent, force: bool = False) -> PretrainResult:
    """Generate every style, merge them into ``out/data/mixture`` and train ``out/model.pt`` on the mixture."""
    from kinship.train import train

    config.validate()
    out = Path(out)
    check_target(out, force)
    started = time.perf_counter()
    data = out / DATA_FOLDER
    reused = tuple(style for style in config.styles if generate_style(config, style, data, on_progress))
    mixture = merge_styles({style: data / style for style in config.styles}, data / MIXTURE, on_progress)
    train_config = config.train_config()
    result = train(mixture.root, out, train_config, on_progress=on_progress)
    outcome = PretrainResult(out, config.styles, mixture, train_config, result.best_epoch, result.best_auc,
                             result.pixel_baseline_auc, result.precision, (time.perf_counter() - started) / 60, reused)
    write_atomic(out / RECORD, json.dumps(outcome.as_dict(), indent=2) + "\n")
    return outcome


def check_target(out: Path, force: bool) -> None:
    """Refuse an existing non-empty ``out`` unless ``force``, and even then one that is not a pretraining folder;
    with ``force``, remove the earlier run (its generated styles stay for reuse)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"--out {out} exists and is not empty (use --force to replace the pretrained model)")
    if not ((out / RECORD).is_file() or (out / DATA_FOLDER).is_dir()):
        raise UserError(f"--out {out} is not empty and does not look like a pretraining folder; refusing to replace it")
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def generate_style(config: PretrainConfig, style: str, data: Path, on_progress: Progress = silent) -> bool:
    """Draw ``style``'s families into ``data/<style>``; True when a set drawn with the same settings was there."""
    synth = config.synth_config(style)
    target = data / style
    if _same_record(target / RECORD_FILE, synth):
        return True
    stage = f"generate {style}"
    generate(synth, target, lambda event: on_progress(replace(event, stage=stage)), force=True)
    return False


def _same_record(path: Path, synth: SynthConfig) -> bool:
    # synth.json holds the SynthConfig less ``workers`` (which never changes the output); compared as JSON
    # because tuples come back as lists.
    expected = json.loads(json.dumps({k: v for k, v in asdict(synth).items() if k != "workers"}))
    try:
        return json.loads(path.read_text()) == expected and (path.parent / "train_relationships.csv").is_file()
    except (OSError, ValueError):
        return False


def family_id(style: str, family: str) -> str:
    """A family's id in the mixture: the style first, so two styles' ``F0001`` stay two families."""
    return f"{style}-{family}"


def merge_styles(sources: dict[str, Path], target: Path, on_progress: Progress = silent) -> MixtureSummary:
    """Copy every style's train families into one RFIW-layout set at ``target`` with renamed family ids, and
    rewrite ``train_relationships.csv`` and ``relationship_types.csv`` to match. Built beside ``target`` and
    renamed at the end, so a set there is always complete. Files are copied: the layout reader refuses links."""
    summary = MixtureSummary(target)
    total = sum(len(_families(source)) for source in sources.values())
    with atomic_folder(target) as staging:
        (staging / "train").mkdir()
        for style, source in sources.items():
            _copy_families(style, source, staging, summary, on_progress, total)
        summary.relationships = _merge_tables(sources, staging)
        (staging / MIXTURE_RECORD).write_text(json.dumps({"styles": {s: str(p) for s, p in sources.items()},
                                                          "families": summary.families}, indent=2) + "\n")
    return summary


def _families(source: Path) -> list[Path]:
    return sorted(path for path in (source / "train").iterdir() if path.is_dir() and not path.is_symlink())


def _copy_families(style: str, source: Path, staging: Path, summary: MixtureSummary, on_progress: Progress,
                   total: int) -> None:
    done = sum(summary.families.values())
    summary.families[style] = summary.people[style] = summary.images[style] = 0
    for family in _families(source):
        for member in sorted(p for p in family.iterdir() if p.is_dir() and not p.is_symlink()):
            folder = staging / "train" / family_id(style, family.name) / member.name
            folder.mkdir(parents=True)
            for photo in sorted(p for p in member.iterdir() if p.is_file() and not p.is_symlink()):
                shutil.copyfile(photo, folder / photo.name)
                summary.images[style] += 1
            summary.people[style] += 1
        summary.families[style] += 1
        done += 1
        on_progress(ProgressEvent("merge styles", done, total, {"images": sum(summary.images.values())}))


def _merge_tables(sources: dict[str, Path], staging: Path) -> int:
    """Both relationship tables of every style, person ids renamed; returns the number of relationships."""
    rows: list[tuple[str, str, str]] = []
    for style, source in sources.items():
        with (source / "relationship_types.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.append((_person(style, row["p1"]), _person(style, row["p2"]), row["type"]))
    _write_csv(staging / "train_relationships.csv", ["p1", "p2"], [row[:2] for row in rows])
    _write_csv(staging / "relationship_types.csv", ["p1", "p2", "type"], rows)
    return len(rows)


def _person(style: str, person: str) -> str:
    family, _, mid = person.partition("/")
    return f"{family_id(style, family)}/{mid}"


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
