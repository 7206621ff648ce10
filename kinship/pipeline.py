"""The whole job as ordered stages, with no orchestrator: data -> train -> export -> calibrate -> engines.

Every stage reads its inputs from an artifact store (``kinship.storage``) or a verified local copy and
writes its outputs back to the store, returning plain JSON-ready dicts of ``ArtifactRef``s, never a
local path. The Prefect tasks in ``tasks/`` are thin wrappers around these functions, and
``run_pipeline`` calls the same functions in the same order in one process with a ``LocalStore``
(``kinship pipeline``), so the two modes differ only in who schedules the stages.

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

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from kinship import __version__
from kinship.baseline import REQUIRED_MARGIN
from kinship.engines.calibration import CalibrationConfig
from kinship.engines.config import DEFAULT_PRECISIONS, EngineConfig
from kinship.errors import KinshipError, UserError
from kinship.progress import ProgressEvent, silent
from kinship.storage import (
    MANIFEST_NAME, ArtifactRef, ArtifactStore, LocalStore, StoreAccessError, StoreSettings, file_digest, join_key,
    store_from_uri,
)
from kinship.train_config import TrainConfig

log = logging.getLogger(__name__)

TRAIN_MANIFEST_FORMAT = "kinship-train-manifest/1"
CHECKPOINT_FORMAT = "kinship-train-checkpoint/1"
CHECKPOINT_FILES = ("checkpoints/last.pt", "model.pt")  # what train() needs to continue, relative to its run folder
ENGINES_MANIFEST_FORMAT = "kinship-engines-manifest/1"
ONNX_FILES = ("model.onnx", "model.encoder.onnx", "model.head.onnx")
Progress = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run decides: training, calibration, which precisions and how engines are measured."""

    train: TrainConfig = TrainConfig()
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    engines: EngineConfig = EngineConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    required_margin: float = REQUIRED_MARGIN  # over raw-pixel cosine, for promotion to champion


@dataclass(frozen=True)
class DatasetHandle:
    """A data set ready on this host: where it came from, what its content is, and the local folder."""

    uri: str
    sha256: str  # sha256 of its store manifest, or the data set fingerprint for a folder used in place
    path: Path

    def identity(self) -> dict:
        """What manifests record about the data set (no local path)."""
        return {"uri": self.uri, "sha256": self.sha256}


# ---------------------------------------------------------------- names and places


def new_run_id(when: datetime | None = None, suffix: str | None = None) -> str:
    """A sortable, unique run id: ``20250101-120000-ab12cd34``."""
    when = when or datetime.now(timezone.utc)
    return f"{when:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(4)}"


def run_prefix(run_id: str, *parts: str) -> str:
    """The store key below ``runs/<run_id>``."""
    return join_key("runs", run_id, *parts)


def host_facts(role: str | None = None) -> dict:
    """Which machine did a stage: host name and its role (the pool it serves)."""
    return {"hostname": socket.gethostname(), "role": role or os.environ.get("KINSHIP_HOST_ROLE", "local")}


def _ref(value: ArtifactRef | dict) -> ArtifactRef:
    return value if isinstance(value, ArtifactRef) else ArtifactRef.from_dict(value)


def _upload(store: ArtifactStore, files: dict[str, Path], prefix: str) -> dict[str, dict]:
    return {name: store.put_file(path, join_key(prefix, name)).to_dict() for name, path in files.items()}


# ---------------------------------------------------------------- data


def fetch_dataset(uri: str, settings: StoreSettings | None = None, on_progress: Progress = silent) -> DatasetHandle:
    """Download the data set pushed at ``uri`` into the scratch folder, every file verified by sha256.

    The copy is named by the manifest's digest, so a second fetch of the same content downloads nothing.
    """
    settings = settings or StoreSettings.from_env()
    uri = uri.rstrip("/")
    store = store_from_uri(uri, settings)
    manifest = store.get_file(f"{uri}/{MANIFEST_NAME}")  # verified against the digest recorded at push
    sha256, _ = file_digest(manifest)
    dest = Path(settings.scratch) / "datasets" / sha256[:16]
    store.get_tree(uri, dest, on_progress)
    if file_digest(dest / MANIFEST_NAME)[0] != sha256:
        raise UserError(f"{uri} changed while it was being fetched (its manifest was replaced): fetch again")
    return DatasetHandle(uri, sha256, dest)


