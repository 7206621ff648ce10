"""``kinship-search``: a list of probes against an index; the ranked CSV in the store, the metrics on the run page."""

from __future__ import annotations

from prefect import flow

from kinship.search.batch import BatchSearchConfig
from tasks.search import search_probes


@flow(name="kinship-search")
def search_flow(config: BatchSearchConfig) -> dict:
    """Rank the gallery of ``config.index`` for each probe of ``config.probes``."""
    return search_probes(config)
