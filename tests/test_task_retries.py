"""Tasks retry trouble, never a permanent failure: the retry condition over a table of exceptions, then one real
Prefect task with ``IO_RETRIES`` in a flow that raises a permanent error and runs exactly once."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import httpx
import pytest

from kinship.champion import ChampionContention
from kinship.engine_stages import NoEngineBuilt
from kinship.errors import ArtifactMismatch, CheckFailed, KinshipError, UserError
from kinship.storage import ArtifactNotFound, IntegrityError, StoreAccessError, StoreUnreachable
from tasks.runtime import IO_RETRIES, retry_unless_user_error

RETRIED = [
    StoreUnreachable("s3://b/k: gave up after 9 attempts over 45 s"),
    ChampionContention("champion.json changed under each of 10 attempts"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError("timed out"),
    OSError(5, "Input/output error"),
    httpx.ConnectError("the Prefect server went away"),
    httpx.ReadTimeout("the Prefect server is slow"),
    RuntimeError("a worker hiccup"),
]
NOT_RETRIED = [
    ArtifactMismatch("s3://kinship/datasets/tiny now holds other content: it was pushed again after training"),
    ArtifactMismatch("/scratch/model.onnx changed on disk since it was fetched"),
    ArtifactMismatch("asked for tensorrt but the build used onnxruntime"),
    UserError("bad value"),
    CheckFailed("fp16 engine vs FP32: AUC differs by 0.02"),
    NoEngineBuilt("no engine was built"),
    KinshipError("any other refusal of ours"),
    IntegrityError("s3://b/k: sha256 differs"),
    ArtifactNotFound("s3://b/k: no such object"),
    StoreAccessError("s3://b/k: access denied (InvalidAccessKeyId)"),
    ValueError("a bad value in our own code"),
    json.JSONDecodeError("Expecting value", "", 0),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    TypeError("a bug"),
    KeyError("model_state"),
    IndexError("list index out of range"),
    AttributeError("a bug"),
    ZeroDivisionError("division by zero"),
]


def retried(error: BaseException | None) -> bool:
    return retry_unless_user_error(None, None, SimpleNamespace(data=error))


@pytest.mark.parametrize("error", RETRIED, ids=lambda e: type(e).__name__)
def test_trouble_is_retried(error: BaseException) -> None:
    assert retried(error)


@pytest.mark.parametrize("error", NOT_RETRIED, ids=lambda e: type(e).__name__)
def test_permanent_failures_are_not_retried(error: BaseException) -> None:
    assert not retried(error)


def test_a_failure_without_an_exception_is_retried_as_prefect_would() -> None:
    assert retried(None) and retry_unless_user_error(None, None, SimpleNamespace(data="a failed state's message"))


# ---------------------------------------------------------------- a real task in a real flow

CALLS: list[float] = []  # when each attempt of the probe task began (wall clock, as Prefect's state timestamps)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """Prefect's test harness: a temporary server on SQLite, its home in a temporary folder."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_HOME: tmp_path_factory.mktemp("prefect-home")}):
        with prefect_test_harness(server_startup_timeout=180):  # the default 30 s is tight on a busy 2-core host
            yield


def run_failing_task(error: BaseException, **options):
    """Run a flow whose one task, with ``IO_RETRIES`` (and ``options``), raises ``error``; the task's final state."""
    from prefect import flow, task

    @task(name="fails", **{**IO_RETRIES, **options})
    def fails() -> None:
        CALLS.append(time.time())
        raise error

    @flow(name="retry-probe")
    def probe() -> list:
        return [fails(return_state=True)]  # in a list: a failed state returned bare would fail the flow

    CALLS.clear()
    return probe()[0]


@pytest.mark.slow
def test_a_task_with_io_retries_runs_a_permanent_failure_once(prefect_api) -> None:
    state = run_failing_task(ArtifactMismatch("/scratch/model.onnx changed on disk since it was fetched"))
    assert state.is_failed() and len(CALLS) == 1, (state, CALLS)
    # no retry delay spent: the task failed for good well within the first delay (2 s) after its one call
    assert state.timestamp.timestamp() - CALLS[0] < IO_RETRIES["retry_delay_seconds"][0]
    # the same task retries trouble (delays set to 0 here: waiting 2 + 10 + 30 s would prove nothing more)
    state = run_failing_task(ConnectionResetError(104, "Connection reset by peer"), retry_delay_seconds=0)
    assert state.is_failed() and len(CALLS) == 1 + IO_RETRIES["retries"], (state, CALLS)
