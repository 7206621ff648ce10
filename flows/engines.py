"""``kinship-engines``: fetch the model by manifest, build/validate/benchmark each precision, report."""

from __future__ import annotations

from prefect import flow

from flows.naming import engines_run_name
from kinship.engines.config import EngineConfig
from kinship.engines.precision import DEFAULT_PRECISIONS, PrecisionName, parse_precisions
from kinship.manifests import EnginesManifest
from kinship.stage_order import engines_half
from tasks.engines import EngineTasks, require_an_engine
from tasks.runtime import new_run_id_for_this_run


@flow(name="kinship-engines", flow_run_name=engines_run_name)
def engines_flow(train_manifest: str, precisions: list[PrecisionName] = [p.value for p in DEFAULT_PRECISIONS],
                 engines: EngineConfig = EngineConfig(), run_id: str | None = None,
                 force: bool = False, fan_out: bool = False) -> EnginesManifest:
    """Engines for the model named by the training manifest at ``train_manifest``; return the engines manifest.

    A precision whose build fails is a ``failed`` row with its reason; the others are built and reported.
    If none is built the run fails, after storing the report and the manifest. The steps, in
    ``kinship.stage_order.engines_half``'s order, are the tasks of ``tasks.engines``. ``fan_out``: each precision
    is built and validated by its own ``kinship-engine/build`` child run on the ``cuda`` pool (in parallel where the
    pool has several workers); the benchmark of every built engine stays here, one task on one device.
    """
    run_id = run_id or new_run_id_for_this_run()
    steps = EngineTasks(force, fan_out_of=train_manifest if fan_out else None)
    return require_an_engine(engines_half(steps, train_manifest, parse_precisions(precisions), engines, run_id))
