"""TensorRT 10 engines on an NVIDIA GPU: FP32 (TF32 off), TF32, FP16, INT8 (calibrator) and INT8 (Q/DQ).

``tensorrt`` and ``pycuda`` are imported only inside the functions that need them, so this module
imports anywhere. Everything that does not need a GPU (profile shapes, calibration batches and cache
naming, the inspector's per-layer census, chunking) is a plain function tested on the CPU.

Build details: explicit batch (TensorRT 10's only mode), ONE optimisation profile over a batch
range for every input, a timing cache shared by all builds in the out folder, detailed profiling
verbosity so the engine inspector reports each layer's precision. INT8 has two paths: implicit
quantization through an ``IInt8EntropyCalibrator2`` (deprecated in 10.1, gone in TensorRT 11), and
the explicit symmetric Q/DQ model (``int8-qdq``), the path TensorRT 11 keeps.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from kinship.engines.base import (
    PhaseTimes, file_sizes, precision_of, staged_dir, variant_dir, write_sidecar,
)
from kinship.engines.calibration import (
    CalibrationSet, cache_path, calibration_for, fixed_batches, part_arrays, read_cache, write_cache,
)
from kinship.engines.config import EngineConfig
from kinship.engines.onnx_parts import calibration_batches, embedder, source_parts, target_names
from kinship.engines.outcome import STATUS_BUILT, BuildFacts, EngineOutcome
from kinship.errors import UserError
from kinship.files import file_digest

BACKEND = "tensorrt"
TIMING_CACHE = "tensorrt.timing-cache"
REQUIREMENT = "TensorRT backend needs tensorrt>=10,<11 and an NVIDIA GPU"


# --------------------------------------------------------------------------- availability


@lru_cache(maxsize=1)
def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT 10.x, pycuda and a CUDA device are all usable; else why not, in a few words."""
    try:
        import tensorrt as trt
    except Exception as error:  # ImportError, or a broken install raising OSError on its libraries
        return f"cannot import tensorrt ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    major = str(getattr(trt, "__version__", "0")).split(".")[0]
    if major != "10":
        return f"tensorrt {trt.__version__} is installed, this code targets 10.x"
    try:
        import pycuda.driver as cuda

        cuda.init()
        count = cuda.Device.count()
    except Exception as error:
        return f"CUDA unusable through pycuda ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    return None if count > 0 else "no CUDA device found"


