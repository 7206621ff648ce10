"""Champion lineage, history and rollback; the paired promotion: compare-and-swap that loses no promotion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kinship import champion
from kinship.champion import (
    CHAMPION_KEY, ChampionChanged, dataset_references, history_rows, promote_if_better, promote_if_paired_better,
    read_champion, read_history, rollback,
)
from kinship.champion_compare import PairedScores, decide
from kinship.cli import main
from kinship.errors import UserError
from kinship.storage import LocalStore, StoreSettings

BUILT = {"manifest": {}, "engines": [{"variant": "fp32", "status": "built"}, {"variant": "int8", "status": "failed"}]}
SHA = {"v1": "a" * 64, "v2": "b" * 64}


def candidate(run_id: str, auc: float, data: str = "v1") -> dict:
    ref = {"uri": f"s3://kinship/runs/{run_id}/train/model.onnx", "key": "model.onnx", "sha256": "0" * 64, "size": 1}
    return {"run_id": run_id, "metrics": {"best_val_auc": auc}, "train_config": {"epochs": 3},
            "dataset": {"uri": "s3://kinship/datasets/demo", "sha256": SHA[data]},
            "artifacts": {"model.onnx": ref, "model.pt": ref}, "manifest": ref}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", StoreSettings(scratch=tmp_path / "scratch"))


def test_the_pointer_records_its_lineage(store: LocalStore) -> None:
    assert promote_if_better(store, candidate("r1", 0.7), BUILT)["promoted"]
    pointer = read_champion(store)
    assert pointer["data_version"] == "a" * 16 and pointer["engines"] == ["fp32"]
    assert pointer["train_config"] == {"epochs": 3}
    commit = champion.code_commit()
    assert pointer["code_commit"] == commit and (commit == "unknown" or len(commit.split("-dirty")[0]) == 40)


def test_every_promotion_and_refusal_is_in_the_history_newest_first(store: LocalStore) -> None:
    promote_if_better(store, candidate("r1", 0.7), BUILT)
    promote_if_better(store, candidate("r2", 0.6), BUILT)
    promote_if_better(store, candidate("r3", 0.8, "v2"), BUILT)
    promote_if_better(store, candidate("r3", 0.8, "v2"), BUILT)  # a retried task: already champion, nothing added
    entries = read_history(store)
    assert [(e["kind"], e["run_id"]) for e in entries] == [("promoted", "r3"), ("refused", "r2"), ("promoted", "r1")]
    assert entries[0]["champion"]["previous"] == {"run_id": "r1", "val_auc": 0.7}
    rows = history_rows(entries)
    assert rows[1]["champion"] == "r1" and "champion kept" in rows[1]["reason"]
    assert dataset_references(store) == {SHA["v1"]: ["champion history (run r1)"],
                                         SHA["v2"]: ["champion (run r3)", "champion history (run r3)"]}


def test_rollback_restores_the_previous_pointer_and_is_a_history_entry(store: LocalStore) -> None:
    promote_if_better(store, candidate("r1", 0.7), BUILT)
    first = read_champion(store)
    promote_if_better(store, candidate("r2", 0.8, "v2"), BUILT)
    outcome = rollback(store, "r2 misses faces in low light")
    pointer = read_champion(store)
    assert outcome["promoted"] and pointer["run_id"] == "r1" and pointer["model"] == first["model"]
    assert pointer["dataset"] == first["dataset"] and pointer["previous"] == {"run_id": "r2", "val_auc": 0.8}
    assert pointer["rollback"]["from_run_id"] == "r2" and pointer["rollback"]["reason"] == "r2 misses faces in low light"
    assert [(e["kind"], e["run_id"]) for e in read_history(store)][:1] == [("rollback", "r1")]
    rollback(store, "it was fine after all", to_run="r2")
    assert read_champion(store)["run_id"] == "r2"


def test_a_promotion_during_a_rollback_is_never_lost(store: LocalStore, monkeypatch) -> None:
    promote_if_better(store, candidate("r1", 0.7), BUILT)
    promote_if_better(store, candidate("r2", 0.8), BUILT)
    real = store.get_json_versioned

    def read_then_another_run_promotes(key):
        answer = real(key)
        if key == CHAMPION_KEY:  # between the rollback's read and its write, run r3 is promoted
            monkeypatch.setattr(store, "get_json_versioned", real)
            assert promote_if_better(store, candidate("r3", 0.9), BUILT)["promoted"]
        return answer

    monkeypatch.setattr(store, "get_json_versioned", read_then_another_run_promotes)
    with pytest.raises(ChampionChanged, match="changed to run r3 while rolling back: nothing was rolled back"):
        rollback(store, "r2 is bad")
    assert read_champion(store)["run_id"] == "r3"
    assert [e["kind"] for e in read_history(store)][0] == "promoted"


def test_rollback_refuses_what_it_cannot_do_in_one_line(store: LocalStore) -> None:
    with pytest.raises(UserError, match="no champion to roll back"):
        rollback(store, "why")
    promote_if_better(store, candidate("r1", 0.7), BUILT)
    with pytest.raises(UserError, match="no previous champion"):
        rollback(store, "why")
    with pytest.raises(UserError, match="never champion"):
        rollback(store, "why", to_run="nobody")
    with pytest.raises(UserError, match="needs a --reason"):
        rollback(store, " ", to_run="r1")


def decision(better: bool):
    rng = np.random.default_rng(0)
    label = np.tile([True, False], 240)
    family = np.repeat([f"F{i}" for i in range(40)], 12)
    base = label * 1.0 + rng.normal(0, 1, len(label))
    challenger = label * 2.5 + rng.normal(0, 1, len(label)) if better else base + rng.normal(0, 0.01, len(label))
    pixels = label * 0.2 + rng.normal(0, 1, len(label))
    return decide(PairedScores.from_lists(family, label, np.where(label, "fs", ""), base, challenger, pixels),
                  replicates=100)


def test_the_paired_promotion_follows_the_decision_and_the_champion_it_compared_with(store: LocalStore) -> None:
    first = promote_if_paired_better(store, candidate("r1", 0.7), BUILT, None, None, required_margin=-1)
    assert first["promoted"] and "no champion yet" in first["reason"]
    equal = promote_if_paired_better(store, candidate("r2", 0.9), BUILT, decision(better=False), "r1")
    assert not equal["promoted"] and read_champion(store)["run_id"] == "r1"  # a higher own AUC does not matter
    stale = promote_if_paired_better(store, candidate("r3", 0.6), BUILT, decision(better=True), "r0")
    assert not stale["promoted"] and "changed to run r1" in stale["reason"]
    better = promote_if_paired_better(store, candidate("r3", 0.6), BUILT, decision(better=True), "r1")
    pointer = read_champion(store)
    assert better["promoted"] and pointer["run_id"] == "r3" and pointer["comparison"]["champion_run_id"] == "r1"
    assert pointer["comparison"]["rows"][0]["low"] > 0
    kinds = [(e["kind"], e["run_id"], bool(e["decision"])) for e in read_history(store)]
    assert kinds == [("promoted", "r3", True), ("refused", "r3", True), ("refused", "r2", True), ("promoted", "r1", False)]


def test_the_cli_shows_lists_and_rolls_back(store: LocalStore, capsys) -> None:
    uri = store.root.as_uri()
    assert main(["champion", "show", "--store", uri]) == 0
    assert "no champion yet" in capsys.readouterr().out
    promote_if_better(store, candidate("r1", 0.7), BUILT)
    promote_if_better(store, candidate("r2", 0.8), BUILT)
    assert main(["champion", "show", "--store", uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == "r2"
    assert main(["champion", "rollback", "--store", uri, "--reason", "bad engine"]) == 0
    assert "rolled back from run r2 to run r1" in capsys.readouterr().out
    assert main(["champion", "history", "--store", uri, "--json"]) == 0
    assert [e["kind"] for e in json.loads(capsys.readouterr().out)] == ["rollback", "promoted", "promoted"]
    assert main(["champion", "rollback", "--store", uri, "--to", "ghost", "--reason", "x"]) == 2
    err = capsys.readouterr().err
    assert "ghost" in err and err.count("\n") == 1


def test_a_damaged_pointer_is_one_line_and_exit_2(store: LocalStore, capsys) -> None:
    promote_if_better(store, candidate("r1", 0.7), BUILT)
    path = store.root / CHAMPION_KEY
    path.write_text(path.read_text()[:-20])
    for command in (["champion", "show"], ["champion", "rollback", "--reason", "x", "--to", "r1"]):
        assert main([*command, "--store", store.root.as_uri()]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "champion.json" in err
    assert read_history(store)[0]["run_id"] == "r1"  # the history, with the pointer r1 was promoted with, is intact
