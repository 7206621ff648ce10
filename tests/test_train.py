"""Training: the loss falls, the AUC beats chance, and an interrupted run resumes exactly."""

from __future__ import annotations

import json

import pytest

from kinship.cli import main
from kinship.errors import UserError
from kinship.progress import ProgressEvent
from kinship.train import TrainConfig, train
from tests.conftest import TINY_TRAIN


@pytest.mark.slow
def test_short_cpu_run_learns(tiny_data, tmp_path):
    config = TrainConfig(epochs=6, image_size=32, width=8, embedding_dim=32, batch_size=32, lr=5e-3)
    result = train(tiny_data, tmp_path / "run", config)
    history = result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.best_auc > 0.55  # chance is 0.5; the validation set has hundreds of pairs
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, 7))
    assert (tmp_path / "run" / "model.pt").exists()


class Interrupt(Exception):
    pass


def _crash_at_epoch(number: int):
    def on_progress(event: ProgressEvent) -> None:
        if event.stage.startswith(f"epoch {number}/") and event.done == 2:
            raise Interrupt()

    return on_progress


def test_resume_after_crash_matches_clean_run(tiny_data, tmp_path):
    config = TrainConfig(**{**TINY_TRAIN, "epochs": 3})
    clean = train(tiny_data, tmp_path / "clean", config)
    with pytest.raises(Interrupt):
        train(tiny_data, tmp_path / "crashed", config, on_progress=_crash_at_epoch(3))
    partial = json.loads((tmp_path / "crashed" / "metrics.json").read_text())
    assert len(partial["epochs"]) == 2  # two epochs were checkpointed before the crash
    resumed = train(tiny_data, tmp_path / "crashed", config, resume=True)
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3]
    for a, b in zip(clean.history, resumed.history):
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_existing_run_is_not_overwritten_without_resume(tiny_run, tiny_data):
    before = (tiny_run / "model.pt").read_bytes()
    with pytest.raises(UserError, match="--resume"):
        train(tiny_data, tiny_run, TrainConfig(**TINY_TRAIN))
    assert (tiny_run / "model.pt").read_bytes() == before


def test_resume_without_checkpoint_is_a_user_error(tiny_data, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "none"), "--resume", "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "last.pt" in err


def test_bad_image_size_is_a_user_error(tiny_data, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--image-size", "30", "--json"])
    assert code == 2 and "image_size 30" in capsys.readouterr().err