def require_tensorrt(subject: Path | str | None = None) -> None:
    """Raise the one-line UserError that says what is missing (naming ``subject``, e.g. an engine file)."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise UserError(f"{subject}: {REQUIREMENT}: {reason}" if subject else f"{REQUIREMENT}: {reason}")


# --------------------------------------------------------------------------- CPU-side planning


def onnx_input_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Input name -> shape with -1 for symbolic (dynamic) dimensions, read from the ONNX graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    return shapes


def profile_shapes(
    inputs: dict[str, tuple[int, ...]], min_batch: int, opt_batch: int, max_batch: int
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes per input for one profile: the batch axis varies, all other axes are fixed.

    The same batch range goes to every input, so both sides of a pair always agree.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise UserError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    result = {}
    for name, shape in inputs.items():
        if not shape:
            raise UserError(f"input {name!r} is a scalar: it has no batch axis to profile")
        if any(d <= 0 for d in shape[1:]):
            raise UserError(f"input {name!r} has dynamic non-batch dimensions {shape}: export with a fixed image size")
        rest = tuple(int(d) for d in shape[1:])
        result[name] = ((min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    return result


def chunks(total: int, limit: int) -> list[slice]:
    """Slices of at most ``limit`` rows covering ``total`` rows (the profile's max batch bounds a call)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return [slice(s, min(s + limit, total)) for s in range(0, total, limit)]


def _datatype(text: str) -> str:
    """A TensorRT 'Format/Datatype' string ('Row major linear FP16 format', 'Half', 'Int8') -> precision."""
    lowered = text.lower()
    for token, name in (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"),
                        ("int32", "int32"), ("int64", "int64"), ("bool", "bool"), ("fp32", "fp32"), ("float", "fp32")):
        if token in lowered:
            return name
    return "other"


def layer_census(info_json: str) -> dict:
    """Count the engine's layers by output precision, from the inspector's JSON (detailed verbosity).

    Also counts Reformat layers (precision/layout conversions between INT8 and float regions, the
    visible cost of FP32 fallback) and the bytes of weights by type where the inspector lists them.
    """
    info = json.loads(info_json)
    layers = info.get("Layers", []) if isinstance(info, dict) else info
    by_precision: Counter = Counter()
    weights: Counter = Counter()
    reformats = 0
    detailed = 0
    for layer in layers:
        if not isinstance(layer, dict):  # names-only verbosity: nothing to classify
            by_precision["unknown"] += 1
            continue
        detailed += 1
        outputs = layer.get("Outputs") or layer.get("Inputs") or []
        by_precision[_datatype(outputs[0].get("Format/Datatype", "")) if outputs else "none"] += 1
        reformats += "reformat" in str(layer.get("LayerType", "")).lower()
        for key in ("Weights", "Bias"):
            entry = layer.get(key)
            if isinstance(entry, dict) and "Type" in entry:
                weights[_datatype(str(entry["Type"]))] += int(entry.get("Count", 0))
    return {"layers": len(layers), "detailed_layers": detailed, "layers_by_precision": dict(sorted(by_precision.items())),
            "reformat_layers": reformats, "weight_elements_by_type": dict(sorted(weights.items()))}


@dataclass
class PartPlan:
    """Everything one part's build needs, decided on the CPU."""

    part: str
    onnx: Path  # FP32 export, or the symmetric Q/DQ model for int8-qdq
    shapes: dict[str, tuple]
    calibration_batches: list[dict[str, np.ndarray]] | None = None
    calibration_cache: Path | None = None


def plan_parts(sources: dict[str, Path], options: EngineConfig) -> dict[str, PartPlan]:
    """Profile shapes per part: pairs for the pair model, images for the encoder, embeddings for the head."""
    return {part: PartPlan(part, path, profile_shapes(onnx_input_shapes(path), options.min_batch, options.opt_batch,
                                                        options.max_batch))
            for part, path in sources.items()}


def add_calibration(plans: dict[str, PartPlan], calibration: CalibrationSet, out_dir: Path, embed, options: EngineConfig) -> None:
    """Attach calibrator batches (at the profile's opt batch: TensorRT calibrates at opt shapes) and cache paths."""
    for part, plan in plans.items():
        arrays = part_arrays(calibration, part, embed if part == "head" else None)
        plan.calibration_batches = fixed_batches(arrays, options.opt_batch)
        plan.calibration_cache = cache_path(out_dir, part, calibration, file_digest(plan.onnx)[0], "entropy2")


# --------------------------------------------------------------------------- GPU: builder


_logger = None


def _trt_logger():
    import tensorrt as trt

    global _logger
    if _logger is None:
        _logger = trt.Logger(trt.Logger.WARNING)
    return _logger


@lru_cache(maxsize=1)
def _cuda_context():
    """Make the device's primary context current once (the one TensorRT's runtime API uses too)."""
    import atexit

    import pycuda.driver as cuda

    cuda.init()
    context = cuda.Device(0).retain_primary_context()
    context.push()
    atexit.register(context.pop)
    return context


def _make_calibrator(batches: list[dict[str, np.ndarray]], cache: Path):
    """An IInt8EntropyCalibrator2 feeding ``batches`` from device buffers; reads/writes ``cache``."""
    import pycuda.driver as cuda
    import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.position = 0
            self.device = {name: cuda.mem_alloc(array.nbytes) for name, array in batches[0].items()}

        def get_batch_size(self) -> int:
            # Explicit-batch networks carry the batch in the input shape; TensorRT ignores this value.
            return 1

        def get_batch(self, names):
            if self.position >= len(batches):
                return None
            batch = batches[self.position]
            self.position += 1
            for name in names:
                cuda.memcpy_htod(self.device[name], np.ascontiguousarray(batch[name], dtype=np.float32))
            return [int(self.device[name]) for name in names]

        def read_calibration_cache(self):
            return read_cache(cache)

        def write_calibration_cache(self, table) -> None:
            write_cache(cache, bytes(table))

    return EntropyCalibrator()


def _configure(builder, network, plan: PartPlan, variant: str, options: EngineConfig, timing_cache: bytes):
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if variant == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default: FP32 means FP32 here
    elif variant == "tf32":
        config.set_flag(trt.BuilderFlag.TF32)
    elif variant == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:  # both INT8 paths: calibrated scales, or the Q/DQ model's own
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in plan.shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    calibrator = None
    if variant == "int8":
        calibrator = _make_calibrator(plan.calibration_batches, plan.calibration_cache)
        config.int8_calibrator = calibrator
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, False)
    # The calibrator is returned so the caller holds it for the whole build: the binding may not.
    return config, calibrator


