"""Which backend builds and runs an engine: the one module that knows every backend.

``resolve_backend`` picks one (``auto``: TensorRT where it imports, sees a CUDA device and supports that GPU's
compute capability, else ONNX Runtime; ``decide_backend`` is the rule), ``build_engine`` and ``load_engine`` hand
a build or an engine file to it, and ``backend_note``, ``require_backend``, ``explain_size``, ``hardware_support``
and ``environment`` say what a run or a report needs to know about it. Each backend module is imported inside the
function that needs it, so importing this module needs neither TensorRT nor a GPU. The backends import ``base``
and ``onnx_parts``, never this module.
"""

from __future__ import annotations

from pathlib import Path

from kinship.engines.base import ENGINE_SUFFIXES, SIDECAR, Engine, read_sidecar
from kinship.engines.precision import Precision
from kinship.engines.config import EngineConfig, check_backend_name
from kinship.engines.outcome import EngineOutcome
from kinship.errors import UserError


def decide_backend(requested: str, tensorrt_problem: str | None) -> tuple[str, str]:
    """(backend, note) for ``requested`` on a host where TensorRT has ``tensorrt_problem`` (None: usable).

    ``auto`` takes TensorRT only where it is usable, which includes supporting this GPU's compute capability
    (TensorRT 10 does not run on a Maxwell or Pascal GPU); otherwise ONNX Runtime, the note saying why (the GPU,
    its SM and the TensorRT release that supports it). An explicit ``tensorrt`` there is a one-line UserError.
    """
    from kinship.engines.tensorrt_backend import REQUIREMENT

    check_backend_name(requested)
    if requested == "auto":
        if tensorrt_problem:
            return "onnxruntime", f"onnxruntime (auto: {tensorrt_problem})"
        return "tensorrt", "tensorrt (auto: TensorRT and a CUDA device it supports found)"
    if requested == "tensorrt" and tensorrt_problem:
        raise UserError(f"{REQUIREMENT}: {tensorrt_problem}")
    return requested, f"{requested} (chosen with --backend)"


def _tensorrt_problem(requested: str) -> str | None:
    if requested == "onnxruntime":
        return None  # never probe TensorRT (and CUDA) for a run that does not use it
    from kinship.engines.tensorrt_backend import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason()


def resolve_backend(name: str) -> str:
    """``auto`` -> tensorrt where TensorRT is usable on this GPU, else onnxruntime; an explicit ``tensorrt`` on a host
    that cannot run it is a one-line UserError (the GPU, its capability, the installed and the needed TensorRT)."""
    return decide_backend(name, _tensorrt_problem(check_backend_name(name)))[0]


def backend_note(requested: str, backend: str) -> str:
    """How ``backend`` was chosen, for reports: asked for by name, or what ``auto`` found on this host."""
    if requested != "auto":
        return f"{backend} (chosen with --backend)"
    return decide_backend(requested, _tensorrt_problem(requested))[1]


def require_backend(backend: str) -> None:
    """Raise the one-line UserError that says what ``backend`` lacks on this host (TensorRT: library or GPU)."""
    if backend == "tensorrt":
        from kinship.engines.tensorrt_backend import require_tensorrt

        require_tensorrt()


def build_engine(
    onnx_path: Path,
    out_dir: Path,
    precision: Precision | str,
    backend: str,
    calibration: Path | None,
    options: EngineConfig = EngineConfig(),
) -> EngineOutcome:
    """Build one engine variant of ``onnx_path`` into ``out_dir/<backend>-<precision>/``: its outcome is
    built (with the files' facts) or not applicable on this backend (with why, in its notes).

    ``precision``: a ``Precision`` (a name is parsed here: this is the library's edge). INT8 needs a
    calibration file from ``kinship calibrate``. ``options`` gives the build knobs (profile, workspace,
    calibration method, threads, companions). Raises on failure, leaving no engine folder behind.
    """
    precision = Precision.parse(precision)
    backend = resolve_backend(backend)
    if backend == "onnxruntime":
        from kinship.engines.onnxruntime_backend import build_ort_engine

        return build_ort_engine(Path(onnx_path), Path(out_dir), precision, calibration, options)
    from kinship.engines.tensorrt_backend import build_trt_engine

    return build_trt_engine(Path(onnx_path), Path(out_dir), precision, calibration, options)


