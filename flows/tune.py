"""``kinship-tune``: the recipe searched on a pushed data set by trial workers on the ``rocm`` pool's hosts, all in
one Optuna study (the stack's PostgreSQL), then finished by one more worker: recipe, trial table, plots."""

from __future__ import annotations

from prefect import flow

from flows.naming import tune_run_name
from kinship.tune import TuneConfig
from tasks.orchestration import plan_run, run_tune_workers
from tasks.tuning import plan_study, show_search


@flow(name="kinship-tune", flow_run_name=tune_run_name)
def tune_flow(dataset_uri: str, search: TuneConfig = TuneConfig(), workers: int = 2, study: str = "") -> dict:
    """Search the training recipe on ``dataset_uri`` with ``workers`` trial runs on the ``rocm`` pool.

    ``search.budget_minutes`` is trial time summed over the workers; ``study`` names the study (default: one per
    data set content and search settings, so running the same search again resumes it). Returns the outcome; the
    recipe, when one clears the raw-pixel floor, is stored under ``tuning/<study>/`` and as the data set's latest
    (``recipes/<name>.json``), which ``kinship/full``'s ``recipe: latest`` trains with."""
    run = plan_run(dataset_uri)
    name = plan_study(dataset_uri, search, study)
    summary = run_tune_workers(run, dataset_uri, search, name, workers)
    show_search(summary)
    return {k: v for k, v in summary.items() if k != "rows"}
