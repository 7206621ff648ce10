"""``kinship engines``: build, validate and benchmark every engine variant of an exported model."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from kinship.cli.output import add_json_flag, console, parse_ints, print_json, progress_bars, table


def register(subparsers) -> None:
    from kinship.engines.precision import PRECISIONS
    from kinship.engines.config import CALIBRATION_METHODS
    from kinship.engines.config import CLI_ENGINES as defaults

    parser = subparsers.add_parser(
        "engines", help="build ONNX Runtime / TensorRT engines at each precision, validate against FP32, benchmark",
        description="Build every precision of --onnx (pair model plus encoder and head), check each against "
        "the FP32 model on the validation pairs of --data (logit differences, decision agreement, AUC), "
        "benchmark a batch sweep, and write report.json / report.md into --out. One failed precision "
        "is reported with its reason; the others go on.",
    )
    parser.add_argument("--onnx", type=Path, required=True, help="exported FILE.onnx (encoder/head beside it)")
    parser.add_argument("--data", type=Path, required=True, help="data set folder the model was trained on")
    parser.add_argument("--out", type=Path, required=True, help="folder for engines, calibration, report")
    parser.add_argument("--backend", default=defaults.backend, help="auto | onnxruntime | tensorrt (auto: TensorRT where the installed release supports "
                        "this GPU's compute capability, else ONNX Runtime)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help=f"comma list of {', '.join(PRECISIONS)}")
    parser.add_argument("--calibration", type=Path, help="calibration .npz from kinship calibrate (default: drawn now)")
    parser.add_argument("--calibration-method", default=defaults.calibration_method,
                        help=f"{' | '.join(CALIBRATION_METHODS)} (Q/DQ models)")
    parser.add_argument("--profile", default=f"{defaults.min_batch},{defaults.opt_batch},{defaults.max_batch}",
                        help="TensorRT batch profile min,opt,max (pairs)")
    parser.add_argument("--bench-batches", default=",".join(map(str, defaults.bench_batches)),
                        help="batch sizes to benchmark; empty = none")
    parser.add_argument("--bench-seconds", type=float, default=defaults.bench_seconds, help="timed seconds per engine and batch")
    parser.add_argument("--validation-pairs", type=int, default=defaults.validation_pairs,
                        help="at most this many validation pairs (0 = all)")
    parser.add_argument("--val-fraction", type=float, help="training split (default: the run's config.json)")
    parser.add_argument("--split-seed", type=int, help="training split seed (default: the run's config.json)")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def config_from_args(args):
    """The ``EnginesJob`` of the command line (names checked: unknown ones are UserErrors). Its engine knobs
    start from ``CLI_ENGINES`` (a longer benchmark than a pipeline run's)."""
    from kinship.engines.build import EnginesJob, training_split
    from kinship.engines.precision import parse_precisions
    from kinship.engines.config import CLI_ENGINES, check_backend_name
    from kinship.errors import UserError

    profile = parse_ints(args.profile, "--profile")
    if len(profile) != 3:
        raise UserError(f"--profile needs three values min,opt,max, got {args.profile!r}")
    engine = CLI_ENGINES.with_changes(
        backend=check_backend_name(args.backend), min_batch=profile[0], opt_batch=profile[1], max_batch=profile[2],
        calibration_method=args.calibration_method, validation_pairs=args.validation_pairs,
        bench_batches=parse_ints(args.bench_batches, "--bench-batches"), bench_seconds=args.bench_seconds,
    )
    val_fraction, split_seed, _ = training_split(args.onnx, args.val_fraction, args.split_seed)
    return EnginesJob(precisions=parse_precisions(args.precisions), calibration=args.calibration,
                      val_fraction=val_fraction, split_seed=split_seed, engine=engine)


def run(args) -> int:
    """Handler of ``kinship engines``."""
    from kinship.engines.build import build_engines
    from kinship.engines.outcome import STATUS_BUILT

    config = config_from_args(args)
    with progress_bars(enabled=not args.json) as on_progress:
        result = build_engines(args.onnx, args.data, args.out, config, on_progress=on_progress)
    if args.json:
        print_json(result.to_dict())
    else:
        _print(result)
    return 0 if any(r.status == STATUS_BUILT for r in result.records) else 1


def _best(record) -> str:
    if not record.bench:
        return ""
    best = max(record.bench, key=lambda b: b.pairs_per_s)
    return f"{best.pairs_per_s:,.0f} @{best.batch}"


def _row(record) -> list:
    v = record.validation
    kb = f"{record.build.size_bytes / 1e3:,.1f}" if record.build and record.build.path and v else ""
    if v is None:
        return [record.variant, record.status, kb, "", "", "", "", ""]
    a = v.agreement
    status = record.status if v.acceptable else f"{record.status} (outside policy)"
    return [record.variant, status, kb, f"{a.max_abs_diff:.1e}", f"{a.decision_agreement:.2%}", f"{v.metrics['auc']:.4f}",
            f"{v.auc_delta:+.4f}", _best(record)]


def _print(result) -> None:
    from kinship.engines.outcome import STATUS_BUILT
    from kinship.engines.registry import outcome_hardware

    columns = ["precision", "status", "kB", "max|dlogit|", "agree", "AUC", "dAUC", "pairs/s"]
    title = f"{result.backend_note}\n{result.validation['pairs']} validation pairs; FP32 reference AUC {result.reference['auc']:.4f}"
    console.print(table(title, columns, [_row(r) for r in result.records]))
    for record in result.records:
        if record.reason:
            console.print(f"[bold]{record.variant}[/bold]: {escape(record.reason)}")
        state, evidence = outcome_hardware(record)
        if record.status == STATUS_BUILT and state not in ("", "native"):  # built, but not in its precision here
            console.print(f"[bold]{record.variant}[/bold] on this device: {escape(state)} ({escape(evidence)})")
    for path in result.report_files:
        console.print(f"wrote {path}")
