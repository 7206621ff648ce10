"""A trtexec-style benchmark for any engine, PyTorch eager beside it, and the two ways to score a test set.

``benchmark`` times a callable back to back for a fixed duration after a warm-up and reports what
``trtexec`` reports: throughput (queries/s, a query being one batch, and pairs/s), host latency
min/mean/median/p90/p95/p99/max, and, where the backend can tell (TensorRT), enqueue, H2D, GPU
compute and D2H times, each with its coefficient of variation.

Statistics (``timing_stats``, ``summarise``) are pure functions of the timings:

* percentiles are **nearest-rank** (no interpolation): the p-th percentile of n sorted values is the
  value at 1-based rank ``ceil(p/100 * n)``. This is what trtexec computes (it takes
  ``sorted[n - 1 - floor((1 - p/100) * n)]``, the same index), computed here in exact arithmetic.
* the median is the middle value, or the mean of the two middle values for even n (as trtexec).
* the coefficient of variation is the population standard deviation over the mean, in percent.
* throughput is iterations / measured wall time (first start to last end), as trtexec's qps.
* ``pairs_per_cpu_s`` divides by the process's CPU time over the same window instead: on a machine
  shared with other work it stays put while wall-clock figures drop. With one thread it is the
  engine's own speed; with more it also counts time pool threads spend spinning while they wait.

Latency here is host wall time around one call (inputs already in host memory, outputs back in
host memory), the figure a Python caller sees.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from kinship.engines.base import PhaseTimes
from kinship.progress import ProgressEvent, silent

PERCENTILES = (90, 95, 99)
PHASES = ("enqueue_ms", "h2d_ms", "compute_ms", "d2h_ms")


@dataclass(frozen=True)
class TimingStats:
    """One series of timings in milliseconds."""

    count: int
    total: float
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float  # population standard deviation
    cv_percent: float  # std / mean * 100

    def to_dict(self) -> dict:
        return asdict(self)


def percentile_nearest_rank(sorted_values: Sequence[float], percentile: float) -> float:
    """The nearest-rank percentile of ascending ``sorted_values``: rank ``ceil(p/100 * n)``, 1-based."""
    if not sorted_values:
        raise ValueError("percentile of an empty series")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {percentile}")
    # Fraction(str(p)) keeps 99.9 exact: float rounding would move the rank at exact multiples.
    rank = math.ceil(Fraction(str(percentile)) * len(sorted_values) / 100)
    return float(sorted_values[max(rank, 1) - 1])


def timing_stats(values_ms: Sequence[float]) -> TimingStats:
    """Summary statistics of a non-empty series of timings (see the module docstring for the methods)."""
    values = sorted(float(v) for v in values_ms)
    if not values:
        raise ValueError("no timings to summarise")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    middle = n // 2
    median = values[middle] if n % 2 else (values[middle - 1] + values[middle]) / 2
    p90, p95, p99 = (percentile_nearest_rank(values, p) for p in PERCENTILES)
    cv = 100.0 * std / mean if mean else math.inf
    return TimingStats(n, math.fsum(values), values[0], mean, median, p90, p95, p99, values[-1], std, cv)


@dataclass
class BenchResult:
    """What one benchmark measured. Phase statistics are None where the backend cannot separate them."""

    batch: int
    iterations: int
    wall_s: float
    queries_per_s: float  # a query is one batch, as trtexec counts
    pairs_per_s: float
    latency_ms: TimingStats
    enqueue_ms: TimingStats | None = None
    h2d_ms: TimingStats | None = None
    compute_ms: TimingStats | None = None
    d2h_ms: TimingStats | None = None
    label: str = ""
    threads: int | None = None
    cpu_s: float | None = None  # process CPU time (all threads) over the timed window
    pairs_per_cpu_s: float | None = None
    rounds_pairs_per_s: list[float] | None = None  # pairs/s of each slice of an interleaved benchmark

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchResult":
        stats = {k: TimingStats(**data[k]) if data.get(k) else None for k in ("latency_ms",) + PHASES}
        known = {f.name for f in fields(cls)} - set(stats)  # derived figures (shares, GFLOP/s) are dropped
        return cls(**{k: v for k, v in data.items() if k in known}, **stats)


def summarise(
    latencies_ms: Sequence[float], batch: int = 1, wall_s: float | None = None, phases: Sequence[PhaseTimes | None] = (),
    cpu_s: float | None = None,
) -> BenchResult:
    """Throughput and timing statistics from per-iteration host latencies (and phase times, if any).

    ``wall_s`` is the measured window (first start to last end); without it the latencies are taken
    as back to back, so the window is their sum. A phase is reported only if every iteration has it.
    ``cpu_s`` is the process CPU time over the window, for ``pairs_per_cpu_s``.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    latency = timing_stats(latencies_ms)
    wall = latency.total / 1000.0 if wall_s is None else float(wall_s)
    if wall <= 0:
        raise ValueError(f"wall time must be positive, got {wall}")
    queries = latency.count / wall
    per_phase = {}
    for name in PHASES:
        values = [getattr(p, name) for p in phases if p is not None]
        complete = len(values) == len(latencies_ms) and all(v is not None for v in values)
        per_phase[name] = timing_stats(values) if complete else None
    result = BenchResult(batch, latency.count, wall, queries, queries * batch, latency, **per_phase)
    if cpu_s is not None and cpu_s > 0:
        result.cpu_s, result.pairs_per_cpu_s = float(cpu_s), latency.count * batch / cpu_s
    return result


