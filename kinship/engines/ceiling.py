"""The machine's ceiling for this work (measured FP32 GEMM GFLOP/s) and an engine's share of it.

An engine's achieved rate is ``pairs/s * FLOPs per pair`` (``kinship.engines.flops``); divided by the
GEMM rate measured in the same run it says how much of what this CPU can do the engine uses.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kinship.engines.flops import flops_per_pair
from kinship.host import default_threads, torch_threads
from kinship.progress import ProgressEvent

# onnxruntime: a lone MatMul, i.e. MLAS, the GEMM kernels ONNX Runtime's own convolutions use.
GEMM_LIBRARIES = ("torch", "numpy", "onnxruntime")
# numpy's BLAS keeps its own thread count (fixed at import), so it is measured for reference only:
# at fewer threads than cores it would use more cores than the engines it is compared with.
CEILING_LIBRARIES = ("torch", "onnxruntime")


def gemm_rates(duration_s: float, n: int, threads: int | None, library: str) -> tuple[float, float, float]:
    """(sustained, fastest single call, per CPU-second) single-precision ``n x n`` GEMM rates in GFLOP/s,
    ``2 n^3`` FLOPs per product.

    ``library``: ``'torch'`` (``torch.mm`` with ``threads`` intra-op threads, restored afterwards),
    ``'onnxruntime'`` (one MatMul in an ORT session with ``threads`` intra-op threads) or ``'numpy'``
    (``numpy.matmul``; its BLAS picks its own thread count, which numpy cannot change at run time).
    Per CPU-second divides by the process CPU time used (all threads), which is what other work
    on a shared machine cannot take away."""
    if library not in GEMM_LIBRARIES:
        raise ValueError(f"library must be one of {GEMM_LIBRARIES}, got {library!r}")
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    flops = 2.0 * n**3
    if library == "numpy":
        out = np.empty((n, n), dtype=np.float32)
        return _rates(lambda: np.matmul(a, b, out=out), flops, duration_s)
    if library == "onnxruntime":
        session = _ort_matmul(n, threads)
        return _rates(lambda: session.run(None, {"a": a, "b": b}), flops, duration_s)
    import torch

    with torch_threads(threads), torch.inference_mode():
        ta, tb, out = torch.from_numpy(a), torch.from_numpy(b), torch.empty(n, n)
        return _rates(lambda: torch.mm(ta, tb, out=out), flops, duration_s)


def _ort_matmul(n: int, threads: int | None):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in ("a", "b")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", inputs,
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _rates(call, flops: float, duration_s: float) -> tuple[float, float, float]:
    call()  # the first call pays for thread start-up and page faults
    count, fastest = 0, float("inf")
    cpu_start, start = time.process_time(), time.perf_counter()
    while True:
        begin = time.perf_counter()
        call()
        end = time.perf_counter()
        count, fastest = count + 1, min(fastest, end - begin)
        if end - start >= duration_s and count >= 3:
            cpu = max(time.process_time() - cpu_start, 1e-9)
            return count * flops / (end - start) / 1e9, flops / fastest / 1e9, count * flops / cpu / 1e9


@dataclass
class Ceiling:
    """GEMM rates measured in this run; ``gflops`` (the best sustained) is the ceiling shares refer to.

    On a machine shared with other work, wall-clock rates drop with the neighbours' load; two
    figures resist that: ``cpu_gflops``, FLOPs per CPU-second the process used (compare with an
    engine's ``pairs_per_cpu_s``), and ``peak_gflops``, the fastest single product (compare with an
    engine's fastest call).
    """

    gflops: float
    library: str  # which library reached ``gflops`` (torch or onnxruntime; numpy is for reference)
    by_library: dict[str, float]
    peak_gflops: float
    peak_by_library: dict[str, float]
    cpu_gflops: float
    cpu_by_library: dict[str, float]
    n: int
    threads: int
    duration_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def machine_ceiling(duration_s: float = 2.0, n: int = 1024, threads: int | None = None) -> Ceiling:
    """Measure GEMM in torch and ONNX Runtime (with ``threads``) and numpy (its own threads, for
    reference); the best of torch and ONNX Runtime is the ceiling. ``duration_s`` is shared between them.
    """
    threads = threads or default_threads()
    rates = {library: gemm_rates(duration_s / len(GEMM_LIBRARIES), n, threads, library) for library in GEMM_LIBRARIES}
    sustained, peak, cpu = ({library: rate[i] for library, rate in rates.items()} for i in range(3))
    best = max(CEILING_LIBRARIES, key=sustained.get)
    return Ceiling(sustained[best], best, sustained, max(peak[lib] for lib in CEILING_LIBRARIES), peak,
                   max(cpu[lib] for lib in CEILING_LIBRARIES), cpu, n, threads, duration_s)


def ceiling_figures(model: Path, threads: int, seconds: float, runs: list[dict | None],
                    on_progress: Callable[[ProgressEvent], None]) -> dict:
    """``model``'s FLOPs per pair (and how they were counted) and, unless ``seconds`` is 0, the machine
    ceiling measured now; each of ``runs`` (``BenchResult.to_dict()``, or None) gains its ``ceiling_shares``."""
    flops, source = flops_per_pair(model)
    figures = {"flops_per_pair": flops, "flops_source": source, "ceiling": None}
    if seconds > 0:
        on_progress(ProgressEvent("machine ceiling (GEMM)", 0, 1))
        figures["ceiling"] = machine_ceiling(seconds, threads=threads).to_dict()
        on_progress(ProgressEvent("machine ceiling (GEMM)", 1, 1))
    for run in (r for r in runs if r):
        run.update(ceiling_shares(run, flops, figures["ceiling"]))
    return figures


def ceiling_shares(result: dict, flops: int | None, ceiling: dict | None) -> dict:
    """Achieved GFLOP/s and shares of the ceiling, three ways: sustained (mean throughput against the
    sustained GEMM rate), per CPU-second (both divided by the process CPU time they used, which other
    work on the machine does not dilute) and best call (fastest call against the fastest GEMM)."""
    keys = ("gflops", "share_of_ceiling", "cpu_gflops", "cpu_share", "best_call_gflops", "best_call_share")
    shares = dict.fromkeys(keys)
    if not flops:
        return shares
    ceiling = ceiling or {}
    rates = {
        "": (result["pairs_per_s"], ceiling.get("gflops")),
        "cpu_": (result.get("pairs_per_cpu_s"), ceiling.get("cpu_gflops")),
        "best_call_": (result["batch"] / (result["latency_ms"]["min"] / 1000.0), ceiling.get("peak_gflops")),
    }
    for prefix, (pairs_per_s, reference) in rates.items():
        if pairs_per_s:
            shares[f"{prefix}gflops"] = pairs_per_s * flops / 1e9
            if reference:
                shares["share_of_ceiling" if not prefix else f"{prefix}share"] = shares[f"{prefix}gflops"] / reference
    return shares
