"""``kinship train --backbone``: a user's pretrained trunk is loaded, frozen, fine-tuned, exported like any model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kinship.backbones import reference_layout
from kinship.checkpoint import load_model
from kinship.cli import main

TRAIN = ["--image-size", "112", "--epochs", "2", "--freeze-epochs", "1", "--batch-size", "8",
         "--max-batches-per-epoch", "1"]


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(reference_layout("resnet18").state_dict(), path)  # torchvision's layout, fc included
    return path


@pytest.mark.slow
def test_train_with_a_torchvision_backbone_then_export(tiny_data, resnet18_file, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data), "--out", str(out), "--backbone", "resnet18",
                 "--backbone-weights", str(resnet18_file), *TRAIN, "--json"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["epochs"]) == 2 and all(e["train_loss"] == e["train_loss"] for e in summary["epochs"])
    model, metadata = load_model(out / "model.pt")
    assert model.config.backbone == "resnet18" and metadata["train_config"]["backbone_weights"] == str(resnet18_file)
    # the trunk was frozen in epoch 1 and fine-tuned in epoch 2: it moved away from the user's file
    original = torch.load(resnet18_file, weights_only=True)
    trunk = model.encoder.backbone.state_dict()
    assert any(not torch.equal(trunk[k], original[k]) for k in trunk if k.endswith("weight"))
    assert main(["export", str(out / "model.pt"), "--out", str(out / "model.onnx")]) == 0
    assert (out / "model.encoder.onnx").stat().st_size > 40e6  # the trunk's 11 M parameters travel in the file


@pytest.mark.parametrize("argv, message", [
    (["--backbone", "resnet18", "--image-size", "112"], "needs --backbone-weights FILE"),
    (["--backbone", "resnet18", "--backbone-weights", "W"], "takes 112 px faces: pass --image-size 112"),
    (["--backbone", "vgg", "--backbone-weights", "W", "--image-size", "112"], "unknown backbone 'vgg'"),
])
def test_backbone_mistakes_are_one_line(tiny_data, resnet18_file, tmp_path, capsys, argv, message) -> None:
    argv = [a.replace("W", str(resnet18_file)) if a == "W" else a for a in argv]
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_weights_of_another_layout_are_refused_in_one_line(tiny_data, resnet18_file, tmp_path, capsys) -> None:
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--backbone", "iresnet50",
                 "--backbone-weights", str(resnet18_file), "--image-size", "112"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "resnet18.pth" in err and "does not fit iresnet50" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "model.pt").exists()
