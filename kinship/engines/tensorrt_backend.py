"""TensorRT engines on an NVIDIA GPU (TensorRT 8.5, 8.6 or 10.x): FP32 (TF32 off), TF32, FP16, INT8 (calibrator)
and INT8 (Q/DQ).

``tensorrt`` and ``pycuda`` are imported only inside the functions that need them, so this module
imports anywhere. Everything that does not need a GPU (profile shapes, calibration batches and cache
naming, the inspector's per-layer census, chunking and padding, matching inputs by name, the order of a
timed call, the per-thread CUDA context) is a plain function or class tested on the CPU with stand-ins;
what differs between TensorRT releases and GPU generations is ``kinship.engines.tensorrt_compat``. Running a
built engine (the per-thread CUDA context, ``PartRunner``) is ``kinship.engines.tensorrt_runtime``'s;
``TensorRTEngine`` here opens an engine folder with it.

Build details: explicit batch (the EXPLICIT_BATCH flag, required on 8.x), ONE optimisation profile over a
batch range for every input, a timing cache and calibration tables per TensorRT version and GPU in the out
folder, detailed profiling verbosity so the engine inspector reports each layer's formats. INT8 has two paths: implicit
quantization through an ``IInt8EntropyCalibrator2`` (deprecated in 10.1, gone in TensorRT 11), and the
explicit symmetric Q/DQ model (``int8-qdq``), the path TensorRT 11 keeps. A precision the GPU has no
arithmetic for is still built (TensorRT uses FP32 kernels) and says so; TF32 before Ampere is "not
applicable", as on a CPU.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from kinship.engines import tensorrt_compat as compat
from kinship.engines.base import (
    PhaseTimes, file_sizes, variant_dir, write_sidecar,
)
from kinship.engines.calibration import (
    CalibrationSet, CalibrationTable, cache_path, calibration_for, fixed_batches, part_arrays, write_cache,
)
from kinship.engines.config import EngineConfig
from kinship.engines.onnx_parts import calibration_batches, embedder, source_parts, target_names
from kinship.engines.outcome import STATUS_BUILT, STATUS_NOT_APPLICABLE, BuildFacts, EngineOutcome
from kinship.engines.precision import Precision
# Running an engine is kinship.engines.tensorrt_runtime's; its names stay importable from here.
from kinship.engines.tensorrt_runtime import (  # noqa: F401
    _CONTEXTS, PartRunner, TensorIO, ThreadContexts, _primary_context, _primary_lock, _retained_primary_context,
    _trt_logger, chunks, cuda_context, engine_io, match_inputs, only_output, pad_rows,
)
from kinship.errors import UserError, first_line
from kinship.files import atomic_folder, file_digest
from kinship.model_facts import read_model_facts

log = logging.getLogger(__name__)

BACKEND = "tensorrt"
REQUIREMENT = (f"TensorRT backend needs TensorRT {compat.SUPPORTED_SERIES}, pycuda and an NVIDIA GPU "
               "that release supports")
# The tensor names kinship.export gives each part's ONNX graph (TensorRT keeps them): inputs, then the output.
PART_TENSORS = {"pair": (("img0", "img1"), "logit"), "encoder": (("image",), "embedding"),
                "head": (("emb0", "emb1"), "logit")}


# --------------------------------------------------------------------------- availability


@dataclass(frozen=True)
class HostFacts:
    """What this host offers TensorRT: the installed version (or why it does not import), CUDA, the first GPU."""

    version: str | None = None
    import_error: str | None = None
    cuda_error: str | None = None
    devices: int = 0
    gpu_name: str = ""
    capability: tuple[int, int] | None = None


@lru_cache(maxsize=1)
def host_facts() -> HostFacts:
    """Probe TensorRT, pycuda and GPU 0 once per process."""
    try:
        import tensorrt as trt
    except Exception as error:  # ImportError, or a broken install raising OSError on its libraries
        return HostFacts(import_error=first_line(error, typed=True))
    version = str(getattr(trt, "__version__", "0"))
    try:
        import pycuda.driver as cuda

        cuda.init()
        count = cuda.Device.count()
        if count == 0:
            return HostFacts(version=version)
        device = cuda.Device(0)
        return HostFacts(version, devices=count, gpu_name=device.name(), capability=tuple(device.compute_capability()))
    except Exception as error:
        return HostFacts(version=version, cuda_error=first_line(error, typed=True))


def unavailable_reason(facts: HostFacts) -> str | None:
    """None when TensorRT is usable on ``facts``' host; else why not, in one line (a GPU the installed release does
    not support is named with its SM and the release that supports it)."""
    if facts.import_error:
        return f"cannot import tensorrt ({facts.import_error})"
    problem = compat.version_problem(facts.version or "")
    if problem:
        return problem
    if facts.cuda_error:
        return f"CUDA unusable through pycuda ({facts.cuda_error})"
    if not facts.devices:
        return "no CUDA device found"
    return compat.gpu_problem(facts.version, facts.gpu_name, facts.capability)


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT 8.5/8.6/10.x, pycuda and a CUDA device it supports are all usable; else why not."""
    return unavailable_reason(host_facts())


