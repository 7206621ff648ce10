"""``kinship bench``: a trtexec-style benchmark of one model file (an engine, an ONNX export or a ``.pt``
checkpoint), PyTorch eager beside it, and the share of the machine's GEMM ceiling it reaches.

The timing and its statistics are ``kinship.engines.timing``; the host's thread count and allocator
setting ``kinship.host``; FLOPs and the ceiling ``kinship.engines.flops`` and ``kinship.engines.ceiling``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from kinship.engines.base import PhaseTimes
from kinship.engines.ceiling import ceiling_figures
from kinship.engines.config import EngineConfig
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


def run_bench(model: Path, config: EngineConfig, vs_torch: Path | None = None,
              on_progress: Callable[[ProgressEvent], None] = silent) -> dict:
    """Benchmark ``model`` (and PyTorch eager on ``vs_torch`` beside it), measure the ceiling; one JSON-ready dict.

    ``kinship bench`` times one batch size, the first of ``config.bench_batches``, for ``config.bench_seconds``
    after ``config.warmup_seconds``, with ``config.threads`` (0: physical cores); ``config.ceiling_seconds`` 0
    skips the ceiling."""
    from kinship.engines.registry import load_engine
    from kinship.errors import UserError

    threads = config.threads or default_threads()
    model, batch = Path(model), int(config.bench_batches[0])
    timing = (batch, config.bench_seconds, config.warmup_seconds)
    if model.suffix == ".pt":
        hardware = hardware_of(model, None)
        result = bench_torch(model, *timing, threads=threads, on_progress=on_progress)
        torch_result = None
        if vs_torch is not None:  # a checkpoint against another: one after the other
            _check_torch_companion(Path(vs_torch), _checkpoint_image_size(model))
            torch_result = bench_torch(vs_torch, *timing, threads=threads, on_progress=on_progress)
    else:
        if not model.exists():
            raise UserError(f"model file not found: {model}")
        engine = load_engine(model, threads)
        hardware = hardware_of(model, engine)
        if vs_torch is None:
            result, torch_result = bench_engine(engine, *timing, on_progress=on_progress), None
        else:
            _check_torch_companion(Path(vs_torch), engine.image_size)
            result, torch_result = bench_side_by_side(engine, Path(vs_torch), *timing, threads, config.bench_rounds,
                                                      on_progress=on_progress)
        result.threads = threads
    summary = {
        "model": str(model), "batch": batch, "threads": threads,
        "duration_s": config.bench_seconds, "warmup_s": config.warmup_seconds,
        "result": result.to_dict(), "torch": torch_result.to_dict() if torch_result else None,
        "ratio_vs_torch": ratio(result, torch_result) if torch_result else None, "hardware": hardware,
    }
    summary.update(ceiling_figures(model, threads, config.ceiling_seconds, [summary["result"], summary["torch"]],
                                   on_progress))
    return summary


def hardware_of(model: Path, engine) -> dict:
    """What the device does with the benchmarked precision (``registry.hardware_support``: a TensorRT engine's own
    build record, ONNX Runtime's CPU facts; ``engine`` None is a checkpoint run by PyTorch eager in FP32)."""
    from kinship.engines.base import read_sidecar
    from kinship.engines.registry import hardware_support

    sidecar = read_sidecar(model) if engine is not None else None
    backend = engine.backend if engine is not None else "pytorch"
    variant = getattr(engine, "variant", engine.precision) if engine is not None else "fp32"
    state, evidence = hardware_support(backend, variant, sidecar)
    device = (sidecar or {}).get("device")
    return {"backend": backend, "precision": variant, "state": state, "evidence": evidence,
            **({"device": device} if device else {})}


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
