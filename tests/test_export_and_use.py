"""Export round trip, evaluate/submit/predict on a tiny set, and the bad-input cases."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from kinship.checkpoint import model_payload, save_atomic
from kinship.cli import main
from kinship.export import companion_paths, read_metadata
from kinship.model import ModelConfig, build_model


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_writes_three_checked_self_contained_files(tiny_onnx):
    files = companion_paths(tiny_onnx)
    for path in files.all():
        assert path.exists() and not path.with_name(path.name + ".data").exists()
        metadata = read_metadata(path)
        assert metadata["kinship.image_size"] == "32" and len(metadata["kinship.data_fingerprint"]) == 64
    assert not list(tiny_onnx.parent.glob(".*partial*"))


def test_onnx_matches_pytorch_on_evaluation(tiny_run, tiny_onnx, tiny_data, capsys):
    code, out_pt, _ = _cli(capsys, "evaluate", "--model", tiny_run / "model.pt", "--data", tiny_data, "--json")
    assert code == 0
    code, out_onnx, _ = _cli(capsys, "evaluate", "--model", tiny_onnx, "--data", tiny_data, "--json")
    assert code == 0
    pt, onnx_ = json.loads(out_pt), json.loads(out_onnx)
    assert pt["validation"]["pairs"] == onnx_["validation"]["pairs"] > 100
    assert onnx_["validation"]["auc"] == pytest.approx(pt["validation"]["auc"], abs=1e-4)
    assert onnx_["validation"]["loss"] == pytest.approx(pt["validation"]["loss"], abs=1e-4)
    assert set(pt["validation"]["accuracy_by_type"]) >= {"none", "fd"}
    assert pt["test"]["pairs"] > 0  # synthetic sets carry test labels


def test_dynamic_batch(tiny_onnx):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 33):
        x = np.random.default_rng(batch).normal(size=(batch, 3, 32, 32)).astype(np.float32)
        assert session.run(None, {"img0": x, "img1": x[::-1].copy()})[0].shape == (batch,)


def test_submit_scores_every_pair(tiny_onnx, tiny_data, tmp_path, capsys):
    out = tmp_path / "submission.csv"
    code, _, _ = _cli(capsys, "submit", "--model", tiny_onnx, "--data", tiny_data, "--out", out)
    assert code == 0
    with (tiny_data / "sample_submission.csv").open() as handle:
        expected = [row["img_pair"] for row in csv.DictReader(handle)]
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["img_pair"] for row in rows] == expected
    probabilities = np.asarray([float(row["is_related"]) for row in rows])
    assert ((probabilities >= 0) & (probabilities <= 1)).all() and probabilities.std() > 0


def test_predict_two_photos(tiny_run, tiny_data, capsys):
    images = sorted((tiny_data / "test").glob("*.jpg"))[:2]
    code, out, _ = _cli(capsys, "predict", "--model", tiny_run / "model.pt", *images, "--json")
    result = json.loads(out)
    assert code == 0 and 0.0 <= result["probability"] <= 1.0 and isinstance(result["related"], bool)


def _one_line_error(code, err, *names):
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    for name in names:
        assert str(name) in err


def test_checkpoint_of_another_architecture(tiny_run, tiny_data, tmp_path, capsys):
    other = build_model(ModelConfig(arch="seed", image_size=32))
    payload = model_payload(other, {})
    payload["model_config"] = ModelConfig(image_size=32, width=8).to_dict()  # claims residual, holds seed weights
    bad = tmp_path / "other.pt"
    save_atomic(payload, bad)
    code, _, err = _cli(capsys, "evaluate", "--model", bad, "--data", tiny_data)
    _one_line_error(code, err, bad)


def test_plain_state_dict_is_not_a_checkpoint(tmp_path, tiny_data, capsys):
    bad = tmp_path / "weights.pt"
    torch.save(build_model(ModelConfig(image_size=32)).state_dict(), bad)
    code, _, err = _cli(capsys, "evaluate", "--model", bad, "--data", tiny_data)
    _one_line_error(code, err, bad)


def test_model_file_that_is_not_a_model(tmp_path, tiny_data, capsys):
    for name in ("garbage.pt", "garbage.onnx"):
        bad = tmp_path / name
        bad.write_text("not a model at all")
        for helper in (f"{bad.stem}.encoder.onnx", f"{bad.stem}.head.onnx"):
            (tmp_path / helper).write_text("neither")
        code, _, err = _cli(capsys, "evaluate", "--model", bad, "--data", tiny_data)
        _one_line_error(code, err, bad)


def test_unreadable_image_to_predict(tiny_run, tiny_data, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = sorted((tiny_data / "test").glob("*.jpg"))[0]
    code, _, err = _cli(capsys, "predict", "--model", tiny_run / "model.pt", good, bad)
    _one_line_error(code, err, bad)
    code, _, err = _cli(capsys, "predict", "--model", tiny_run / "model.pt", good, tmp_path / "missing.jpg")
    _one_line_error(code, err, "missing.jpg")


def test_export_refuses_non_onnx_target(tiny_run, tiny_data, tmp_path, capsys):
    code, _, err = _cli(capsys, "export", tiny_run / "model.pt", "--out", tmp_path / "model.bin", "--data", tiny_data)
    _one_line_error(code, err, "model.bin")
    assert not (tmp_path / "model.bin").exists()
