"""Why ONNX Runtime FP32 runs as fast as it does on this CPU: settings tried one at a time, and where the time goes.

    .venv/bin/python benchmarks/investigate_cpu.py [--run RUN_DIR] [--batch 64] [--seconds 2]

Tries ORT graph optimisation levels (ALL adds the NCHWc layout transform on x86), intra-op threads,
thread-pool spinning, and PyTorch channels_last; then profiles one ORT session by operator type to
show how much of the time is convolution and at what GFLOP/s the convolutions themselves run.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from cpu_common import model_files, parse_args  # beside this script

LEVELS = ("disable", "basic", "extended", "all")


def ort_session(onnx_path, threads: int, level: str = "all", spinning: bool = True, profile_prefix: str = ""):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    source = onnx_path.SerializeToString() if hasattr(onnx_path, "SerializeToString") else str(onnx_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_session(session, batch: int, image_size: int, seconds: float):
    """A BenchResult for an ORT session of the pair model."""
    from kinship.engines.bench import pair_inputs
    from kinship.engines.timing import benchmark

    img0, img1 = pair_inputs(batch, image_size)
    feeds = {"img0": img0, "img1": img1}
    return benchmark(lambda: session.run(None, feeds) and None, batch, seconds, 0.5)


def settings_table(checkpoint: Path, onnx_path: Path, flops: int, image_size: int, args, cores: int) -> None:
    """Each setting measured twice, interleaved, so slow neighbours hit every row alike."""
    from kinship.engines.bench import bench_torch

    rows: dict[str, list] = defaultdict(list)
    for _ in range(2):
        for threads in sorted({cores, 1}, reverse=True):
            for level in LEVELS:
                rows[f"ORT {level:<8} threads={threads}"].append(
                    run_session(ort_session(onnx_path, threads, level), args.batch, image_size, args.seconds))
            rows[f"ORT all      threads={threads} no spinning"].append(
                run_session(ort_session(onnx_path, threads, "all", spinning=False), args.batch, image_size, args.seconds))
            for channels_last in (False, True):
                name = f"PyTorch {'channels_last' if channels_last else 'NCHW'} threads={threads}"
                rows[name].append(bench_torch(checkpoint, args.batch, args.seconds, 0.5, threads=threads, channels_last=channels_last))
    print(f"\n== settings, batch {args.batch}: best of 2 interleaved runs, per wall second and per CPU-second ==")
    for name, results in rows.items():
        wall, cpu = max(r.pairs_per_s for r in results), max(r.pairs_per_cpu_s or 0 for r in results)
        print(f"{name:<40} {wall:7.1f} pairs/s {wall * flops / 1e9:6.1f} GFLOP/s | "
              f"{cpu:7.1f} pairs/CPU-s {cpu * flops / 1e9:6.1f} GFLOP/CPU-s")


def op_profile(onnx_path: Path, flops: int, image_size: int, args, cores: int) -> None:
    """Time per operator type in one profiled ORT session (level ALL), and the convolutions' own rate."""
    with tempfile.TemporaryDirectory() as folder:  # ORT writes its trace beside the prefix
        session = ort_session(onnx_path, cores, "all", profile_prefix=str(Path(folder) / "ort_profile"))
        run_session(session, args.batch, image_size, args.seconds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            by_op[event["args"].get("op_name", "?")] += event["dur"] / 1e3
    runs = [e["dur"] / 1e3 for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    total = sum(by_op.values())
    print(f"\n== ORT operator profile, level ALL, {cores} threads, batch {args.batch}, {len(runs)} runs "
          f"(median run {statistics.median(runs):.1f} ms) ==")
    for op, ms in sorted(by_op.items(), key=lambda item: -item[1]):
        print(f"{op:<28} {ms / total:6.1%} of kernel time")
    conv_ms = sum(ms for op, ms in by_op.items() if "Conv" in op or op in ("Gemm", "MatMul", "FusedGemm", "FusedMatMul"))
    if conv_ms:
        rate = flops * args.batch * len(runs) / (conv_ms / 1e3) / 1e9
        print(f"convolutions and GEMMs alone: {rate:.1f} GFLOP/s over their own time; "
              f"{conv_ms / total:.0%} of kernel time")


def conv_layers(onnx_path: Path, batch: int, threads: int, seconds: float) -> None:
    """Each distinct convolution of the encoder alone in ORT (level ALL): GFLOP/s on its fastest call and
    per CPU-second (a lone Conv also pays ORT's NCHW <-> NCHWc reorders, which the whole model does once)."""
    import onnx
    from onnx import TensorProto, helper

    from kinship.engines.flops import inferred_shapes
    from kinship.engines.timing import benchmark

    model = onnx.load(str(onnx_path))
    shapes = inferred_shapes(model)
    weights = {init.name: init for init in model.graph.initializer}
    print(f"\n== each convolution alone, {2 * batch} images, {threads} thread(s) ==")
    seen = set()
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        in_shape, w = [2 * batch] + shapes[node.input[0]][1:], weights[node.input[1]]
        key = (tuple(in_shape), tuple(w.dims), str(attributes))
        if key in seen:
            continue
        seen.add(key)
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", w.name] + list(node.input[2:3]), ["y"], **attributes)], "conv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [w] + [weights[name] for name in node.input[2:3]],
        )
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort_session(probe, threads)
        x = np.random.default_rng(0).standard_normal(in_shape, dtype=np.float32)
        out = session.run(None, {"x": x})[0]
        macs = int(np.prod(out.shape)) * int(np.prod(w.dims[1:]))
        result = benchmark(lambda: session.run(None, {"x": x}) and None, 1, seconds / 4, 0.1)
        per_cpu = 2 * macs * result.pairs_per_cpu_s / 1e9 if result.pairs_per_cpu_s else float("nan")
        print(f"{str(tuple(in_shape[1:])):<16} -> {str(tuple(out.shape[1:])):<16} kernel {tuple(w.dims[2:])} "
              f"stride {attributes.get('strides', [1])[0]}: {2 * macs / (result.latency_ms.min / 1e3) / 1e9:6.1f} GFLOP/s "
              f"fastest call, {per_cpu:6.1f} per CPU-s; {2 * macs / 2 / batch / 1e6:5.1f} MFLOP per image")


def investigate(checkpoint: Path, onnx_path: Path, flops: int, args) -> None:
    from kinship.export import read_metadata
    from kinship.host import default_threads

    image_size = int(read_metadata(onnx_path)["kinship.image_size"])
    cores = default_threads()
    settings_table(checkpoint, onnx_path, flops, image_size, args, cores)
    op_profile(onnx_path, flops, image_size, args, cores)
    for threads in sorted({cores, 1}):
        conv_layers(onnx_path, args.batch, threads, args.seconds)


def main(argv=None) -> int:
    from kinship.engines.flops import model_flops_per_pair

    args = parse_args(argv, __doc__.splitlines()[0])
    checkpoint, onnx_path, source = model_files(args.run)
    print(f"model: {source}")
    investigate(checkpoint, onnx_path, model_flops_per_pair(onnx_path), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
