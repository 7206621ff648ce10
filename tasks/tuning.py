"""Recipe-search tasks: name the study, run trials on this host, finish the search, resolve a run's recipe.

Thin wrappers over ``kinship.tuning_stage``: retries for I/O, progress artifacts, the trial table and plots.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from kinship import tuning_stage
from kinship.manifests import DatasetHandle
from kinship.storage import MANIFEST_NAME, file_digest
from kinship.train_config import TrainConfig
from kinship.tune import TuneConfig
from tasks.engines import plots_artifact
from tasks.progress import progress_artifact
from tasks.runtime import IO_RETRIES, ONE_RETRY, open_store, work_dir

TRIAL_COLUMNS = ("trial", "state", "val_auc", "epochs_run", "seconds", "stopped")


@task(name="name the study", **IO_RETRIES)
def plan_study(dataset_uri: str, search: TuneConfig, study: str) -> str:
    """``study`` if given, else one named by the data set's content and the search settings (a rerun resumes it)."""
    if study:
        tuning_stage.tuning_key(study)  # a bad name fails here, before any child starts
        return study
    manifest = open_store().get_file(f"{dataset_uri.rstrip('/')}/{MANIFEST_NAME}")
    name = tuning_stage.study_name(dataset_uri, file_digest(manifest)[0], search)
    get_run_logger().info("study %s (storage: the workers' %s)", name, tuning_stage.STORAGE_ENV)
    return name


@task(name="run trials", task_run_name="trials of {study}", **ONE_RETRY)
def run_trials(dataset: DatasetHandle, search: TuneConfig, study: str, run_id: str) -> dict:
    """Join the study and run trials on this host until its budget is spent (a retry joins it again: the trial
    this process was running is failed by the heartbeat check and queued once more)."""
    with progress_artifact(f"recipe search {study}") as on_progress:
        done = tuning_stage.trial_worker(open_store(), dataset, search, study, work_dir(run_id, "tune"), on_progress)
    get_run_logger().info("%d trials run on %s", done["trials_run"], done["host"])
    return done


@task(name="finish the search", task_run_name="finish {study}", **ONE_RETRY)
def finish_search(dataset: DatasetHandle, search: TuneConfig, study: str, run_id: str) -> dict:
    """Best trial, raw-pixel floor, held-out figure; recipe, trial table and plots stored and shown."""
    logger = get_run_logger()
    with progress_artifact("held-out families") as on_progress:
        summary = tuning_stage.finish_search(open_store(), dataset, search, study, work_dir(run_id, "tune"), on_progress)
    (logger.info if summary.get("recipe") else logger.warning)("%s", summary["message"])
    return summary


@task(name="show the search")
def show_search(summary: dict) -> None:
    """The trial table, the plots and the recipe on the run's page."""
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in summary["rows"]]
    create_table_artifact(rows, key="tune-trials", description=f"trials of study {summary['study']}")
    refs = summary["refs"]
    plots_artifact(open_store(), {n: r for n, r in refs.items() if n.endswith(".png")}, "tune-plots",
                   f"optimisation history and parameter importances, study {summary['study']}")
    create_markdown_artifact(search_markdown(summary), key="tune-outcome", description=f"study {summary['study']}")
    if "recipe.json" in refs:
        create_link_artifact(refs["recipe.json"]["uri"], link_text="recipe.json", key="tune-recipe",
                             description=f"recipe of study {summary['study']}")


def search_markdown(summary: dict) -> str:
    """The outcome in a few lines: the floor, the held-out figure beside raw pixels and the defaults."""
    def figure(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    trials = ", ".join(f"{n} {state}" for state, n in sorted(summary["trials"].items()))
    lines = [f"**{summary['message']}**", "",
             f"Trials: {trials} in {summary['spent_minutes']:.1f} min of trial time; families {summary['families']}.", "",
             "| model | validation fold AUC | held-out families AUC |", "|---|---|---|",
             f"| best trial | {figure(summary['val_auc'])} | {figure(summary['held_out_auc'])} |",
             f"| defaults | {figure(summary['defaults_val_auc'])} | {figure(summary['defaults_held_out_auc'])} |",
             f"| raw-pixel cosine | {figure(summary['pixel_val_auc'])} | {figure(summary['pixel_held_out_auc'])} |"]
    return "\n".join(lines)


@task(name="choose the recipe", **IO_RETRIES)
def choose_recipe(recipe: str, dataset_uri: str, train: TrainConfig) -> TrainConfig:
    """The training configuration of a ``kinship/full`` run: ``train`` itself, a stored recipe, or ``latest``."""
    config, note = tuning_stage.resolve_recipe(open_store(), recipe, dataset_uri, train)
    get_run_logger().info("training: %s", note)
    return config
