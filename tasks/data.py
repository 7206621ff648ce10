"""This host's files: fetching a pushed data set into scratch, and cleaning a run's working folder."""

from __future__ import annotations

import shutil

from prefect import task
from prefect.logging import get_run_logger

from kinship.errors import ArtifactMismatch
from kinship.manifests import DatasetHandle
from kinship import pipeline
from kinship.storage import StoreSettings
from tasks.progress import progress_artifact
from tasks.runtime import IO_RETRIES, work_dir


@task(name="fetch data set", task_run_name="fetch {uri}", **IO_RETRIES)
def fetch_dataset(uri: str, expected_sha256: str | None = None) -> DatasetHandle:
    """Download (or find in the hash cache) every file of the data set at ``uri``, each sha256-verified.

    With ``expected_sha256`` the data set must be exactly the one another stage recorded.
    """
    with progress_artifact(f"fetch {uri}") as on_progress:
        dataset = pipeline.fetch_dataset(uri, StoreSettings.from_env(), on_progress)
    if expected_sha256 and dataset.sha256 != expected_sha256:
        raise ArtifactMismatch(f"{uri} now holds other content (manifest sha256 {dataset.sha256[:16]}, "
                               f"expected {expected_sha256[:16]}): it was pushed again after training")
    get_run_logger().info("data set %s (manifest sha256 %s) ready in %s", uri, dataset.sha256[:16], dataset.path)
    return dataset




@task(name="clean scratch")
def clean_work(run_id: str) -> None:
    """Remove this run's working folder on this host: everything worth keeping is in the store by now."""
    shutil.rmtree(work_dir(run_id), ignore_errors=True)
