"""The engines half's stages, one function each: build every precision, benchmark them together, report, then
its manifest; and the check of an engine request at a flow's edge.

The half starts from the training manifest (``kinship.training_stages``): ``engine_inputs`` fetches the ONNX model,
``engine_stage`` builds and validates one precision (a task each, so one failing precision loses nothing else),
``benchmark_stage`` times the built ones side by side, ``engines_report_stage`` writes the report and
``write_engines_manifest`` stores the half's result last, below ``runs/<run_id>/engines`` (``kinship.pipeline``'s
store layout).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from kinship.dataset_cache import hold
from kinship.engines.config import EngineConfig
from kinship.engines.outcome import STATUS_BUILT, STATUS_FAILED
from kinship.engines.precision import Precision, parse_precisions
from kinship.errors import ArtifactMismatch, KinshipError, UserError, reason_of
from kinship.host import stage_host
from kinship.manifests import (
    ENGINES_MANIFEST_FORMAT, DatasetHandle, EngineEntry, EngineInputs, EnginesManifest, ReportRefs, RowSummary,
    StageHost, TrainManifest, VariantRecord, manifest_header,
)
from kinship.pipeline import ONNX_FILES, as_ref, run_prefix, store_manifest, upload_files
from kinship.progress import Progress, silent
from kinship.storage import ArtifactStore, file_digest, join_key
from kinship.train_config import TrainConfig

log = logging.getLogger(__name__)


def fetch_model(store: ArtifactStore, manifest: TrainManifest, work_dir: Path) -> Path:
    """The exported ONNX trio from the training manifest, side by side in ``work_dir/model``; the pair's path."""
    folder = Path(work_dir) / "model"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ONNX_FILES:
        store.get_file(as_ref(manifest["artifacts"][name]), folder / name)
    return folder / ONNX_FILES[0]


def engine_inputs(store: ArtifactStore, manifest: TrainManifest, work_dir: Path) -> EngineInputs:
    """What every engine build reads: the ONNX trio (fetched, verified, in ``work_dir/model``), its sha256, the
    calibration set's ref and the training configuration (the model's family split).

    The calibration set is fetched by the INT8 builds themselves (``engine_stage``): it is their input alone, so
    a damaged one fails those builds (recorded with the reason) and never the precisions that do not read it.
    """
    onnx = fetch_model(store, manifest, work_dir)
    calibration = manifest["artifacts"]["calibration.npz"]
    return {"onnx": onnx, "onnx_sha256": manifest["artifacts"]["model.onnx"]["sha256"],
            "calibration_ref": calibration, "calibration_sha256": calibration["sha256"],
            "train_config": TrainConfig.from_dict(manifest["train_config"])}


def choose_backend(settings: EngineConfig) -> str:
    """The backend this host builds with (TensorRT where it imports and sees a GPU, else ONNX Runtime), after
    checking ``settings``: a bad setting fails here, before any download."""
    from kinship.engines.registry import resolve_backend

    return resolve_backend(settings.check().backend)


def benchmark_stage(store: ArtifactStore, inputs: EngineInputs, variants: list[VariantRecord], dataset: DatasetHandle,
                    settings: EngineConfig, work_dir: Path, on_progress: Progress = silent) -> list[VariantRecord]:
    """Time every built variant side by side, after all the builds; return the variants with figures.

    Built one task each (so one failing precision loses nothing else), the engines are benchmarked here
    together, in alternating slices, so the ratios between precisions come from the same minutes of the
    same machine. Each engine folder is fetched from the store (sha256-verified): a build served from the
    cache may have run on another day. The machine ceiling joins every variant's context; a variant whose
    benchmark fails keeps its validation and gets the reason. A benchmark that fails as a whole leaves the
    engines built and validated: reported without speeds, with the reason (and a warning in the log).
    """
    try:
        return _benchmark(store, inputs, variants, dataset, settings, Path(work_dir), on_progress)
    except Exception as error:  # the builds stand without speeds
        reason = reason_of(error)
        log.warning("benchmark failed, engines reported without speeds: %s", reason)
        return without_speeds(variants, f"benchmark failed: {reason}")