def local_dataset(folder: Path, on_progress: Progress = silent) -> DatasetHandle:
    """A data set folder used in place (in-process mode); its content fingerprint stands in for a manifest."""
    from kinship.layout import dataset_fingerprint, read_dataset

    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise UserError(f"data set folder not found: {folder}")
    dataset = read_dataset(folder, verify_images=False, on_progress=on_progress)
    return DatasetHandle(folder.as_uri(), dataset_fingerprint(dataset, on_progress), folder)


# ---------------------------------------------------------------- training half


def _resume_possible(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``run_dir`` holds an interrupted run of exactly ``config`` (a retried task continues it)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError):
        return False
    started = (run_dir / "checkpoints" / "last.pt").is_file() or (config.folds > 1 and (run_dir / "fold-1").is_dir())
    return started and saved == asdict(config)


def checkpoint_prefix(dataset: DatasetHandle, config: TrainConfig) -> str:
    """Store folder of the epoch checkpoint of one training input: the data set's sha256 and the whole config.

    Not the run id: a rerun after a lost host has a new run id and must find the checkpoint of the same work.
    """
    inputs = json.dumps({"dataset": dataset.sha256, "train": asdict(config)}, sort_keys=True)
    return join_key("checkpoints", "train", hashlib.sha256(inputs.encode()).hexdigest()[:32])


def _checkpoint_epoch(run_dir: Path) -> int:
    """Epochs done by the checkpoint in ``run_dir`` (loaded with ``weights_only``: never arbitrary code)."""
    from kinship.checkpoint import read_checkpoint

    return int(read_checkpoint(run_dir / CHECKPOINT_FILES[0])["state"]["epoch"])


