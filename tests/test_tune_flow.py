"""The recipe search on the real stack: ``kinship/tune`` fans trial runs out to two ``rocm`` workers (two hosts,
each with its own scratch folder), both recording trials in one study in the stack's PostgreSQL, then one more run
finishes the search; its trial table, plots and outcome are artifacts, the recipe is stored, and running the same
search again resumes the study instead of starting over."""

from __future__ import annotations

import json

import pytest

from deployments import driver
from tests.flows_stack import DATA_URI, kinship_stack  # noqa: F401  (session fixture)
from tests.test_flows_integration import s3

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Trials of a few seconds; the floor off (a 2-batch model tests the plumbing; the floor is tested in test_tune.py).
SEARCH = {"budget_minutes": 10, "trials": 6, "image_size": 32, "min_epochs": 2, "max_epochs": 2,
          "required_margin": -1.0, "fixed": {"embedding_dim": 32, "max_batches_per_epoch": 2, "batch_size": 16}}


def test_trials_fan_out_to_two_rocm_hosts_in_one_postgresql_study(kinship_stack) -> None:
    import optuna

    stack = kinship_stack.stack
    parameters = {"dataset_uri": DATA_URI, "search": SEARCH, "workers": 2}
    first = driver.run_deployment(stack, "kinship-tune/tune", parameters)
    assert first.returncode == 0, first.output[-6000:]

    children = driver.child_runs(stack, first.flow_run_id)
    assert sorted(c["name"].split("-")[0] for c in children) == ["finish", "trials", "trials"], children
    assert all(c["state_type"] == "COMPLETED" and c["work_pool_name"] == "rocm" for c in children)

    storage = stack.env["KINSHIP_OPTUNA_STORAGE"]
    state = json.loads((stack.state_dir / "state.json").read_text())
    expected = "postgresql+psycopg2://" if state["database"]["kind"] == "postgresql" else "sqlite:///"
    assert storage.startswith(expected), storage.split("@")[-1]
    study_name = children[0]["name"].split("-", 1)[1]
    study = optuna.load_study(study_name=study_name, storage=storage)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert SEARCH["trials"] <= len(finished) <= SEARCH["trials"] + 1  # two workers checking the cap at one moment
    hosts = {t.user_attrs["host"].rsplit("/hosts/", 1)[-1] for t in finished}  # the worker's scratch folder
    assert hosts == {"rocm/scratch", "rocm-trials1/scratch"}, hosts  # both hosts recorded trials in the one study
    assert all("model" in t.user_attrs for t in finished)

    kinds = {a["key"]: a for a in driver.artifacts(stack, first.flow_run_id) if a.get("key")}
    assert {"tune-trials", "tune-plots", "tune-outcome", "tune-recipe"} <= set(kinds), sorted(kinds)
    assert "data:image/png;base64," in kinds["tune-plots"]["data"]
    assert len(json.loads(kinds["tune-trials"]["data"])) == len(study.trials)

    bucket = stack.env["KINSHIP_BUCKET"]
    pointer = json.loads(s3(stack).get_object(Bucket=bucket, Key="recipes/tiny.json")["Body"].read())
    assert pointer["format"] == "kinship-recipe/1" and pointer["study"] == study_name
    assert pointer["stored_at"]["uri"] == f"s3://{bucket}/tuning/{study_name}/recipe.json"

    again = driver.run_deployment(stack, "kinship-tune/tune", parameters)  # the same search: the study resumes
    assert again.returncode == 0, again.output[-6000:]
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert len([t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]) == len(finished)
    print(f"kinship/tune: {len(finished)} trials on 2 hosts in {first.seconds:.1f} s; the same search again "
          f"(resumed, nothing left to run) {again.seconds:.1f} s")
