"""A listed folder swapped for a link to a folder outside the data set, after the listing and before the reads
(issue 23, defect 5).

O_NOFOLLOW guards only a path's last component: ``train/F1/MID1/P1.jpg`` opened with it still walks through
``train/F1`` when that has become a link. ``data check`` and training's reader list the files first and open them
later, so each test here lists the set for real, swaps a folder for a link to a look-alike folder outside (same
names, images of another size and a colour no face has), and then lets the reads run: the outside images must
never be decoded, hashed or trained on.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kinship import data, layout
from kinship.cli import main
from kinship.data import SplitConfig, prepare
from kinship.errors import UserError

OUTSIDE_SIZE = (41, 37)  # a size no image of the set has: it shows in ``image_sizes`` once decoded
OUTSIDE_COLOUR = (250, 5, 250)


@pytest.fixture
def root(tiny_data: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny data set (the tests swap its folders)."""
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    return copy


def swap_for_link(root: Path, relative: str, outside: Path) -> list[str]:
    """Replace ``root/relative`` with a link to a copy outside ``root`` whose images are all ``OUTSIDE_SIZE`` and
    ``OUTSIDE_COLOUR``; returns the swapped images' paths relative to ``root``."""
    folder = root / relative
    target = outside / relative.replace("/", "_")
    shutil.copytree(folder, target)
    images = sorted(p for p in target.rglob("*") if p.suffix.lower() in layout.IMAGE_EXTENSIONS)
    for image in images:
        Image.new("RGB", OUTSIDE_SIZE, OUTSIDE_COLOUR).save(image, format="JPEG")
    shutil.rmtree(folder)
    folder.symlink_to(target, target_is_directory=True)
    return [f"{relative}/{image.relative_to(target).as_posix()}" for image in images]


def first_member(root: Path) -> str:
    return sorted(p for p in (root / "train").glob("F*/MID*") if any(p.iterdir()))[0].relative_to(root).as_posix()


def run_check(root: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["data", "check", str(root), "--json"])
    return code, out.getvalue(), err.getvalue()


def holds_outside_image(pixels: np.ndarray) -> bool:
    """Whether any decoded image is the outside folder's solid colour."""
    means = np.asarray(pixels, dtype=np.float32).mean(axis=(1, 2))
    return bool((np.abs(means - np.asarray(OUTSIDE_COLOUR)).max(axis=1) < 12).any())


@pytest.mark.parametrize("which", ["member", "family", "test"])
def test_data_check_never_decodes_a_folder_swapped_for_a_link_after_the_listing(root, tmp_path, monkeypatch, which):
    relative = {"member": first_member(root), "test": "test"}.get(which) or first_member(root).rsplit("/", 1)[0]
    verify = layout._verify_images
    swapped: list[str] = []

    def swap_then_verify(*args, **kwargs):  # every folder is listed by now; no image is opened yet
        swapped.extend(swap_for_link(root, relative, tmp_path / "outside"))
        return verify(*args, **kwargs)

    monkeypatch.setattr(layout, "_verify_images", swap_then_verify)
    code, out, err = run_check(root)
    assert code == 0 and err == "", err
    payload = json.loads(out)
    assert "x".join(map(str, OUTSIDE_SIZE)) not in payload["image_sizes"], payload["image_sizes"]
    assert swapped and payload["dropped"][layout.DROP_LINK] >= len(swapped)
    assert set(payload["examples"][layout.DROP_LINK]) & set(swapped)


def test_data_check_refuses_a_folder_swapped_for_a_link_before_the_fingerprint(root, tmp_path, monkeypatch):
    verify = layout._verify_images

    def verify_then_swap(*args, **kwargs):  # the images were decoded inside the set; the fingerprint reads them again
        unusable = verify(*args, **kwargs)
        swap_for_link(root, first_member(root), tmp_path / "outside")
        return unusable

    monkeypatch.setattr(layout, "_verify_images", verify_then_swap)
    code, out, err = run_check(root)
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert "changed while the data set was read" in err


def test_training_never_decodes_a_folder_swapped_for_a_link_after_the_fingerprint(root, tmp_path, monkeypatch):
    fingerprint = data.dataset_fingerprint
    swapped: list[str] = []

    def fingerprint_then_swap(dataset, *args, **kwargs):  # listed and hashed inside the set; decoded next
        value = fingerprint(dataset, *args, **kwargs)
        swapped.extend(swap_for_link(root, first_member(root), tmp_path / "outside"))
        return value

    monkeypatch.setattr(data, "dataset_fingerprint", fingerprint_then_swap)
    prepared = prepare(root, 32, SplitConfig(val_fraction=0.25), cache_dir=tmp_path / "cache")
    assert swapped and not holds_outside_image(prepared.pixels)
    assert not {p.relative_to(root).as_posix() for p in prepared.table.paths} & set(swapped)
    assert prepared.dataset.report.dropped[layout.DROP_LINK] == len(swapped)


def test_training_refuses_a_folder_swapped_for_a_link_before_the_fingerprint(root, tmp_path, monkeypatch):
    read = data.read_dataset

    def read_then_swap(*args, **kwargs):  # listed inside the set; hashed and decoded next
        dataset = read(*args, **kwargs)
        swap_for_link(root, first_member(root), tmp_path / "outside")
        return dataset

    monkeypatch.setattr(data, "read_dataset", read_then_swap)
    with pytest.raises(UserError, match="changed while the data set was read"):
        prepare(root, 32, SplitConfig(val_fraction=0.25), cache_dir=tmp_path / "cache")


def test_test_images_are_never_read_through_a_linked_folder(tmp_path) -> None:
    """``kinship evaluate`` / ``submit`` decode ``test/`` below the set's root as training does: a ``test`` folder
    that is a link to elsewhere is refused (its images black and named), never read."""
    from kinship.evaluate import test_pixels
    from kinship.image_cache import content_fingerprint

    outside, root = tmp_path / "outside", tmp_path / "set"
    outside.mkdir()
    root.mkdir()
    Image.new("RGB", (40, 40), (250, 10, 10)).save(outside / "face.jpg")
    (root / "test").symlink_to(outside, target_is_directory=True)
    pixels, unreadable = test_pixels(root, ["face.jpg"], 32)
    assert list(unreadable) == [0] and not pixels[0].any()
    before = content_fingerprint([root / "test" / "face.jpg"], root=root)
    Image.new("RGB", (40, 40), (10, 250, 10)).save(outside / "face.jpg")
    assert content_fingerprint([root / "test" / "face.jpg"], root=root) == before  # the outside bytes never counted