def _benchmark(store: ArtifactStore, inputs: EngineInputs, variants: list[VariantRecord], dataset: DatasetHandle,
               settings: EngineConfig, work_dir: Path, on_progress: Progress) -> list[VariantRecord]:
    from kinship.data import prepare
    from kinship.engines.registry import load_engine
    from kinship.engines.build import bench_pixels, reference_batch, sweep_engines
    from kinship.engines.report import EngineResult, measure_context

    built = [v for v in variants if v["status"] == STATUS_BUILT and (v.get("row") or {}).get("path")]
    if not built or not settings.bench_batches:
        return variants
    onnx, train = Path(inputs["onnx"]), inputs["train_config"]
    folders = {v["variant"]: store.get_tree(v["row"]["path"], work_dir / "bench" / v["variant"], on_progress)
               for v in built}
    engines = {f"{v['backend']} {v['variant']}": load_engine(folders[v["variant"]]) for v in built}
    image_size = next(iter(engines.values())).image_size
    with hold(dataset.path):
        prepared = prepare(dataset.path, image_size, train.split_config(),
                           on_progress=on_progress)
    companion = onnx.with_suffix(".pt")
    sweep = sweep_engines(engines, settings, bench_pixels(prepared), companion if companion.is_file() else None,
                          on_progress)
    timed = _with_figures(variants, sweep)
    context = {**built[0]["context"], "reference_batch": reference_batch(settings)}
    if sweep.torch:
        context["torch"] = sweep.torch
    rows = [EngineResult.from_dict({k: v for k, v in t["row"].items() if k != "summary"}) for t in timed if t.get("context")]
    context = {**measure_context(onnx, rows, context, ceiling_seconds=settings.ceiling_seconds),  # measured now
               **context}
    return [{**t, "context": {**context, "notes": t["context"].get("notes", [])}} if t.get("context") else t for t in timed]


def _with_figures(variants: list[VariantRecord], sweep) -> list[VariantRecord]:
    """The variants, each one the sweep timed with its figures per batch (and the reason it stopped, if it did)."""
    timed = []
    for variant in variants:
        name = f"{variant['backend']} {variant['variant']}"
        if name not in sweep.bench:
            timed.append(variant)
            continue
        row = {**variant["row"], "bench": {figures.batch: figures.to_dict() for figures in sweep.bench[name]}}
        if name in sweep.failed:
            row["reason"] = sweep.failed[name]
        timed.append({**variant, "row": row})
    return timed


def without_speeds(variants: list[VariantRecord], reason: str) -> list[VariantRecord]:
    """The variants as built, each built one carrying ``reason`` for its missing speeds."""
    return [{**v, "row": {**v["row"], "reason": reason}} if v["status"] == STATUS_BUILT else v for v in variants]


def engine_stage(store: ArtifactStore, inputs: EngineInputs, dataset: DatasetHandle, precision: Precision,
                 backend: str, settings: EngineConfig, work_dir: Path, prefix: str,
                 on_progress: Progress = silent) -> VariantRecord:
    """Build and validate ``precision`` with ``backend`` on the model's own family split (``benchmark_stage`` times
    it later); upload its engine folder; return its record and report row. A build that chose another backend is
    refused."""
    from kinship.engines.base import variant_dir
    from kinship.engines.build import EnginesJob, build_precision

    onnx, calibration = _verified_inputs(store, inputs, precision, Path(work_dir))
    out = Path(work_dir) / precision
    shutil.rmtree(out, ignore_errors=True)  # a retried attempt starts clean
    train = inputs["train_config"]
    job = EnginesJob(calibration=calibration, val_fraction=train.val_fraction, split_seed=train.seed,
                     split_salt=train.split_salt, engine=settings)
    with hold(dataset.path):
        built = build_precision(onnx, dataset.path, out, precision, job, on_progress=on_progress)
    result, outcome = built.result, built.outcome
    if result.backend != backend:
        raise ArtifactMismatch(f"asked for {backend} but the build used {result.backend}")
    folder = variant_dir(out, result.backend, precision)
    engine_prefix = join_key(prefix, folder.name)
    artifacts = {}
    if folder.is_dir() and outcome.validation is not None:
        refs = store.put_tree(folder, engine_prefix)
        artifacts = {ref.key[len(engine_prefix) + 1:]: ref.to_dict() for ref in refs}
    from kinship.engines.report import jsonable

    # a store location, not this host's folder; JSON-ready as report.json would hold it
    row = jsonable({**built.row, "path": store.uri(engine_prefix) if artifacts else None})
    return {
        "variant": precision.value, "backend": result.backend, "backend_note": result.backend_note, "status": outcome.status,
        "reason": outcome.reason, "artifacts": artifacts, "row": row,
        "context": jsonable(built.context),
        "reference": result.reference, "validation": {k: v for k, v in result.validation.items() if k != "policy"},
        "environment": result.environment,
    }


def _verified_inputs(store: ArtifactStore, inputs: EngineInputs, precision: Precision,
                     work_dir: Path) -> tuple[Path, Path | None]:
    """The ONNX model, hashed again (a retry may find it changed on disk), and for INT8 the calibration set,
    fetched now and sha256-verified: a damaged set fails this build, with the reason."""
    onnx = Path(inputs["onnx"])
    if file_digest(onnx)[0] != inputs["onnx_sha256"]:
        raise ArtifactMismatch(f"{inputs['onnx']} changed on disk since it was fetched")
    if not precision.is_int8:
        return onnx, None
    return onnx, store.get_file(as_ref(inputs["calibration_ref"]), work_dir / "calibration.npz")


def failed_engine(variant: str, backend: str, reason: str) -> VariantRecord:
    """What ``engine_stage`` returns, for a precision whose stage itself failed (its inputs, its task)."""
    from kinship.engines.report import EngineResult

    return {"variant": variant, "backend": backend, "backend_note": None, "status": STATUS_FAILED, "reason": reason,
            "artifacts": {}, "row": EngineResult.failed(backend, variant, reason).to_dict(), "context": {},
            "reference": None, "validation": None, "environment": None}


