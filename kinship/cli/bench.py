"""``kinship bench``: a trtexec-style benchmark of one model file, optionally beside PyTorch eager."""

from __future__ import annotations

from pathlib import Path

from kinship.cli.output import add_json_flag, console, print_json, progress_bars, table

STAT_COLUMNS = ("min", "mean", "median", "p90", "p95", "p99", "max")
SERIES = (("latency_ms", "latency"), ("enqueue_ms", "enqueue"), ("h2d_ms", "H2D"), ("compute_ms", "compute"), ("d2h_ms", "D2H"))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark a model file (.onnx, engine folder/.engine, or .pt) like trtexec",
        description="Time one model file back to back: throughput, latency percentiles, phase times, "
        "share of the machine's measured GEMM ceiling, and optionally the ratio to PyTorch eager.",
    )
    parser.add_argument("--model", type=Path, required=True, help="a .onnx export, an engine folder/.engine/.plan, or a .pt checkpoint")
    parser.add_argument("--batch", type=int, default=64, help="pairs per call (default 64)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of timed calls (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed calls first (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for ONNX Runtime and PyTorch (default: physical cores)")
    parser.add_argument("--vs-torch", type=Path, metavar="MODEL_PT", help="also run this checkpoint in PyTorch eager, same batch and threads")
    parser.add_argument("--ceiling-seconds", type=float, default=2.0, help="seconds of GEMM to measure the machine ceiling (0: skip)")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def config_from_args(args):
    """The ``EngineConfig`` of the flags: one batch, its timings, threads and the ceiling's seconds.
    A bad value is a UserError naming its flag."""
    from kinship.engines.config import EngineConfig
    from kinship.errors import UserError

    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    if args.duration <= 0 or args.warmup < 0 or args.ceiling_seconds < 0:
        raise UserError("--duration must be > 0, --warmup and --ceiling-seconds >= 0")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    return EngineConfig(bench_batches=(args.batch,), bench_seconds=args.duration, warmup_seconds=args.warmup,
                        threads=args.threads, ceiling_seconds=args.ceiling_seconds)


def run(args) -> int:
    from kinship.engines.bench import run_bench

    config = config_from_args(args)
    with progress_bars(enabled=not args.json) as on_progress:
        summary = run_bench(args.model, config, args.vs_torch, on_progress)
    if args.json:
        print_json(summary)
        return 0
    _print_human(summary)
    return 0


def _print_human(summary: dict) -> None:
    runs = [summary["result"]] + ([summary["torch"]] if summary.get("torch") else [])
    for run in runs:
        rows = [[title] + [f"{run[key][c]:.2f}" for c in STAT_COLUMNS] + [f"{run[key]['cv_percent']:.1f}"]
                for key, title in SERIES if run.get(key)]
        console.print(table(f"{run['label']}: batch {run['batch']}, {run['iterations']} calls in {run['wall_s']:.2f} s (ms)",
                            ["", *STAT_COLUMNS, "CV %"], rows))
    rows = [[r["label"], f"{r['queries_per_s']:.2f}", f"{r['pairs_per_s']:.1f}", _maybe(r.get("gflops")),
             _maybe(r.get("share_of_ceiling"), "{:.0%}"), _maybe(r.get("pairs_per_cpu_s")), _maybe(r.get("cpu_share"), "{:.0%}")]
            for r in runs]
    columns = ["", "queries/s", "pairs/s", "GFLOP/s", "share of ceiling", "pairs/CPU-s", "share per CPU-s"]
    console.print(table(f"throughput ({summary['threads']} threads)", columns, rows))
    hardware = summary.get("hardware") or {}
    if hardware.get("state"):  # whether this device runs the precision natively (TensorRT: from the engine's build)
        evidence = f" ({hardware['evidence']})" if hardware.get("evidence") else ""
        console.print(f"{hardware['backend']} {hardware['precision']} on this device: {hardware['state']}{evidence}")
    if summary.get("ratio_vs_torch"):
        console.print(f"{runs[0]['label']} runs {summary['ratio_vs_torch']:.2f}x the pairs/s of PyTorch eager at batch {summary['batch']}")
    ceiling = summary.get("ceiling")
    if ceiling:
        measured = ", ".join(f"{lib} {rate:.1f}" for lib, rate in ceiling["by_library"].items())
        console.print(f"machine ceiling: {ceiling['gflops']:.1f} GFLOP/s sustained, {ceiling['cpu_gflops']:.1f} per CPU-second, "
                      f"{ceiling['peak_gflops']:.1f} fastest call "
                      f"(FP32 GEMM {ceiling['n']}x{ceiling['n']}: {measured})")
    if summary.get("flops_per_pair"):
        console.print(f"model: {summary['flops_per_pair'] / 1e6:.1f} MFLOP per pair ({summary['flops_source']})")


def _maybe(value, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)
