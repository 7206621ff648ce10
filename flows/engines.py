"""``kinship-engines``: fetch the model by manifest, build/validate/benchmark each precision, report."""

from __future__ import annotations

from prefect import flow

from flows.naming import engines_run_name
from kinship.engines.config import DEFAULT_PRECISIONS, EngineConfig, PrecisionName
from tasks.data import clean_work, fetch_data_set
from tasks.engines import (
    benchmark_engines, build_engine, choose_backend, engine_outcome, fetch_inputs, read_train_manifest,
    require_an_engine, write_engines_manifest, write_engines_report,
)
from tasks.runtime import new_run_id_for_this_run


@flow(name="kinship-engines", flow_run_name=engines_run_name)
def engines_flow(train_manifest: str, precisions: list[PrecisionName] = list(DEFAULT_PRECISIONS),
                 engines: EngineConfig = EngineConfig(), run_id: str | None = None, force: bool = False) -> dict:
    """Engines for the model named by the training manifest at ``train_manifest``; return the engines manifest.

    A precision whose build fails is a ``failed`` row with its reason; the others are built and reported.
    If none is built the run fails, after storing the report and the manifest.
    """
    run_id = run_id or new_run_id_for_this_run()
    backend = choose_backend(engines)  # a bad setting fails here, before any download
    manifest = read_train_manifest(train_manifest)
    dataset = fetch_data_set(manifest["dataset"]["uri"], manifest["dataset"]["sha256"])
    inputs = fetch_inputs(manifest, run_id)
    build = build_engine.with_options(refresh_cache=force)
    states = {v: build(inputs, dataset, v, backend, engines, run_id, return_state=True) for v in dict.fromkeys(precisions)}
    variants = [engine_outcome(state, variant, backend) for variant, state in states.items()]
    variants = benchmark_engines(inputs, dataset, variants, backend, engines, run_id)
    report = write_engines_report(variants, run_id)
    result = write_engines_manifest(run_id, manifest, variants, report)
    clean_work(run_id)
    return require_an_engine(result)