_RUN_FACTS = ("backend_note", "context", "reference", "validation", "environment")


def with_run_facts(variants: list[VariantRecord]) -> list[VariantRecord]:
    """Failed records borrow the run-wide facts (model, reference AUC, machine) from a variant that ran."""
    source = next((v for v in variants if v.get("context")), None)
    if source is None:
        return variants
    return [v if v.get("context") else {**v, **{k: source[k] for k in _RUN_FACTS}} for v in variants]


def engines_report_stage(store: ArtifactStore, variants: list[VariantRecord], work_dir: Path,
                         prefix: str) -> ReportRefs:
    """One report over every variant (``kinship.engines.report``): written, uploaded, refs returned."""
    from kinship.engines.report import write_report

    if not variants:
        raise UserError("no engine variants to report on")
    variants = with_run_facts(variants)
    out = Path(work_dir) / "report"
    shutil.rmtree(out, ignore_errors=True)
    context = dict(variants[0]["context"])
    context["notes"] = list(dict.fromkeys(note for v in variants for note in v["context"].get("notes", [])))
    rows = [{k: v for k, v in variant["row"].items() if k != "summary"} for variant in variants]
    json_path, _ = write_report(rows, out, context)
    payload = json.loads(json_path.read_text())
    files = {path.name: path for path in sorted(out.iterdir()) if path.is_file() and not path.name.startswith(".")}
    return {"artifacts": upload_files(store, files, prefix), "rows": payload["results"], "plots": payload["plots"]}


def write_engines_manifest(store: ArtifactStore, run_id: str, train_manifest: TrainManifest,
                           variants: list[VariantRecord], report: ReportRefs,
                           host: StageHost | None = None) -> EnginesManifest:
    """The engines half's result, stored last as ``runs/<id>/engines/manifest.json`` and returned."""
    variants = with_run_facts(variants)
    first = variants[0] if variants else {}
    manifest: EnginesManifest = {
        **manifest_header(ENGINES_MANIFEST_FORMAT, run_id),
        "train_manifest": train_manifest["manifest"],
        "backend": first.get("backend"), "backend_note": first.get("backend_note"),
        "reference": first.get("reference"), "validation": first.get("validation"),
        "environment": first.get("environment"),
        "reference_batch": (first.get("context") or {}).get("reference_batch"),
        "engines": [_engine_entry(v) for v in variants],
        "report": report["artifacts"],
        "rows": [_row_summary(row) for row in report["rows"]],
        "host": host or stage_host(),
    }
    return store_manifest(store, manifest, run_prefix(run_id, "engines", "manifest.json"))


class NoEngineBuilt(KinshipError):
    """Every precision of a run failed or does not apply on this host: nothing to deploy or promote."""


def _engine_entry(variant: VariantRecord) -> EngineEntry:
    return {"variant": variant["variant"], "backend": variant["backend"], "status": variant["status"],
            "reason": variant["reason"], "artifacts": variant["artifacts"]}


def built_engines(manifest: EnginesManifest) -> list[str]:
    """The precisions an engines manifest records as built (validated against FP32)."""
    return [engine["variant"] for engine in manifest.get("engines", []) if engine.get("status") == STATUS_BUILT]


def require_an_engine(manifest: EnginesManifest) -> EnginesManifest:
    """``manifest`` (an engines manifest) if at least one precision was built; else ``NoEngineBuilt``,
    naming each precision's outcome and where the report is, so the run fails instead of completing."""
    if built_engines(manifest):
        return manifest
    outcomes = "; ".join(f"{e['variant']} {e['status']}" + (f" ({e['reason']})" if e.get("reason") else "")
                         for e in manifest.get("engines", []))
    report = (manifest.get("report") or {}).get("report.md", {}).get("uri", "not written")
    raise NoEngineBuilt(f"no engine was built for run {manifest.get('run_id')}: {outcomes}; report: {report}")


def _row_summary(row: dict) -> RowSummary:
    """A report row without its bulky parts (ROC curve, per-batch timings), for manifests and tables."""
    return {"backend": row.get("backend"), "precision": row.get("precision"), "variant": row.get("variant"),
            "status": row.get("status"), "reason": row.get("reason"), "path": row.get("path"),
            "size_bytes": row.get("size_bytes"), "build_seconds": row.get("build_seconds"),
            "summary": row.get("summary"), "bench_batches": sorted(int(b) for b in (row.get("bench") or {}))}



# ---------------------------------------------------------------- the engine request


def check_engine_request(precisions, settings: EngineConfig) -> tuple[Precision, ...]:
    """The precisions a flow was given, parsed (the flows' edge), after checking them and the engine settings;
    ``UserError`` names the first bad value. Checked before any work, so a mistake costs nothing (the parameter
    schema cannot see these rules)."""
    parsed = parse_precisions(precisions)
    settings.check()
    return parsed