def _parse(builder, path: Path):
    import tensorrt as trt

    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, _trt_logger())
    if not parser.parse(Path(path).read_bytes(), str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {path.name}: {errors[:400]}")
    return network, parser


def build_part(plan: PartPlan, variant: str, options: EngineConfig, target: Path, timing_cache_path: Path) -> dict:
    """Build one part's engine into ``target``; returns its layer census. Raises RuntimeError on failure."""
    import tensorrt as trt

    _cuda_context()
    builder = trt.Builder(_trt_logger())
    network, _parser = _parse(builder, plan.onnx)
    cache_bytes = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    config, _calibrator = _configure(builder, network, plan, variant, options, cache_bytes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build {variant} {plan.part} engine (see the TensorRT log above)")
    target.write_bytes(bytes(serialized))
    write_cache(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    engine = trt.Runtime(_trt_logger()).deserialize_cuda_engine(bytes(serialized))
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    target.with_suffix(".layers.json").write_text(info)
    return layer_census(info)


def _qdq_sources(sources: dict[str, Path], calibration: CalibrationSet, folder: Path, options: EngineConfig) -> dict[str, Path]:
    """The symmetric Q/DQ models (quantized on the CPU with ONNX Runtime) that int8-qdq parses."""
    from kinship.engines.quantize import quantize_qdq, settings_for

    settings = settings_for("tensorrt", options.calibration_method)
    batches = calibration_batches(calibration, sources)
    result = {}
    for part, source in sources.items():
        result[part] = folder / f"qdq.{part}.onnx"
        quantize_qdq(source, result[part], batches[part], settings)
    return result


def build_trt_engine(onnx_path: Path, out_dir: Path, variant: str, calibration: Path | None,
                     options: EngineConfig) -> EngineOutcome:
    """Build ``variant`` for TensorRT into ``out_dir/tensorrt-<variant>/`` (pair, encoder, head engines)."""
    from kinship.export import read_metadata

    require_tensorrt()
    started = time.perf_counter()
    sources = source_parts(Path(onnx_path), options.companions)
    image_size = int(read_metadata(sources["pair"]).get("kinship.image_size", 0))
    calibration_set = calibration_for(variant, calibration, image_size)
    names = target_names(sources, ".engine")
    notes: list[str] = []
    out_dir = Path(out_dir)
    final = variant_dir(out_dir, BACKEND, variant)
    with staged_dir(final) as folder:
        parsed = _qdq_sources(sources, calibration_set, folder, options) if variant == "int8-qdq" else sources
        plans = plan_parts(parsed, options)
        if variant == "int8":
            embed = embedder(sources) if "head" in plans else None  # the head calibrates on FP32 embeddings
            add_calibration(plans, calibration_set, out_dir, embed, options)
            notes.append("implicit INT8 via IInt8EntropyCalibrator2 at the profile's opt batch; FP32 fallback allowed")
        census = {part: build_part(plan, variant, options, folder / names[part], out_dir / TIMING_CACHE)
                  for part, plan in plans.items()}
        notes += _variant_notes(variant, options)
        seconds = time.perf_counter() - started
        write_sidecar(folder, {
            "backend": BACKEND, "variant": variant, "precision": precision_of(variant), "image_size": image_size,
            "parts": names, "source": str(onnx_path), "notes": notes, "build_seconds": round(seconds, 3),
            "profile": {"min": options.min_batch, "opt": options.opt_batch, "max": options.max_batch},
            "size_explanation": census, "tensorrt_version": _trt_version(),
        })
        sizes = file_sizes(folder, names)
    parts = {p: final / n for p, n in names.items()}
    return EngineOutcome(BACKEND, variant, precision_of(variant), STATUS_BUILT,
                         build=BuildFacts(parts["pair"], sizes["pair"], seconds, notes, parts, sizes, census))


def _variant_notes(variant: str, options: EngineConfig) -> list[str]:
    notes = {
        "fp32": "FP32 with the TF32 flag cleared",
        "tf32": "TF32 flag set: matrix maths on tensor cores with a 10-bit mantissa",
        "fp16": "FP16 flag set (TF32 left on for layers kept in float)",
        "int8": "INT8 flag set; layers TensorRT cannot or will not run in INT8 stay in float",
        "int8-qdq": f"explicit INT8 from the symmetric Q/DQ model ({options.calibration_method} calibration on the CPU)",
    }
    return [notes[variant], f"profile batch {options.min_batch}/{options.opt_batch}/{options.max_batch} for every input"]


def _trt_version() -> str:
    import tensorrt as trt

    return str(trt.__version__)


# --------------------------------------------------------------------------- GPU: runtime


class _PartRunner:
    """One deserialised engine with its execution context, stream and growable device buffers."""

    def __init__(self, path: Path):
        import pycuda.driver as cuda
        import tensorrt as trt

        _cuda_context()
        self.engine = trt.Runtime(_trt_logger()).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise UserError(f"{path} is not a TensorRT engine this TensorRT ({trt.__version__}) can load")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])
        self.stream = cuda.Stream()
        self.events = [cuda.Event() for _ in range(4)]
        self.device: dict[str, object] = {}
        self.host: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, shape: tuple[int, ...]) -> tuple[object, np.ndarray]:
        import pycuda.driver as cuda

        size = int(np.prod(shape))
        if name not in self.host or self.host[name].size < size:
            self.device[name] = cuda.mem_alloc(size * 4)
            self.host[name] = cuda.pagelocked_empty(size, np.float32)
        return self.device[name], self.host[name][:size].reshape(shape)

    def run(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, PhaseTimes]:
        """One call within the profile's batch range; times each phase with CUDA events."""
        import pycuda.driver as cuda

        start, copied_in, computed, copied_out = self.events
        start.record(self.stream)
        for name, array in zip(self.inputs, arrays):
            self.context.set_input_shape(name, array.shape)
            device, host = self._buffer(name, array.shape)
            np.copyto(host, array)
            cuda.memcpy_htod_async(device, host, self.stream)
            self.context.set_tensor_address(name, int(device))
        copied_in.record(self.stream)
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        out_device, out_host = self._buffer(self.output, out_shape)
        self.context.set_tensor_address(self.output, int(out_device))
        enqueue_started = time.perf_counter()
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        enqueue_ms = (time.perf_counter() - enqueue_started) * 1e3
        computed.record(self.stream)
        cuda.memcpy_dtoh_async(out_host, out_device, self.stream)
        copied_out.record(self.stream)
        self.stream.synchronize()
        times = PhaseTimes(start.time_till(copied_in), copied_in.time_till(computed), computed.time_till(copied_out), enqueue_ms)
        return out_host.copy(), times

    def run_all(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, PhaseTimes]:
        """Any batch size: chunks of at most the profile's max batch, phase times summed."""
        outputs, total = [], PhaseTimes(0.0, 0.0, 0.0, 0.0)
        for part in chunks(len(arrays[0]), self.max_batch):
            output, times = self.run([np.ascontiguousarray(a[part], dtype=np.float32) for a in arrays])
            outputs.append(output)
            total = PhaseTimes(total.h2d_ms + times.h2d_ms, total.compute_ms + times.compute_ms,
                               total.d2h_ms + times.d2h_ms, total.enqueue_ms + times.enqueue_ms)
        return np.concatenate(outputs), total


