"""``kinship engines``: build every engine variant of an exported model, validate each, benchmark, report.

Order of work: read the model and the data (family split as at training), draw or load the
calibration set (training families only), score the validation pairs with the FP32 reference,
then per variant build -> load -> validate. One variant failing is recorded with its reason and the
others go on; a variant that cannot run after building is removed, so nothing unusable is left
looking like an engine. Then the batch sweep (``bench``) and the report (``report``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from kinship.engines.base import variant_dir
from kinship.engines.calibration import (
    CalibrationConfig, calibration_from_prepared, check_compatible, load_calibration, save_calibration,
)
from kinship.engines.config import CLI_ENGINES, EngineConfig
from kinship.engines.outcome import STATUS_BUILT, STATUS_FAILED, EngineOutcome
from kinship.engines.precision import PRECISIONS, Precision
from kinship.engines.registry import backend_note, build_engine, environment, load_engine, require_backend, resolve_backend
from kinship.engines.validate import (
    ValidationData, ValidationPolicy, ValidationResult, choose_threshold, engine_logits, reference_engine,
    validate_engine, validation_data,
)
from kinship.errors import reason_of
from kinship.host import default_threads
from kinship.metrics import verification_report
from kinship.model_facts import read_model_facts
from kinship.progress import ProgressEvent, silent

Builder = Callable[..., EngineOutcome]


@dataclass(frozen=True)
class EnginesJob:
    """What one ``build_engines`` call is asked: which precisions, against which calibration set and family
    split (it must be the one the model was trained with), under which validation policy. How each engine is
    built, validated and measured is ``engine``, the one ``EngineConfig`` (``kinship engines``' by default).

    ``precisions`` are ``Precision`` values, parsed from user text where it came in (``parse_precisions``)."""

    precisions: tuple[Precision, ...] = PRECISIONS
    calibration: Path | None = None  # None: drawn from --data's training families, saved in the out folder
    calibration_config: CalibrationConfig = CalibrationConfig()
    val_fraction: float = 0.2
    split_seed: int = 0
    split_salt: str = ""  # the store's stable split (``TrainConfig.split_salt``), "" for the seeded one
    policy: ValidationPolicy = ValidationPolicy()
    engine: EngineConfig = CLI_ENGINES  # empty bench_batches: build and validate only

    def split_config(self):
        from kinship.data import SplitConfig

        return SplitConfig(val_fraction=self.val_fraction, seed=self.split_seed, stable_salt=self.split_salt)


@dataclass
class EnginesResult:
    onnx: Path
    data_dir: Path
    out_dir: Path
    backend: str
    backend_note: str
    reference: dict  # FP32 reference metrics on the validation pairs
    validation: dict  # pairs, threshold and where it came from
    calibration: dict  # the calibration set's metadata (None-like when no INT8 was asked for)
    records: list[EngineOutcome]
    environment: dict
    seconds: float
    report_files: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # the report's rows, each with its summary
    context: dict = field(default_factory=dict)  # the report's context (model, machine, notes, comparisons)

    def to_dict(self) -> dict:
        result = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("records", "rows", "context")}
        result.update(onnx=str(self.onnx), data_dir=str(self.data_dir), out_dir=str(self.out_dir))
        result["engines"] = [r.to_dict() for r in self.records]
        return result

    def record(self, variant: str) -> EngineOutcome:
        return next(r for r in self.records if r.variant == variant)


def training_split(model_path: Path | None, val_fraction: float | None = None, seed: int | None = None) -> tuple[float, int, str]:
    """The family split the model was trained with: explicit values win, else the run's ``config.json``
    beside the model (a run folder), else the training defaults. Returns (val_fraction, seed, source)."""
    from kinship.train_config import TrainConfig

    defaults, source = TrainConfig(), "training defaults"
    config_path = Path(model_path).parent / "config.json" if model_path else None
    if config_path is not None and config_path.is_file():
        try:
            defaults = TrainConfig.from_dict(json.loads(config_path.read_text())["train"])
            source = str(config_path)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not a run config: keep the defaults
    if val_fraction is not None or seed is not None:
        source = "command line" if val_fraction is not None and seed is not None else f"command line + {source}"
    return (defaults.val_fraction if val_fraction is None else val_fraction,
            defaults.seed if seed is None else seed, source)


def _calibration_file(job: EnginesJob, prepared, out_dir: Path, on_progress) -> tuple[Path, dict]:
    """The calibration set to use: the given file (checked against this model and split) or a fresh one."""
    if job.calibration is not None:
        calibration = load_calibration(job.calibration)
        check_compatible(calibration, prepared.image_size, prepared.split.val)
        return Path(job.calibration), calibration.meta
    on_progress(ProgressEvent("calibration set", 0, 1))
    calibration = calibration_from_prepared(prepared, job.split_config(), job.calibration_config)
    path = save_calibration(calibration, Path(out_dir) / "calibration.npz")
    on_progress(ProgressEvent("calibration set", 1, 1, {"pairs": len(calibration)}))
    return path, calibration.meta


def _validate_built(built: EngineOutcome, data: ValidationData, reference: np.ndarray, reference_auc: float,
                    policy: ValidationPolicy) -> ValidationResult:
    engine = load_engine(built.path)
    return validate_engine(engine, data, reference, reference_auc, policy)


def build_one(onnx_path: Path, out_dir: Path, variant: Precision, backend: str, calibration: Path | None,
              job: EnginesJob, data: ValidationData, reference: np.ndarray, reference_auc: float,
              builder: Builder = build_engine) -> EngineOutcome:
    """Build and validate one variant; any failure becomes a 'failed' outcome, never an exception."""
    try:
        outcome = builder(onnx_path, out_dir, variant, backend, calibration, job.engine)
    except Exception as error:
        return EngineOutcome(backend, variant, variant.numeric, STATUS_FAILED, f"build failed: {reason_of(error)}")
    if outcome.status != STATUS_BUILT:
        outcome.reason = "; ".join(outcome.notes)
        return outcome
    try:
        outcome.validation = _validate_built(outcome, data, reference, reference_auc, job.policy)
    except Exception as error:
        # Built but unusable: remove it so nothing that cannot run is left looking like an engine.
        shutil.rmtree(variant_dir(out_dir, backend, variant), ignore_errors=True)
        outcome.status, outcome.reason = STATUS_FAILED, f"built but could not run on validation pairs: {reason_of(error)}"
    return outcome


@dataclass
class Sweep:
    """What a batch sweep measured: each engine's figures per batch, why any engine stopped, and PyTorch's
    ``{batch: figures}`` at the reference batch (None when it did not run)."""

    bench: dict[str, list] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    torch: dict | None = None


def sweep_engines(engines: dict, config: EngineConfig, pixels: np.ndarray, torch_checkpoint: Path | None = None,
                  on_progress: Callable[[ProgressEvent], None] = silent) -> Sweep:
    """The batch sweep over ``engines`` (name -> loaded engine) in alternating slices (``bench.bench_interleaved``),
    so the ratios between engines are side by side; PyTorch eager on ``torch_checkpoint`` joins the slices at
    the reference batch. An engine that fails at one batch is left out of the larger ones."""
    from kinship.engines.bench import timed_call
    from kinship.engines.timing import bench_interleaved

    sweep = Sweep({name: [] for name in engines})
    if not config.bench_batches or not engines:
        return sweep
    reference = reference_batch(config)
    for batch in config.bench_batches:
        contenders = {name: timed_call(engine, batch, pixels) for name, engine in engines.items()
                      if name not in sweep.failed
                      and not (engine.backend == "tensorrt" and batch > config.max_batch)}  # beyond the profile
        if batch == reference and torch_checkpoint is not None:
            contenders["pytorch eager"] = _torch_call(torch_checkpoint, batch, pixels, config)
        results, failed = bench_interleaved(contenders, batch, config.bench_seconds, config.warmup_seconds,
                                            config.bench_rounds, on_progress)
        for name, figures in results.items():
            if name in engines:
                sweep.bench[name].append(figures)
        sweep.failed.update({name: f"benchmark at batch {batch} failed: {why}" for name, why in failed.items() if name in engines})
        if "pytorch eager" in results:
            sweep.torch = {batch: {**results["pytorch eager"].to_dict(), "threads": _threads(config)}}
    return sweep


def bench_pixels(prepared) -> np.ndarray:
    """The photos the benchmarks feed: up to 512 distinct validation images (real inputs, not noise)."""
    return np.asarray(prepared.pixels[np.unique(prepared.val_pairs.left)[:512]])


def _benchmark(records: list[EngineOutcome], config: EngineConfig, pixels: np.ndarray, torch_checkpoint: Path | None,
               on_progress) -> dict | None:
    """``sweep_engines`` over every engine that validated; figures and failures go into the records.
    Returns PyTorch's ``{batch: figures}``, or None if it did not run."""
    runnable = {f"{r.backend} {r.variant}": r for r in records if r.validation is not None}
    if not config.bench_batches or not runnable:
        return None
    sweep = sweep_engines({name: load_engine(r.build.path) for name, r in runnable.items()}, config, pixels,
                          torch_checkpoint, on_progress)
    for name, record in runnable.items():
        record.bench.extend(sweep.bench[name])
        if name in sweep.failed:
            record.reason = sweep.failed[name]
    return sweep.torch


def _threads(config: EngineConfig) -> int:
    return config.threads or default_threads()


def _torch_call(checkpoint: Path, batch: int, pixels: np.ndarray, config: EngineConfig):
    """PyTorch eager's timed call, with the engines' thread count (torch keeps it for this process)."""
    import torch

    from kinship.engines.bench import TorchEager, timed_call

    torch.set_num_threads(_threads(config))
    return timed_call(TorchEager(checkpoint), batch, pixels)


def reference_batch(config: EngineConfig) -> int:
    """The batch of the report's table and ratios: 64 when swept, else the largest swept."""
    batches = config.bench_batches or (64,)
    return 64 if 64 in batches else max(batches)


@dataclass
class _Inputs:
    """What every variant is judged with: validation pairs, FP32 reference logits, calibration file."""

    prepared: object  # kinship.data.PreparedData
    data: ValidationData
    reference: np.ndarray
    reference_report: object  # kinship.metrics.VerificationReport
    calibration: Path | None
    calibration_meta: dict


def _inputs(onnx_path: Path, data_dir: Path, out_dir: Path, job: EnginesJob, on_progress) -> _Inputs:
    from kinship.data import prepare

    facts = read_model_facts(onnx_path)
    image_size, recorded_threshold = facts.image_size, facts.val_threshold
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(Path(data_dir), image_size, job.split_config(), on_progress=on_progress)
    calibration, calibration_meta = None, {}
    if any(precision.is_int8 for precision in job.precisions):
        calibration, calibration_meta = _calibration_file(job, prepared, out_dir, on_progress)
    data = validation_data(prepared, job.engine.validation_pairs)
    reference = engine_logits(reference_engine(onnx_path), data)
    choose_threshold(data, recorded_threshold, reference)
    report = verification_report(data.label, reference, data.kind, threshold=data.threshold)
    return _Inputs(prepared, data, reference, report, calibration, calibration_meta)


def build_engines(
    onnx_path: Path,
    data_dir: Path,
    out_dir: Path,
    job: EnginesJob = EnginesJob(),
    on_progress: Callable[[ProgressEvent], None] = silent,
    builder: Builder = build_engine,
    write_files: bool = True,
) -> EnginesResult:
    """Build, validate and benchmark every precision of ``job``; the report's rows and context are the result's
    ``rows`` and ``context``, and (``write_files``) report.json, report.md and the plots in ``out_dir``.

    ``builder`` is the per-precision build step (``registry.build_engine``); callers may wrap it, e.g. to
    record each build elsewhere.
    """
    started = time.perf_counter()
    precisions = job.precisions
    backend = resolve_backend(job.engine.backend)
    require_backend(backend)
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    inputs = _inputs(onnx_path, data_dir, out_dir, job, on_progress)
    records = []
    for index, precision in enumerate(precisions):
        on_progress(ProgressEvent("build and validate engines", index, len(precisions), {"variant": precision}))
        records.append(build_one(onnx_path, out_dir, precision, backend, inputs.calibration, job, inputs.data,
                                 inputs.reference, inputs.reference_report.auc, builder))
    on_progress(ProgressEvent("build and validate engines", len(precisions), len(precisions)))
    companion = onnx_path.with_suffix(".pt")
    torch_figures = _benchmark(records, job.engine, bench_pixels(inputs.prepared), companion if companion.is_file() else None,
                               on_progress)
    calibration = ({**inputs.calibration_meta, "file": str(inputs.calibration), "method": job.engine.calibration_method}
                   if inputs.calibration else {})
    result = EnginesResult(
        onnx_path, Path(data_dir), out_dir, backend, backend_note(job.engine.backend, backend),
        inputs.reference_report.to_dict(),
        {"pairs": len(inputs.data), "threshold": inputs.data.threshold,
         "threshold_source": inputs.data.threshold_source, "policy": asdict(job.policy)},
        calibration, records, environment(backend), time.perf_counter() - started,
    )
    result.rows, result.context = report_payload(result, job.engine, inputs.data.label, torch_figures)
    if write_files:
        result.report_files = write_report(result)
    return result


@dataclass
class PrecisionBuild:
    """One precision built and validated (no benchmark): its outcome, its report row (with its summary) and the
    report's context (model, machine, reference, notes), as a pipeline stage stores them."""

    outcome: EngineOutcome
    row: dict
    context: dict
    result: EnginesResult


def build_precision(onnx_path: Path, data_dir: Path, out_dir: Path, precision: Precision, job: EnginesJob,
                    on_progress: Callable[[ProgressEvent], None] = silent) -> PrecisionBuild:
    """Build and validate ``precision`` alone with ``job``'s split, calibration and engine settings (its bench
    batches are ignored: a pipeline times every built precision together afterwards). Nothing is written but the
    engine folder: the row and context come back in the result."""
    one = replace(job, precisions=(precision,), engine=job.engine.with_changes(bench_batches=()),
                  calibration=job.calibration if precision.is_int8 else None)
    result = build_engines(onnx_path, data_dir, out_dir, one, on_progress=on_progress, write_files=False)
    (outcome,), (row,) = result.records, result.rows
    return PrecisionBuild(outcome, row, result.context, result)


def report_rows(result: EnginesResult, labels: np.ndarray) -> list[dict]:
    """The rows ``report.write_report`` takes, one per variant (figures only for engines that ran)."""
    from kinship.engines.report import EngineResult

    fp32 = next((r for r in result.records if r.variant == "fp32" and r.build and r.build.path), None)
    fp32_bytes = fp32.build.size_bytes if fp32 else None
    return [EngineResult.from_outcome(record, labels, fp32_bytes).to_dict() for record in result.records]


def report_context(result: EnginesResult, config: EngineConfig) -> dict:
    """What the report shows around the rows: model, machine, reference batch, FLOPs, notes."""
    context = {
        "title": f"Engines for {result.onnx.name} ({result.backend})",
        "model": str(result.onnx),
        "reference_batch": reference_batch(config),
        "threads": default_threads(),
        "machine": result.environment,
        "notes": [
            f"backend: {result.backend_note}",
            f"validation: {result.validation['pairs']} pairs from held-out families; threshold "
            f"{result.validation['threshold']:.4f} from {result.validation['threshold_source']}",
            f"FP32 reference (exported ONNX in ONNX Runtime, CPU): AUC {result.reference['auc']:.4f}, "
            f"accuracy {result.reference['accuracy']:.4f}",
        ],
    }
    if result.calibration:
        meta = result.calibration
        context["notes"].append(
            f"calibration: {meta.get('pairs')} pairs from {len(meta.get('families_used', []))} training families, "
            f"{meta.get('method')} method, per type {meta.get('counts_by_type')}")
    try:
        from kinship.engines.flops import model_flops_per_pair

        context["flops_per_pair"] = model_flops_per_pair(result.onnx)
    except Exception as error:  # the FLOP count is a nicety: never lose the report over it
        context["notes"].append(f"FLOPs per pair not counted: {reason_of(error)}")
    return context


def report_payload(result: EnginesResult, config: EngineConfig, labels: np.ndarray,
                   torch_figures: dict | None = None) -> tuple[list[dict], dict]:
    """The report's rows (each with its summary) and context, as report.json holds them.

    With a benchmark, the context also gets this machine's GEMM ceiling and (when ``model.pt`` sits
    beside the ONNX file) PyTorch eager at the reference batch, measured by ``report.measure_context``.
    """
    from kinship.engines.report import EngineResult, measure_context, summarised

    rows = report_rows(result, labels)
    context = report_context(result, config)
    if torch_figures:
        context["torch"] = torch_figures
    if config.bench_batches:
        try:
            measured = measure_context(result.onnx, [EngineResult.from_dict(r) for r in rows], context,
                                       ceiling_seconds=config.ceiling_seconds)
            context = {**measured, **context}
        except Exception as error:  # extra comparisons only: the report stands without them
            context["notes"].append(f"ceiling / PyTorch comparison not measured: {reason_of(error)}")
    return summarised(rows, context), context


def write_report(result: EnginesResult) -> list[str]:
    """report.json, report.md and the plots of ``result``'s rows and context in its out folder."""
    from kinship.engines.report import write_report as write

    json_path, md_path = write(result.rows, result.out_dir, result.context)
    return [str(json_path), str(md_path)]
