"""The recipe search (``kinship tune``): what it reads, the raw-pixel floor, the recipe it writes, and a study that is
killed and started again. Two processes on one PostgreSQL study are in ``tests/test_tune_flow.py`` (the stack)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kinship.cli import main
from kinship.tune import (FamilyRoles, TuneConfig, family_roles, finish, open_study, related_families, run_trials)

# Trials of a few seconds: 32 px, width 8, two batches an epoch, 2-4 epochs.
TINY = ["--image-size", "32", "--min-epochs", "2", "--max-epochs", "4", "--set", "width=8", "--set", "embedding_dim=32",
        "--set", "max_batches_per_epoch=2", "--set", "batch_size=16"]
TINY_FIXED = {"embedding_dim": 32, "max_batches_per_epoch": 2, "batch_size": 16}


def tiny_search(**changes) -> TuneConfig:
    values = dict(budget_minutes=5, trials=3, image_size=32, min_epochs=2, max_epochs=4, fixed=TINY_FIXED)
    return TuneConfig(**{**values, **changes})


def test_roles_are_stable_when_families_are_added() -> None:
    """A family keeps its role (held out or which fold) in a bigger set: the keyed hash, not a shuffle of the list."""
    config = TuneConfig()
    families = [f"F{i:04d}" for i in range(100)]
    small, large = family_roles(families, config), family_roles(families + [f"F{i:04d}" for i in range(100, 150)], config)
    assert len(small.held_out) == 20 and sum(len(g) for g in small.folds) == 80
    assert set(small.held_out).isdisjoint(f for group in small.folds for f in group)
    moved = set(small.held_out) - set(large.held_out)
    assert len(moved) <= 3, moved  # the rank cut moves a few at the boundary, never the set


def test_the_search_never_opens_a_held_out_or_test_image(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    """Trials open only their own families' images; the held-out ones are read first by the finish, the test
    folder never. Every open is seen: by path (an audit hook) and by descriptor (images are opened relative to
    folder descriptors, so each new descriptor's real path is read back from /proc)."""
    config = tiny_search(trials=2)
    roles = family_roles(related_families(tiny_data), config)
    held_out = {f"/train/{family}/" for family in roles.held_out}
    opened: list[str] = []
    listening = [True]

    def audit(event: str, args) -> None:
        if listening[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    real_open = os.open

    def watched_open(*args, **kwargs):
        fd = real_open(*args, **kwargs)
        if listening[0]:
            opened.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fd

    sys.addaudithook(audit)
    monkeypatch.setattr(os, "open", watched_open)
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "reads", config, roles)
    run_trials(tiny_data, tmp_path, config, study, roles)
    during_trials = list(opened)
    result = finish(tiny_data, tmp_path, config, study, roles)
    listening[0] = False
    images = [path for path in opened if str(tiny_data) in path and path.endswith(".jpg")]
    assert any("/train/" in path for path in during_trials), "the trials read no training image at all?"
    assert not [p for p in during_trials if any(h in p for h in held_out)], "a trial opened a held-out image"
    assert not [p for p in images if "/test/" in p], "the search opened a test image"
    assert [p for p in images if any(h in p for h in held_out)], "the finish did not score the held-out families"
    assert result.held_out_auc == result.held_out_auc and result.pixel_held_out_auc == result.pixel_held_out_auc


def test_a_recipe_trains_with_kinship_train_and_the_floor_withholds_one(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """Above the floor (here any margin) the recipe is written; ``kinship train --recipe`` trains with it, a flag
    typed on the command line still wins; the trial table, both plots and the JSON outcome are there. The same
    study finished again under a floor no 2-batch model reaches (0.5 over raw pixels): one line with the figures,
    exit 1, no new trial, and the earlier recipe.json removed."""
    out = tmp_path / "t"
    code = main(["tune", "--data", str(tiny_data), "--out", str(out), "--trials", "3", "--required-margin", "-1",
                 "--json", *TINY])
    assert code == 0
    outcome = json.loads(capsys.readouterr().out)
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["format"] == "kinship-recipe/1" and outcome["recipe"] == recipe
    assert outcome["trials"].get("complete", 0) + outcome["trials"].get("pruned", 0) == 3
    assert {p.name for p in map(Path, outcome["plots"])} == {"history.png", "importances.png"}
    assert outcome["families"]["held_out"] + outcome["families"]["tuning"] == len(related_families(tiny_data))
    assert (out / "trials.csv").read_text().count("\n") == 4  # header + 3 trials (none queued and never run)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data), "--out", str(run), "--recipe", str(out / "recipe.json"),
                 "--epochs", "1", "--json"]) == 0
    capsys.readouterr()
    trained = json.loads((run / "config.json").read_text())["train"]
    assert trained["epochs"] == 1  # typed
    for name in ("lr", "rotate", "erase", "identity_weight", "pool_grid", "width", "embedding_dim"):
        assert trained[name] == recipe["train"][name], name

    code = main(["tune", "--data", str(tiny_data), "--out", str(out), "--trials", "3", "--required-margin", "0.5", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("kinship tune: no recipe: the best trial"), err
    assert "raw-pixel cosine" in err[0] and "not 0.5 above it" in err[0]
    assert not (out / "recipe.json").exists()
    assert (out / "trials.csv").read_text().count("\n") == 4  # the study's 3 trials: nothing ran again


def test_a_file_that_is_not_a_recipe_is_one_line(tiny_data: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "recipe.json"
    bad.write_text(json.dumps({"format": "something-else", "train": {}}))
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--recipe", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (f"kinship train: error: {bad} is not a recipe (format 'something-else', "
                                               "expected 'kinship-recipe/1')")


def _trial_states(db: Path) -> list[str]:
    try:
        with sqlite3.connect(db) as connection:
            return [row[0] for row in connection.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # the file is there, Optuna's tables not yet
        return []


def _running_with_heartbeat(db: Path) -> bool:
    """A trial is running and has sent a heartbeat (killed before its first one, Optuna cannot tell it is stale)."""
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT COUNT(*) FROM trials JOIN trial_heartbeats USING (trial_id) "
                                  "WHERE trials.state = 'RUNNING'").fetchone()[0] > 0


def test_a_killed_study_resumes(tiny_data: Path, tmp_path: Path) -> None:
    """SIGKILL during a trial: started again, the study keeps its finished trials, fails the killed one (heartbeat)
    and runs it once more, and goes on to the trial cap."""
    out = tmp_path / "t"
    env = {**os.environ, "KINSHIP_TUNE_HEARTBEAT_S": "1"}
    argv = [sys.executable, "-m", "kinship", "tune", "--data", str(tiny_data), "--out", str(out), "--trials", "4",
            "--required-margin", "-1", "--json", *TINY, "--set", "max_batches_per_epoch=8"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = out / "study.db"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill once a trial has finished and the next one runs
        states = _trial_states(db) if db.exists() else []
        if states.count("COMPLETE") + states.count("PRUNED") >= 1 and states[-1] == "RUNNING" and \
                _running_with_heartbeat(db):
            break
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    else:
        pytest.fail("no trial finished in 240 s")
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    before = _trial_states(db)
    assert before[-1] == "RUNNING"
    time.sleep(3.5)  # past the grace period (3 heartbeats)
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    after = _trial_states(db)
    assert after[: len(before) - 1] == before[:-1], "finished trials were lost"
    assert after[len(before) - 1] == "FAIL", "the killed trial was not marked failed"
    assert after.count("COMPLETE") + after.count("PRUNED") == 4
    outcome = json.loads(second.stdout)
    assert outcome["trials"]["fail"] == 1
    assert (out / "recipe.json").exists()


def test_joining_a_study_of_other_families_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    from kinship.errors import UserError

    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = tiny_search()
    open_study(url, "s", config, family_roles(related_families(tiny_data), config))
    other = FamilyRoles(held_out=("F0001",), folds=(("F0002",), ("F0003",), ("F0004",), ("F0005",)))
    with pytest.raises(UserError, match="searched on other families"):
        open_study(url, "s", config, other)


def test_a_run_trains_with_the_recipe_it_names(tmp_path: Path) -> None:
    """``kinship/full``'s ``recipe``: none, ``latest`` before and after a search stored one, a stored recipe.json by
    URI; a recipe decides the training, the run's host knobs stay; a stored file that is not a recipe is one line."""
    from dataclasses import asdict, replace

    from kinship.errors import UserError
    from kinship.storage import LocalStore, StoreSettings
    from kinship.train_config import TrainConfig
    from kinship.tuning_stage import recipe_pointer_key, resolve_recipe

    store = LocalStore(tmp_path / "store", replace(StoreSettings.from_env(), scratch=tmp_path / "scratch"))
    given = TrainConfig(epochs=3, device="cpu", amp="off", nproc=2)
    uri = "s3://kinship/datasets/demo"
    assert resolve_recipe(store, "", uri, given) == (given, "training configuration as given (no recipe)")
    config, note = resolve_recipe(store, "latest", uri, given)
    assert config == given and note.startswith("no recipe tuned for demo yet")
    tuned = TrainConfig(epochs=14, rotate=0.0, pool_grid=2, identity_weight=0.3, device="auto", nproc=1)
    document = {"format": "kinship-recipe/1", "train": asdict(tuned)}
    store.put_json(document, recipe_pointer_key(uri))
    stored = store.put_json(document, "tuning/s/recipe.json")
    for recipe in ("latest", stored.uri):
        config, note = resolve_recipe(store, recipe, uri, given)
        assert config == replace(tuned, device="cpu", amp="off", nproc=2), recipe
        assert note.startswith("recipe ")
    store.put_json({"format": "kinship-train/1"}, "tuning/s/other.json")
    with pytest.raises(UserError, match="is not a recipe"):
        resolve_recipe(store, store.uri("tuning/s/other.json"), uri, given)
