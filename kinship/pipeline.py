"""The stages of the job, one function each: data -> train -> export -> calibrate -> engines -> report.

Every stage reads its inputs from an artifact store (``kinship.storage``) or a verified local copy and
writes its outputs back to the store, returning plain JSON-ready dicts of ``ArtifactRef``s, never a
local path. Their order is written once, in ``kinship.stage_order``: the flows run it with the Prefect tasks
of ``tasks/`` (thin wrappers around these functions), ``kinship.local_run`` with these functions in one process
and a ``LocalStore`` (``kinship pipeline``), so the two modes differ only in who schedules the stages.

Store layout, below the store's root::

    runs/<run_id>/train/    model.pt, metrics.json, config.json, model{,.encoder,.head}.onnx,
                            calibration.npz, manifest.json (the training manifest, written last)
    runs/<run_id>/engines/  <backend>-<variant>/... (one engine folder each), report/ (report.md,
                            report.json, PNGs), manifest.json (the engines manifest, written last)
    runs/<run_id>/report.md, summary.json    the run's final report
    champion.json                            the pointer to the best model so far (``kinship.champion``)
    checkpoints/train/<inputs>/              the resumable epoch checkpoint of one training input (data set
                            sha256 + TrainConfig, not the run id): manifest.json, slot-0/ and slot-1/
                            (last.pt, model.pt), so a rerun on another host continues an interrupted training
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from kinship.checkpoint_mirror import CheckpointMirror, checkpoint_prefix, prepare_run_dir
from kinship.dataset_cache import CacheSettings, DatasetCache, hold, manifest_files
from kinship.engines.calibration import CalibrationConfig
from kinship.engines.config import EngineConfig
from kinship.engines.outcome import STATUS_BUILT, STATUS_FAILED
from kinship.engines.precision import Precision, parse_precisions
from kinship.errors import ArtifactMismatch, KinshipError, UserError, reason_of
from kinship.host import code_commit, stage_host
from kinship.manifests import (
    ENGINES_MANIFEST_FORMAT, TRAIN_MANIFEST_FORMAT, Calibrated, DatasetHandle, EngineEntry, EngineInputs,
    EnginesManifest, Exported, RefDict, ReportRefs, RowSummary, StageHost, Trained, TrainManifest, UriOnly,
    VariantRecord, manifest_header,
)
from kinship.progress import Progress, ProgressEvent, silent
from kinship.storage import (
    MANIFEST_NAME, ArtifactRef, ArtifactStore, LocalStore, StoreSettings, file_digest, join_key, parse_json,
    store_from_uri,
)
from kinship.train_config import TrainConfig

log = logging.getLogger(__name__)

ONNX_FILES = ("model.onnx", "model.encoder.onnx", "model.head.onnx")
Manifest = TypeVar("Manifest", TrainManifest, EnginesManifest)


# ---------------------------------------------------------------- names and places


def new_run_id(when: datetime | None = None, suffix: str | None = None) -> str:
    """A sortable, unique run id: ``20250101-120000-ab12cd34``."""
    when = when or datetime.now(timezone.utc)
    return f"{when:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(4)}"


# What a run id may be: it names a folder on every host (``work/<run_id>``) and a store prefix (``runs/<run_id>``),
# and a flow takes it as a parameter, so nothing that could climb out of them ('..', '/', '\\', control characters).
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


def validate_run_id(run_id: str) -> str:
    """``run_id`` if it is a safe run id (letters, digits, '-' and '_', at most 100), else one ``UserError``."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise UserError(f"invalid run id {run_id!r}: use 1-100 letters, digits, '-' or '_', starting with a letter "
                        "or digit")
    return run_id


def run_prefix(run_id: str, *parts: str) -> str:
    """The store key below ``runs/<run_id>``."""
    return join_key("runs", validate_run_id(run_id), *parts)


def _ref(value: ArtifactRef | RefDict) -> ArtifactRef:
    return value if isinstance(value, ArtifactRef) else ArtifactRef.from_dict(value)


def _upload(store: ArtifactStore, files: dict[str, Path], prefix: str) -> dict[str, RefDict]:
    return {name: store.put_file(path, join_key(prefix, name)).to_dict() for name, path in files.items()}


# ---------------------------------------------------------------- data