def benchmark(
    run_once: Callable[[], PhaseTimes | None],
    batch: int,
    duration_s: float,
    warmup_s: float,
    min_iterations: int = 10,
    on_progress: Callable[[ProgressEvent], None] = silent,
    label: str = "",
) -> BenchResult:
    """Call ``run_once`` for ``warmup_s`` untimed, then back to back for ``duration_s`` (and at least
    ``min_iterations`` times), timing each call; ``run_once`` may return the ``PhaseTimes`` it saw."""
    _call_for(run_once, warmup_s, 1, f"warm-up {label}".strip(), on_progress)
    latencies, phases, wall, cpu = _call_for(run_once, duration_s, min_iterations, f"benchmark {label}".strip(), on_progress)
    result = summarise(latencies, batch, wall, phases, cpu)
    result.label = label
    return result


def _call_for(run_once, duration_s: float, min_iterations: int, stage: str, on_progress):
    latencies: list[float] = []
    phases: list[PhaseTimes | None] = []
    total_ms = max(int(duration_s * 1000), 1)
    cpu_start = time.process_time()
    start = last_report = time.perf_counter()
    end = start
    while True:
        begin = time.perf_counter()
        phases.append(run_once())
        end = time.perf_counter()
        latencies.append((end - begin) * 1000.0)
        elapsed = end - start
        if end - last_report > 0.1:
            last_report = end
            on_progress(ProgressEvent(stage, min(int(elapsed * 1000), total_ms), total_ms, {"iterations": len(latencies)}))
        if elapsed >= duration_s and len(latencies) >= min_iterations:
            break
    cpu = time.process_time() - cpu_start
    on_progress(ProgressEvent(stage, total_ms, total_ms, {"iterations": len(latencies)}))
    return latencies, phases, end - start, cpu


