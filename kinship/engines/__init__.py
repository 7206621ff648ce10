"""Inference engines built from the exported ONNX model: ONNX Runtime (CPU) and TensorRT (NVIDIA GPU).

``precision`` holds ``Precision`` (parsed once from user text), ``base`` the shared vocabulary (backends,
``Engine``, the engine folder format),
``config`` the one set of engine knobs (``EngineConfig``), ``registry`` chooses a backend and builds or
loads an engine with it; each backend module imports its
runtime lazily, so importing this package never needs TensorRT or a GPU.
"""

from kinship.engines.base import BACKENDS, Engine, PhaseTimes
from kinship.engines.config import EngineConfig
from kinship.engines.outcome import EngineOutcome
from kinship.engines.precision import PRECISIONS, Precision
from kinship.engines.registry import build_engine, load_engine

__all__ = [
    "BACKENDS", "PRECISIONS", "Precision", "Engine", "EngineConfig", "EngineOutcome", "PhaseTimes",
    "build_engine", "load_engine",
]
