"""ONNX-level conversions: FP16 models and static INT8 Q/DQ models, plus what is inside a quantized file.

Two Q/DQ layouts come from one calibration set:

- ``cpu`` for ONNX Runtime's CPU provider: unsigned 8-bit activations with per-channel signed 8-bit
  weights (the U8S8 kernels MLAS is fastest with); ``reduce_range`` (7-bit weights) where the CPU
  lacks VNNI, because the AVX2/AVX-512 ``vpmaddubsw`` path can saturate its 16-bit sums otherwise.
- ``tensorrt``: signed, symmetric activations and weights (every zero point 0, which TensorRT requires)
  and float biases (TensorRT quantizes biases itself and rejects an int32 bias Dequantize).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from kinship.host import cpu_has_vnni

QDQ_LAYOUTS = ("cpu", "tensorrt")


@dataclass(frozen=True)
class QuantizeSettings:
    """What one quantize_static call was asked for (recorded in the engine's notes)."""

    layout: str
    method: str
    activation: str
    weight: str
    per_channel: bool
    reduce_range: bool
    symmetric: bool

    def describe(self) -> str:
        sym = "symmetric" if self.symmetric else "asymmetric"
        rr = ", reduce_range" if self.reduce_range else ""
        return f"Q/DQ {self.layout}: {self.activation} activations, {self.weight} per-channel weights ({sym}{rr}), {self.method} calibration"


def settings_for(layout: str, method: str, reduce_range: bool | None = None) -> QuantizeSettings:
    """The quantizer settings of a layout (``reduce_range`` None = decide from the CPU)."""
    if layout == "cpu":
        rr = (not cpu_has_vnni()) if reduce_range is None else bool(reduce_range)
        return QuantizeSettings(layout, method, "QUInt8", "QInt8", True, rr, False)
    if layout == "tensorrt":
        return QuantizeSettings(layout, method, "QInt8", "QInt8", True, False, True)
    raise ValueError(f"unknown Q/DQ layout {layout!r}: choose one of {', '.join(QDQ_LAYOUTS)}")


class _ArrayReader:
    """An ONNX Runtime CalibrationDataReader over prepared input batches."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.batches = batches
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Keep the quantizer's chatter off the console.

    It logs 'consider pre-processing' on the root logger (we skip that step on purpose) and its
    histogram calibrators print progress on stdout, which would corrupt ``--json`` output.
    """

    def drop(record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(drop)


# ONNX Runtime's entropy calibrator defaults to 128 histogram bins AND 128 quantized bins, which
# leaves its KL search a single candidate (the full range): entropy silently equals MinMax, and
# quantize_static does not pass the bin counts through. We run that calibrator ourselves and hand
# quantize_static the ranges as its cache. 512 bins into 128 rather than TensorRT's 2048: ORT's KL
# search is a Python loop, 8x slower at 2048 (37 s vs 4.5 s for the tiny test encoder on 2 cores),
# while 512 still places the clipping threshold within 1/256 of the observed range.
ENTROPY_BINS = {"num_bins": 512, "num_quantized_bins": 128}


def _entropy_ranges(source: Path, batches: list[dict[str, np.ndarray]], symmetric: bool, cache: Path) -> None:
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="kinship-calib-") as scratch:
        calibrator = create_calibrator(
            Path(source), None, augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy, extra_options={**ENTROPY_BINS, "symmetric": symmetric},
        )
        calibrator.collect_data(_ArrayReader(batches))
        save_tensors_data(calibrator.compute_data(), cache)
        del calibrator


def quantize_qdq(source: Path, target: Path, batches: list[dict[str, np.ndarray]], settings: QuantizeSettings) -> None:
    """Static INT8 quantization of ``source`` into a Q/DQ model at ``target``.

    ``quant_pre_process`` is skipped: its symbolic shape inference fails on dynamo-exported graphs.
    Plain ONNX shape inference runs instead, which is all the quantizer needs for these CNNs.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    inferred = Path(target).with_name(f".{Path(target).name}.shapes.onnx")
    ranges = Path(target).with_name(f".{Path(target).name}.ranges.json")
    onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(source))), str(inferred))
    extra = {"ActivationSymmetric": settings.symmetric, "WeightSymmetric": True}
    if settings.layout == "tensorrt":
        extra["QuantizeBias"] = False
    try:
        with _quiet_quantizer():
            cached = {}
            if settings.method == "entropy":
                _entropy_ranges(inferred, batches, settings.symmetric, ranges)
                cached = {"calibration_cache_path": str(ranges)}
            quantize_static(
                str(inferred), str(target), _ArrayReader(batches), quant_format=QuantFormat.QDQ,
                activation_type=getattr(QuantType, settings.activation), weight_type=getattr(QuantType, settings.weight),
                per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                calibrate_method=methods[settings.method], extra_options=extra, **cached,
            )
    finally:
        inferred.unlink(missing_ok=True)
        ranges.unlink(missing_ok=True)


def convert_fp16(source: Path, target: Path) -> None:
    """An FP16 copy of ``source`` whose inputs and outputs stay float32 (Casts at the edges).

    Uses the float16 converter that ships inside onnxruntime (the onnxconverter-common code), so no
    extra dependency is needed.
    """
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:  # pragma: no cover - very old or trimmed onnxruntime builds
        from onnxconverter_common.float16 import convert_float_to_float16
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save_model(model, str(target), save_as_external_data=False)


def qdq_census(path: Path) -> dict:
    """What makes a quantized file the size it is: Q/DQ node counts and initializer bytes by type."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    ops = Counter(node.op_type for node in model.graph.node)
    bytes_by_type: Counter = Counter()
    count_by_type: Counter = Counter()
    for tensor in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        bytes_by_type[dtype] += numpy_helper.to_array(tensor).nbytes
        count_by_type[dtype] += 1
    for node in model.graph.node:  # some exporters keep weights in Constant nodes
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    array = numpy_helper.to_array(attribute.t)
                    bytes_by_type[array.dtype.name] += array.nbytes
                    count_by_type[array.dtype.name] += 1
    total = sum(bytes_by_type.values())
    return {
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "compute_nodes": sum(n for op, n in ops.items() if op not in ("QuantizeLinear", "DequantizeLinear", "Constant")),
        "initializer_bytes": dict(sorted(bytes_by_type.items())),
        "initializer_count": dict(sorted(count_by_type.items())),
        "int8_weight_share": round((bytes_by_type.get("int8", 0) + bytes_by_type.get("uint8", 0)) / total, 4) if total else 0.0,
        "file_bytes": Path(path).stat().st_size,
        # Node definitions, names, shapes and metadata: on a tiny model this outweighs the weights.
        "graph_bytes": Path(path).stat().st_size - total,
    }


def _kb(value: float) -> str:
    return f"{value / 1e3:.1f} kB"


def describe_census(census: dict, fp32_bytes: int | None = None) -> str:
    """One paragraph on why a Q/DQ file is the size it is, from ``qdq_census`` of its pair model."""
    weights = census["initializer_bytes"]
    roles = {"int8": "int8 weights", "uint8": "uint8 zero points", "float32": "float32 scales and unquantized tensors",
             "int32": "int32 biases", "int64": "int64 shape constants", "float16": "float16 tensors"}
    parts = ", ".join(f"{roles.get(dtype, dtype)} {_kb(size)}" for dtype, size in sorted(weights.items(), key=lambda kv: -kv[1]))
    ratio = f" vs FP32 {_kb(fp32_bytes)} ({census['file_bytes'] / fp32_bytes:.2f}x)" if fp32_bytes else ""
    share = census["graph_bytes"] / census["file_bytes"] if census["file_bytes"] else 0.0
    return (f"pair model {_kb(census['file_bytes'])}{ratio}: {census['quantize_linear']} QuantizeLinear + "
            f"{census['dequantize_linear']} DequantizeLinear nodes around {census['compute_nodes']} other nodes; "
            f"initializers: {parts}; the other {_kb(census['graph_bytes'])} ({share:.0%}) is graph structure "
            f"(node definitions, tensor names, shapes, metadata), which the Q/DQ nodes add to while the weights shrink 4x.")
