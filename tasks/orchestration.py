"""The parent flow's tasks: name the run, run each half as a nested deployment run, promote, report."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as this_run

from kinship import pipeline, tuning_stage
from kinship.champion import promote_if_better
from kinship.engines.calibration import CalibrationConfig
from kinship.engines.config import EngineConfig
from kinship.manifests import ENGINES_MANIFEST_FORMAT, TRAIN_MANIFEST_FORMAT, EnginesManifest, TrainManifest
from kinship.run_report import publish_run_report
from kinship.train_config import TrainConfig
from kinship.tune import TuneConfig
from tasks.children import run_child, run_children
from tasks.engines import plots_artifact
from tasks.runtime import ONE_RETRY, open_store

TRAIN_DEPLOYMENT = "kinship-train/train"
ENGINES_DEPLOYMENT = "kinship-engines/engines"
TUNE_TRIALS_DEPLOYMENT = "kinship-tune-trials/trials"


@task(name="plan run")
def plan_run(dataset_uri: str, precisions: list[str] | None = None, engines: EngineConfig | None = None) -> dict:
    """The run's id and names, stable across retries of this parent run (its id and scheduled time), and its
    precisions parsed (``precisions``: ``Precision`` values, de-duplicated, for ``run_engines``).

    Checks the values the parameter schema cannot (a backend name, an empty precision list, bench
    settings) first, so a mistake fails the run with its one-line reason before any child run starts.
    """
    parsed = pipeline.check_engine_request(precisions, engines or EngineConfig()) if precisions is not None else ()
    parent_id = str(this_run.get_id() or "local")
    started = this_run.get_scheduled_start_time() or datetime.now(timezone.utc)
    run_id = pipeline.new_run_id(started, parent_id.replace("-", "")[:8])
    get_run_logger().info("run %s: data set %s; artifacts under %s", run_id, dataset_uri,
                          open_store().uri(pipeline.run_prefix(run_id)))
    return {"run_id": run_id, "parent_id": parent_id, "dataset_uri": dataset_uri, "precisions": parsed}


@task(name="run training", task_run_name="kinship-train on rocm")
def run_training(run: dict, dataset_uri: str, train: TrainConfig, calibration: CalibrationConfig,
                 force: bool) -> TrainManifest:
    """The ``kinship-train`` deployment for this run; returns its manifest, read back from the store."""
    parameters = {"dataset_uri": dataset_uri, "train": asdict(train), "calibration": asdict(calibration),
                  "run_id": run["run_id"], "force": force}
    child = run_child(TRAIN_DEPLOYMENT, parameters, run, "train")
    key = pipeline.run_prefix(run["run_id"], "train", "manifest.json")
    manifest = pipeline.read_manifest(open_store(), open_store().uri(key), TRAIN_MANIFEST_FORMAT)
    return {**manifest, "child_run": child}


@task(name="run engines", task_run_name="kinship-engines on cuda")
def run_engines(run: dict, train_manifest: TrainManifest, engines: EngineConfig, force: bool,
                fan_out: bool = False) -> EnginesManifest:
    """The ``kinship-engines`` deployment for this run's model at the run's precisions (``plan_run``); returns its
    manifest, read back from the store."""
    parameters = {"train_manifest": train_manifest["manifest"]["uri"], "precisions": [p.value for p in run["precisions"]],
                  "engines": asdict(engines), "run_id": run["run_id"], "force": force, "fan_out": fan_out}
    child = run_child(ENGINES_DEPLOYMENT, parameters, run, "engines")
    key = pipeline.run_prefix(run["run_id"], "engines", "manifest.json")
    manifest = pipeline.read_manifest(open_store(), open_store().uri(key), ENGINES_MANIFEST_FORMAT)
    return {**manifest, "child_run": child}


@task(name="promote champion", **ONE_RETRY)
def promote_champion(train_manifest: TrainManifest, engines_manifest: EnginesManifest, required_margin: float) -> dict:
    """Make this run's model the champion only if it beats raw pixels by ``required_margin`` and the champion."""
    promotion = promote_if_better(open_store(), train_manifest, engines_manifest, required_margin=required_margin)
    get_run_logger().info("champion: %s", promotion["reason"])
    return promotion


@task(name="publish report", **ONE_RETRY)
def publish_report(run: dict, train_manifest: TrainManifest, engines_manifest: EnginesManifest,
                   promotion: dict) -> dict:
    """Store the final report and show it: markdown, the engine table, the plots, links to the stored objects."""
    report = publish_run_report(open_store(), run["run_id"], train_manifest, engines_manifest, promotion)
    create_markdown_artifact(report["markdown"], key="kinship-report", description=f"kinship run {run['run_id']}")
    create_table_artifact(report["table"], key="kinship-engines", description=f"engines of run {run['run_id']}")
    plots_artifact(open_store(), engines_manifest.get("report") or {}, "kinship-plots",
                   f"engine plots of run {run['run_id']}")
    for item in report["links"]:
        create_link_artifact(item["uri"], link_text=f"{item['name']}: {item['uri']}", description=item["name"])
    uri = report["artifacts"]["report.md"]["uri"]
    get_run_logger().info("report: %s", uri)
    return {"run_id": run["run_id"], "report": uri, "val_auc": train_manifest["metrics"]["best_val_auc"],
            "promoted": promotion["promoted"], "champion": promotion["reason"], "engines": report["table"]}


@task(name="run trial workers", task_run_name="kinship-tune-trials on rocm")
def run_tune_workers(run: dict, dataset_uri: str, search: TuneConfig, study: str, workers: int) -> dict:
    """``workers`` trial runs of ``study`` at once on the ``rocm`` pool (each takes one worker's slot), then one
    more that finishes the search; returns its outcome. A trial run that dies (its host lost) costs its trial,
    which the finish marks failed; the search goes on while one trial run completes."""
    if not 1 <= workers <= 64:
        raise ValueError(f"workers must be between 1 and 64, got {workers}")
    parameters = {"dataset_uri": dataset_uri, "study": study, "search": asdict(search), "run_id": run["run_id"]}
    run_children(TUNE_TRIALS_DEPLOYMENT, [parameters] * workers, run, [f"trials-{i + 1}" for i in range(workers)],
                 tolerate_failures=True)
    run_child(TUNE_TRIALS_DEPLOYMENT, {**parameters, "finish": True}, run, "finish")
    # read back from the store, as the other halves' manifests are: a child's own result lives on its host
    return open_store().get_json(open_store().uri(tuning_stage.tuning_key(study, "summary.json")))
