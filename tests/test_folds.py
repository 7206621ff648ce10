"""``kinship train --folds K``: K members over disjoint held-out family groups, one ensemble model used like any."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kinship.checkpoint import load_model
from kinship.cli import main
from kinship.layout import read_dataset
from kinship.pairs import split_families
from tests.conftest import TINY_TRAIN

FOLDS = 3
ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY_TRAIN, "epochs": 1}.items()]  # 3 members: keep each short


@pytest.fixture(scope="module")
def fold_run(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("folds") / "run"
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["train", "--data", str(tiny_data), "--out", str(out), "--folds", str(FOLDS), *ARGS, "--json"]) == 0
    return out, json.loads(buffer.getvalue())


def test_folds_hold_out_every_family_exactly_once(tiny_data) -> None:
    dataset = read_dataset(tiny_data)
    splits = [split_families(dataset, seed=0, folds=FOLDS, fold=k) for k in range(FOLDS)]
    held_out = [family for split in splits for family in split.val]
    assert len(held_out) == len(set(held_out)) == len({r.p1.split("/")[0] for r in dataset.relationships})
    for split in splits:
        assert not set(split.val) & set(split.train)


@pytest.mark.slow
def test_cross_validated_auc_and_spread(fold_run) -> None:
    out, summary = fold_run
    members = [json.loads((out / f"fold-{k}" / "metrics.json").read_text())["best_val_auc"] for k in (1, 2, 3)]
    assert summary["folds"] == FOLDS and summary["fold_val_aucs"] == members
    assert summary["cv_auc"] == pytest.approx(np.mean(members)) and summary["cv_auc_std"] == pytest.approx(np.std(members, ddof=1))
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["cv_auc"] == summary["cv_auc"] and "beats_baseline" in stored


@pytest.mark.slow
def test_the_ensemble_is_the_mean_of_its_members(fold_run) -> None:
    out, _ = fold_run
    ensemble, metadata = load_model(out / "model.pt")
    members = [load_model(out / f"fold-{k}" / "model.pt")[0] for k in (1, 2, 3)]
    size = TINY_TRAIN["image_size"]
    img0, img1 = torch.randn(5, 3, size, size), torch.randn(5, 3, size, size)
    with torch.no_grad():
        expected = torch.stack([m(img0, img1) for m in members]).mean(0)
        assert torch.allclose(ensemble(img0, img1), expected, atol=1e-6)
        # the encoder / head split holds: embed once, score with the head
        assert torch.allclose(ensemble.head(ensemble.encoder(img0), ensemble.encoder(img1)), expected, atol=1e-6)
    assert metadata["fold_val_aucs"] and metadata["val_families"] == []


@pytest.mark.slow
def test_the_ensemble_exports_builds_engines_and_submits(fold_run, tiny_data, tmp_path, capsys) -> None:
    out, _ = fold_run
    assert main(["export", str(out / "model.pt"), "--out", str(out / "model.onnx")]) == 0
    capsys.readouterr()
    assert main(["engines", "--onnx", str(out / "model.onnx"), "--data", str(tiny_data), "--out", str(tmp_path / "e"),
                 "--precisions", "fp32,int8", "--bench-batches", "4", "--bench-seconds", "0.05", "--json"]) == 0
    engines = {e["variant"]: e for e in json.loads(capsys.readouterr().out)["engines"]}
    assert engines["fp32"]["status"] == engines["int8"]["status"] == "built"
    assert engines["int8"]["validation"]["agreement"]["decision_agreement"] > 0.8
    submission = tmp_path / "submission.csv"
    assert main(["submit", "--model", str(out / "model.onnx"), "--data", str(tiny_data), "--out", str(submission)]) == 0
    with submission.open() as handle, (tiny_data / "sample_submission.csv").open() as expected:
        assert [r["img_pair"] for r in csv.DictReader(handle)] == [r["img_pair"] for r in csv.DictReader(expected)]


@pytest.mark.slow
def test_a_finished_fold_run_refuses_a_second_training_and_resumes_to_the_same_model(fold_run, tiny_data, capsys) -> None:
    out, summary = fold_run
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--folds", str(FOLDS), *ARGS]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    before = (out / "model.pt").stat().st_mtime_ns
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--resume", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["fold_val_aucs"] == summary["fold_val_aucs"] and (out / "model.pt").stat().st_mtime_ns >= before
