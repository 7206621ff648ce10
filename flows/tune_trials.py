"""``kinship-tune-trials``: on a ``rocm`` host, fetch the data set and run trials of the study until its budget is
spent, or (``finish``) finish the search."""

from __future__ import annotations

from prefect import flow

from flows.naming import tune_trials_run_name
from kinship.tune import TuneConfig
from tasks.data import fetch_dataset
from tasks.runtime import new_run_id_for_this_run
from tasks.tuning import finish_search, run_trials


@flow(name="kinship-tune-trials", flow_run_name=tune_trials_run_name)
def tune_trials_flow(dataset_uri: str, study: str, search: TuneConfig = TuneConfig(), finish: bool = False,
                     run_id: str | None = None) -> dict:
    """Trials of ``study`` on this host (or, with ``finish``, the search's outcome)."""
    run_id = run_id or new_run_id_for_this_run()
    dataset = fetch_dataset(dataset_uri)
    if finish:
        return finish_search(dataset, search, study, run_id)
    return run_trials(dataset, search, study, run_id)