def load_engine(path: Path, threads: int = 0) -> Engine:
    """Open an engine: a ``.onnx`` file (ONNX Runtime, ``threads`` intra-op threads, 0 = its default), a
    ``.engine``/``.plan`` file (TensorRT) or an engine folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"engine not found: {path}")
    sidecar = read_sidecar(path)
    if path.is_dir():
        if sidecar is None:
            raise UserError(f"{path} is a folder without {SIDECAR}: not an engine folder")
        path = path / sidecar["parts"]["pair"]
    backend = sidecar["backend"] if sidecar else ENGINE_SUFFIXES.get(path.suffix)
    if backend == "onnxruntime":
        from kinship.engines.onnxruntime_backend import OrtEngine

        return OrtEngine.open(path, sidecar, threads)
    if backend == "tensorrt":
        from kinship.engines.tensorrt_backend import TensorRTEngine

        return TensorRTEngine.open(path, sidecar)
    raise UserError(f"{path}: unknown engine type {path.suffix!r} (expected .onnx, .engine or .plan, or an engine folder)")


def explain_size(record: EngineOutcome, fp32_bytes: int | None) -> str:
    """For INT8 rows: why the engine file is the size it is, from the build's census (each backend words its own)."""
    census = (record.build.size_explanation or {}).get("pair") if record.build else None
    if not census or record.precision != "int8":
        return ""
    if record.backend == "tensorrt":
        from kinship.engines.tensorrt_backend import describe_census

        return describe_census(census, record.build.size_bytes, fp32_bytes)
    from kinship.engines.quantize import describe_census

    return describe_census(census, fp32_bytes)


# What ONNX Runtime's CPU provider does with each variant. TF32 is an NVIDIA tensor-core format; the FP16 model
# runs on float32 kernels with Casts around them (the provider lacks FP16 kernels for most operators).
NATIVE, NOT_APPLICABLE = "native", "not applicable"
CPU_SUPPORT = {"fp32": NATIVE, "tf32": NOT_APPLICABLE, "fp16": "runs FP32 kernels on this CPU", "int8": NATIVE,
               "int8-qdq": NATIVE}
CPU_EVIDENCE = {
    "tf32": "TF32 is a tensor-core format of NVIDIA GPUs (Ampere and later); a CPU has no TF32 arithmetic",
    "fp16": "ONNX Runtime's CPU provider lacks FP16 kernels for most operators and casts to float32 around them",
}


def hardware_support(backend: str, variant: str, sidecar: dict | None = None, reason: str = "") -> tuple[str, str]:
    """(state, evidence) of ``variant`` on the device that runs it: ``"native"``, ``"runs FP32 kernels on ..."`` or
    ``"not applicable"``, and why when it is not native (for TensorRT with the per-layer census). TensorRT's answer
    is the one its build recorded in the engine's sidecar (the build ran on the GPU in question); ``reason`` is a
    not-applicable outcome's. Empty strings where nothing is known (an engine built before this was recorded)."""
    if backend == "tensorrt":
        if sidecar and sidecar.get("hardware"):
            return sidecar["hardware"], sidecar.get("hardware_evidence", "")
        return (NOT_APPLICABLE, reason) if variant == "tf32" and reason else ("", "")
    if backend == "pytorch":
        return (NATIVE, "") if variant == "fp32" else ("", "")
    state = CPU_SUPPORT.get(variant, "")
    return state, "" if state == NATIVE else (CPU_EVIDENCE.get(variant) or reason)


def outcome_hardware(outcome: EngineOutcome) -> tuple[str, str]:
    """``hardware_support`` of an outcome: its engine's sidecar when it was built, its reason when it does not apply."""
    path = outcome.build.path if outcome.build else None
    sidecar = read_sidecar(path) if path is not None and Path(path).exists() else None
    reason = outcome.reason or "; ".join(outcome.notes)
    return hardware_support(outcome.backend, outcome.variant, sidecar, reason)


def environment(backend: str) -> dict:
    """The software and machine a report's figures come from (TensorRT, CUDA and the GPU with that backend)."""
    import platform

    import onnxruntime

    from kinship.host import cpu_has_vnni, cpu_name

    env = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "machine": platform.machine(),
           "cpu_vnni": cpu_has_vnni(), "processor": cpu_name()}
    if backend == "tensorrt":
        from kinship.engines.tensorrt_backend import environment as tensorrt_environment

        env.update(tensorrt_environment())
    return env
