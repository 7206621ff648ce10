"""``kinship pretrain``: a model trained on a mixture of generated styles, a start for ``train``/``tune --init``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from kinship.cli import main
from kinship.errors import UserError
from kinship.pretrain import PretrainConfig, pretrain
from kinship.train_config import TrainConfig

STYLES = ("mosaic", "critters")
TINY = TrainConfig(epochs=1, width=8, embedding_dim=32, batch_size=16, max_batches_per_epoch=2)
# the flags that give `kinship train` the pretrained model's architecture, and keep it tiny
SAME_ARCHITECTURE = ["--image-size", "32", "--width", "8", "--embedding-dim", "32", "--epochs", "1",
                     "--batch-size", "16", "--max-batches-per-epoch", "2"]


def tiny_config(**changes) -> PretrainConfig:
    values = dict(styles=STYLES, families=8, image_size=32, seed=1, workers=1, train=TINY)
    return PretrainConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "P"
    pretrain(tiny_config(), out)
    return out


def _people(csv_path: Path) -> list[tuple[str, str]]:
    with csv_path.open(newline="") as handle:
        return [(row["p1"], row["p2"]) for row in csv.DictReader(handle)]


def test_pretrain_writes_a_model_and_its_record(pretrained) -> None:
    assert (pretrained / "model.pt").is_file()
    record = json.loads((pretrained / "pretrain.json").read_text())
    assert record["styles"] == list(STYLES) and record["families"] == {"mosaic": 8, "critters": 8}
    assert record["images_total"] == sum(record["images"].values()) > 0
    assert record["train_config"]["image_size"] == 32 and record["train_config"]["width"] == 8
    assert 0.0 <= record["best_val_auc"] <= 1.0 and record["minutes"] > 0


def test_the_mixture_holds_every_style_without_a_collision(pretrained) -> None:
    mixture = pretrained / "data" / "mixture"
    families = sorted(p.name for p in (mixture / "train").iterdir())
    assert len(families) == 16 and len(set(families)) == 16  # both styles' F0001..F0008, kept apart
    assert {f.split("-")[0] for f in families} == set(STYLES)
    assert not any(p.is_symlink() for p in mixture.rglob("*"))
    pairs = _people(mixture / "train_relationships.csv")
    sources = sum(len(_people(pretrained / "data" / s / "train_relationships.csv")) for s in STYLES)
    assert len(pairs) == sources
    # every relationship stays inside one renamed family whose member folders exist
    assert all(a.split("/")[0] == b.split("/")[0] and (mixture / "train" / a).is_dir() and (mixture / "train" / b).is_dir()
               for a, b in pairs)
    assert _people(mixture / "relationship_types.csv") == pairs


def test_an_unknown_style_or_a_used_folder_is_one_line(pretrained, tmp_path, capsys) -> None:
    assert main(["pretrain", "--styles", "mosaic,cubist", "--out", str(tmp_path / "P")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown style 'cubist'" in err and len(err.splitlines()) == 1
    assert main(["pretrain", "--styles", "mosaic", "--out", str(pretrained)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty" in err and "--force" in err and len(err.splitlines()) == 1
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="does not look like a pretraining folder"):
        pretrain(tiny_config(), tmp_path / "home", force=True)
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="one residual model"):
        pretrain(tiny_config(train=TrainConfig(folds=3)), tmp_path / "P")


def test_force_retrains_and_reuses_the_generated_styles(pretrained, tmp_path) -> None:
    out = tmp_path / "P"
    for style in STYLES:  # a copy of the first run's generated styles: reused, not drawn again
        shutil.copytree(pretrained / "data" / style, out / "data" / style)
    result = pretrain(tiny_config(), out, force=True)
    assert result.reused == STYLES and result.model.is_file()
    assert result.mixture.images == json.loads((pretrained / "pretrain.json").read_text())["images"]


def test_train_fine_tunes_from_the_pretrained_model(pretrained, tmp_path, capsys) -> None:
    model = str(pretrained / "model.pt")
    data = str(pretrained / "data" / "mosaic")
    code = main(["train", "--data", data, "--out", str(tmp_path / "run"), "--init", model, *SAME_ARCHITECTURE, "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["best_epoch"] == 1
    code = main(["train", "--data", data, "--out", str(tmp_path / "wide"), "--init", model, *SAME_ARCHITECTURE,
                 "--width", "16", "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert model in err and "width 8 (this run: 16)" in err


def test_tune_refuses_a_pretrained_model_of_another_size(pretrained, tmp_path, capsys) -> None:
    code = main(["tune", "--data", str(pretrained / "data" / "mixture"), "--out", str(tmp_path / "T"),
                 "--init", str(pretrained / "model.pt"), "--image-size", "64", "--budget-minutes", "0.1", "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "32 px model" in err and "64 px" in err


def test_the_command_line_pretrains_and_prints_json(tmp_path, capsys) -> None:
    out = tmp_path / "P"
    code = main(["pretrain", "--styles", "eigen,mosaic", "--families", "4", "--size", "32", "--epochs", "1",
                 "--width", "8", "--embedding-dim", "32", "--workers", "1", "--max-batches-per-epoch", "1", "--out",
                 str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["styles"] == ["eigen", "mosaic"] and summary["families_total"] == 8
    assert Path(summary["model"]).is_file() and (out / "pretrain.json").is_file()
