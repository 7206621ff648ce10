"""What every task needs from the host it runs on: the artifact store, a scratch folder, cache keys, facts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kinship import __version__
from kinship.errors import KinshipError
from kinship.host import stage_host
from kinship.storage import ArtifactStore, StoreSettings, store_from_settings


def open_store() -> ArtifactStore:
    """The store named by the environment: S3 when ``KINSHIP_BUCKET`` is set, else the scratch folder's."""
    return store_from_settings(StoreSettings.from_env())


def work_dir(run_id: str, *parts: str) -> Path:
    """``$KINSHIP_SCRATCH/work/<run_id>/...``: this host's private working folder for one run (``run_id`` is
    checked first: a flow parameter such as ``'../../..'`` must never name a folder outside ``work``)."""
    from kinship.pipeline import validate_run_id

    return StoreSettings.from_env().scratch.joinpath("work", validate_run_id(run_id), *parts)


def store_identity() -> str:
    """Which store cached refs point into: a cache hit from another bucket would name missing objects."""
    settings = StoreSettings.from_env()
    return f"{settings.endpoint_url or 'aws'}|{settings.bucket or settings.scratch}|{settings.prefix}"


def cache_key(step: str, *parts: Any) -> str:
    """A cache key from the step's name, its content inputs, the store and the kinship version."""
    payload = json.dumps([step, __version__, store_identity(), *parts], sort_keys=True, default=str)
    return f"{step}-{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


def host() -> dict:
    """Host name, role and (inside a flow run) the work pool that dispatched it."""
    facts = stage_host()
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        pool = context.flow_run.work_pool_name if context and context.flow_run else None
    except Exception:  # facts are a nicety: never fail a stage over them
        pool = None
    return {**facts, "work_pool": pool}


def new_run_id_for_this_run() -> str:
    """A run id for a child flow started on its own (no parent gave one): its own id and scheduled time."""
    from prefect.runtime import flow_run

    from kinship.pipeline import new_run_id

    run_id = str(flow_run.get_id() or "")
    return new_run_id(flow_run.get_scheduled_start_time(), run_id.replace("-", "")[:8] or None)


# Failures that waiting cannot fix: our own refusals (every KinshipError: a user's mistake, a check that failed,
# an artifact that is not the one recorded) and the errors of wrong code or wrong data, which fail the same way
# on every attempt. Anything else (a dropped connection, a timeout, Prefect's server answering 503, a library's
# RuntimeError) may clear, and is retried.
PERMANENT = (KinshipError, ValueError, TypeError, LookupError, AttributeError, ArithmeticError, AssertionError,
             NotImplementedError)


def is_transient(error: BaseException) -> bool:
    """Whether running the task again later can help: trouble yes, a permanent failure (``PERMANENT``) no.

    Two KinshipErrors are trouble that clears: the store unreachable for a whole retry window (it may be back
    after the task's delay) and a promotion that kept losing the race to other runs (they finish).
    """
    from kinship.champion import ChampionContention
    from kinship.storage import StoreUnreachable

    if isinstance(error, (StoreUnreachable, ChampionContention)):
        return True
    return not isinstance(error, PERMANENT)


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry condition of every task with retries: retry trouble, never a permanent failure (``is_transient``).

    A store down for good fails a task after 4 windows of 45 s plus the delays: 3.7 min. A failed state that
    carries no exception (nothing to judge) is retried, as Prefect would without a condition.
    """
    error = state.data if isinstance(state.data, BaseException) else None
    return error is None or is_transient(error)


# Task options: I/O steps retry with backoff, compute steps once (a training retry resumes from its checkpoint).
IO_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_condition_fn": retry_unless_user_error}
ONE_RETRY = {"retries": 1, "retry_delay_seconds": 5, "retry_condition_fn": retry_unless_user_error}
