"""``kinship-engine``: one precision built and validated on whichever ``cuda`` worker takes it (an engines run fans
its precisions out to these when asked, so a pool of several GPU workers builds them in parallel)."""

from __future__ import annotations

from prefect import flow

from flows.naming import engine_build_run_name
from kinship.engines.config import EngineConfig
from kinship.engines.precision import Precision, PrecisionName
from kinship.manifests import VariantRecord
from kinship.stage_order import one_engine
from tasks.engines import EngineTasks
from tasks.runtime import new_run_id_for_this_run


@flow(name="kinship-engine", flow_run_name=engine_build_run_name)
def engine_build_flow(train_manifest: str, precision: PrecisionName, backend: str,
                      engines: EngineConfig = EngineConfig(), run_id: str | None = None,
                      force: bool = False) -> VariantRecord:
    """Build and validate ``precision`` of the model named by ``train_manifest`` with ``backend``; store its record
    under the run's engines prefix for the engines run to merge (``kinship.stage_order.one_engine``)."""
    run_id = run_id or new_run_id_for_this_run()
    return one_engine(EngineTasks(force, work_key=f"{run_id}-{precision}"), train_manifest, Precision.parse(precision),
                      backend, engines, run_id)
