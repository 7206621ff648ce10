"""The parent flow's tasks: name the run, run each half as a nested deployment run, promote, report."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime, timezone

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as this_run

from kinship import engine_stages, pipeline, tuning_stage
from kinship.champion import history_rows, read_history, unchanged_since
from kinship.errors import UserError
from kinship.host import code_commit
from kinship.engines.calibration import CalibrationConfig
from kinship.engines.config import EngineConfig
from kinship.manifests import ENGINES_MANIFEST_FORMAT, TRAIN_MANIFEST_FORMAT, EnginesManifest, TrainManifest
from kinship.run_report import publish_run_report
from kinship.train_config import TrainConfig
from kinship.tune import TuneConfig
from tasks.children import run_child, run_children
from tasks.engines import plots_artifact
from tasks.progress import progress_artifact
from tasks.runtime import IO_RETRIES, ONE_RETRY, open_store, work_dir

TRAIN_DEPLOYMENT = "kinship-train/train"
ENGINES_DEPLOYMENT = "kinship-engines/engines"
TUNE_TRIALS_DEPLOYMENT = "kinship-tune-trials/trials"
SPLITS = ("stable", "seeded")  # the store's split by family id (kinship.family_split), or val_fraction + seed


@task(name="plan run")
def plan_run(dataset_uri: str, precisions: list[str] | None = None, engines: EngineConfig | None = None) -> dict:
    """The run's id and names, stable across retries of this parent run (its id and scheduled time), and its
    precisions parsed (``precisions``: ``Precision`` values, de-duplicated, for ``run_engines``).

    Checks the values the parameter schema cannot (a backend name, an empty precision list, bench
    settings) first, so a mistake fails the run with its one-line reason before any child run starts.
    """
    parsed = (engine_stages.check_engine_request(precisions, engines or EngineConfig()) if precisions is not None
              else ())
    parent_id = str(this_run.get_id() or "local")
    started = this_run.get_scheduled_start_time() or datetime.now(timezone.utc)
    run_id = pipeline.new_run_id(started, parent_id.replace("-", "")[:8])
    get_run_logger().info("run %s: data set %s; artifacts under %s", run_id, dataset_uri,
                          open_store().uri(pipeline.run_prefix(run_id)))
    return {"run_id": run_id, "parent_id": parent_id, "dataset_uri": dataset_uri, "precisions": parsed}


@task(name="resolve inputs", **IO_RETRIES)
def resolve_inputs(run: dict, dataset_uri: str, train: TrainConfig, split: str, only_if_new: bool = True) -> dict:
    """What this run trains on, fixed once: the data set version ``dataset_uri`` means now (``…/NAME``: the
    latest), recorded as used by this run; the training configuration with the store's stable family split
    (``split="stable"``) or the seeded one; and whether an earlier run was made from the same version, code and
    configuration (``nothing_new``: its one line, and the run ends there; never without ``only_if_new``).

    Returns ``{"dataset": ResolvedDataset as a dict, "train": TrainConfig, "nothing_new": str | None}``."""
    from kinship.data_versions import record_use, resolve_dataset
    from kinship.family_split import stable_split

    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    store = open_store()
    dataset = resolve_dataset(dataset_uri)
    if split == "stable":
        train = replace(train, split_salt=stable_split(store).salt)
    commit = code_commit()  # three git calls: asked once
    earlier = unchanged_since(store, dataset.version, commit, asdict(train)) if only_if_new else None
    line = None
    if earlier is not None:
        line = (f"nothing new since run {earlier['run_id']} ({earlier['kind']} {earlier.get('at') or ''}): data "
                f"version {dataset.version}, code {commit[:12]} and the training configuration are the same")
        get_run_logger().info("%s", line)
        create_markdown_artifact(f"**{line}**", key="kinship-nothing-new", description=f"kinship run {run['run_id']}")
    else:
        record_use(dataset, run["run_id"])
        get_run_logger().info("data set %s: version %s (%s)", dataset.name_uri, dataset.version, dataset.uri)
    return {"dataset": dataset.to_dict(), "train": train, "nothing_new": line}


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
def promote_champion(run: dict, inputs: dict, train_manifest: TrainManifest, engines_manifest: EnginesManifest,
                     required_margin: float, level: float) -> dict:
    """Make this run's model the champion only if it beats the champion on the same held-out pairs (paired
    bootstrap at ``level``) and raw pixels by ``required_margin`` (``kinship.challenge.promote_on_held_out``); the
    decision table and the champion history on the run page."""
    from kinship.challenge import promote_on_held_out

    store = open_store()
    with progress_artifact("champion and challenger on held-out pairs") as on_progress:
        promotion = promote_on_held_out(store, train_manifest, engines_manifest,
                                        lambda: pipeline.fetch_dataset(inputs["dataset"]["uri"]).path,
                                        inputs["train"].split_salt,
                                        work_dir(run["run_id"], "champion"), level, required_margin, on_progress)
    get_run_logger().info("champion: %s", promotion["reason"])
    decision = promotion.get("decision")
    if decision:
        held = promotion.get("held_out") or {}
        create_table_artifact(decision["rows"], key="kinship-champion-decision",
                              description=f"run {run['run_id']} against champion run {held.get('champion_run_id')} on "
                                          f"the same {held.get('pairs')} held-out pairs ({held.get('families')} "
                                          f"families), {decision['level']:.0%} paired bootstrap: {promotion['reason']}")
    create_table_artifact(history_rows(read_history(store, 20)), key="kinship-champion-history",
                          description="champion history, newest first (kinship champion history)")
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


@task(name="nothing new")
def nothing_new(run: dict, inputs: dict) -> dict:
    """The result of a run that found nothing new to train on (``resolve_inputs``): no child run was started."""
    return {"run_id": run["run_id"], "report": None, "val_auc": None, "promoted": False,
            "champion": inputs["nothing_new"], "nothing_new": inputs["nothing_new"], "engines": []}
