"""``kinship-index``: embed a gallery into a family-search index in the store, on a ``cuda`` worker.

One flow run builds the whole index (shards are written one after another, each recorded in the manifest, so a
retried or restarted run resumes); the shards are not yet fanned out over several workers as engine builds are.
"""

from __future__ import annotations

from prefect import flow

from kinship.search.index import IndexBuildConfig
from tasks.search import build_search_index


@flow(name="kinship-index")
def index_build_flow(config: IndexBuildConfig) -> dict:
    """Build or refresh the index ``config.out`` from ``config.images`` with ``config.model``."""
    return build_search_index(config)
