"""The synthetic family generator: exact Kaggle RFIW layout, blood relations, determinism, errors."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kinship.cli import main
from kinship.errors import UserError
from kinship.layout import RELATIONSHIP_TYPES, UNRELATED, read_dataset
from kinship.synth import SynthConfig, build_family, generate, relationships

SMALL = SynthConfig(families=6, test_families=3, size=64, seed=11, workers=1)


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "small"
    generate(SMALL, out)
    return out


def test_top_level_is_exactly_the_kaggle_layout(small_set):
    assert sorted(p.name for p in small_set.iterdir()) == [
        "oracle.npz", "relationship_types.csv", "sample_submission.csv", "synth.json", "test", "test_labels.csv", "train",
        "train_relationships.csv",
    ]  # the Kaggle layout, plus the generator's truth (types, test labels, heritable features, its configuration)
    families = sorted(p.name for p in (small_set / "train").iterdir())
    assert families == [f"F{n:04d}" for n in range(1, SMALL.families + 1)]


def test_member_folders_hold_several_face_photos(small_set):
    low, high = SMALL.images_per_person
    for member in sorted((small_set / "train").glob("*/*")):
        assert re.fullmatch(r"MID\d+", member.name), member
        photos = sorted(member.iterdir())
        assert low <= len(photos) <= high, member
        for photo in photos:
            assert re.fullmatch(r"P\d{5,}_face\d\.jpg", photo.name), photo
            with Image.open(photo) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (SMALL.size, SMALL.size))


def test_relationship_files_agree_and_name_existing_people(small_set):
    header, pairs = _rows(small_set / "train_relationships.csv")
    types_header, typed = _rows(small_set / "relationship_types.csv")
    assert header == ["p1", "p2"] and types_header == ["p1", "p2", "type"]
    assert pairs and [(r["p1"], r["p2"]) for r in pairs] == [(r["p1"], r["p2"]) for r in typed]
    for row in typed:
        assert row["type"] in RELATIONSHIP_TYPES
        for person in (row["p1"], row["p2"]):
            assert re.fullmatch(r"F\d{4}/MID\d+", person) and (small_set / "train" / person).is_dir()
        assert row["p1"].split("/")[0] == row["p2"].split("/")[0]  # relatives share a family folder


def test_test_pairs_name_existing_files_and_are_balanced(small_set):
    names = sorted(p.name for p in (small_set / "test").iterdir())
    assert names and all(re.fullmatch(r"face\d{5}\.jpg", name) for name in names)
    header, submission = _rows(small_set / "sample_submission.csv")
    labels_header, labels = _rows(small_set / "test_labels.csv")
    assert header == ["img_pair", "is_related"] and labels_header == ["img_pair", "is_related", "relationship"]
    assert [r["img_pair"] for r in submission] == [r["img_pair"] for r in labels]
    assert {r["is_related"] for r in submission} == {"0"}  # a placeholder, as in Kaggle
    for row in labels:
        left, right = row["img_pair"].split("-")
        assert left != right and {left, right} <= set(names)
        expected = UNRELATED if row["is_related"] == "0" else row["relationship"]
        assert row["relationship"] == expected and (expected == UNRELATED or expected in RELATIONSHIP_TYPES)
    related = sum(r["is_related"] == "1" for r in labels)
    assert related > 0 and related * 2 == len(labels)


def test_the_layout_reader_accepts_it_without_dropping_anything(small_set):
    dataset = read_dataset(small_set)
    assert dataset.report.dropped == {} and dataset.report.families == SMALL.families
    assert len(dataset.test_pairs) == len(_rows(small_set / "sample_submission.csv")[1])
    assert all(pair.label in (0, 1) for pair in dataset.test_pairs)


def test_test_families_are_not_train_families(small_set):
    # Test photos are of other people: none of their bytes appear among the train photos.
    train = {hashlib.sha256(p.read_bytes()).digest() for p in (small_set / "train").rglob("*.jpg")}
    assert not any(hashlib.sha256(p.read_bytes()).digest() in train for p in (small_set / "test").iterdir())


def _pedigrees(count: int, seed: int = 0) -> list:
    config = SynthConfig(seed=seed)
    return [build_family(np.random.default_rng([seed, n]), config) for n in range(count)]


def test_relations_are_blood_relations_with_the_right_type():
    for members in _pedigrees(80):
        for a, b, kind in relationships(members):
            parents_of_b = {b.father, b.mother}
            elder, younger = ("f" if a.sex == "m" else "m"), ("s" if b.sex == "m" else "d")
            if kind in ("fd", "fs", "md", "ms"):
                assert a.index in parents_of_b and kind == elder + younger
            elif kind.startswith("g"):
                grandparents = {members[p].father for p in parents_of_b} | {members[p].mother for p in parents_of_b}
                assert a.index in grandparents and kind == f"g{elder}g{younger}"
            else:
                assert (a.father, a.mother) == (b.father, b.mother) and a.father is not None
                assert kind == {"mm": "bb", "ff": "ss"}.get(a.sex + b.sex, "sibs")


def test_spouses_and_in_laws_are_related_only_to_their_own_children():
    for members in _pedigrees(80):
        related = {(a.index, b.index) for a, b, _ in relationships(members)}
        related |= {(b, a) for a, b in related}
        founders = [m for m in members if m.father is None]
        for x in founders:
            for y in founders:
                assert (x.index, y.index) not in related  # spouses, and in-laws with their in-laws
        for in_law in founders[2:]:
            kin = {b for a, b in related if a == in_law.index}
            assert kin == {m.index for m in members if in_law.index in (m.father, m.mother)}


def test_every_relationship_type_appears_and_grandchildren_exist():
    kinds = [kind for members in _pedigrees(60) for _, _, kind in relationships(members)]
    assert set(kinds) == set(RELATIONSHIP_TYPES)
    sizes = [len(members) for members in _pedigrees(60)]
    assert min(sizes) >= 3 and max(sizes) > 6  # 2 founders + 1-4 children, plus in-laws and grandchildren


def test_children_resemble_their_parents_more_than_strangers():
    families = _pedigrees(60)
    kin, strangers = [], []
    for members, others in zip(families, families[1:]):
        for a, b, _ in relationships(members):
            kin.append(np.abs(a.traits - b.traits).mean())
            strangers.append(np.abs(a.traits - others[-1].traits).mean())
    assert np.mean(kin) < 0.7 * np.mean(strangers)


def test_same_seed_gives_byte_identical_trees_whatever_the_workers(tmp_path):
    config = SynthConfig(families=4, test_families=2, size=48, seed=5, workers=1)
    generate(config, tmp_path / "a")
    generate(SynthConfig(**{**config.__dict__, "workers": 2}), tmp_path / "b")
    generate(SynthConfig(**{**config.__dict__, "seed": 6}), tmp_path / "c")
    assert _tree_hash(tmp_path / "a") == _tree_hash(tmp_path / "b")
    assert _tree_hash(tmp_path / "a") != _tree_hash(tmp_path / "c")


def test_the_smallest_test_set_is_still_balanced(tmp_path):
    config = SynthConfig(families=1, test_families=2, size=32, test_images_per_person=(1, 1), workers=1)
    generate(config, tmp_path / "set")
    _, labels = _rows(tmp_path / "set" / "test_labels.csv")
    related = sum(r["is_related"] == "1" for r in labels)
    assert related > 0 and related * 2 == len(labels) == len({r["img_pair"] for r in labels})


def test_a_failure_leaves_nothing_that_looks_complete(tmp_path):
    def fail_midway(event):
        if event.done == 2:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        generate(SynthConfig(families=4, test_families=0, size=32, workers=1), tmp_path / "set", fail_midway)
    assert list(tmp_path.iterdir()) == []


def test_cli_json_summary_matches_what_is_on_disk(tmp_path, capsys):
    out = tmp_path / "set"
    code = main(["synth", "--out", str(out), "--families", "3", "--test-families", "2", "--size", "32", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["families"] == 3 and summary["images"] == len(list((out / "train").rglob("*.jpg")))
    assert summary["test_images"] == len(list((out / "test").iterdir()))
    assert summary["relationships_total"] == len(_rows(out / "train_relationships.csv")[1])
    assert summary["test_pairs"] == len(_rows(out / "sample_submission.csv")[1])
    assert summary["bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def test_cli_prints_tables_for_people(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "set"), "--families", "2", "--test-families", "0", "--size", "32"]) == 0
    shown = capsys.readouterr().out
    assert "images_per_second" in shown and "MB on disk" in shown
    assert all(re.search(rf"\b{kind}\b", shown) for kind in RELATIONSHIP_TYPES)  # one row per type


@pytest.mark.parametrize("argv, named", [
    (["--families", "0"], "--families"),
    (["--size", "16"], "--size"),
    (["--test-families", "-1"], "--test-families"),
    (["--nuisance", "5"], "nuisance"),
])
def test_bad_values_exit_2_naming_the_value(tmp_path, capsys, argv, named):
    assert main(["synth", "--out", str(tmp_path / "set"), *argv]) == 2
    error = capsys.readouterr().err
    assert named in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "set").exists()


def test_existing_output_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "set"
    argv = ["synth", "--out", str(out), "--families", "2", "--test-families", "0", "--size", "32", "--json"]
    assert main(argv) == 0
    first = _tree_hash(out)
    assert main(argv) == 2 and "not empty" in capsys.readouterr().err
    assert main([*argv, "--seed", "9", "--force"]) == 0 and _tree_hash(out) != first
    stranger = tmp_path / "documents"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="does not look like a data set"):
        generate(SynthConfig(families=1, test_families=0, size=32), stranger, force=True)
    assert (stranger / "notes.txt").read_text() == "keep me"
