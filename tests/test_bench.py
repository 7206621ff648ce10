"""Benchmark statistics on known timings, FLOP counting on a hand-built graph, and `kinship bench` on a tiny model."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from kinship.cli import main
from kinship.engines.base import PhaseTimes
from kinship.engines.bench import bench_engine, bench_torch
from kinship.engines.ceiling import gemm_rates
from kinship.engines.flops import model_flops_per_pair, torch_flops_per_pair
from kinship.engines.scoring import bench_test_set_scoring
from kinship.engines.timing import (
    BenchResult, bench_interleaved, benchmark, merge_slices, percentile_nearest_rank, ratio, summarise, timing_stats,
)
from kinship.host import default_threads, keep_freed_memory
from kinship.errors import UserError

SIZE = 32  # conftest's TINY_TRAIN image size


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tiny_onnx):
    """The shared tiny trained run: its checkpoint and its checked ONNX export (pair, encoder, head)."""
    return tiny_run / "model.pt", tiny_onnx


def _engine(onnx_path):
    from kinship.engines.onnxruntime_backend import OrtEngine

    return OrtEngine.open(onnx_path, None, threads=1)


# --- statistics on known timings -------------------------------------------------------------------


def test_stats_of_one_to_ten():
    values = list(range(1, 11))
    random.Random(1).shuffle(values)  # order must not matter
    stats = timing_stats(values)
    assert (stats.count, stats.min, stats.max, stats.total) == (10, 1, 10, 55)
    assert stats.mean == 5.5 and stats.median == 5.5  # even n: mean of the two middle values
    # nearest rank: p90 -> rank ceil(9.0) = 9, p95 -> ceil(9.5) = 10, p99 -> ceil(9.9) = 10
    assert (stats.p90, stats.p95, stats.p99) == (9, 10, 10)
    assert stats.std == pytest.approx(math.sqrt(8.25))  # population standard deviation
    assert stats.cv_percent == pytest.approx(100 * math.sqrt(8.25) / 5.5)


def test_stats_of_one_to_hundred_and_odd_count():
    stats = timing_stats([float(v) for v in range(100, 0, -1)])
    assert (stats.p90, stats.p95, stats.p99, stats.median) == (90, 95, 99, 50.5)
    odd = timing_stats([3.0, 1.0, 2.0, 10.0, 4.0])
    assert odd.median == 3.0 and odd.p90 == 10.0 and odd.cv_percent == pytest.approx(100 * np.std([3, 1, 2, 10, 4]) / 4)


def test_nearest_rank_matches_numpy_inverted_cdf():
    values = sorted(np.random.default_rng(7).exponential(size=37).tolist())
    for p in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
        assert percentile_nearest_rank(values, p) == np.percentile(values, p, method="inverted_cdf")


def test_percentile_edges():
    assert percentile_nearest_rank([4.0], 99) == 4.0
    assert percentile_nearest_rank([1.0, 2.0], 0) == 1.0
    with pytest.raises(ValueError):
        percentile_nearest_rank([], 50)
    with pytest.raises(ValueError):
        percentile_nearest_rank([1.0], 101)
    with pytest.raises(ValueError):
        timing_stats([])


def test_throughput_arithmetic():
    back_to_back = summarise([10.0, 20.0, 30.0, 40.0], batch=8)
    assert back_to_back.wall_s == pytest.approx(0.1)
    assert back_to_back.queries_per_s == pytest.approx(40.0) and back_to_back.pairs_per_s == pytest.approx(320.0)
    with_gaps = summarise([10.0, 20.0, 30.0, 40.0], batch=8, wall_s=0.2)
    assert with_gaps.queries_per_s == pytest.approx(20.0) and with_gaps.pairs_per_s == pytest.approx(160.0)
    with pytest.raises(ValueError):
        summarise([1.0], batch=0)
    per_cpu = summarise([10.0, 20.0, 30.0, 40.0], batch=8, cpu_s=0.05)
    assert per_cpu.cpu_s == 0.05 and per_cpu.pairs_per_cpu_s == pytest.approx(640.0)
    assert back_to_back.pairs_per_cpu_s is None


def test_phases_reported_only_when_every_call_has_them():
    phases = [PhaseTimes(1.0, 2.0 + i, 0.5, 0.1 * i) for i in range(4)]
    result = summarise([4.0, 5.0, 6.0, 7.0], batch=2, phases=phases)
    assert result.h2d_ms.mean == 1.0 and result.h2d_ms.cv_percent == 0.0
    assert result.compute_ms.median == 3.5 and result.d2h_ms.max == 0.5
    assert result.enqueue_ms.p99 == pytest.approx(0.3)
    cpu_like = summarise([4.0, 5.0], batch=2, phases=[PhaseTimes(None, 3.0, None, None)] * 2)
    assert cpu_like.h2d_ms is None and cpu_like.enqueue_ms is None and cpu_like.compute_ms.mean == 3.0
    assert summarise([4.0, 5.0], batch=2).compute_ms is None


def test_result_round_trips_through_dict():
    result = summarise([1.0, 2.0, 3.0], batch=4, phases=[PhaseTimes(None, 1.0, None, None)] * 3)
    again = BenchResult.from_dict(json.loads(json.dumps({**result.to_dict(), "share_of_ceiling": 0.5})))
    assert again == result


def test_benchmark_times_only_calls_after_warmup():
    calls = []

    def run_once():
        calls.append(1)
        return PhaseTimes(0.25, 1.0, 0.5, 0.125)

    result = benchmark(run_once, batch=4, duration_s=0.0, warmup_s=0.0, min_iterations=7)
    assert result.iterations == 7 and len(calls) == 8  # one untimed warm-up call
    assert result.h2d_ms.mean == 0.25 and result.enqueue_ms.mean == 0.125 and result.batch == 4
    assert result.pairs_per_s == pytest.approx(4 * result.queries_per_s)
    assert result.cpu_s is None or result.pairs_per_cpu_s == pytest.approx(7 * 4 / result.cpu_s)


def _logging_contender(name: str, log: list, fail_on_call: int | None = None):
    def run_once():
        log.append(name)
        if fail_on_call is not None and log.count(name) >= fail_on_call:
            raise RuntimeError(f"{name} lost its device\nsecond line")
        return None

    return run_once


def _runs(log: list) -> list:
    """The log with repeats collapsed: who ran, in which order."""
    return [name for index, name in enumerate(log) if index == 0 or log[index - 1] != name]


def test_interleaved_slices_alternate_and_reverse_each_round():
    log = []
    contenders = {name: _logging_contender(name, log) for name in ("a", "b", "c")}
    results, failed = bench_interleaved(contenders, batch=2, duration_s=0.0, warmup_s=0.0, rounds=3)
    assert failed == {}
    # warm-ups a b c, then round 1 a b c, round 2 c b a, round 3 a b c (adjacent repeats merge)
    assert _runs(log) == ["a", "b", "c", "a", "b", "c", "b", "a", "b", "c"]
    for name, result in results.items():
        assert len(result.rounds_pairs_per_s) == 3 and result.label == name
        # per slice: 1 warm-up call (untimed), 1 untimed call, then 3 timed calls (the minimum per slice)
        assert result.iterations == 9 and log.count(name) == 1 + 3 * (1 + 3)


def test_interleaved_keeps_the_others_when_one_fails():
    log = []
    contenders = {"good": _logging_contender("good", log), "bad": _logging_contender("bad", log, fail_on_call=6)}
    results, failed = bench_interleaved(contenders, batch=2, duration_s=0.0, warmup_s=0.0, rounds=3)
    assert set(results) == {"good"} and len(results["good"].rounds_pairs_per_s) == 3
    assert failed == {"bad": "RuntimeError: bad lost its device"}  # one line
    assert log.count("bad") == 6  # not called again after it failed
    with pytest.raises(ValueError):
        bench_interleaved(contenders, batch=2, duration_s=0.0, warmup_s=0.0, rounds=0)


def test_merged_slices_pool_timings_and_keep_each_slice():
    slices = [([10.0] * 4, [None] * 4, 0.05, 0.1), ([20.0] * 2, [None] * 2, 0.05, 0.1)]
    merged = merge_slices(slices, batch=8, label="x")
    assert (merged.iterations, merged.wall_s, merged.label) == (6, pytest.approx(0.1), "x")
    assert merged.pairs_per_s == pytest.approx(6 * 8 / 0.1)  # only timed windows count
    assert merged.rounds_pairs_per_s == pytest.approx([4 * 8 / 0.05, 2 * 8 / 0.05])
    assert merged.pairs_per_cpu_s == pytest.approx(48 / 0.2)
    assert merged.latency_ms.median == 10.0 and merged.latency_ms.max == 20.0


def test_freed_memory_is_kept_where_glibc_is():
    import ctypes

    try:
        ctypes.CDLL("libc.so.6")
    except OSError:
        assert keep_freed_memory() is False
    else:
        assert keep_freed_memory() is True


# --- real engines ---------------------------------------------------------------------------------


def test_bench_engine_and_torch_on_a_real_model(tiny_export):
    checkpoint, onnx_path = tiny_export
    events = []
    ort_result = bench_engine(_engine(onnx_path), 8, duration_s=0.05, warmup_s=0.01, on_progress=events.append)
    torch_result = bench_torch(checkpoint, 8, duration_s=0.05, warmup_s=0.01, threads=1)
    for result in (ort_result, torch_result):
        assert result.batch == 8 and result.iterations >= 10 and result.compute_ms is not None
        assert result.h2d_ms is None and result.latency_ms.min <= result.latency_ms.median <= result.latency_ms.max
    assert torch_result.threads == 1 and ort_result.label == "onnxruntime fp32"
    assert ratio(ort_result, torch_result) == pytest.approx(ort_result.pairs_per_s / torch_result.pairs_per_s)
    assert events and events[-1].done == events[-1].total
    with pytest.raises(ValueError):
        ratio(ort_result, bench_engine(_engine(onnx_path), 4, duration_s=0.01, warmup_s=0.0))


def test_bench_engine_uses_given_pixels(tiny_export):
    _, onnx_path = tiny_export
    pixels = np.zeros((3, SIZE, SIZE, 3), np.uint8)
    assert bench_engine(_engine(onnx_path), 4, 0.01, 0.0, pixels=pixels).iterations >= 10
    with pytest.raises(ValueError):
        bench_engine(_engine(onnx_path), 4, 0.01, 0.0, pixels=np.zeros((3, 8, 8, 3), np.uint8))


def test_both_ways_of_scoring_a_test_set_agree(tiny_export):
    _, onnx_path = tiny_export
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(20, SIZE, SIZE, 3), dtype=np.uint8)
    left, right = rng.integers(0, 10, size=60), rng.integers(10, 20, size=60)
    comparison = bench_test_set_scoring(_engine(onnx_path), pixels, left, right, batch=16, repeats=1)
    unique = len(np.unique(np.concatenate((left, right))))
    assert comparison.pairs == 60 and comparison.unique_images == unique
    assert comparison.expected_gain == pytest.approx(120 / unique)
    assert comparison.max_abs_diff < 1e-4
    assert comparison.gain == pytest.approx(comparison.encoder_head_pairs_per_s / comparison.two_input_pairs_per_s)


def test_default_threads_is_a_core_count():
    import os

    assert 1 <= default_threads() <= (os.cpu_count() or 1)


# --- ceiling and FLOPs ----------------------------------------------------------------------------


def _hand_built_model(path):
    """Conv 3->4 (3x3, pad 1) on 8x8, grouped Conv (2 groups, stride 2), Flatten, Gemm (transB), MatMul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def weight(name, shape):
        return numpy_helper.from_array(np.ones(shape, np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=2),
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("Gemm", ["f", "w3"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "w4"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [weight("w1", (4, 3, 3, 3)), weight("w2", (4, 2, 3, 3)), weight("w3", (10, 64)), weight("w4", (10, 5))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_flops_of_a_hand_built_graph(tmp_path):
    macs = 4 * 8 * 8 * (3 * 3 * 3)  # conv: outputs x (C_in/group x kernel)
    macs += 4 * 4 * 4 * (2 * 3 * 3)  # grouped stride-2 conv: 4 channels of 4x4, 2 input channels each
    macs += 10 * 64  # gemm: 1 x 64 by 64 x 10
    macs += 10 * 5  # matmul: 1 x 10 by 10 x 5
    assert model_flops_per_pair(_hand_built_model(tmp_path / "hand.onnx")) == 2 * macs


def test_flops_of_the_exported_model_match_pytorch(tiny_export):
    from kinship.export import companion_paths

    checkpoint, onnx_path = tiny_export
    files = companion_paths(onnx_path)
    pair, encoder, head = (model_flops_per_pair(p) for p in files.all())
    assert pair == torch_flops_per_pair(checkpoint) > 0
    assert pair == 2 * encoder + head  # the pair model encodes both images, then runs the head once


def test_flops_survive_onnx_runtime_graph_optimisation(tiny_onnx, tmp_path):
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # Conv+Relu -> FusedConv
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(tiny_onnx), options, providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(str(tmp_path / "optimised.onnx")).graph.node}
    assert "FusedConv" in ops
    assert model_flops_per_pair(tmp_path / "optimised.onnx") == model_flops_per_pair(tiny_onnx)


def test_flops_of_a_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    with pytest.raises(UserError, match="bad.onnx"):
        model_flops_per_pair(bad)


def test_matmul_rates():
    for library in ("torch", "numpy", "onnxruntime"):
        assert 0 < gemm_rates(duration_s=0.02, n=64, threads=1, library=library)[0] < math.inf
    with pytest.raises(ValueError):
        gemm_rates(0.01, 8, None, library="fortran")


# --- the command line ------------------------------------------------------------------------------


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_cli_json_with_torch_beside(tiny_export, capsys):
    checkpoint, onnx_path = tiny_export
    code, out, _ = _cli(capsys, "bench", "--model", onnx_path, "--batch", 4, "--duration", 0.3, "--warmup", 0.05,
                        "--threads", 1, "--vs-torch", checkpoint, "--ceiling-seconds", 0.1, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["batch"] == 4 and summary["threads"] == 1
    assert summary["result"]["label"] == "onnxruntime fp32" and summary["torch"]["label"] == "pytorch eager"
    # side by side: both timed in the same three alternating slices
    assert len(summary["result"]["rounds_pairs_per_s"]) == len(summary["torch"]["rounds_pairs_per_s"]) == 3
    assert summary["ratio_vs_torch"] == pytest.approx(summary["result"]["pairs_per_s"] / summary["torch"]["pairs_per_s"])
    assert summary["flops_per_pair"] == torch_flops_per_pair(checkpoint)
    assert summary["hardware"] == {"backend": "onnxruntime", "precision": "fp32", "state": "native", "evidence": ""}
    ceiling = summary["ceiling"]["gflops"]
    assert summary["result"]["share_of_ceiling"] == pytest.approx(summary["result"]["gflops"] / ceiling)
    fastest = summary["result"]["batch"] / summary["result"]["latency_ms"]["min"] * 1000 * summary["flops_per_pair"] / 1e9
    assert summary["result"]["best_call_gflops"] == pytest.approx(fastest)
    assert summary["result"]["best_call_share"] == pytest.approx(fastest / summary["ceiling"]["peak_gflops"])
    per_cpu = summary["result"]["pairs_per_cpu_s"] * summary["flops_per_pair"] / 1e9
    assert summary["result"]["cpu_share"] == pytest.approx(per_cpu / summary["ceiling"]["cpu_gflops"])


def test_bench_cli_tables_for_a_checkpoint(tiny_export, capsys):
    checkpoint, _ = tiny_export
    code, out, _ = _cli(capsys, "bench", "--model", checkpoint, "--batch", 2, "--duration", 0.1, "--warmup", 0,
                        "--ceiling-seconds", 0)
    assert code == 0
    assert "pytorch eager" in out and "p99" in out and "MFLOP per pair" in out
    assert "pytorch fp32 on this device: native" in out


def test_bench_cli_bad_inputs(tiny_export, tmp_path, capsys):
    checkpoint, onnx_path = tiny_export
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00\x01 not protobuf")
    cases = [
        (["--model", tmp_path / "missing.onnx"], "missing.onnx"),
        (["--model", bad], "broken.onnx"),
        (["--model", onnx_path, "--vs-torch", onnx_path], "--vs-torch"),
        (["--model", onnx_path, "--batch", 0], "--batch"),
    ]
    for argv, named in cases:
        code, out, err = _cli(capsys, "bench", *argv, "--duration", 0.01, "--json")
        assert code == 2 and named in err and out == "" and "Traceback" not in err


def test_ceiling_is_the_best_of_the_libraries_told_the_thread_count():
    from kinship.engines.ceiling import CEILING_LIBRARIES, machine_ceiling

    ceiling = machine_ceiling(duration_s=0.06, n=64, threads=1)
    assert set(ceiling.by_library) == {"torch", "numpy", "onnxruntime"} and ceiling.library in CEILING_LIBRARIES
    assert ceiling.gflops == max(ceiling.by_library[lib] for lib in CEILING_LIBRARIES)
    assert ceiling.peak_gflops == max(ceiling.peak_by_library[lib] for lib in CEILING_LIBRARIES)
    assert ceiling.cpu_gflops == max(ceiling.cpu_by_library[lib] for lib in CEILING_LIBRARIES)
    assert ceiling.threads == 1 and ceiling.n == 64
