"""One real stack (SeaweedFS, Prefect server + UI, three workers) with a finished ``kinship/full`` run, shared
by the flow integration tests and the browser test. Stopped by pid (``infra/local/down``) at session end.

Import the fixture into a test module: ``from tests.flows_stack import kinship_stack  # noqa: F401``. The stack
is started once per session even when several modules import the fixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from deployments import driver

DATA_URI = "s3://kinship/datasets/tiny"
TINY_PARAMETERS = {
    "dataset_uri": DATA_URI,
    "train": {"epochs": 1, "image_size": 32, "width": 8, "embedding_dim": 32, "max_batches_per_epoch": 4},
    "precisions": ["fp32", "int8"],
    "engines": {"backend": "auto", "bench_batches": [1, 8], "bench_seconds": 0.2, "warmup_seconds": 0.05},
    "required_margin": -1.0,  # a 4-batch model tests the plumbing; the raw-pixel gate is tested in test_pipeline
    # 24 families: the store's stable split could leave one role empty; tests/test_retraining.py runs it on 120+
    "split": "seeded",
    "only_if_new": False,  # the suite runs the same inputs again on purpose (caches, retries, fan-out)
}
_SESSION: dict[str, "KinshipStack"] = {}


@dataclass
class KinshipStack:
    stack: driver.LocalStack
    first: driver.RunOutcome
    data_dir: Path


@pytest.fixture(scope="session")
def kinship_stack(tiny_data, tmp_path_factory, request) -> KinshipStack:
    """The stack, deployed, with one completed ``kinship/full`` run on the tiny configuration."""
    if "stack" in _SESSION:
        return _SESSION["stack"]
    state_dir = tmp_path_factory.mktemp("stack")
    request.config.add_cleanup(lambda: driver.down(state_dir))  # even if a later step fails
    # two GPU workers for the fan-out test, a second training host for the recipe search's trials
    stack = driver.up(state_dir, env={"KINSHIP_CUDA_BUILD_WORKERS": "2", "KINSHIP_ROCM_TRIAL_WORKERS": "1"})
    driver.push(stack, tiny_data, DATA_URI)
    driver.deploy(stack)
    first = driver.run_deployment(stack, "kinship/full", TINY_PARAMETERS)
    assert first.returncode == 0, first.output[-6000:] + _logs(state_dir)
    _SESSION["stack"] = KinshipStack(stack, first, tiny_data)
    return _SESSION["stack"]


def _logs(state_dir: Path) -> str:
    parts = []
    for log in sorted((state_dir / "logs").glob("worker-*.log")):
        parts.append(f"\n--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    return "".join(parts)