class CheckpointMirror:
    """Copies ``train()``'s epoch checkpoint to the store after each epoch (its ``on_checkpoint`` hook).

    Epochs alternate between two slots: the manifest always names the slot not being written, so an
    upload cut short never damages the checkpoint the manifest points to.
    """

    def __init__(self, store: ArtifactStore, prefix: str, run_dir: Path, dataset: DatasetHandle, config: TrainConfig):
        self.store, self.prefix, self.run_dir, self.dataset, self.config = store, prefix, Path(run_dir), dataset, config

    def __call__(self, epoch: int) -> None:
        if epoch >= self.config.epochs:
            return  # the training is done: ``finish`` marks it complete instead
        try:
            self.upload()
        except Exception as error:  # training goes on; the next epoch's checkpoint is uploaded again
            log.warning("could not store the epoch checkpoint in %s: %s", self.store.uri(self.prefix), error)

    def _manifest(self, epoch: int, files: dict, complete: bool) -> dict:
        return {"format": CHECKPOINT_FORMAT, "dataset": self.dataset.identity(), "train_config": asdict(self.config),
                "epoch": epoch, "complete": complete, "files": files,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": host_facts()}

    def upload(self) -> int:
        """Store the checkpoint now in the run folder (files first, manifest last); returns its epoch."""
        epoch = _checkpoint_epoch(self.run_dir)
        slot = join_key(self.prefix, f"slot-{epoch % 2}")
        files = {name: self.store.put_file(self.run_dir / name, join_key(slot, name)).to_dict()
                 for name in CHECKPOINT_FILES}
        self.store.put_json(self._manifest(epoch, files, complete=False), join_key(self.prefix, "manifest.json"))
        log.info("epoch %d checkpoint stored in %s", epoch, self.store.uri(slot))
        return epoch

    def finish(self) -> None:
        """Mark the training complete: a later run of the same inputs trains afresh instead of resuming."""
        epoch = _checkpoint_epoch(self.run_dir)
        self.store.put_json(self._manifest(epoch, {}, complete=True), join_key(self.prefix, "manifest.json"))


def restore_checkpoint(store: ArtifactStore, prefix: str, run_dir: Path, dataset: DatasetHandle,
                       config: TrainConfig) -> int:
    """Download the stored checkpoint of these inputs into an empty ``run_dir``; the epochs it holds (0: none).

    Every file is verified against the manifest's sha256 and the checkpoint is loaded with ``weights_only``;
    a damaged or foreign checkpoint is reported and ignored (training starts over), never trusted.
    """
    key = join_key(prefix, "manifest.json")
    if not store.exists(key):
        return 0
    try:
        epoch = _fetch_checkpoint(store, store.get_json(store.uri(key)), run_dir, dataset, config)
    except StoreAccessError:
        raise  # the store is unreachable: worth a retry, not a silent restart from scratch
    except (UserError, AttributeError, KeyError, TypeError, ValueError) as error:  # a malformed manifest too
        log.warning("ignoring the stored checkpoint %s: %s", store.uri(key), error)
        epoch = 0
    if not epoch:
        shutil.rmtree(run_dir, ignore_errors=True)
    return epoch


def _fetch_checkpoint(store: ArtifactStore, manifest: dict, run_dir: Path, dataset: DatasetHandle,
                      config: TrainConfig) -> int:
    from kinship.train import save_config

    if manifest.get("format") != CHECKPOINT_FORMAT or manifest.get("dataset", {}).get("sha256") != dataset.sha256:
        raise UserError("not a checkpoint of this data set")
    if manifest.get("train_config") != asdict(config):
        raise UserError("not a checkpoint of this training configuration")
    epoch = int(manifest["epoch"])
    if manifest.get("complete") or not 0 < epoch < config.epochs:
        return 0  # finished (or empty): nothing to continue
    for name in CHECKPOINT_FILES:
        store.get_file(_ref(manifest["files"][name]), run_dir / name)  # sha256-verified before it lands
    if _checkpoint_epoch(run_dir) != epoch:
        raise UserError(f"its last.pt holds another epoch than the manifest's {epoch}")
    save_config(run_dir, config, dataset.path)  # train(resume=True) reads the configuration from the run folder
    return epoch


def _prepare_run_dir(store: ArtifactStore, prefix: str, run_dir: Path, dataset: DatasetHandle,
                     config: TrainConfig) -> tuple[str | None, int]:
    """Where training continues from: this host's run folder (a retried task), the store (a rerun), or nowhere."""
    if _resume_possible(run_dir, config):
        return "scratch", _checkpoint_epoch(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run of another configuration: never mix the two
    epoch = restore_checkpoint(store, prefix, run_dir, dataset, config)
    return ("store", epoch) if epoch else (None, 0)


def train_stage(store: ArtifactStore, dataset: DatasetHandle, config: TrainConfig, run_dir: Path, prefix: str,
                on_progress: Progress = silent) -> dict:
    """Train, upload model, metrics, config; each epoch's checkpoint goes to the store as training runs.

    An interrupted training of the same inputs continues: from ``run_dir`` when this host still has it (a
    retried task), else from the checkpoint in the store (a rerun, possibly on another host).
    """
    from kinship.train import train

    run_dir = Path(run_dir)
    saved = checkpoint_prefix(dataset, config)
    source, done = _prepare_run_dir(store, saved, run_dir, dataset, config)
    if source:
        log.info("resuming at epoch %d of %d from the checkpoint in %s", done + 1, config.epochs,
                 run_dir if source == "scratch" else store.uri(saved))
    started = time.perf_counter()
    # Fold runs keep their members' checkpoints on this host only (a retried task resumes them there).
    mirror = CheckpointMirror(store, saved, run_dir, dataset, config) if config.folds <= 1 else None
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


def export_stage(store: ArtifactStore, dataset: DatasetHandle, model: dict, work_dir: Path, prefix: str) -> dict:
    """Fetch ``model.pt`` (verified), export pair/encoder/head ONNX, check them against PyTorch, upload."""
    from kinship.checkpoint import read_checkpoint
    from kinship.export import export_checkpoint, validation_sample

    work_dir = Path(work_dir)
    checkpoint = store.get_file(_ref(model), work_dir / "model.pt")
    payload = read_checkpoint(checkpoint)
    size = int(payload["model_config"]["image_size"])
    img0, img1 = validation_sample(dataset.path, payload["metadata"], size, count=64)
    files, checks = export_checkpoint(checkpoint, work_dir / "model.onnx", img0, img1)
    artifacts = _upload(store, dict(zip(ONNX_FILES, files.all())), prefix)
    return {"artifacts": artifacts, "checks": [asdict(check) for check in checks], "image_size": size}


def calibration_stage(store: ArtifactStore, dataset: DatasetHandle, config: TrainConfig,
                      calibration: CalibrationConfig, work_dir: Path, prefix: str, on_progress: Progress = silent) -> dict:
    """Draw the INT8 calibration set from the training families (the model's own split) and upload it."""
    from kinship.engines.calibration import build_calibration_set, save_calibration

    built = build_calibration_set(dataset.path, config.image_size, config.split_config(), calibration,
                                  on_progress=on_progress)
    path = save_calibration(built, Path(work_dir) / "calibration.npz")
    meta = built.meta
    summary = {"pairs": meta["pairs"], "counts_by_type": meta["counts_by_type"],
               "families_used": len(meta["families_used"]), "train_families": meta["train_families"],
               "config": meta["config"]}
    return {"artifacts": _upload(store, {"calibration.npz": path}, prefix), "meta": summary}


def write_train_manifest(store: ArtifactStore, run_id: str, dataset: DatasetHandle, config: TrainConfig,
                         trained: dict, exported: dict, calibrated: dict, host: dict | None = None) -> dict:
    """The training half's result, stored last as ``runs/<id>/train/manifest.json`` and returned."""
    manifest = {
        "format": TRAIN_MANIFEST_FORMAT,
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": __version__,
        "dataset": dataset.identity(),
        "train_config": asdict(config),
        "metrics": trained["metrics"],
        "export_checks": exported["checks"],
        "calibration": calibrated["meta"],
        "artifacts": {**trained["artifacts"], **exported["artifacts"], **calibrated["artifacts"]},
        "host": host or host_facts(),
    }
    return _store_manifest(store, manifest, run_prefix(run_id, "train", "manifest.json"))


def _store_manifest(store: ArtifactStore, manifest: dict, key: str) -> dict:
    ref = store.put_json(manifest, key)
    return {**manifest, "manifest": ref.to_dict()}


def read_manifest(store: ArtifactStore, ref_or_uri: dict | str, expected_format: str) -> dict:
    """A manifest read back (verified against its ref, or the digest recorded with it) and format-checked."""
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


def fetch_model(store: ArtifactStore, manifest: dict, work_dir: Path) -> Path:
    """The exported ONNX trio from the training manifest, side by side in ``work_dir/model``; the pair's path."""
    folder = Path(work_dir) / "model"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ONNX_FILES:
        store.get_file(_ref(manifest["artifacts"][name]), folder / name)
    return folder / ONNX_FILES[0]


def fetch_calibration(store: ArtifactStore, manifest: dict, work_dir: Path) -> Path:
    """The calibration set named in the training manifest, verified, in ``work_dir``."""
    return store.get_file(_ref(manifest["artifacts"]["calibration.npz"]), Path(work_dir) / "calibration.npz")


def engines_config(variant: str, settings: EngineConfig, train: TrainConfig, calibration: Path | None) -> "EnginesConfig":
    """The ``kinship.engines.build`` configuration of one variant, on the model's own family split.

    It builds and validates only: ``benchmark_stage`` times every built variant together afterwards.
    """
    from kinship.engines.build import EnginesConfig

    return EnginesConfig(
        backend=settings.backend, variants=(variant,), calibration=calibration if variant.startswith("int8") else None,
        val_fraction=train.val_fraction, split_seed=train.seed, options=build_options(settings),
        validation_limit=settings.validation_pairs, bench_batches=(),
    )


def bench_config(settings: EngineConfig, train: TrainConfig) -> "EnginesConfig":
    """The ``kinship.engines.build`` configuration of the batch sweep over every built variant."""
    from kinship.engines.build import EnginesConfig

    return EnginesConfig(
        backend=settings.backend, val_fraction=train.val_fraction, split_seed=train.seed,
        options=build_options(settings), bench_batches=tuple(int(b) for b in settings.bench_batches),
        bench_seconds=settings.bench_seconds, warmup_seconds=settings.warmup_seconds,
        bench_rounds=settings.bench_rounds,
    )


def build_options(settings: EngineConfig) -> "EngineOptions":
    """The build knobs of ``settings`` (profile, workspace, calibration method, threads, ...) as the builders take them."""
    from kinship.engines.base import EngineOptions

    return EngineOptions(**{f.name: getattr(settings, f.name) for f in fields(EngineOptions)})


def benchmark_stage(store: ArtifactStore, onnx: Path, variants: list[dict], dataset: DatasetHandle,
                    settings: EngineConfig, train: TrainConfig, work_dir: Path,
                    on_progress: Progress = silent) -> list[dict]:
    """Time every built variant side by side, after all the builds; return the variants with figures.

    Built one task each (so one failing precision loses nothing else), the engines are benchmarked here
    together, in alternating slices, so the ratios between precisions come from the same minutes of the
    same machine. Each engine folder is fetched from the store (sha256-verified): a build served from the
    cache may have run on another day. The machine ceiling joins every variant's context; a variant whose
    benchmark fails keeps its validation and gets the reason.
    """
    from kinship.data import prepare
    from kinship.engines.base import load_engine
    from kinship.engines.build import bench_pixels, reference_batch, sweep_engines
    from kinship.engines.report import EngineResult, measure_context

    built = [v for v in variants if v["status"] == "built" and (v.get("row") or {}).get("path")]
    if not built or not settings.bench_batches:
        return variants
    config = bench_config(settings, train)
    folders = {v["variant"]: store.get_tree(v["row"]["path"], Path(work_dir) / "bench" / v["variant"], on_progress)
               for v in built}
    engines = {f"{v['backend']} {v['variant']}": load_engine(folders[v["variant"]]) for v in built}
    image_size = next(iter(engines.values())).image_size
    prepared = prepare(dataset.path, image_size, config.split_config(), on_progress=on_progress)
    companion = Path(onnx).with_suffix(".pt")
    sweep = sweep_engines(engines, config, bench_pixels(prepared), companion if companion.is_file() else None,
                          on_progress)
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
    context = {**built[0]["context"], "reference_batch": reference_batch(config)}
    if sweep.torch:
        context["torch"] = sweep.torch
    rows = [EngineResult.from_dict({k: v for k, v in t["row"].items() if k != "summary"}) for t in timed if t.get("context")]
    context = {**measure_context(Path(onnx), rows, context, ceiling_seconds=settings.ceiling_seconds),  # measured now
               **context}
    return [{**t, "context": {**context, "notes": t["context"].get("notes", [])}} if t.get("context") else t for t in timed]


def without_speeds(variants: list[dict], reason: str) -> list[dict]:
    """The variants as built, each built one carrying ``reason`` for its missing speeds."""
    return [{**v, "row": {**v["row"], "reason": reason}} if v["status"] == "built" else v for v in variants]


def engine_stage(store: ArtifactStore, onnx: Path, dataset: DatasetHandle, calibration: Path | None, variant: str,
                 settings: EngineConfig, train: TrainConfig, work_dir: Path, prefix: str,
                 on_progress: Progress = silent) -> dict:
    """Build, validate and benchmark one variant; upload its engine folder; return its record and report row."""
    from kinship.engines.base import variant_dir
    from kinship.engines.build import build_engines

    out = Path(work_dir) / variant
    shutil.rmtree(out, ignore_errors=True)  # a retried attempt starts clean
    config = engines_config(variant, settings, train, calibration)
    result = build_engines(onnx, dataset.path, out, config, on_progress=on_progress)
    record = result.records[0]
    folder = variant_dir(out, result.backend, variant)
    engine_prefix = join_key(prefix, folder.name)
    artifacts = {}
    if folder.is_dir() and record.validation is not None:
        refs = store.put_tree(folder, engine_prefix)
        artifacts = {ref.key[len(engine_prefix) + 1:]: ref.to_dict() for ref in refs}
    report = json.loads((out / "report.json").read_text())
    row = report["results"][0]
    row["path"] = store.uri(engine_prefix) if artifacts else None  # a store location, not this host's folder
    return {
        "variant": variant, "backend": result.backend, "backend_note": result.backend_note, "status": record.status,
        "reason": record.reason, "artifacts": artifacts, "row": row, "context": report["context"],
        "reference": result.reference, "validation": {k: v for k, v in result.validation.items() if k != "policy"},
        "environment": result.environment,
    }


def failed_engine(variant: str, backend: str, reason: str) -> dict:
    """What ``engine_stage`` returns, for a precision whose stage itself failed (its inputs, its task)."""
    from kinship.engines.report import EngineResult

    return {"variant": variant, "backend": backend, "backend_note": None, "status": "failed", "reason": reason,
            "artifacts": {}, "row": EngineResult.failed(backend, variant, reason).to_dict(), "context": {},
            "reference": None, "validation": None, "environment": None}


_RUN_FACTS = ("backend_note", "context", "reference", "validation", "environment")


def with_run_facts(variants: list[dict]) -> list[dict]:
    """Failed records borrow the run-wide facts (model, reference AUC, machine) from a variant that ran."""
    source = next((v for v in variants if v.get("context")), None)
    if source is None:
        return variants
    return [v if v.get("context") else {**v, **{k: source[k] for k in _RUN_FACTS}} for v in variants]


def engines_report_stage(store: ArtifactStore, variants: list[dict], work_dir: Path, prefix: str) -> dict:
    """One report over every variant (``kinship.engines.report``): written, uploaded, refs returned."""
    from kinship.engines.report import write_report

    if not variants:
        raise UserError("no engine variants to report on")
    out = Path(work_dir) / "report"
    shutil.rmtree(out, ignore_errors=True)
    context = dict(variants[0]["context"])
    context["notes"] = list(dict.fromkeys(note for v in variants for note in v["context"].get("notes", [])))
    rows = [{k: v for k, v in variant["row"].items() if k != "summary"} for variant in variants]
    json_path, _ = write_report(rows, out, context)
    payload = json.loads(json_path.read_text())
    files = {path.name: path for path in sorted(out.iterdir()) if path.is_file() and not path.name.startswith(".")}
    return {"artifacts": _upload(store, files, prefix), "rows": payload["results"], "plots": payload["plots"]}


def write_engines_manifest(store: ArtifactStore, run_id: str, train_manifest: dict, variants: list[dict],
                           report: dict, host: dict | None = None) -> dict:
    """The engines half's result, stored last as ``runs/<id>/engines/manifest.json`` and returned."""
    first = variants[0] if variants else {}
    manifest = {
        "format": ENGINES_MANIFEST_FORMAT,
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": __version__,
        "train_manifest": train_manifest["manifest"],
        "backend": first.get("backend"), "backend_note": first.get("backend_note"),
        "reference": first.get("reference"), "validation": first.get("validation"),
        "environment": first.get("environment"),
        "reference_batch": (first.get("context") or {}).get("reference_batch"),
        "engines": [{k: v[k] for k in ("variant", "backend", "status", "reason", "artifacts")} for v in variants],
        "report": report["artifacts"],
        "rows": [_row_summary(row) for row in report["rows"]],
        "host": host or host_facts(),
    }
    return _store_manifest(store, manifest, run_prefix(run_id, "engines", "manifest.json"))


class NoEngineBuilt(KinshipError):
    """Every precision of a run failed or does not apply on this host: nothing to deploy or promote."""


def built_engines(manifest: dict) -> list[str]:
    """The precisions an engines manifest records as built (validated against FP32)."""
    return [engine["variant"] for engine in manifest.get("engines", []) if engine.get("status") == "built"]


def require_an_engine(manifest: dict) -> dict:
    """``manifest`` (an engines manifest) if at least one precision was built; else ``NoEngineBuilt``,
    naming each precision's outcome and where the report is, so the run fails instead of completing."""
    if built_engines(manifest):
        return manifest
    outcomes = "; ".join(f"{e['variant']} {e['status']}" + (f" ({e['reason']})" if e.get("reason") else "")
                         for e in manifest.get("engines", []))
    report = (manifest.get("report") or {}).get("report.md", {}).get("uri", "not written")
    raise NoEngineBuilt(f"no engine was built for run {manifest.get('run_id')}: {outcomes}; report: {report}")


def _row_summary(row: dict) -> dict:
    """A report row without its bulky parts (ROC curve, per-batch timings), for manifests and tables."""
    keep = ("backend", "precision", "variant", "status", "reason", "path", "size_bytes", "build_seconds", "summary")
    summary = {k: row.get(k) for k in keep}
    summary["bench_batches"] = sorted(int(b) for b in (row.get("bench") or {}))
    return summary


# ---------------------------------------------------------------- in one process


@dataclass
class PipelineResult:
    """What ``run_pipeline`` produced: the three manifests, the promotion decision and the report."""

    run_id: str
    train: dict
    engines: dict
    promotion: dict
    report: dict
    report_path: Path
    seconds: float
    stage_seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "report_path": str(self.report_path)}


class _Clock:
    """Seconds per stage, in order (the in-process mode's only bookkeeping)."""

    def __init__(self, on_progress: Progress):
        self.seconds: dict[str, float] = {}
        self.on_progress = on_progress

    def __call__(self, name: str, action: Callable[[], object]):
        self.on_progress(ProgressEvent(f"stage: {name}", 0, 1))
        started = time.perf_counter()
        value = action()
        self.seconds[name] = time.perf_counter() - started
        self.on_progress(ProgressEvent(f"stage: {name}", 1, 1))
        return value


def open_local_store(out: Path) -> LocalStore:
    """The in-process mode's store: ``out/store``, with the scratch settings of the environment."""
    settings = replace(StoreSettings.from_env(), prefix="")
    return LocalStore(Path(out) / "store", settings)


def check_engine_request(precisions, settings: EngineConfig) -> list[str]:
    """The precisions, parsed, after checking them and the engine settings; ``UserError`` names the first bad value.

    Checked before any work, so a mistake costs nothing (the parameter schema cannot see these rules).
    """
    from kinship.engines.base import parse_variants

    parsed = parse_variants(list(precisions))
    settings.check()
    return parsed


def run_pipeline(data: str | Path, out: Path, config: PipelineConfig = PipelineConfig(), run_id: str | None = None,
                 on_progress: Progress = silent) -> PipelineResult:
    """Run every stage in this process against ``out/store``; ``data`` is a folder or a pushed data set URI."""
    started = time.perf_counter()
    precisions = check_engine_request(config.precisions, config.engines)
    out = Path(out).resolve()
    store, run_id = open_local_store(out), run_id or new_run_id()
    work, clock = out / "work" / run_id, _Clock(on_progress)
    dataset = clock("data", lambda: fetch_dataset(str(data), store.settings, on_progress) if "://" in str(data)
                    else local_dataset(Path(data), on_progress))
    train_manifest = clock("train", lambda: _training_half(store, run_id, dataset, config, work / "train", clock, on_progress))
    engines_manifest = clock("engines", lambda: _engines_half(
        store, run_id, train_manifest["manifest"], dataset, precisions, config.engines, work / "engines", on_progress))
    require_an_engine(engines_manifest)  # the engines report is stored; no promotion, no run report
    from kinship.champion import promote_if_better
    from kinship.run_report import publish_run_report

    promotion = clock("champion", lambda: promote_if_better(store, train_manifest, engines_manifest,
                                                                         required_margin=config.required_margin))
    report = clock("report", lambda: publish_run_report(store, run_id, train_manifest, engines_manifest, promotion))
    report_path = store.get_file(_ref(report["artifacts"]["report.md"]), out / "report.md")
    return PipelineResult(run_id, train_manifest, engines_manifest, promotion, report, report_path,
                          time.perf_counter() - started, clock.seconds)


def _training_half(store, run_id, dataset, config: PipelineConfig, work: Path, clock: _Clock, on_progress) -> dict:
    """The ``kinship-train`` flow's stages, in its order."""
    prefix = run_prefix(run_id, "train")
    trained = clock("train model", lambda: train_stage(store, dataset, config.train, work / "run", prefix, on_progress))
    exported = clock("export", lambda: export_stage(store, dataset, trained["artifacts"]["model.pt"], work, prefix))
    calibrated = clock("calibration", lambda: calibration_stage(store, dataset, config.train, config.calibration, work,
                                                                prefix, on_progress))
    return write_train_manifest(store, run_id, dataset, config.train, trained, exported, calibrated)


def _engines_half(store, run_id, train_ref: dict, dataset, precisions, settings, work: Path, on_progress) -> dict:
    """The ``kinship-engines`` flow's stages, in its order (the manifest read back as that flow does)."""
    train_manifest = read_manifest(store, train_ref, TRAIN_MANIFEST_FORMAT)
    onnx = fetch_model(store, train_manifest, work)
    calibration = fetch_calibration(store, train_manifest, work)
    train = TrainConfig.from_dict(train_manifest["train_config"])
    prefix = run_prefix(run_id, "engines")
    variants = [engine_stage(store, onnx, dataset, calibration, variant, settings, train, work, prefix, on_progress)
                for variant in precisions]
    variants = benchmark_stage(store, onnx, variants, dataset, settings, train, work, on_progress)
    report = engines_report_stage(store, variants, work, join_key(prefix, "report"))
    return write_engines_manifest(store, run_id, train_manifest, variants, report)