def bench_interleaved(
    contenders: dict[str, Callable[[], PhaseTimes | None]],
    batch: int,
    duration_s: float,
    warmup_s: float,
    rounds: int = 3,
    on_progress: Callable[[ProgressEvent], None] = silent,
) -> tuple[dict[str, BenchResult], dict[str, str]]:
    """Time several engines in alternating slices: ``rounds`` slices of ``duration_s / rounds`` each.

    On a shared machine the speed of the host drifts over a minute (this 2-core VM measured the same
    INT8 file at 8,400 and at 11,500 pairs/s ten minutes apart, while FP32 stayed put). Timed one after
    the other, engines see different machines; timed in alternating slices (the order reversed every
    other round) they see the same one, so ratios from one call are side by side. Each slice starts
    with one untimed call, as switching engines leaves the caches cold. Returns each contender's
    merged result (``rounds_pairs_per_s`` holds its slices) and, for any that raised, why: the others
    go on without it.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    from kinship.errors import reason_of

    slices: dict[str, list] = {name: [] for name in contenders}
    failed: dict[str, str] = {}

    def attempt(name: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as error:  # one engine's failure must not lose the others' figures
            failed[name] = reason_of(error)

    for name, run_once in contenders.items():
        attempt(name, lambda: _call_for(run_once, warmup_s, 1, f"warm-up {name}", on_progress))
    order = list(contenders)
    for index in range(rounds):
        for name in order if index % 2 == 0 else order[::-1]:
            if name in failed:
                continue
            run_once = contenders[name]
            stage = f"benchmark {name} (round {index + 1}/{rounds})"
            attempt(name, lambda: (run_once(), slices[name].append(_call_for(run_once, duration_s / rounds, 3, stage, on_progress))))
    return {name: merge_slices(parts, batch, name) for name, parts in slices.items() if name not in failed and parts}, failed


def merge_slices(parts: Sequence[tuple], batch: int, label: str = "") -> BenchResult:
    """One result from the ``(latencies, phases, wall, cpu)`` slices of ``bench_interleaved``: the timings
    pooled, the windows added up (so throughput counts only timed calls), and each slice's pairs/s kept."""
    latencies = [value for part in parts for value in part[0]]
    phases = [value for part in parts for value in part[1]]
    result = summarise(latencies, batch, sum(part[2] for part in parts), phases, sum(part[3] for part in parts))
    result.label = label
    result.rounds_pairs_per_s = [len(part[0]) * batch / part[2] for part in parts]
    return result


# --- inputs ---------------------------------------------------------------------------------------


def pair_inputs(batch: int, image_size: int, pixels: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two normalised NCHW float32 batches: from ``pixels`` (uint8 NHWC, cycled) or random in [-1, 1]."""
    if pixels is None:
        rng = np.random.default_rng(seed)
        x = rng.uniform(-1.0, 1.0, size=(2 * batch, 3, image_size, image_size)).astype(np.float32)
    else:
        from kinship.images import to_network_input

        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or pixels.shape[1:] != (image_size, image_size, 3):
            raise ValueError(f"pixels must be [N, {image_size}, {image_size}, 3] uint8, got {pixels.shape}")
        x = to_network_input(pixels[np.arange(2 * batch) % len(pixels)])
    return np.ascontiguousarray(x[:batch]), np.ascontiguousarray(x[batch:])


def default_threads() -> int:
    """ONNX Runtime's default intra-op thread count: the physical cores (hyper-threads not counted).

    Read from /proc/cpuinfo (cores this process may run on); elsewhere, every logical CPU.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return len(allowed)
    cores = set()
    for block in text.strip().split("\n\n"):
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines() if ":" in line)}
        if info.get("processor", "").isdigit() and int(info["processor"]) in allowed:
            cores.add((info.get("physical id", "0"), info.get("core id", info["processor"])))
    return len(cores) or len(allowed)


# --- engines and PyTorch ---------------------------------------------------------------------------


def bench_engine(
    engine,
    batch: int,
    duration_s: float = 3.0,
    warmup_s: float = 1.0,
    pixels: np.ndarray | None = None,
    on_progress: Callable[[ProgressEvent], None] = silent,
    label: str | None = None,
) -> BenchResult:
    """Benchmark an ``Engine``'s two-input path at ``batch`` pairs per call (``run_pairs_timed``)."""
    label = label or f"{engine.backend} {engine.precision}"
    return benchmark(timed_call(engine, batch, pixels), batch, duration_s, warmup_s, on_progress=on_progress, label=label)


