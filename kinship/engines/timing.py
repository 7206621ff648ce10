"""Timing an engine the way ``trtexec`` does, and the statistics of the timings.

``benchmark`` times a callable back to back for a fixed duration after a warm-up and reports what
``trtexec`` reports: throughput (queries/s, a query being one batch, and pairs/s), host latency
min/mean/median/p90/p95/p99/max, and, where the backend can tell (TensorRT), enqueue, H2D, GPU
compute and D2H times, each with its coefficient of variation. ``bench_interleaved`` times several
callables in alternating slices, so the ratios between them come from the same minutes of the machine.

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
import time
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Callable, Sequence

from kinship.engines.base import PhaseTimes
from kinship.errors import reason_of
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


def ratio(faster: BenchResult, slower: BenchResult) -> float:
    """How many times the pairs/s of ``faster`` exceeds that of ``slower`` (same batch expected)."""
    if faster.batch != slower.batch:
        raise ValueError(f"compare like with like: batch {faster.batch} vs {slower.batch}")
    return faster.pairs_per_s / slower.pairs_per_s
