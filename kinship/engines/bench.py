"""``kinship bench``: a trtexec-style benchmark of one model file (an engine, an ONNX export or a ``.pt``
checkpoint), PyTorch eager beside it, and the share of the machine's GEMM ceiling it reaches.

The timing and its statistics are ``kinship.engines.timing``; the host's thread count and allocator
setting ``kinship.host``; FLOPs and the ceiling ``kinship.engines.flops`` and ``kinship.engines.ceiling``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kinship.engines.base import PhaseTimes
from kinship.engines.ceiling import ceiling_figures
from kinship.engines.timing import BenchResult, bench_interleaved, benchmark, ratio
from kinship.host import default_threads, keep_freed_memory, torch_threads
from kinship.progress import ProgressEvent, silent


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
    summary.update(ceiling_figures(model, threads, request.ceiling_seconds, [summary["result"], summary["torch"]],
                                   on_progress))
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
