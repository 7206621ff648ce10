"""CPU engine figures in one run: ONNX Runtime FP32 against PyTorch eager, share of the GEMM ceiling,
two-input model against encoder + head on a test set. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/engines_cpu.py [--run RUN_DIR] [--batch 64] [--seconds 2] [--rounds 3]
                                               [--threads N ...] [--investigate]

RUN_DIR holds ``model.pt`` and ``model.onnx`` (default /work/runs/demo when present; otherwise a
random-weight model is built and exported into a temporary folder). The goals from the issue:
ORT FP32 >= 2x PyTorch eager at batch 64; FP32 at >= 80% of the measured GEMM ceiling; encoder+head
beating the two-input model by about the pairs-per-image ratio.

The machine may be shared: every figure is measured in rounds that interleave ceiling, ORT and
PyTorch, so all three see the same neighbours; the median over rounds is printed, with the spread.
Each is given three ways: per wall-clock second; per CPU-second the process used (which other
work cannot dilute; with one thread the cleanest figure, with more it also counts pool threads
spinning); and the fastest single call (what an idle machine would show, biased low for long calls).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import numpy as np

from cpu_common import model_files, parse_args  # beside this script


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} (range {min(values):.1f}-{max(values):.1f})"


def interleaved(checkpoint: Path, onnx_path: Path, threads: int, args) -> dict[str, list]:
    """Rounds of GEMM ceiling (n = 512 and 1024), ORT FP32 and PyTorch eager, back to back."""
    from kinship.engines.bench import bench_engine, bench_torch
    from kinship.engines.ceiling import machine_ceiling
    from kinship.engines.onnxruntime_backend import OrtEngine

    engine = OrtEngine.open(onnx_path, None, threads=threads)
    figures: dict[str, list] = {"ceilings": [], "ort": [], "torch": []}
    for _ in range(args.rounds):
        figures["ceilings"] += [machine_ceiling(args.seconds, n, threads) for n in (512, 1024)]
        figures["ort"].append(bench_engine(engine, args.batch, args.seconds, 0.5))
        figures["torch"].append(bench_torch(checkpoint, args.batch, args.seconds, 0.5, threads=threads))
    return figures


def report_speed(checkpoint: Path, onnx_path: Path, flops: int, threads: int, args) -> None:
    figures = interleaved(checkpoint, onnx_path, threads, args)
    ceilings = figures["ceilings"]
    print(f"\n== {threads} thread(s), batch {args.batch}, {args.rounds} interleaved rounds of {args.seconds:.1f} s ==")
    for library in ("torch", "onnxruntime", "numpy"):
        print(f"GEMM {library:<11} GFLOP/s: wall {spread([c.by_library[library] for c in ceilings])}; "
              f"per CPU-s {spread([c.cpu_by_library[library] for c in ceilings])}; "
              f"fastest call {max(c.peak_by_library[library] for c in ceilings):.1f}")
    # Per round, the better GEMM size and library is that round's ceiling.
    wall_ceiling = [max(c.gflops for c in ceilings[i : i + 2]) for i in range(0, len(ceilings), 2)]
    cpu_ceiling = [max(c.cpu_gflops for c in ceilings[i : i + 2]) for i in range(0, len(ceilings), 2)]
    for name, key in (("wall", "pairs_per_s"), ("per CPU-s", "pairs_per_cpu_s")):
        ort = [getattr(r, key) for r in figures["ort"]]
        torch_ = [getattr(r, key) for r in figures["torch"]]
        reference = wall_ceiling if key == "pairs_per_s" else cpu_ceiling
        shares = [o * flops / 1e9 / c for o, c in zip(ort, reference)]
        print(f"[{name}] ORT FP32 {spread(ort)} pairs/s = {statistics.median(ort) * flops / 1e9:.1f} GFLOP/s; "
              f"PyTorch eager {spread(torch_)} pairs/s")
        print(f"[{name}] ORT / PyTorch {spread([o / t for o, t in zip(ort, torch_)])}x (goal >= 2x); "
              f"ORT share of GEMM ceiling {statistics.median(shares):.0%} "
              f"(range {min(shares):.0%}-{max(shares):.0%}; goal >= 80%)")
    peak = max(c.peak_gflops for c in ceilings)
    fastest = {name: max(args.batch / (r.latency_ms.min / 1e3) for r in figures[name]) * flops / 1e9 for name in ("ort", "torch")}
    print(f"[fastest call] ORT {fastest['ort']:.1f} GFLOP/s = {fastest['ort'] / peak:.0%} of the fastest GEMM ({peak:.1f}); "
          f"PyTorch {fastest['torch']:.1f} GFLOP/s; ORT / PyTorch {fastest['ort'] / fastest['torch']:.2f}x")


def test_set_structure(data: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Pair indices of the data set's test pairs, or an RFIW-like random structure without data."""
    if (data / "sample_submission.csv").is_file():
        from kinship.layout import read_dataset

        pairs = read_dataset(data, verify_images=False).test_pairs
        names = sorted({name for p in pairs for name in (p.left, p.right)})
        index = {name: i for i, name in enumerate(names)}
        left = np.array([index[p.left] for p in pairs])
        return left, np.array([index[p.right] for p in pairs]), f"test pairs of {data}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 1000, 3000), rng.integers(0, 1000, 3000), "random: 3000 pairs over 1000 images"


def report_scoring(onnx_path: Path, threads: int, args) -> None:
    from kinship.engines.scoring import bench_test_set_scoring
    from kinship.engines.onnxruntime_backend import OrtEngine

    engine = OrtEngine.open(onnx_path, None, threads=threads)
    left, right, source = test_set_structure(args.data)
    # Speed does not depend on what the pixels show, so random images stand in for decoding the set.
    count = int(max(left.max(), right.max())) + 1
    pixels = np.random.default_rng(1).integers(0, 256, size=(count, engine.image_size, engine.image_size, 3), dtype=np.uint8)
    result = bench_test_set_scoring(engine, pixels, left, right, batch=args.batch, repeats=args.rounds)
    print(f"\n== scoring a test set ({source}), ORT FP32, {threads} thread(s) ==")
    print(f"{result.pairs} pairs over {result.unique_images} images: two-input {result.two_input_pairs_per_s:.1f} pairs/s, "
          f"encoder+head {result.encoder_head_pairs_per_s:.1f} pairs/s")
    print(f"gain {result.gain:.2f}x; expected from 2 x pairs / images: {result.expected_gain:.2f}x; "
          f"logits agree to {result.max_abs_diff:.1e}")


def main(argv=None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0])
    from kinship.engines.flops import model_flops_per_pair
    from kinship.host import default_threads

    checkpoint, onnx_path, source = model_files(args.run)
    flops = model_flops_per_pair(onnx_path)
    cores = default_threads()
    print(f"model: {source}; {flops / 1e6:.1f} MFLOP per pair; {cores} physical cores; "
          f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for threads in args.threads or [cores] + ([1] if cores > 1 else []):
        report_speed(checkpoint, onnx_path, flops, threads, args)
    report_scoring(onnx_path, cores, args)
    if args.investigate:
        from investigate_cpu import investigate  # beside this script

        investigate(checkpoint, onnx_path, flops, args)
    print(f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