def fetch_dataset(uri: str, settings: StoreSettings | None = None, on_progress: Progress = silent) -> DatasetHandle:
    """This host's verified copy of the data set pushed at ``uri`` (``kinship.dataset_cache``).

    The copy is named by the manifest's digest and shared by every flow on the host: a second fetch of the same
    content downloads nothing (each file is re-verified instead), and concurrent fetches wait for one download.
    """
    settings = settings or StoreSettings.from_env()
    uri = uri.rstrip("/")
    store = store_from_uri(uri, settings)
    manifest = store.get_file(f"{uri}/{MANIFEST_NAME}")  # verified against the digest recorded at push
    sha256, _ = file_digest(manifest)
    cache = DatasetCache(CacheSettings.from_env(settings.scratch))

    def fill(dest: Path) -> None:
        listed = manifest_files(parse_json(manifest.read_bytes(), f"{uri}/{MANIFEST_NAME}"), uri, f"{uri}/{MANIFEST_NAME}")
        cache.check_fits(sum(size for _, size in listed.values()), uri)
        store.get_tree(uri, dest, on_progress)
        if file_digest(dest / MANIFEST_NAME)[0] != sha256:
            shutil.rmtree(dest, ignore_errors=True)
            raise UserError(f"{uri} changed while it was being fetched (its manifest was replaced): fetch again")

    def expected(copy: Path) -> dict[str, tuple[str, int]]:
        return manifest_files(parse_json((copy / MANIFEST_NAME).read_bytes(), f"{copy / MANIFEST_NAME}"), uri,
                              f"{copy / MANIFEST_NAME}")

    started = time.perf_counter()
    outcome = cache.obtain(sha256, uri, fill, expected)
    seconds = time.perf_counter() - started
    log.info("data set %s: %s in %.1f s (verified in %.1f s)%s", uri,
             {"hit": "this host's copy reused", "filled": "fetched", "refilled": "damaged copy fetched again"}[outcome.status],
             seconds, outcome.verify_s, f"; evicted {len(outcome.evicted)} older copies" if outcome.evicted else "")
    on_progress(ProgressEvent("data set ready", 1, 1, {"cache": outcome.status, "seconds": seconds,
                                                       "verify_s": outcome.verify_s, "evicted": list(outcome.evicted)}))
    return DatasetHandle(uri, sha256, outcome.path)


def local_dataset(folder: Path, on_progress: Progress = silent) -> DatasetHandle:
    """A data set folder used in place (in-process mode); its content fingerprint stands in for a manifest."""
    from kinship.layout import dataset_fingerprint, read_dataset

    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise UserError(f"data set folder not found: {folder}")
    dataset = read_dataset(folder, verify_images=False, on_progress=on_progress)
    return DatasetHandle(folder.as_uri(), dataset_fingerprint(dataset, on_progress), folder)


# ---------------------------------------------------------------- training half


def train_stage(store: ArtifactStore, dataset: DatasetHandle, config: TrainConfig, run_dir: Path, prefix: str,
                on_progress: Progress = silent) -> Trained:
    """Train, upload model, metrics, config; each epoch's checkpoint goes to the store as training runs.

    An interrupted training of the same inputs continues: from ``run_dir`` when this host still has it (a
    retried task), else from the checkpoint in the store (a rerun, possibly on another host).
    """
    from kinship.train import train

    run_dir = Path(run_dir)
    saved = checkpoint_prefix(dataset, config)
    source, done = prepare_run_dir(store, saved, run_dir, dataset, config)
    if source:
        log.info("resuming at epoch %d of %d from the checkpoint in %s", done + 1, config.epochs,
                 run_dir if source == "scratch" else store.uri(saved))
    started = time.perf_counter()
    # Fold runs keep their members' checkpoints on this host only (a retried task resumes them there).
    mirror = CheckpointMirror(store, saved, run_dir, dataset, config) if config.folds <= 1 else None
    with hold(dataset.path):  # this host's copy stays while training reads it
        result = train(dataset.path, run_dir, config, resume=bool(source), on_progress=on_progress, on_checkpoint=mirror)
    names = ("model.pt", "metrics.json", "config.json")
    artifacts = _upload(store, {name: run_dir / name for name in names}, prefix)
    if mirror is not None:
        mirror.finish()
    last = result.history[-1] if result.history else {}
    metrics = {
        "best_val_auc": result.best_auc, "best_epoch": result.best_epoch, "epochs": len(result.history),
        **result.baseline.to_dict(),
        "final_train_loss": last.get("train_loss"), "final_val_auc": last.get("val_auc"),
        "precision": result.precision, "train_seconds": time.perf_counter() - started,
        "resumed": bool(source), "resumed_from": source, "start_epoch": done + 1,
    }
    return {"artifacts": artifacts, "metrics": metrics}


def export_stage(store: ArtifactStore, dataset: DatasetHandle, model: RefDict, work_dir: Path, prefix: str) -> Exported:
    """Fetch ``model.pt`` (verified), export pair/encoder/head ONNX, check them against PyTorch, upload."""
    from kinship.checkpoint import read_checkpoint
    from kinship.export import export_checkpoint, validation_sample

    work_dir = Path(work_dir)
    checkpoint = store.get_file(_ref(model), work_dir / "model.pt")
    payload = read_checkpoint(checkpoint)
    size = int(payload["model_config"]["image_size"])
    with hold(dataset.path):
        img0, img1 = validation_sample(dataset.path, payload["metadata"], size, count=64)
    files, checks = export_checkpoint(checkpoint, work_dir / "model.onnx", img0, img1)
    artifacts = _upload(store, dict(zip(ONNX_FILES, files.all())), prefix)
    return {"artifacts": artifacts, "checks": checks, "image_size": size}


