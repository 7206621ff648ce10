"""Run ids are flow parameters that become local folders (``work/<run_id>``) and store prefixes (``runs/<run_id>``):
a hostile one is refused at the flow's edge, before any step runs, as one line that tasks do not retry."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinship.errors import UserError
from kinship.pipeline import new_run_id, run_prefix, validate_run_id
from kinship.stage_order import engines_half, one_engine, training_half
from tasks.runtime import is_transient, work_dir

HOSTILE = ["../../..", "..", "a/../../b", "/etc", "a/b", "a\\b", "", ".hidden", "a\nb", "x" * 101, "run id"]


class Recorder:
    """Steps that record being called: none may be, for a bad run id."""

    def __init__(self) -> None:
        self.called: list[str] = []

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self.called.append(name)


@pytest.mark.parametrize("run_id", HOSTILE)
def test_a_hostile_run_id_is_refused_before_any_step(run_id: str) -> None:
    for half, args in ((training_half, ("s3://b/set", None, None)), (engines_half, ("s3://b/m.json", ["fp32"], None)),
                       (one_engine, ("s3://b/m.json", "fp32", "onnxruntime", None))):
        steps = Recorder()
        with pytest.raises(UserError, match="invalid run id") as error:
            half(steps, *args, run_id)
        assert steps.called == [] and not is_transient(error.value)


@pytest.mark.parametrize("run_id", HOSTILE)
def test_a_hostile_run_id_never_names_a_local_folder_or_a_store_key(run_id: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KINSHIP_SCRATCH", str(tmp_path / "scratch"))
    with pytest.raises(UserError, match="invalid run id"):
        work_dir(run_id, "train")
    with pytest.raises(UserError, match="invalid run id"):
        run_prefix(run_id, "train")


@pytest.mark.parametrize("run_id", [new_run_id(), "test-run", "t1", "a", "20250101-120000-ab12cd34-int8", "A_b-9"])
def test_good_run_ids_pass(run_id: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KINSHIP_SCRATCH", str(tmp_path))
    assert validate_run_id(run_id) == run_id
    assert work_dir(run_id, "train") == tmp_path / "work" / run_id / "train"
