"""The recipe search against the store, for the flows: trial workers on many hosts, the finish, stored recipes.

A ``kinship/tune`` run fans trial workers out over the ``rocm`` pool; each fetches the data set into its host's
cache, joins the one study (the stack's PostgreSQL, ``KINSHIP_OPTUNA_STORAGE``) and runs trials until the study's
budget is spent, storing each finished trial's ``model.pt``. One more worker then finishes: the best trial, the
raw-pixel floor, the held-out figure, and the recipe, trial table and plots under ``tuning/<study>/``. The recipe
found for a data set is also kept at ``recipes/<data set name>.json``, which ``kinship/full``'s ``recipe: latest``
(the nightly retraining) reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import asdict, replace
from pathlib import Path

from kinship.errors import UserError
from kinship.files import write_atomic
from kinship.manifests import DatasetHandle
from kinship.progress import Progress, silent
from kinship.storage import ArtifactRef, ArtifactStore, join_key
from kinship.train_config import TrainConfig
from kinship.tune import (TuneConfig, default_storage, family_roles, finish, open_study, recipe_from_document,
                          related_families, run_trials, trial_rows)

STORAGE_ENV = "KINSHIP_OPTUNA_STORAGE"
# Fields of a TrainConfig that belong to the host that trains, not to the recipe: kept from the run's own ``train``.
HOST_FIELDS = ("device", "amp", "nproc", "nnodes", "max_batches_per_epoch")


def storage_url(work_dir: Path) -> str:
    """``$KINSHIP_OPTUNA_STORAGE`` (the stack's PostgreSQL, shared by every host), else SQLite in ``work_dir``."""
    return os.environ.get(STORAGE_ENV) or default_storage(work_dir)


def dataset_name(dataset_uri: str) -> str:
    """The data set's name in a URI, e.g. ``demo`` for ``s3://kinship/datasets/demo``, ``…/demo@ab12`` and
    ``…/demo/versions/ab12cd34ef56ab78`` (a version of it: ``kinship.data_versions``)."""
    from kinship.data_versions import split_version
    from kinship.store.transfer import VERSIONS_FOLDER

    parts = split_version(dataset_uri)[0].rstrip("/").split("/")
    if len(parts) > 2 and parts[-2] == VERSIONS_FOLDER:
        parts = parts[:-2]
    return parts[-1] or "dataset"


def study_name(dataset_uri: str, dataset_sha256: str, config: TuneConfig) -> str:
    """One study per (data set content, search settings): running the same search again resumes it."""
    settings = hashlib.sha256(json.dumps(asdict(config), sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_-]", "-", dataset_name(dataset_uri))[:40]
    return f"{name}-{dataset_sha256[:12]}-{settings}"


def tuning_key(study: str, *parts: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}", study):
        raise UserError(f"invalid study name {study!r}: use 1-100 letters, digits, '-' or '_'")
    return join_key("tuning", study, *parts)


def recipe_pointer_key(dataset_uri: str) -> str:
    return join_key("recipes", f"{dataset_name(dataset_uri)}.json")


def trial_worker(store: ArtifactStore, dataset: DatasetHandle, config: TuneConfig, study: str, work_dir: Path,
                 on_progress: Progress = silent) -> dict:
    """Join ``study`` and run trials until its budget is spent; each trial's model is stored for the finish."""
    config.validate()
    roles = family_roles(related_families(dataset.path), config)
    handle = open_study(storage_url(work_dir), study, config, roles)
    host = socket.gethostname() + ":" + os.environ.get("KINSHIP_SCRATCH", "")

    def store_model(trial, run_dir: Path) -> None:
        trial.set_user_attr("host", host)
        if (run_dir / "model.pt").exists():
            ref = store.put_file(run_dir / "model.pt", tuning_key(study, "trials", f"{trial.number:04d}", "model.pt"))
            trial.set_user_attr("model", ref.to_dict())

    ran = run_trials(dataset.path, work_dir, config, handle, roles, on_progress, on_trial_done=store_model)
    return {"study": study, "trials_run": ran, "host": host}


def finish_search(store: ArtifactStore, dataset: DatasetHandle, config: TuneConfig, study: str, work_dir: Path,
                  on_progress: Progress = silent) -> dict:
    """The outcome of ``study``: files stored under ``tuning/<study>/`` and, with a recipe, the data set's pointer."""
    roles = family_roles(related_families(dataset.path), config)
    handle = open_study(storage_url(work_dir), study, config, roles)

    def model_of(number: int) -> Path:
        trial = handle.trials[number]
        if "model" not in trial.user_attrs:
            raise UserError(f"trial {number} of study {study} stored no model")
        return store.get_file(ArtifactRef.from_dict(trial.user_attrs["model"]), work_dir / "models" / f"{number:04d}.pt")

    result = finish(dataset.path, work_dir, config, handle, roles, model_of=model_of, on_progress=on_progress)
    write_atomic(work_dir / "families.json", json.dumps(roles.to_dict(), indent=2))
    files = [result.table_path, *result.plots, work_dir / "families.json", result.recipe_path]
    refs = {path.name: store.put_file(path, tuning_key(study, path.name)).to_dict() for path in files if path}
    local_paths = ("recipe_path", "table_path", "plots")  # this host's files: the refs name them in the store
    summary = {"study": study, "dataset": dataset.identity(),
               **{k: v for k, v in result.to_dict().items() if k not in local_paths}, "refs": refs,
               "rows": trial_rows(handle)}
    refs["summary.json"] = store.put_json(summary, tuning_key(study, "summary.json")).to_dict()
    if result.recipe:
        pointer = {**result.recipe, "stored_at": refs["recipe.json"], "study": study, "dataset": dataset.identity()}
        refs["pointer"] = store.put_json(pointer, recipe_pointer_key(dataset.uri)).to_dict()
    return summary


def resolve_recipe(store: ArtifactStore, recipe: str, dataset_uri: str, train: TrainConfig) -> tuple[TrainConfig, str]:
    """The TrainConfig a run trains with, and a line saying where it came from.

    ``recipe``: "" = ``train`` as given; ``latest`` = the last recipe tuned for this data set (``train`` as given
    when there is none yet); else the store URI of a ``recipe.json``. A recipe decides the training; the host's
    knobs (``HOST_FIELDS``: device, AMP, processes) stay those of ``train``."""
    if not recipe:
        return train, "training configuration as given (no recipe)"
    if recipe == "latest":
        key = recipe_pointer_key(dataset_uri)
        if not store.exists(key):
            return train, f"no recipe tuned for {dataset_name(dataset_uri)} yet ({store.uri(key)}): configuration as given"
        uri = store.uri(key)
    else:
        uri = recipe
    try:
        document = store.get_json(uri)
    except FileNotFoundError as error:
        raise UserError(f"recipe not found: {uri}") from error
    tuned = recipe_from_document(document, uri)
    host_values = {name: getattr(train, name) for name in HOST_FIELDS}
    return replace(tuned, **host_values), f"recipe {uri}"
