"""``kinship pipeline``: the whole workflow in one process with no server (for laptops and debugging).

The same stages as the Prefect deployments (``kinship.pipeline``), in the same order (``kinship.stage_order``),
against a local artifact store in ``--out/store`` (``kinship.local_run``); the final report is copied to
``--out/report.md``.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

from kinship.cli.output import add_json_flag, console, key_value_table, parse_ints, print_json, progress_bars, table


def register(subparsers) -> None:
    from kinship.baseline import REQUIRED_MARGIN
    from kinship.engines.calibration import CalibrationConfig
    from kinship.engines.config import EngineConfig
    from kinship.engines.precision import DEFAULT_PRECISIONS
    from kinship.train_config import TrainConfig

    train, engines, calibration = TrainConfig(), EngineConfig(), CalibrationConfig()
    parser = subparsers.add_parser(
        "pipeline", help="train, export, calibrate, build engines, report and promote: all in this process",
        description="Run every stage of the kinship workflow in this process (no Prefect server): train on "
        "--data, export and check ONNX, draw the INT8 calibration set, build/validate/benchmark engines, write "
        "the report and promote the model to champion if its validation AUC beats raw pixels by --required-margin and the current champion. Artifacts "
        "go to a local store in --out/store (same layout as the S3 bucket); the report to --out/report.md.",
    )
    parser.add_argument("--data", required=True, help="data set folder, or a pushed data set URI (s3://... or file://...)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the local store, work files and report.md")
    parser.add_argument("--train-config", type=Path, help="JSON file of TrainConfig fields (flags below override it)")
    for name in ("epochs", "batch_size", "image_size", "width", "embedding_dim", "max_batches_per_epoch", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"TrainConfig.{name} (default {getattr(train, name)})")
    parser.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS), help="comma list of engine precisions")
    parser.add_argument("--backend", default=engines.backend, help="auto | onnxruntime | tensorrt")
    parser.add_argument("--bench-batches", default=",".join(map(str, engines.bench_batches)), help="batch sizes to benchmark")
    parser.add_argument("--bench-seconds", type=float, default=engines.bench_seconds, help="timed seconds per engine and batch")
    parser.add_argument("--validation-pairs", type=int, default=0, help="at most this many validation pairs (0 = all)")
    parser.add_argument("--calibration-batches", type=int, default=calibration.batches)
    parser.add_argument("--calibration-batch-size", type=int, default=calibration.batch_size)
    parser.add_argument("--required-margin", type=float, default=REQUIRED_MARGIN,
                        help=f"validation AUC a model must gain over raw-pixel cosine to be promoted (default {REQUIRED_MARGIN})")
    parser.add_argument("--run-id", help="name of the run in the store (default: time + random suffix)")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def _train_config(args):
    from kinship.errors import UserError
    from kinship.train_config import TrainConfig

    values = {}
    if args.train_config:
        try:
            values = json.loads(args.train_config.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"--train-config {args.train_config}: not a readable JSON file ({error})") from error
        if not isinstance(values, dict):
            raise UserError(f"--train-config {args.train_config}: expected a JSON object of TrainConfig fields")
        unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise UserError(f"--train-config {args.train_config}: unknown TrainConfig fields {', '.join(unknown)}")
    config = TrainConfig.from_dict(values)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    return replace(config, **overrides)


def config_from_args(args):
    """The ``PipelineConfig`` of the command line."""
    from kinship.engines.calibration import CalibrationConfig
    from kinship.engines.config import EngineConfig
    from kinship.local_run import PipelineConfig

    engines = EngineConfig(backend=args.backend, bench_batches=parse_ints(args.bench_batches, "--bench-batches"),
                           bench_seconds=args.bench_seconds, validation_pairs=args.validation_pairs).check()
    calibration = CalibrationConfig(batches=args.calibration_batches, batch_size=args.calibration_batch_size)
    return PipelineConfig(train=_train_config(args), precisions=args.precisions, engines=engines,
                          calibration=calibration, required_margin=args.required_margin)


def run(args) -> int:
    """Handler of ``kinship pipeline``."""
    from kinship.local_run import run_pipeline
    from kinship.run_report import engine_table

    config = config_from_args(args)
    with progress_bars(enabled=not args.json) as on_progress:
        result = run_pipeline(args.data, args.out, config, run_id=args.run_id, on_progress=on_progress)
    if args.json:
        print_json(result.to_dict())
        return 0
    rows = engine_table(result.engines)
    columns = ["variant", "backend", "status", "size_mb", "pairs_per_s", "p50_ms", "auc", "agreement"]
    console.print(table(f"engines ({result.engines.get('backend_note')})", columns,
                        [[row[c] if row[c] is not None else "" for c in columns] for row in rows]))
    console.print(key_value_table(f"run {result.run_id}", {
        "validation AUC": result.train["metrics"]["best_val_auc"],
        "champion": result.promotion["reason"],
        "seconds": round(result.seconds, 1),
        "store": str(Path(args.out).resolve() / "store"),
        "report": str(result.report_path),
    }))
    return 0
