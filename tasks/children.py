"""Nested deployment runs: start one as a sub-flow of this run (or find the one an earlier attempt started), wait
for it, and fail unless it completed. Used by the parent flow for its two halves and by the engines flow for
the precisions it fans out."""

from __future__ import annotations

import time
from uuid import UUID

from prefect import get_client
from prefect.deployments import run_deployment
from prefect.logging import get_run_logger

CHILD_TIMEOUT_S = 12 * 3600
POLL_S = 0.25  # a child's end is seen within this; one small read on the API per poll
MAX_ATTEMPTS = 5


class ChildRunFailed(RuntimeError):
    """A child deployment run ended in a state other than Completed."""


def _create_or_find(deployment: str, parameters: dict, run: dict, step: str) -> object:
    """The child flow run for this step: a new one, or the one an earlier attempt of this parent started.

    The idempotency key is parent id + step + attempt number, so a retried parent picks up its child
    instead of starting a duplicate; only a child that already failed is replaced (next attempt number).
    """
    logger = get_run_logger()
    tags = ["kinship", f"run-{run['run_id']}", step]
    for attempt in range(MAX_ATTEMPTS):
        key = f"{run['parent_id']}:{step}:{attempt}"
        child = run_deployment(deployment, parameters=parameters, idempotency_key=key, as_subflow=True, timeout=0,
                               tags=tags)
        state = child.state
        if state is None or not state.is_final() or state.is_completed():
            return child
        logger.warning("child run %s of an earlier attempt ended %s: starting a fresh one", child.name, state.name)
    raise ChildRunFailed(f"{step}: {MAX_ATTEMPTS} child runs of {deployment} failed for this parent run")


def _wait(flow_run_id: UUID, timeout: float = CHILD_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            child = client.read_flow_run(flow_run_id)
            if child.state and child.state.is_final():
                return child
            if time.monotonic() > deadline:
                raise ChildRunFailed(f"child run {child.name} still {child.state.name} after {timeout:.0f} s")
            time.sleep(POLL_S)


def run_child(deployment: str, parameters: dict, run: dict, step: str) -> dict:
    """Run ``deployment`` as a nested sub-flow, wait for it, and fail unless it Completed."""
    logger = get_run_logger()
    child = _create_or_find(deployment, parameters, run, step)
    logger.info("%s: child run %s (%s) on pool %s", step, child.name, child.id, child.work_pool_name)
    child = _wait(child.id)
    if not child.state.is_completed():
        raise ChildRunFailed(f"{step}: child run {child.name} ({child.id}) ended {child.state.name}: "
                             f"{child.state.message or 'see its logs'}")
    return {"id": str(child.id), "name": child.name, "work_pool": child.work_pool_name, "state": child.state.name}


def run_children(deployment: str, parameter_sets: list[dict], run: dict, steps: list[str],
                 tolerate_failures: bool = False) -> list[dict]:
    """Several runs of ``deployment`` at once (started together, then awaited); fail unless every one Completed, or
    (``tolerate_failures``) unless none did, logging the ones that did not."""
    logger = get_run_logger()
    children = [_create_or_find(deployment, parameters, run, step) for parameters, step in zip(parameter_sets, steps)]
    for child, step in zip(children, steps):
        logger.info("%s: child run %s (%s) on pool %s", step, child.name, child.id, child.work_pool_name)
    finished = [_wait(child.id) for child in children]
    failed = [child for child in finished if not child.state.is_completed()]
    lines = [f"child run {c.name} ({c.id}) ended {c.state.name}: {c.state.message or 'see its logs'}" for c in failed]
    if failed and (not tolerate_failures or len(failed) == len(finished)):
        raise ChildRunFailed("; ".join(lines))
    for line in lines:
        logger.warning("%s; the others went on", line)
    return [{"id": str(c.id), "name": c.name, "work_pool": c.work_pool_name, "state": c.state.name} for c in finished]
