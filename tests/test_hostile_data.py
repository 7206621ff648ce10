"""The hostile data set of issue 12, through the real command line and the training reader.

A copy of a Kaggle-layout set with hostile files planted: a member image that is a link to a file outside
the set, a 20000x20000 PNG named .jpg, a relationships row of bytes that are not UTF-8 and a labels file
without its optional column. ``kinship data check`` (a subprocess, as a user runs it) keeps the rest, names
each planted file under its own reason and exits 0; training's reader drops the same images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from kinship import layout
from kinship.data import SplitConfig, prepare
from kinship.images import OversizedImage

MARKER = "kinship-secret-marker-4d1f"


def plant_hostile_files(root: Path, outside: Path) -> dict[str, str]:
    """Plant the measured cases in the data set at ``root``; returns planted path -> expected reason."""
    outside.write_text(f"root:x:0:0:{MARKER}\n")
    member = sorted((root / "train").glob("F*/MID*"))[1]
    link = member / "P00012_face0.jpg"
    link.symlink_to(outside)
    bomb = sorted((root / "train").glob("F*/MID*"))[2] / "P99999_face0.jpg"
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    with (root / "train_relationships.csv").open("ab") as handle:
        handle.write(b"F0001/MID1,\xff\xfe\xfa\n")
    with (root / "test_labels.csv").open("r") as source:
        rows = [line.rsplit(",", 1)[0] for line in source.read().splitlines()]
    (root / "test_labels.csv").write_text("\n".join(["img_pair,is_related", *rows[1:]]) + "\n")
    return {
        link.relative_to(root).as_posix(): layout.DROP_LINK,
        bomb.relative_to(root).as_posix(): OversizedImage.reason,
    }


@pytest.fixture(scope="module")
def hostile(tiny_data: Path, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "data"
    shutil.copytree(tiny_data, root)
    return root, plant_hostile_files(root, base / "passwd")


def test_data_check_keeps_the_rest_and_names_every_planted_file(hostile) -> None:
    root, planted = hostile
    result = subprocess.run([sys.executable, "-m", "kinship", "data", "check", str(root), "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning, no traceback
    payload = json.loads(result.stdout)
    for path, reason in planted.items():
        assert path in payload["examples"][reason], (path, reason, payload["examples"])
    assert payload["dropped"][layout.DROP_ROW_NOT_UTF8] == 1
    assert payload["counts"]["test_pairs"] > 0 and payload["counts"]["relationships"] > 0
    assert MARKER not in result.stdout


def test_training_reader_drops_the_same_images_under_their_reasons(hostile, tmp_path) -> None:
    root, planted = hostile
    prepared = prepare(root, 32, SplitConfig(val_fraction=0.25), cache_dir=tmp_path / "cache")
    images = {path.relative_to(root).as_posix() for person in prepared.dataset.people.values() for path in person.images}
    assert not images & set(planted)
    dropped = prepared.dataset.report.dropped
    assert dropped[OversizedImage.reason] == 1  # listed as a file, refused when decoded
    assert dropped[layout.DROP_LINK] == 1  # never listed as an image
    assert len(prepared.table.paths) == prepared.pixels.shape[0]
