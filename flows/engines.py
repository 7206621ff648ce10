"""``kinship-engines``: fetch the model by manifest, build/validate/benchmark each precision, report."""

from __future__ import annotations

from prefect import flow

from flows.naming import engines_run_name
from kinship.engines.config import DEFAULT_PRECISIONS, EngineConfig, PrecisionName
from kinship.manifests import EnginesManifest
from kinship.stage_order import engines_half
from tasks.engines import EngineTasks, require_an_engine
from tasks.runtime import new_run_id_for_this_run


@flow(name="kinship-engines", flow_run_name=engines_run_name)
def engines_flow(train_manifest: str, precisions: list[PrecisionName] = list(DEFAULT_PRECISIONS),
                 engines: EngineConfig = EngineConfig(), run_id: str | None = None,
                 force: bool = False) -> EnginesManifest:
    """Engines for the model named by the training manifest at ``train_manifest``; return the engines manifest.

    A precision whose build fails is a ``failed`` row with its reason; the others are built and reported.
    If none is built the run fails, after storing the report and the manifest. The steps, in
    ``kinship.stage_order.engines_half``'s order, are the tasks of ``tasks.engines``.
    """
    run_id = run_id or new_run_id_for_this_run()
    return require_an_engine(engines_half(EngineTasks(force), train_manifest, precisions, engines, run_id))