def require_tensorrt(subject: Path | str | None = None) -> None:
    """Raise the one-line UserError that says what is missing (naming ``subject``, e.g. an engine file)."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise UserError(f"{subject}: {REQUIREMENT}: {reason}" if subject else f"{REQUIREMENT}: {reason}")


# --------------------------------------------------------------------------- CPU-side planning


def onnx_input_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Input name -> shape with -1 for symbolic (dynamic) dimensions, read from the ONNX graph."""
    return read_model_facts(path).inputs


def onnx_opset(path: Path) -> int:
    """The default-domain opset an ONNX file was exported at (what TensorRT's parser checks)."""
    return read_model_facts(path).opset


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


def _datatype(text: str) -> str:
    """A TensorRT 'Format/Datatype' string ('Row major linear FP16 format', 'Half', 'Int8') -> precision."""
    lowered = text.lower()
    for token, name in (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"),
                        ("int32", "int32"), ("int64", "int64"), ("bool", "bool"), ("fp32", "fp32"), ("float", "fp32")):
        if token in lowered:
            return name
    return "other"


def _layer_precision(layer: dict) -> str:
    """A layer's precision from its first INPUT's format (what its kernel reads: NVIDIA's engine explorer does the
    same; a convolution reading INT8 and writing float is an INT8 layer), else its first output's."""
    for key in ("Inputs", "Outputs"):
        tensors = [t for t in (layer.get(key) or []) if isinstance(t, dict)]
        if tensors:
            return _datatype(tensors[0].get("Format/Datatype", ""))
    return "none"


