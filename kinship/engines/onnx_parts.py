"""The ONNX-level helpers both backends build with: an ONNX Runtime session on the CPU, the exported parts
(pair model, encoder, head) and the names they are saved under, and what a quantizer or calibrator is fed.

ONNX Runtime runs the FP32 exports for both backends: TensorRT's head calibrates on FP32 encoder outputs
and its Q/DQ models are quantized on the CPU, so these helpers belong to neither backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from kinship.engines.calibration import CalibrationSet, fixed_batches, part_arrays
from kinship.errors import UserError

QUANT_BATCH = 32  # images or pairs per quantizer batch (ORT accepts any batch size)
EMBED_BATCH = 64  # images per FP32 encoder call when embedding a calibration set


def session(path: Path, threads: int = 0, level: str = "all", save_to: Path | None = None):
    """An ONNX Runtime CPU session of ``path`` (``threads`` intra-op threads, 0 = its default); with ``save_to``
    the graph, optimised at ``level`` (basic / extended / all), is also saved there."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if threads:
        options.intra_op_num_threads = threads
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def source_parts(onnx_path: Path, companions: bool) -> dict[str, Path]:
    """The exported files to convert: the pair model, plus encoder and head when present and wanted."""
    from kinship.export import companion_paths

    files = companion_paths(onnx_path)
    if not files.pair.is_file():
        raise UserError(f"ONNX model not found: {onnx_path}")
    parts = {"pair": files.pair}
    if companions:
        parts.update({part: p for part, p in (("encoder", files.encoder), ("head", files.head)) if p.is_file()})
    return parts


def target_names(parts: dict[str, Path], suffix: str = ".onnx") -> dict[str, str]:
    """The file name of each part inside an engine folder: ``model<suffix>``, ``model.encoder<suffix>``, ..."""
    return {part: "model" + ("" if part == "pair" else f".{part}") + suffix for part in parts}


def embedder(sources: dict[str, Path], batch: int = EMBED_BATCH) -> Callable[[np.ndarray], np.ndarray]:
    """The FP32 encoder of ``sources`` as a function images -> embeddings, ``batch`` images per call."""
    encoder = session(sources["encoder"]) if "encoder" in sources else None

    def embed(images: np.ndarray) -> np.ndarray:
        if encoder is None:  # pragma: no cover - every export has an encoder
            raise UserError(f"{sources['pair']}: the head needs an encoder companion to calibrate")
        return np.concatenate([encoder.run(None, {"image": images[s : s + batch]})[0] for s in range(0, len(images), batch)])

    return embed


def calibration_batches(calibration: CalibrationSet, sources: dict[str, Path], batch: int = QUANT_BATCH) -> dict[str, list]:
    """Quantizer input batches per part; the head gets embeddings from the FP32 encoder."""
    embed = embedder(sources, batch)
    return {part: fixed_batches(part_arrays(calibration, part, embed), min(batch, len(calibration)))
            for part in sources}