def timed_call(engine, batch: int, pixels: np.ndarray | None = None) -> Callable[[], PhaseTimes]:
    """One call of ``engine``'s two-input path on a fixed batch of ``batch`` pairs, returning its phase times."""
    img0, img1 = pair_inputs(batch, engine.image_size, pixels)
    return lambda: engine.run_pairs_timed(img0, img1)[1]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``threads`` (None or 0: unchanged), restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel at once.

    PyTorch eager allocates every activation afresh. At batch 64 the large ones cross glibc's mmap
    threshold, so each call maps new pages and faults them in, and PyTorch's speed then depends on the
    allocator's history in the process: 1,900 to 2,600 pairs/s in a fresh process against 3,600 to
    4,100 with this setting (demo model, 2 threads). ONNX Runtime keeps its own arena and is not
    affected. A long-running server, or PyTorch with jemalloc or tcmalloc, behaves like this setting,
    so benchmarks give it to PyTorch: the comparison is against PyTorch at its steady best. It stays
    set for the rest of the process (memory is kept, not leaked). False where there is no glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # 32 MiB is the largest mmap threshold glibc accepts on 64-bit; the trim threshold keeps 1 GiB.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


class TorchEager:
    """A ``.pt`` checkpoint run by PyTorch eager in inference mode, with the Engine's timing calls.

    Opening one sets glibc to keep freed memory (``keep_freed_memory``), as PyTorch's figures depend on it.
    """

    backend = "pytorch"
    precision = "fp32"

    def __init__(self, checkpoint: Path, channels_last: bool = False):
        import torch

        from kinship.checkpoint import load_model

        self.path = Path(checkpoint)
        self.model, self.metadata = load_model(self.path)
        self.image_size = self.model.config.image_size
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        keep_freed_memory()

    def _tensor(self, array: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).contiguous(memory_format=self.memory_format)

    def run_pairs(self, img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(self._tensor(img0), self._tensor(img1)).numpy()

    def run_pairs_timed(self, img0: np.ndarray, img1: np.ndarray) -> tuple[np.ndarray, PhaseTimes]:
        start = time.perf_counter()
        logits = self.run_pairs(img0, img1)
        return logits, PhaseTimes(None, (time.perf_counter() - start) * 1000.0, None, None)

    def embed(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.encoder(self._tensor(images)).numpy()

    def head(self, emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.head(torch.from_numpy(emb0), torch.from_numpy(emb1)).numpy()


def bench_torch(
    checkpoint: Path,
    batch: int,
    duration_s: float = 3.0,
    warmup_s: float = 1.0,
    threads: int | None = None,
    pixels: np.ndarray | None = None,
    channels_last: bool = False,
    on_progress: Callable[[ProgressEvent], None] = silent,
) -> BenchResult:
    """PyTorch eager (inference mode, CPU) on the same batch, with ``threads`` intra-op threads.

    Pass the ONNX Runtime session's intra-op thread count so the two are compared like for like; the
    process's previous torch thread count is restored afterwards.
    """
    threads = threads or default_threads()
    with torch_threads(threads):
        model = TorchEager(checkpoint, channels_last=channels_last)
        label = "pytorch eager" + (" channels_last" if channels_last else "")
        result = bench_engine(model, batch, duration_s, warmup_s, pixels, on_progress, label=label)
    result.threads = threads
    return result


def bench_side_by_side(
    engine, checkpoint: Path, batch: int, duration_s: float, warmup_s: float, threads: int, rounds: int = 3,
    on_progress: Callable[[ProgressEvent], None] = silent,
) -> tuple[BenchResult, BenchResult]:
    """``engine`` and PyTorch eager on ``checkpoint``, timed in alternating slices (``bench_interleaved``)
    with ``threads`` intra-op threads each; a failure of either raises."""
    with torch_threads(threads):
        contenders = {f"{engine.backend} {engine.precision}": timed_call(engine, batch),
                      "pytorch eager": timed_call(TorchEager(checkpoint), batch)}
        results, failed = bench_interleaved(contenders, batch, duration_s, warmup_s, rounds, on_progress)
    if failed:
        raise RuntimeError("; ".join(f"{name}: {why}" for name, why in failed.items()))
    engine_result, torch_result = (results[name] for name in contenders)
    torch_result.threads = threads
    return engine_result, torch_result


def ratio(faster: BenchResult, slower: BenchResult) -> float:
    """How many times the pairs/s of ``faster`` exceeds that of ``slower`` (same batch expected)."""
    if faster.batch != slower.batch:
        raise ValueError(f"compare like with like: batch {faster.batch} vs {slower.batch}")
    return faster.pairs_per_s / slower.pairs_per_s


# --- scoring a test set: two-input model per pair vs encoder once per image + head per pair -----------


@dataclass
class ScoringComparison:
    """Wall time to score one test set both ways (median of ``repeats``, the two ways alternating)."""

    pairs: int
    unique_images: int
    batch: int
    repeats: int
    two_input_s: float
    encoder_head_s: float
    two_input_pairs_per_s: float
    encoder_head_pairs_per_s: float
    gain: float  # encoder_head_pairs_per_s / two_input_pairs_per_s
    expected_gain: float  # image encodings saved: 2 * pairs / unique_images
    max_abs_diff: float  # between the two ways' logits: they must agree

    def to_dict(self) -> dict:
        return asdict(self)


def score_two_input(engine, pixels: np.ndarray, left: np.ndarray, right: np.ndarray, batch: int) -> np.ndarray:
    """Logits from the two-input model, both images of every pair encoded (normalisation included)."""
    from kinship.images import to_network_input

    chunks = []
    for start in range(0, len(left), batch):
        img0 = to_network_input(np.asarray(pixels[left[start : start + batch]]))
        img1 = to_network_input(np.asarray(pixels[right[start : start + batch]]))
        chunks.append(engine.run_pairs(img0, img1))
    return np.concatenate(chunks).astype(np.float64)


def score_encoder_head(engine, pixels: np.ndarray, left: np.ndarray, right: np.ndarray, batch: int) -> np.ndarray:
    """Logits from embedding each unique image once, then the head per pair (``score_image_pairs``)."""
    from types import SimpleNamespace

    from kinship.inference import score_image_pairs

    halves = SimpleNamespace(embed=engine.embed, head=engine.head)
    return score_image_pairs(halves, pixels, np.asarray(left), np.asarray(right), batch_size=batch)


def bench_test_set_scoring(
    engine,
    pixels: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    batch: int = 64,
    repeats: int = 3,
    on_progress: Callable[[ProgressEvent], None] = silent,
) -> ScoringComparison:
    """Time scoring the pairs ``(left[i], right[i])`` of uint8 NHWC ``pixels`` both ways.

    The engine must offer ``embed`` and ``head`` (its encoder and head companions); an engine whose
    ``embed`` returns None cannot score the second way and raises ``ValueError``.
    """
    left, right = np.asarray(left), np.asarray(right)
    probe = np.asarray(pixels[left[:1]])
    from kinship.images import to_network_input

    if engine.embed(to_network_input(probe)) is None:
        raise ValueError(f"{getattr(engine, 'path', engine)} has no encoder/head companions to score with")
    ways = {"two_input": score_two_input, "encoder_head": score_encoder_head}
    times: dict[str, list[float]] = {name: [] for name in ways}
    logits: dict[str, np.ndarray] = {}
    for step in range(repeats):
        for name, score in ways.items():
            start = time.perf_counter()
            logits[name] = score(engine, pixels, left, right, batch)
            times[name].append(time.perf_counter() - start)
        on_progress(ProgressEvent("score test set both ways", step + 1, repeats))
    two, split = float(np.median(times["two_input"])), float(np.median(times["encoder_head"]))
    pairs, unique = len(left), len(np.unique(np.concatenate((left, right))))
    return ScoringComparison(
        pairs, unique, batch, repeats, two, split, pairs / two, pairs / split, two / split, 2 * pairs / unique,
        float(np.max(np.abs(logits["two_input"] - logits["encoder_head"]))),
    )


# --- one model file, as ``kinship bench`` runs it ------------------------------------------------------


@dataclass(frozen=True)
class BenchRequest:
    """What ``kinship bench`` was asked: a model file, batch, timings, threads, an optional ``.pt`` beside it."""

    model: Path
    batch: int = 64
    duration_s: float = 3.0
    warmup_s: float = 1.0
    threads: int = 0  # 0: physical cores, ONNX Runtime's default
    vs_torch: Path | None = None
    ceiling_seconds: float = 2.0  # 0: do not measure the ceiling

    def __post_init__(self) -> None:
        from kinship.errors import UserError

        if self.batch < 1:
            raise UserError(f"--batch must be >= 1, got {self.batch}")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.ceiling_seconds < 0:
            raise UserError("--duration must be > 0, --warmup and --ceiling-seconds >= 0")
        if self.threads < 0:
            raise UserError(f"--threads must be >= 0, got {self.threads}")


def run_bench(request: BenchRequest, on_progress: Callable[[ProgressEvent], None] = silent) -> dict:
    """Benchmark ``request.model`` (and PyTorch eager beside it), measure the ceiling; one JSON-ready dict."""
    from kinship.engines.registry import load_engine
    from kinship.errors import UserError

    threads = request.threads or default_threads()
    model = Path(request.model)
    timing = (request.batch, request.duration_s, request.warmup_s)
    if model.suffix == ".pt":
        result = bench_torch(model, *timing, threads=threads, on_progress=on_progress)
        torch_result = None
        if request.vs_torch is not None:  # a checkpoint against another: one after the other
            _check_torch_companion(Path(request.vs_torch), _checkpoint_image_size(model))
            torch_result = bench_torch(request.vs_torch, *timing, threads=threads, on_progress=on_progress)
    else:
        if not model.exists():
            raise UserError(f"model file not found: {model}")
        engine = load_engine(model, threads)
        if request.vs_torch is None:
            result, torch_result = bench_engine(engine, *timing, on_progress=on_progress), None
        else:
            _check_torch_companion(Path(request.vs_torch), engine.image_size)
            result, torch_result = bench_side_by_side(engine, Path(request.vs_torch), *timing, threads, on_progress=on_progress)
        result.threads = threads
    summary = {
        "model": str(model), "batch": request.batch, "threads": threads,
        "duration_s": request.duration_s, "warmup_s": request.warmup_s,
        "result": result.to_dict(), "torch": torch_result.to_dict() if torch_result else None,
        "ratio_vs_torch": ratio(result, torch_result) if torch_result else None,
    }
    summary.update(_ceiling_figures(model, request, threads, [summary["result"], summary["torch"]], on_progress))
    return summary


def _checkpoint_image_size(checkpoint: Path) -> int:
    from kinship.checkpoint import read_checkpoint

    return int(read_checkpoint(checkpoint)["model_config"].get("image_size", 64))


def _check_torch_companion(checkpoint: Path, image_size: int) -> None:
    from kinship.errors import UserError

    if checkpoint.suffix != ".pt":
        raise UserError(f"--vs-torch takes a .pt checkpoint, got {checkpoint}")
    torch_size = _checkpoint_image_size(checkpoint)
    if torch_size != image_size:
        raise UserError(f"--vs-torch {checkpoint} takes {torch_size} px images, the model {image_size} px: not the same network")


def flops_per_pair(model: Path) -> tuple[int | None, str]:
    """FLOPs per pair of a model file and how they were counted (None with the reason when unknown)."""
    from kinship.engines.base import read_sidecar
    from kinship.engines.ceiling import model_flops_per_pair, torch_flops_per_pair
    from kinship.errors import UserError

    model = Path(model)
    if model.suffix == ".pt":
        return torch_flops_per_pair(model), "PyTorch FLOP counter, one pair"
    sidecar = read_sidecar(model) or {}
    candidates = [model / sidecar["parts"]["pair"]] if model.is_dir() and sidecar else [model]
    candidates += [Path(sidecar["source"])] if sidecar.get("source") else []
    for candidate in candidates:
        if candidate.suffix == ".onnx" and candidate.is_file():
            try:
                return model_flops_per_pair(candidate), f"ONNX graph of {candidate.name} at batch 1"
            except UserError as error:
                return None, str(error)
    return None, "no ONNX graph to count FLOPs from"


def _ceiling_figures(model: Path, request: BenchRequest, threads: int, runs: list[dict | None], on_progress) -> dict:
    from kinship.engines.ceiling import machine_ceiling

    flops, source = flops_per_pair(model)
    figures = {"flops_per_pair": flops, "flops_source": source, "ceiling": None}
    if request.ceiling_seconds > 0:
        on_progress(ProgressEvent("machine ceiling (GEMM)", 0, 1))
        figures["ceiling"] = machine_ceiling(request.ceiling_seconds, threads=threads).to_dict()
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