def layer_census(info_json: str) -> dict:
    """Count the engine's layers by input precision, from the inspector's JSON (detailed verbosity).

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
        by_precision[_layer_precision(layer)] += 1
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
    calibration_table: CalibrationTable | None = None


def plan_parts(sources: dict[str, Path], options: EngineConfig) -> dict[str, PartPlan]:
    """Profile shapes per part: pairs for the pair model, images for the encoder, embeddings for the head."""
    return {part: PartPlan(part, path, profile_shapes(onnx_input_shapes(path), options.min_batch, options.opt_batch,
                                                        options.max_batch))
            for part, path in sources.items()}


def release_of(facts: HostFacts) -> str:
    """``tensorrt-<version>-<gpu>-sm<NN>`` of this host: what its timing cache and calibration tables are valid for."""
    return compat.release_key(facts.version or "unknown", facts.gpu_name, facts.capability or (0, 0))


def add_calibration(plans: dict[str, PartPlan], calibration: CalibrationSet, out_dir: Path, embed, options: EngineConfig,
                    facts: HostFacts) -> None:
    """Attach calibrator batches (at the profile's opt batch: TensorRT calibrates at opt shapes) and the calibration
    tables, keyed by this TensorRT and GPU as the timing cache is."""
    release = release_of(facts)
    for part, plan in plans.items():
        arrays = part_arrays(calibration, part, embed if part == "head" else None)
        plan.calibration_batches = fixed_batches(arrays, options.opt_batch)
        path = cache_path(out_dir, part, calibration, file_digest(plan.onnx)[0], "entropy2", release)
        plan.calibration_table = CalibrationTable(path, release)


def timing_cache_file(out_dir: Path, facts: HostFacts) -> Path:
    """The out folder's timing cache for this TensorRT and GPU (tactics timed elsewhere do not apply here)."""
    return Path(out_dir) / compat.timing_cache_name(facts.version or "unknown", facts.gpu_name, facts.capability or (0, 0))


# --------------------------------------------------------------------------- GPU: builder


def entropy_calibrator(trt, driver, batches: list[dict[str, np.ndarray]], table: CalibrationTable):
    """An IInt8EntropyCalibrator2 (of ``trt``) feeding ``batches`` from device buffers (``driver``: pycuda.driver);
    reads and writes ``table``, refusing one from another TensorRT or GPU with a log line.

    Use it as a context manager inside ``cuda_context()``: leaving it frees the device buffers there. pycuda frees
    an allocation only where its context is current; one dropped elsewhere (by the garbage collector after the
    context was popped, or on another thread) warns "could not be cleaned up" and leaks, once per INT8 build."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.position = 0
            self.device = {name: driver.mem_alloc(array.nbytes) for name, array in batches[0].items()}

        def __enter__(self):
            return self

        def __exit__(self, *exc_info) -> None:
            self.free()

        def free(self) -> None:
            """Free the device buffers now (call it where the CUDA context is current)."""
            while self.device:
                self.device.popitem()[1].free()

        def get_batch_size(self) -> int:
            # Explicit-batch networks carry the batch in the input shape; TensorRT ignores this value.
            return 1

        def get_batch(self, names):
            if self.position >= len(batches):
                return None
            batch = batches[self.position]
            self.position += 1
            for name in names:
                driver.memcpy_htod(self.device[name], np.ascontiguousarray(batch[name], dtype=np.float32))
            return [int(self.device[name]) for name in names]

        def read_calibration_cache(self):
            return table.read(lambda message: log.warning("%s", message))

        def write_calibration_cache(self, data) -> None:
            table.write(bytes(data))

    return EntropyCalibrator()


def _calibrator_for(plan: PartPlan, variant: str):
    """The INT8 calibrator of ``plan`` as a context manager that frees its buffers on leaving (None for the rest)."""
    if variant != "int8":
        return nullcontext(None)
    import pycuda.driver as cuda
    import tensorrt as trt

    return entropy_calibrator(trt, cuda, plan.calibration_batches, plan.calibration_table)


def _set_precision_flags(config, variant: str) -> None:
    import tensorrt as trt

    if variant == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default: FP32 means FP32 here
    elif variant == "tf32":
        config.set_flag(trt.BuilderFlag.TF32)
    elif variant == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:  # both INT8 paths: calibrated scales, or the Q/DQ model's own
        config.set_flag(trt.BuilderFlag.INT8)


def _configure(builder, plan: PartPlan, variant: str, options: EngineConfig, timing_cache: bytes, notes: list[str],
               calibrator=None):
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    _set_precision_flags(config, variant)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in plan.shapes.items():
        compat.checked(profile.set_shape, name, low, opt, high)
    if config.add_optimization_profile(profile) < 0:
        raise RuntimeError(f"TensorRT refused the optimisation profile {plan.shapes}")
    if calibrator is not None:
        compat.set_int8_calibrator(config, calibrator, profile)  # calibrates at the profile's opt shapes

    def mismatch(message: str) -> None:
        log.warning("%s: %s", plan.part, message)
        notes.append(f"{plan.part}: {message}")

    compat.attach_timing_cache(config, timing_cache, mismatch)
    return config


def _parse(builder, path: Path):
    import tensorrt as trt

    network = builder.create_network(compat.network_flags(trt))  # explicit batch: required on 8.x
    parser = trt.OnnxParser(network, _trt_logger())
    if not parser.parse(Path(path).read_bytes(), str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {path.name}: {errors[:400]}")
    return network, parser


def build_part(plan: PartPlan, variant: str, options: EngineConfig, target: Path, timing_cache_path: Path,
               notes: list[str] | None = None) -> dict:
    """Build one part's engine into ``target``; returns its layer census. Raises RuntimeError on failure."""
    import tensorrt as trt

    notes = [] if notes is None else notes
    with cuda_context():
        builder = trt.Builder(_trt_logger())
        network, _parser = _parse(builder, plan.onnx)
        cache_bytes = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
        # The caller holds the calibrator for the whole build (the binding may not) and frees it in this context.
        with _calibrator_for(plan, variant) as calibrator:
            config = _configure(builder, plan, variant, options, cache_bytes, notes, calibrator)
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT could not build {variant} {plan.part} engine (see the TensorRT log above)")
        target.write_bytes(bytes(serialized))
        write_cache(timing_cache_path, bytes(config.get_timing_cache().serialize()))
        engine = trt.Runtime(_trt_logger()).deserialize_cuda_engine(bytes(serialized))
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    target.with_suffix(".layers.json").write_text(info)
    return layer_census(info)


def device_support(facts: HostFacts) -> dict[str, str]:
    """Per variant, what this GPU does with it (``tensorrt_compat.precision_support``), asking a builder's
    ``platform_has_*`` where TensorRT still has them."""
    import tensorrt as trt

    with cuda_context():
        return compat.precision_support(facts.capability, trt.Builder(_trt_logger()))


def hardware_evidence(variant: str, support: str, census: dict, facts: HostFacts) -> str:
    """Why a row's precision is not the GPU's own, with the pair engine's layers by input precision as evidence."""
    if support == compat.NATIVE:
        return ""
    reason = compat.precision_reason(variant, facts.capability, facts.gpu_name) or support
    layers = (census.get("pair") or {}).get("layers_by_precision") or {}
    shown = ", ".join(f"{name} {count}" for name, count in layers.items())
    return f"{reason}; pair engine layers by input precision: {shown}" if shown else reason


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


def _check_opset(sources: dict[str, Path], facts: HostFacts) -> None:
    for path in sources.values():
        problem = compat.opset_problem(facts.version or "", onnx_opset(path), path.name)
        if problem:
            raise UserError(problem)


def build_trt_engine(onnx_path: Path, out_dir: Path, variant: Precision, calibration: Path | None,
                     options: EngineConfig) -> EngineOutcome:
    """Build ``variant`` for TensorRT into ``out_dir/tensorrt-<variant>/`` (pair, encoder, head engines).

    TF32 on a GPU before Ampere is not applicable (it would be the FP32 engine); FP16 and INT8 on a GPU without
    their arithmetic are built from FP32 kernels, as TensorRT does, and the outcome's notes say so."""
    require_tensorrt()
    facts = host_facts()
    support = device_support(facts)
    if support[variant] == compat.NOT_APPLICABLE:
        why = compat.precision_reason(variant, facts.capability, facts.gpu_name)
        return EngineOutcome(BACKEND, variant, variant.numeric, STATUS_NOT_APPLICABLE,
                             build=BuildFacts(None, 0, 0.0, [why]))
    started = time.perf_counter()
    sources = source_parts(Path(onnx_path), options.companions)
    _check_opset(sources, facts)
    image_size = read_model_facts(sources["pair"]).image_size
    calibration_set = calibration_for(variant, calibration, image_size)
    names = target_names(sources, ".engine")
    notes: list[str] = []
    out_dir = Path(out_dir)
    final = variant_dir(out_dir, BACKEND, variant)
    with atomic_folder(final) as folder:
        parsed = _qdq_sources(sources, calibration_set, folder, options) if variant == "int8-qdq" else sources
        plans = plan_parts(parsed, options)
        if variant == "int8":
            embed = embedder(sources) if "head" in plans else None  # the head calibrates on FP32 embeddings
            add_calibration(plans, calibration_set, out_dir, embed, options, facts)
            notes.append("implicit INT8 via IInt8EntropyCalibrator2 at the profile's opt batch; FP32 fallback allowed")
        cache = timing_cache_file(out_dir, facts)
        census = {part: build_part(plan, variant, options, folder / names[part], cache, notes)
                  for part, plan in plans.items()}
        notes += _variant_notes(variant, options)
        evidence = hardware_evidence(variant, support[variant], census, facts)
        if evidence:
            notes.append(evidence)
        seconds = time.perf_counter() - started
        write_sidecar(folder, {
            "backend": BACKEND, "variant": variant, "precision": variant.numeric, "image_size": image_size,
            "parts": names, "source": str(onnx_path), "notes": notes, "build_seconds": round(seconds, 3),
            "profile": {"min": options.min_batch, "opt": options.opt_batch, "max": options.max_batch},
            "size_explanation": census, "tensorrt_version": facts.version,
            "device": {"name": facts.gpu_name, "compute_capability": ".".join(map(str, facts.capability))},
            "precision_support": support, "hardware": support[variant], "hardware_evidence": evidence,
        })
        sizes = file_sizes(folder, names)
    parts = {p: final / n for p, n in names.items()}
    return EngineOutcome(BACKEND, variant, variant.numeric, STATUS_BUILT,
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


# --------------------------------------------------------------------------- GPU: an engine folder


class TensorRTEngine:
    """A TensorRT engine folder (pair engine plus optional encoder and head engines) on the GPU."""

    backend = BACKEND

    def __init__(self, paths: dict[str, Path], precision: str, variant: str, image_size: int):
        require_tensorrt()
        self.path = paths["pair"]
        self.precision, self.variant, self.image_size = precision, variant, image_size
        self.runners = {part: PartRunner.open(p) for part, p in paths.items()}

    @classmethod
    def open(cls, path: Path, sidecar: dict | None) -> "TensorRTEngine":
        """From the sidecar when present; a bare ``.engine`` runs as a pair engine with its image size from its shapes."""
        require_tensorrt(path)
        path = Path(path)
        if sidecar:
            paths = {part: path.parent / name for part, name in sidecar["parts"].items()}
            return cls(paths, sidecar["precision"], sidecar["variant"], int(sidecar["image_size"]))
        runner = PartRunner.open(path)
        size = int(runner.engine.get_tensor_shape(next(iter(runner.io.inputs)))[-1])
        engine = cls.__new__(cls)
        engine.path, engine.precision, engine.variant, engine.image_size = path, "unknown", "unknown", size
        engine.runners = {"pair": runner}
        return engine

    def _run(self, part: str, *arrays: np.ndarray) -> tuple[np.ndarray, PhaseTimes]:
        names, output = PART_TENSORS[part]
        outputs, times = self.runners[part].run_all(dict(zip(names, arrays)))
        return only_output(outputs, output), times

    def close(self) -> None:
        """Free every part's GPU buffers inside the CUDA context (see ``PartRunner.close``)."""
        for runner in self.runners.values():
            runner.close()

    def run_pairs(self, img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
        return self.run_pairs_timed(img0, img1)[0]

    def run_pairs_timed(self, img0: np.ndarray, img1: np.ndarray) -> tuple[np.ndarray, PhaseTimes]:
        logits, times = self._run("pair", img0, img1)
        return logits.reshape(-1).astype(np.float32, copy=False), times

    def embed(self, images: np.ndarray) -> np.ndarray | None:
        return self._run("encoder", images)[0].astype(np.float32, copy=False) if "encoder" in self.runners else None

    def head(self, emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray | None:
        if "head" not in self.runners:
            return None
        return self._run("head", emb0, emb1)[0].reshape(-1).astype(np.float32, copy=False)


def environment() -> dict:
    """TensorRT / CUDA versions, the device and what it runs natively per precision, when available (for the report)."""
    reason = tensorrt_unavailable_reason()
    facts = host_facts()
    if reason:
        found = {"device": facts.gpu_name, "compute_capability": ".".join(map(str, facts.capability))} \
            if facts.capability else {}
        return {"tensorrt": facts.version, "reason": reason, **found}
    import pycuda.driver as cuda

    return {"tensorrt": facts.version, "device": facts.gpu_name,
            "compute_capability": ".".join(map(str, facts.capability)), "cuda_driver": cuda.get_driver_version(),
            "precision_support": compat.precision_support(facts.capability)}


def describe_census(census: dict, size_bytes: int, fp32_bytes: int | None = None) -> str:
    """One paragraph on an INT8 engine's size, from ``layer_census`` of its pair engine."""
    layers = ", ".join(f"{name} {count}" for name, count in census["layers_by_precision"].items())
    ratio = f" vs FP32 {size_bytes / fp32_bytes:.2f}x" if fp32_bytes else ""
    weights = census.get("weight_elements_by_type") or {}
    weight_text = ("; weight elements by type: " + ", ".join(f"{k} {v:,}" for k, v in weights.items())) if weights else ""
    return (f"pair engine {size_bytes / 1e3:.1f} kB{ratio}: {census['layers']} layers by input precision: {layers}; "
            f"{census['reformat_layers']} reformat layers (conversions between INT8 and float regions){weight_text}. "
            "Layers left in float keep FP32 weights and kernels beside the INT8 ones, which is what can make an "
            "INT8 engine larger than FP16.")
