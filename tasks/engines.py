"""Engine-half tasks: read the training manifest, fetch verified inputs, build each variant, report.

``EngineTasks`` hands them to ``kinship.stage_order.engines_half``, which holds their order.
"""

from __future__ import annotations

import base64
from dataclasses import asdict

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as this_run

from kinship import engine_stages, pipeline
from kinship.engines.config import EngineConfig
from kinship.engines.outcome import STATUS_BUILT
from kinship.engines.precision import Precision
from kinship.errors import reason_of
from kinship.manifests import (
    TRAIN_MANIFEST_FORMAT, DatasetHandle, EngineInputs, EnginesManifest, RefDict, ReportRefs, TrainManifest, UriOnly,
    VariantRecord,
)
from kinship.run_report import engine_table
from kinship.storage import ArtifactRef, LocalStore, S3Store
from tasks.children import ChildRunFailed, run_child
from tasks.data import clean_work, fetch_dataset
from tasks.progress import progress_artifact
from tasks.runtime import IO_RETRIES, ONE_RETRY, cache_key, host, open_store, work_dir


@task(name="read training manifest", **IO_RETRIES)
def read_train_manifest(uri: str | RefDict | UriOnly) -> TrainManifest:
    """The training manifest at ``uri``, verified against the sha256 recorded when it was stored."""
    return pipeline.read_manifest(open_store(), uri, TRAIN_MANIFEST_FORMAT)


ENGINE_DEPLOYMENT = "kinship-engine/build"  # one precision on whichever cuda worker is free (fanned out)


@task(name="fetch model", **IO_RETRIES)
def fetch_inputs(manifest: TrainManifest, run_id: str) -> EngineInputs:
    """The ONNX trio named in the manifest, sha256-verified, in scratch; the calibration set's ref for INT8.

    The calibration set is fetched by the INT8 builds themselves: it is their input alone, so a damaged
    one fails those builds (recorded with the reason) and never the precisions that do not read it.
    """
    return engine_stages.engine_inputs(open_store(), manifest, work_dir(run_id, "engines"))


@task(name="choose backend")
def choose_backend(settings: EngineConfig) -> str:
    """The backend this host will build with: TensorRT where it imports and sees a GPU, else ONNX Runtime."""
    backend = engine_stages.choose_backend(settings)
    get_run_logger().info("engine backend on this host: %s (asked: %s)", backend, settings.backend)
    return backend


# The knobs that change what a build makes, beyond backend and validation pairs (always in the key). Each joins
# the key only when set away from its default, so the engines cached before it was settable stay valid.
BUILD_KNOBS = ("min_batch", "opt_batch", "max_batch", "workspace_mib", "calibration_method", "threads", "reduce_range",
               "companions")


def _engine_key(context, parameters: dict) -> str:
    inputs = parameters["inputs"]
    precision = parameters["precision"]
    calibration = inputs["calibration_sha256"] if precision.is_int8 else None
    given, default = parameters["settings"], EngineConfig()
    settings = {"backend": given.backend, "validation_pairs": given.validation_pairs}
    settings.update({k: getattr(given, k) for k in BUILD_KNOBS if getattr(given, k) != getattr(default, k)})
    return cache_key("engine", inputs["onnx_sha256"], precision, parameters["backend"], calibration,
                     parameters["dataset"].sha256, settings)  # the speeds are measured later, by benchmark_engines


@task(name="build engine", cache_key_fn=_engine_key, task_run_name="engine {precision} ({backend})",
      **ONE_RETRY)
def build_engine(inputs: EngineInputs, dataset: DatasetHandle, precision: Precision, backend: str,
                 settings: EngineConfig, run_id: str, work_key: str | None = None) -> VariantRecord:
    """Build and validate one precision against FP32; upload the engine folder (``benchmark_engines`` times it).

    Cached on (ONNX sha256, precision, backend, calibration sha256 for INT8, data set, validation settings).
    """
    with progress_artifact(f"engine {precision}") as on_progress:
        built = engine_stages.engine_stage(open_store(), inputs, dataset, precision, backend, settings,
                                           work_dir(work_key or run_id, "engines"),
                                           pipeline.run_prefix(run_id, "engines"), on_progress)
    get_run_logger().info("%s", engine_line(built))
    return built


