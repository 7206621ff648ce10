"""Inference engines built from the exported ONNX model: ONNX Runtime (CPU) and TensorRT (NVIDIA GPU).

``base`` holds the shared vocabulary (precisions, backends, ``Engine``, the engine folder format),
``config`` the one set of engine knobs (``EngineConfig``), ``registry`` chooses a backend and builds or
loads an engine with it; each backend module imports its
runtime lazily, so importing this package never needs TensorRT or a GPU.
"""

from kinship.engines.base import BACKENDS, PRECISIONS, VARIANTS, Engine, PhaseTimes
from kinship.engines.config import EngineConfig
from kinship.engines.outcome import EngineOutcome
from kinship.engines.registry import build_engine, load_engine

__all__ = [
    "BACKENDS", "PRECISIONS", "VARIANTS", "Engine", "EngineConfig", "EngineOutcome", "PhaseTimes",
    "build_engine", "load_engine",
]
