"""Every generator style: the Kaggle layout, determinism, real kin signal in its truth, nuisance per photo."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kinship.cli import main
from kinship.layout import read_dataset
from kinship.metrics import roc_auc
from kinship.synth import STYLE_NAMES, SynthConfig, generate, make_style, oracle_scores

SMALL = dict(families=4, test_families=6, size=48, seed=5, workers=1)


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module", params=STYLE_NAMES)
def style_set(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "set"
    generate(SynthConfig(style=request.param, **SMALL), out)
    return request.param, out


def test_the_set_reads_as_the_kaggle_layout(style_set):
    style, root = style_set
    dataset = read_dataset(root)
    assert len({p.split("/")[0] for p in dataset.people}) == SMALL["families"]
    assert dataset.relationships and dataset.test_pairs
    assert not dataset.report.dropped, dataset.report.dropped
    for photo in list((root / "train").glob("*/*/*.jpg"))[:5]:
        with Image.open(photo) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (SMALL["size"],) * 2)


def test_same_seed_same_bytes_other_seed_other_bytes(style_set, tmp_path):
    style, root = style_set
    again = tmp_path / "again"
    generate(SynthConfig(style=style, **SMALL), again)
    assert _tree_hash(again) == _tree_hash(root)
    other = tmp_path / "other"
    generate(SynthConfig(style=style, **{**SMALL, "seed": 6, "families": 1, "test_families": 0}), other)
    first = sorted((root / "train" / "F0001").glob("*/*.jpg"))[0].read_bytes()
    assert first != sorted((other / "train" / "F0001").glob("*/*.jpg"))[0].read_bytes()


def test_the_generator_truth_separates_kin_from_strangers(style_set):
    style, root = style_set
    with (root / "test_labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    pairs = [tuple(r["img_pair"].split("-")) for r in rows]
    labels = np.asarray([int(r["is_related"]) for r in rows])
    assert 0 < labels.sum() < len(labels)
    assert roc_auc(labels, oracle_scores(root, pairs)) > 0.85, style


def test_photos_of_one_person_differ(style_set):
    style, root = style_set
    photos = [np.asarray(Image.open(p), dtype=np.float32) for p in sorted((root / "train" / "F0001" / "MID1").glob("*.jpg"))]
    assert len(photos) >= 2
    assert np.abs(photos[0] - photos[1]).mean() > 2.0, f"{style}: per-photo nuisance does not vary"


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_children_inherit_from_their_parents(style):
    # a child's heritable state is closer to its parents' than to unrelated founders', in every style
    config = SynthConfig(style=style, seed=0)
    style_impl = make_style(config)
    rng = np.random.default_rng(0)
    closer = 0
    for _ in range(40):
        father, mother, stranger = (style_impl.founder(rng) for _ in range(3))
        child = style_impl.child(rng, father, mother)
        features = [style_impl.oracle_features(g)[None] for g in (child, father, mother, stranger)]
        to_parent = max(style_impl.oracle_similarity(features[0], features[1])[0],
                        style_impl.oracle_similarity(features[0], features[2])[0])
        closer += to_parent > style_impl.oracle_similarity(features[0], features[3])[0]
    assert closer >= 36, f"{style}: child closer to a parent than to a stranger in only {closer}/40"


def test_unknown_style_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["synth", "--out", str(tmp_path / "x"), "--style", "nope"])
    assert exit_code.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
