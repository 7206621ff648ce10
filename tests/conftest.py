"""Shared fixtures: a private scratch folder, a tiny synthetic data set and a tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_TRAIN = dict(epochs=2, image_size=32, width=8, embedding_dim=32, batch_size=32, max_batches_per_epoch=6)


@pytest.fixture(scope="session", autouse=True)
def private_scratch(tmp_path_factory):
    """Caches and downloads go to a per-session folder, never the user's ~/.cache."""
    scratch = tmp_path_factory.mktemp("scratch")
    previous = os.environ.get("KINSHIP_SCRATCH")
    os.environ["KINSHIP_SCRATCH"] = str(scratch)
    yield scratch
    if previous is None:
        os.environ.pop("KINSHIP_SCRATCH", None)
    else:
        os.environ["KINSHIP_SCRATCH"] = previous


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small synthetic RFIW-layout data set (24 families, 64 px)."""
    from kinship.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("data") / "tiny"
    generate(SynthConfig(families=24, test_families=4, size=64, seed=3), out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A run folder trained for two short epochs on ``tiny_data``."""
    from kinship.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_data, run_dir, TrainConfig(**TINY_TRAIN))
    return run_dir


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tiny_data) -> Path:
    """``tiny_run`` exported to ONNX (pair, encoder, head), checked against PyTorch."""
    from kinship.checkpoint import read_checkpoint
    from kinship.export import export_checkpoint, validation_sample

    checkpoint = tiny_run / "model.pt"
    metadata = read_checkpoint(checkpoint)["metadata"]
    img0, img1 = validation_sample(tiny_data, metadata, TINY_TRAIN["image_size"], count=32)
    files, _ = export_checkpoint(checkpoint, tiny_run / "model.onnx", img0, img1)
    return files.pair
