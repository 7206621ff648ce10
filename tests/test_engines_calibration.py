"""The INT8 calibration set: stratified, deterministic, training families only, atomic file, cache rules."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from kinship.cli import main
from kinship.data import SplitConfig, prepare
from kinship.engines.calibration import (
    CalibrationConfig, build_calibration_set, cache_path, check_compatible, draw_calibration_pairs, fixed_batches,
    load_calibration, part_arrays, read_cache, save_calibration, write_cache,
)
from kinship.errors import UserError
from kinship.layout import UNRELATED

SIZE = 32


@pytest.fixture(scope="module")
def prepared(tiny_data):
    return prepare(tiny_data, SIZE, SplitConfig())


def _family(prepared, index: int) -> str:
    return prepared.table.person_of[index].split("/")[0]


def test_pairs_come_from_training_families_only(prepared):
    pairs = draw_calibration_pairs(prepared.dataset, prepared.table, prepared.split, 200, seed=1)
    families = {_family(prepared, i) for i in np.concatenate((pairs.left, pairs.right))}
    assert families <= set(prepared.split.train)
    assert not families & set(prepared.split.val)


def test_pairs_are_balanced_and_spread_over_types(prepared):
    pairs = draw_calibration_pairs(prepared.dataset, prepared.table, prepared.split, 201, seed=2)
    assert len(pairs) == 201
    assert int(pairs.label.sum()) == 100  # count // 2 kin, the rest unrelated
    kinds = Counter(pairs.kind[pairs.label == 1].tolist())
    train = set(prepared.split.train)
    available = {r.kind for r in prepared.dataset.relationships if r.p1.split("/")[0] in train}
    assert set(kinds) == available  # every type present in the training families is represented
    assert max(kinds.values()) - min(kinds.values()) <= 1  # and evenly
    assert set(pairs.kind[pairs.label == 0].tolist()) == {UNRELATED}


def test_positives_are_relatives_and_negatives_cross_families(prepared):
    pairs = draw_calibration_pairs(prepared.dataset, prepared.table, prepared.split, 120, seed=3)
    related = {frozenset((r.p1, r.p2)) for r in prepared.dataset.relationships}
    people = prepared.table.person_of
    for left, right, label in zip(pairs.left, pairs.right, pairs.label):
        if label:
            assert frozenset((people[left], people[right])) in related
        else:
            assert _family(prepared, left) != _family(prepared, right)


def test_drawing_is_deterministic_per_seed(prepared):
    first = draw_calibration_pairs(prepared.dataset, prepared.table, prepared.split, 64, seed=5)
    again = draw_calibration_pairs(prepared.dataset, prepared.table, prepared.split, 64, seed=5)
    other = draw_calibration_pairs(prepared.dataset, prepared.table, prepared.split, 64, seed=6)
    assert np.array_equal(first.left, again.left) and np.array_equal(first.right, again.right)
    assert not (np.array_equal(first.left, other.left) and np.array_equal(first.right, other.right))


def test_set_round_trips_through_its_file(tiny_data, tmp_path):
    config = CalibrationConfig(batches=3, batch_size=8, seed=0)
    calibration = build_calibration_set(tiny_data, SIZE, SplitConfig(), config)
    assert calibration.img0.shape == (24, 3, SIZE, SIZE) and calibration.img0.dtype == np.float32
    assert -1.0 <= calibration.img0.min() and calibration.img1.max() <= 1.0  # normalised like training
    path = save_calibration(calibration, tmp_path / "calib.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["calib.npz"]  # no partial left behind
    loaded = load_calibration(path)
    assert np.array_equal(loaded.img0, calibration.img0) and np.array_equal(loaded.kind, calibration.kind)
    assert loaded.meta == calibration.meta
    assert sum(loaded.meta["counts_by_type"].values()) == 24
    assert set(loaded.meta["families_used"]).isdisjoint(loaded.meta["val_families"])
    assert loaded.fingerprint() == calibration.fingerprint()


def test_bad_calibration_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_calibration(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an npz")
    with pytest.raises(UserError, match="junk.npz"):
        load_calibration(junk)
    other = tmp_path / "other.npz"
    np.savez(other, img0=np.zeros(3))
    with pytest.raises(UserError, match="other.npz"):
        load_calibration(other)


def test_incompatible_sets_are_refused(tiny_data):
    calibration = build_calibration_set(tiny_data, SIZE, SplitConfig(), CalibrationConfig(batches=1, batch_size=8))
    with pytest.raises(UserError, match="64px"):
        check_compatible(calibration, 64)
    used = calibration.meta["families_used"]
    with pytest.raises(UserError, match="validation families"):
        check_compatible(calibration, SIZE, (used[0],))
    check_compatible(calibration, SIZE, tuple(calibration.meta["val_families"]))


def test_fixed_batches_drop_the_remainder_and_tile_short_sets():
    arrays = {"a": np.arange(10), "b": np.arange(10) * 2}
    batches = fixed_batches(arrays, 4)
    assert [len(b["a"]) for b in batches] == [4, 4]
    assert np.array_equal(batches[1]["b"], np.arange(4, 8) * 2)
    short = fixed_batches({"a": np.arange(3)}, 7)
    assert len(short) == 1 and short[0]["a"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError):
        fixed_batches({"a": np.arange(3), "b": np.arange(4)}, 2)


def test_part_arrays_feed_each_model_part(tiny_data):
    calibration = build_calibration_set(tiny_data, SIZE, SplitConfig(), CalibrationConfig(batches=1, batch_size=6))
    assert set(part_arrays(calibration, "pair")) == {"img0", "img1"}
    assert part_arrays(calibration, "encoder")["image"].shape == (12, 3, SIZE, SIZE)
    head = part_arrays(calibration, "head", embed=lambda images: images.reshape(len(images), -1)[:, :5])
    assert head["emb0"].shape == (6, 5) and np.array_equal(head["emb1"], calibration.img1.reshape(6, -1)[:, :5])
    with pytest.raises(ValueError):
        part_arrays(calibration, "head")


M40 = "tensorrt-8.5.3.1-tesla-m40-sm52"  # tensorrt_compat.release_key("8.5.3.1", "Tesla M40", (5, 2))


def test_cache_names_change_with_any_input_and_rebuilds_reuse_them(tiny_data, tmp_path):
    first = build_calibration_set(tiny_data, SIZE, SplitConfig(), CalibrationConfig(batches=1, batch_size=8, seed=0))
    second = build_calibration_set(tiny_data, SIZE, SplitConfig(), CalibrationConfig(batches=1, batch_size=8, seed=1))
    path = cache_path(tmp_path, "pair", first, "digest-a", "entropy2", M40)
    assert path == cache_path(tmp_path, "pair", first, "digest-a", "entropy2", M40)  # a rebuild finds the same table
    others = {cache_path(tmp_path, "encoder", first, "digest-a", "entropy2", M40),
              cache_path(tmp_path, "pair", second, "digest-a", "entropy2", M40),
              cache_path(tmp_path, "pair", first, "digest-b", "entropy2", M40),
              cache_path(tmp_path, "pair", first, "digest-a", "minmax", M40),
              cache_path(tmp_path, "pair", first, "digest-a", "entropy2", "tensorrt-10.3.0-tesla-m40-sm52"),
              cache_path(tmp_path, "pair", first, "digest-a", "entropy2", "tensorrt-8.5.3.1-tesla-p40-sm61")}
    assert path not in others and len(others) == 6
    assert M40 in path.name  # keyed by TensorRT version and GPU, as the timing cache is
    assert read_cache(path) is None
    write_cache(path, b"TRT-1234-EntropyCalibration2\n")
    assert read_cache(path) == b"TRT-1234-EntropyCalibration2\n"
    assert not list(tmp_path.glob(".*partial*"))


def test_a_calibration_table_from_another_release_is_refused_in_one_line(tmp_path):
    from kinship.engines.calibration import CalibrationTable

    said = []
    table = CalibrationTable(tmp_path / "calibration.cache", M40)
    assert table.read(said.append) is None and said == []  # none yet: quiet
    table.write(b"TRT-8503-EntropyCalibration2\nimg0: 3c010a14\n")
    assert table.read(said.append) == b"TRT-8503-EntropyCalibration2\nimg0: 3c010a14\n" and said == []
    for release in ("tensorrt-10.3.0-tesla-m40-sm52", "tensorrt-8.5.3.1-tesla-p40-sm61"):
        assert CalibrationTable(table.path, release).read(said.append) is None
        assert "\n" not in said[-1] and M40 in said[-1] and release in said[-1] and "calibrating afresh" in said[-1]
    write_cache(table.path, b"TRT-8503-EntropyCalibration2\nimg0: 3c010a14\n")  # unstamped: from before the stamp
    assert table.read(said.append) is None and "TRT-8503" in said[-1] and len(said) == 3


def test_calibrate_command(tiny_data, tmp_path, capsys):
    out = tmp_path / "calib.npz"
    code = main(["calibrate", "--data", str(tiny_data), "--out", str(out), "--batches", "2", "--batch-size", "8",
                 "--image-size", str(SIZE), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and out.is_file()
    assert printed["pairs"] == 16 and printed["image_size"] == SIZE and printed["bytes"] == out.stat().st_size
    assert load_calibration(out).meta["config"] == {"batches": 2, "batch_size": 8, "seed": 0}


def test_calibrate_rejects_a_bad_target(tiny_data, tmp_path, capsys):
    code = main(["calibrate", "--data", str(tiny_data), "--out", str(tmp_path / "calib.txt"), "--image-size", str(SIZE)])
    assert code == 2 and "calib.txt" in capsys.readouterr().err
