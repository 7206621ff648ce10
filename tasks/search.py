"""Family-search tasks: build an index, run a batch of probes. Thin wrappers over ``kinship.search``; figures go
to the run page as artifacts."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from kinship.search.batch import BatchSearchConfig, BatchSearchResult, run_batch
from kinship.search.index import IndexBuildConfig, IndexBuildResult, build_index
from tasks.progress import progress_artifact
from tasks.runtime import ONE_RETRY


@task(name="build search index", task_run_name="index {config.images} -> {config.out}", **ONE_RETRY)
def build_search_index(config: IndexBuildConfig) -> dict:
    """Embed the gallery into the index (only new or changed images; a retry resumes from the last shard)."""
    with progress_artifact("index build") as on_progress:
        result: IndexBuildResult = build_index(config, on_progress)
    figures = {k: v for k, v in result.to_dict().items() if k != "bad"}
    create_table_artifact(key="index-build", table=[{"figure": k, "value": str(v)} for k, v in figures.items()],
                          description=f"index {config.out}")
    if result.bad:
        create_table_artifact(key="index-bad-images", description="images left out of the index",
                              table=[{"image": k, "reason": v} for k, v in sorted(result.bad.items())])
    return result.to_dict()


@task(name="search probes", task_run_name="search {config.probes} in {config.index}", **ONE_RETRY)
def search_probes(config: BatchSearchConfig) -> dict:
    """Rank the index for every probe; the ranked CSV in the store, the metrics (when labelled) on the run page."""
    with progress_artifact("family search") as on_progress:
        result: BatchSearchResult = run_batch(config, on_progress)
    create_markdown_artifact(key="search-ranked", markdown=f"Ranked lists of {result.probes} probes: "
                             f"`{result.ranked_csv}`", description="family search output")
    if result.metrics:
        create_table_artifact(key="search-metrics", description="family search metrics (labelled probes)",
                              table=[{"metric": k, "value": round(v, 4)} for k, v in result.metrics.items()])
    return result.to_dict()