def _figure(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def engine_line(built: VariantRecord) -> str:
    """One log line for a built (or failed) precision: status, size, build time, agreement and AUC against FP32.

    ``engine int8 (onnxruntime): built, 0.36 MB in 14 s; agrees with FP32 on 99.2% of pairs (max |diff| 0.031),
    AUC 0.7012 (-0.0089 vs FP32)``
    """
    row = built.get("row") or {}
    head = f"engine {built['variant']} ({built['backend']}): {built['status']}"
    validation = row.get("validation")
    if not validation:
        return head + (f" ({built['reason']})" if built.get("reason") else "")
    size = row.get("size_bytes") / 1e6 if isinstance(row.get("size_bytes"), (int, float)) else None
    agreement = validation.get("agreement")
    percent = 100 * agreement if isinstance(agreement, (int, float)) else None
    text = (f"{head}, {_figure(size, '.2f')} MB in {_figure(row.get('build_seconds'), '.0f')} s; agrees with FP32 on "
            f"{_figure(percent, '.1f')}% of pairs (max |diff| {_figure(validation.get('max_abs_diff'), '.3g')}), "
            f"AUC {_figure(validation.get('auc'), '.4f')} ({_figure(validation.get('auc_delta'), '+.4f')} vs FP32)")
    return text + (f"; note: {built['reason']}" if built.get("reason") else "")


def benchmark_lines(variants: list[VariantRecord]) -> list[str]:
    """One log line per benchmarked precision: pairs/s and median latency at each batch size."""
    lines = []
    for variant in variants:
        row = variant.get("row") or {}
        bench = row.get("bench") or {}
        if not bench:
            continue
        cells = []
        for batch in sorted(bench, key=int):
            figures = bench[batch]
            median = (figures.get("latency_ms") or {}).get("median")
            cells.append(f"batch {batch}: {_figure(figures.get('pairs_per_s'), '.0f')} pairs/s "
                         f"(p50 {_figure(median, '.2f')} ms)")
        reason = f"; stopped: {row['reason']}" if row.get("reason") else ""
        lines.append(f"benchmark {variant['variant']} ({variant['backend']}): " + ", ".join(cells) + reason)
    return lines


def engine_outcome(state, precision: Precision, backend: str) -> VariantRecord:
    """A build task's result, or for a build task that failed a ``failed`` record with its reason.

    One precision failing (its build, its inputs, its validation) is recorded and reported; the others
    go on and the run completes (``kinship.engines.build``'s rule, applied to whole tasks).
    """
    if state.is_completed():
        return state.result()
    error = state.result(raise_on_failure=False)
    reason = reason_of(error) if isinstance(error, BaseException) else (state.message or state.name)
    get_run_logger().warning("%s %s failed, the other precisions go on: %s", backend, precision, reason)
    return engine_stages.failed_engine(precision, backend, reason)


@task(name="benchmark engines", task_run_name="benchmark {backend} engines side by side")
def benchmark_engines(inputs: EngineInputs, dataset: DatasetHandle, variants: list[VariantRecord], backend: str,
                      settings: EngineConfig, run_id: str) -> list[VariantRecord]:
    """Every built precision timed together in alternating slices, after the builds; the variants with figures.

    Not cached: a speed is a measurement of this run's host. A benchmark that fails leaves the engines built
    and validated, reported without speeds and with the reason (``engine_stages.benchmark_stage``).
    """
    with progress_artifact("benchmark engines") as on_progress:
        timed = engine_stages.benchmark_stage(open_store(), inputs, variants, dataset, settings,
                                              work_dir(run_id, "engines"), on_progress)
    lines = benchmark_lines(timed)
    reasons = sorted({v["row"]["reason"] for v in timed if v["status"] == STATUS_BUILT and v["row"].get("reason")})
    for line in lines or [f"benchmark: no speeds measured ({'; '.join(reasons) or 'no bench batches'})"]:
        get_run_logger().info("%s", line)
    return timed


@task(name="write engine report", **ONE_RETRY)
def write_engines_report(variants: list[VariantRecord], run_id: str) -> ReportRefs:
    """One report over every variant (markdown, JSON, plots), uploaded under the run's engines prefix; its plots
    shown on this run's page (``plots_artifact``)."""
    store = open_store()
    report = engine_stages.engines_report_stage(store, variants, work_dir(run_id, "engines"),
                                                pipeline.run_prefix(run_id, "engines", "report"))
    plots_artifact(store, report["artifacts"], "engine-plots", f"engine plots of run {run_id}")
    return report


# Plots in the order a reader wants them, with their titles; any other PNG follows under its file name.
PLOT_TITLES = {"roc.png": "ROC curve (validation pairs)", "throughput.png": "Throughput vs batch size",
               "sizes.png": "Engine sizes"}
# Plots are embedded in the artifact, not linked: a presigned link is a bearer credential kept in Prefect's
# database (and its dumps) for as long as it is valid, and it stops working after at most 7 days. The plots are
# tens of KB; one larger than this is named by its store location instead of bloating the database.
MAX_EMBEDDED_BYTES = 1024 * 1024


def plots_markdown(store: S3Store | LocalStore, refs: dict[str, RefDict]) -> str | None:
    """Markdown showing each stored PNG of ``refs`` (file name -> ref) as an image, None when there is none.

    Each image is the stored object's bytes (verified against its ref) in a ``data:`` URL: the run page shows it
    for as long as the artifact exists, with no link to the store that could be replayed or expire."""
    pngs = sorted((name for name in refs if name.endswith(".png")),
                  key=lambda name: (list(PLOT_TITLES).index(name) if name in PLOT_TITLES else len(PLOT_TITLES), name))
    if not pngs:
        return None
    lines = []
    for name in pngs:
        title, uri = PLOT_TITLES.get(name, name), refs[name]["uri"]
        data = _png_bytes(store, refs[name])
        shown = (f"![{title}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})" if data is not None
                 else f"Stored at `{uri}` (over {MAX_EMBEDDED_BYTES // 1024} KiB: too large to embed here).")
        lines += [f"### {title}", "", shown, ""]
    stored = ", ".join(f"`{refs[name]['uri']}`" for name in pngs)
    lines.append(f"_Images embedded in this artifact; the files stay in the store: {stored}._")
    return "\n".join(lines)


def _png_bytes(store: S3Store | LocalStore, ref: RefDict) -> bytes | None:
    """The stored PNG's bytes, verified against ``ref`` (or the digest recorded with it); None when too large."""
    if int(ref.get("size") or 0) > MAX_EMBEDDED_BYTES:
        return None
    path = store.get_file(ArtifactRef.from_dict(ref) if ref.get("sha256") else ref["uri"])
    return path.read_bytes() if path.stat().st_size <= MAX_EMBEDDED_BYTES else None


def plots_artifact(store: S3Store | LocalStore, refs: dict[str, RefDict], key: str, description: str) -> None:
    """A markdown artifact with the stored plots (``plots_markdown``); a failure is logged, never raised:
    the report is stored either way."""
    try:
        markdown = plots_markdown(store, refs)
        if markdown:
            create_markdown_artifact(markdown, key=key, description=description)
    except Exception as error:
        get_run_logger().warning("plots not shown on the run page: %s", error)


@task(name="write engines manifest", **IO_RETRIES)
def write_engines_manifest(run_id: str, train_manifest: TrainManifest, variants: list[VariantRecord],
                           report: ReportRefs) -> EnginesManifest:
    """Store the engines manifest last and show the engine table on this run's page."""
    manifest = engine_stages.write_engines_manifest(open_store(), run_id, train_manifest, variants, report, host())
    create_table_artifact(engine_table(manifest), description=f"engines of run {run_id} ({manifest['backend_note']})")
    get_run_logger().info("engines manifest: %s", manifest["manifest"]["uri"])
    return manifest


@task(name="require an engine")
def require_an_engine(manifest: EnginesManifest) -> EnginesManifest:
    """Fail the run (report and manifest already stored) when no precision was built: nothing to deploy."""
    return engine_stages.require_an_engine(manifest)


def variant_record_key(run_id: str, precision: str) -> str:
    """Where a fanned-out child stores its precision's record for the engines run to merge."""
    return pipeline.run_prefix(run_id, "engines", "variants", f"{precision}.json")


@task(name="store engine record", **IO_RETRIES)
def store_engine_record(record: VariantRecord, run_id: str) -> None:
    """This precision's record in the store, where the engines run that fanned it out reads it."""
    open_store().put_json(record, variant_record_key(run_id, record["variant"]))


@task(name="build engine on a cuda worker", task_run_name="engine {precision} (child run)")
def build_engine_elsewhere(train_manifest: str, precision: Precision, backend: str, settings: EngineConfig,
                           run_id: str, force: bool) -> VariantRecord:
    """One precision as a ``kinship-engine/build`` child run on whichever ``cuda`` worker takes it; its record read
    back from the store. A child that fails is a ``failed`` record with its reason: the others go on."""
    parent = {"run_id": run_id, "parent_id": str(this_run.get_id() or "local")}
    parameters = {"train_manifest": train_manifest, "precision": precision.value, "backend": backend,
                  "engines": asdict(settings), "run_id": run_id, "force": force}
    try:
        child = run_child(ENGINE_DEPLOYMENT, parameters, parent, f"engine-{precision}")
    except ChildRunFailed as error:
        get_run_logger().warning("%s %s failed, the other precisions go on: %s", backend, precision, error)
        return engine_stages.failed_engine(precision, backend, str(error))
    record = open_store().get_json(open_store().uri(variant_record_key(run_id, precision)))
    get_run_logger().info("%s (built by %s on %s)", engine_line(record), child["name"],
                          (record.get("environment") or {}).get("host", "a cuda worker"))
    return record


class EngineTasks:
    """``kinship.stage_order.EngineSteps`` as this module's tasks: each method runs the task of its name.

    ``fan_out_of`` (the training manifest's URI): build each precision as its own child run on the ``cuda`` pool
    instead of one task after another here. ``work_key``: the scratch folder's name on this host (a fanned-out
    child uses its own, so a child and its engines run on one host never clean each other's files)."""

    def __init__(self, force: bool = False, fan_out_of: str | None = None, work_key: str | None = None):
        self.force = force  # build again even where a cached build of the same inputs exists
        self.fan_out_of = fan_out_of
        self.work_key = work_key

    def choose_backend(self, settings: EngineConfig) -> str:
        return choose_backend(settings)

    def read_train_manifest(self, ref_or_uri: RefDict | UriOnly | str) -> TrainManifest:
        return read_train_manifest(ref_or_uri)

    def fetch_dataset(self, uri: str, expected_sha256: str) -> DatasetHandle:
        return fetch_dataset(uri, expected_sha256)

    def fetch_inputs(self, manifest: TrainManifest, run_id: str) -> EngineInputs:
        return fetch_inputs(manifest, self.work_key or run_id)

    def build_engines(self, inputs: EngineInputs, dataset: DatasetHandle, precisions: tuple[Precision, ...],
                      backend: str, settings: EngineConfig, run_id: str) -> list[VariantRecord]:
        """One ``build engine`` task per precision, or one child run each when fanned out; a failed one is a
        ``failed`` record (``engine_outcome``)."""
        if self.fan_out_of:
            children = [build_engine_elsewhere.submit(self.fan_out_of, p, backend, settings, run_id, self.force)
                        for p in precisions]
            return [child.result() for child in children]
        build = build_engine.with_options(refresh_cache=self.force)
        states = {p: build(inputs, dataset, p, backend, settings, run_id, self.work_key, return_state=True)
                  for p in precisions}
        return [engine_outcome(state, precision, backend) for precision, state in states.items()]

    def store_engine_record(self, record: VariantRecord, run_id: str) -> None:
        store_engine_record(record, run_id)

    def benchmark_engines(self, inputs: EngineInputs, dataset: DatasetHandle, variants: list[VariantRecord],
                          backend: str, settings: EngineConfig, run_id: str) -> list[VariantRecord]:
        return benchmark_engines(inputs, dataset, variants, backend, settings, run_id)

    def write_engines_report(self, variants: list[VariantRecord], run_id: str) -> ReportRefs:
        return write_engines_report(variants, run_id)

    def write_engines_manifest(self, run_id: str, train_manifest: TrainManifest, variants: list[VariantRecord],
                               report: ReportRefs) -> EnginesManifest:
        return write_engines_manifest(run_id, train_manifest, variants, report)

    def clean_work(self, run_id: str) -> None:
        clean_work(self.work_key or run_id)