class TensorRTEngine:
    """A TensorRT engine folder (pair engine plus optional encoder and head engines) on the GPU."""

    backend = BACKEND

    def __init__(self, paths: dict[str, Path], precision: str, variant: str, image_size: int):
        require_tensorrt()
        self.path = paths["pair"]
        self.precision, self.variant, self.image_size = precision, variant, image_size
        self.runners = {part: _PartRunner(p) for part, p in paths.items()}

    @classmethod
    def open(cls, path: Path, sidecar: dict | None) -> "TensorRTEngine":
        """From the sidecar when present; a bare ``.engine`` runs as a pair engine with its image size from its shapes."""
        require_tensorrt(path)
        path = Path(path)
        if sidecar:
            paths = {part: path.parent / name for part, name in sidecar["parts"].items()}
            return cls(paths, sidecar["precision"], sidecar["variant"], int(sidecar["image_size"]))
        runner = _PartRunner(path)
        size = int(runner.engine.get_tensor_shape(runner.inputs[0])[-1])
        engine = cls.__new__(cls)
        engine.path, engine.precision, engine.variant, engine.image_size = path, "unknown", "unknown", size
        engine.runners = {"pair": runner}
        return engine

    def run_pairs(self, img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
        return self.run_pairs_timed(img0, img1)[0]

    def run_pairs_timed(self, img0: np.ndarray, img1: np.ndarray) -> tuple[np.ndarray, PhaseTimes]:
        logits, times = self.runners["pair"].run_all([img0, img1])
        return logits.reshape(-1).astype(np.float32, copy=False), times

    def embed(self, images: np.ndarray) -> np.ndarray | None:
        return self.runners["encoder"].run_all([images])[0] if "encoder" in self.runners else None

    def head(self, emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray | None:
        return self.runners["head"].run_all([emb0, emb1])[0].reshape(-1) if "head" in self.runners else None


def environment() -> dict:
    """TensorRT / CUDA versions and the device name, when available (for the report)."""
    reason = tensorrt_unavailable_reason()
    if reason:
        return {"tensorrt": None, "reason": reason}
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    device = cuda.Device(0)
    return {"tensorrt": trt.__version__, "device": device.name(), "compute_capability": ".".join(map(str, device.compute_capability())),
            "cuda_driver": cuda.get_driver_version()}



def describe_census(census: dict, size_bytes: int, fp32_bytes: int | None = None) -> str:
    """One paragraph on an INT8 engine's size, from ``layer_census`` of its pair engine."""
    layers = ", ".join(f"{name} {count}" for name, count in census["layers_by_precision"].items())
    ratio = f" vs FP32 {size_bytes / fp32_bytes:.2f}x" if fp32_bytes else ""
    weights = census.get("weight_elements_by_type") or {}
    weight_text = ("; weight elements by type: " + ", ".join(f"{k} {v:,}" for k, v in weights.items())) if weights else ""
    return (f"pair engine {size_bytes / 1e3:.1f} kB{ratio}: {census['layers']} layers by output precision: {layers}; "
            f"{census['reformat_layers']} reformat layers (conversions between INT8 and float regions){weight_text}. "
            "Layers left in float keep FP32 weights and kernels beside the INT8 ones, which is what can make an "
            "INT8 engine larger than FP16.")