def calibration_stage(store: ArtifactStore, dataset: DatasetHandle, config: TrainConfig,
                      calibration: CalibrationConfig, work_dir: Path, prefix: str,
                      on_progress: Progress = silent) -> Calibrated:
    """Draw the INT8 calibration set from the training families (the model's own split) and upload it."""
    from kinship.engines.calibration import build_calibration_set, save_calibration

    with hold(dataset.path):
        built = build_calibration_set(dataset.path, config.image_size, config.split_config(), calibration,
                                      on_progress=on_progress)
    path = save_calibration(built, Path(work_dir) / "calibration.npz")
    meta = built.meta
    summary = {"pairs": meta["pairs"], "counts_by_type": meta["counts_by_type"],
               "families_used": len(meta["families_used"]), "train_families": meta["train_families"],
               "config": meta["config"]}
    return {"artifacts": _upload(store, {"calibration.npz": path}, prefix), "meta": summary}


def write_train_manifest(store: ArtifactStore, run_id: str, dataset: DatasetHandle, config: TrainConfig,
                         trained: Trained, exported: Exported, calibrated: Calibrated,
                         host: StageHost | None = None) -> TrainManifest:
    """The training half's result, stored last as ``runs/<id>/train/manifest.json`` and returned."""
    manifest: TrainManifest = {
        **manifest_header(TRAIN_MANIFEST_FORMAT, run_id),
        "dataset": dataset.identity(),
        "train_config": asdict(config),
        "metrics": trained["metrics"],
        "export_checks": exported["checks"],
        "calibration": calibrated["meta"],
        "artifacts": {**trained["artifacts"], **exported["artifacts"], **calibrated["artifacts"]},
        "host": host or stage_host(),
        "code_commit": code_commit(),  # lineage: a run of the same data, code and configuration would repeat this one
    }
    return _store_manifest(store, manifest, run_prefix(run_id, "train", "manifest.json"))


def _store_manifest(store: ArtifactStore, manifest: Manifest, key: str) -> Manifest:
    ref = store.put_json(manifest, key)
    return {**manifest, "manifest": ref.to_dict()}


def read_manifest(store: ArtifactStore, ref_or_uri: RefDict | UriOnly | str, expected_format: str) -> Any:
    """A manifest read back (verified against its ref, or the digest recorded with it) and format-checked: a
    ``TrainManifest`` or an ``EnginesManifest`` (``kinship.manifests``), as ``expected_format`` says."""
    target = _ref(ref_or_uri) if isinstance(ref_or_uri, dict) else ref_or_uri
    manifest = store.get_json(target)
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        name = ref_or_uri["uri"] if isinstance(ref_or_uri, dict) else ref_or_uri
        raise UserError(f"{name} is not a {expected_format} manifest")
    uri = target.uri if isinstance(target, ArtifactRef) else target
    if "manifest" not in manifest:
        manifest["manifest"] = {"uri": uri}
    return manifest


# ---------------------------------------------------------------- engines half


def fetch_model(store: ArtifactStore, manifest: TrainManifest, work_dir: Path) -> Path:
    """The exported ONNX trio from the training manifest, side by side in ``work_dir/model``; the pair's path."""
    folder = Path(work_dir) / "model"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ONNX_FILES:
        store.get_file(_ref(manifest["artifacts"][name]), folder / name)
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
    return onnx, store.get_file(_ref(inputs["calibration_ref"]), work_dir / "calibration.npz")


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
    return {"artifacts": _upload(store, files, prefix), "rows": payload["results"], "plots": payload["plots"]}


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
    return _store_manifest(store, manifest, run_prefix(run_id, "engines", "manifest.json"))


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


# ---------------------------------------------------------------- the local store, the engine request


def open_local_store(out: Path) -> LocalStore:
    """The in-process mode's store: ``out/store``, with the scratch settings of the environment."""
    settings = replace(StoreSettings.from_env(), prefix="")
    return LocalStore(Path(out) / "store", settings)


def check_engine_request(precisions, settings: EngineConfig) -> tuple[Precision, ...]:
    """The precisions a flow was given, parsed (the flows' edge), after checking them and the engine settings;
    ``UserError`` names the first bad value. Checked before any work, so a mistake costs nothing (the parameter
    schema cannot see these rules)."""
    parsed = parse_precisions(precisions)
    settings.check()
    return parsed
