"""ONNX Runtime engines on the CPU execution provider: FP32 (optimised offline), FP16 and INT8 Q/DQ.

Each engine folder holds ``model.onnx`` (pair), ``model.encoder.onnx`` and ``model.head.onnx`` at one
precision. TF32 is an NVIDIA tensor-core format: on a CPU it is reported "not applicable", never
as a copy of FP32.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kinship.engines.base import PARTS, PhaseTimes, file_sizes, variant_dir, write_sidecar
from kinship.engines.precision import Precision
from kinship.engines.calibration import calibration_for
from kinship.engines.config import EngineConfig
from kinship.engines.onnx_parts import calibration_batches, session, source_parts, target_names
from kinship.engines.outcome import STATUS_BUILT, STATUS_NOT_APPLICABLE, BuildFacts, EngineOutcome
from kinship.files import atomic_folder
from kinship.model_facts import read_model_facts, stamp_metadata, unreadable

BACKEND = "onnxruntime"
INPUTS = {"pair": ("img0", "img1"), "encoder": ("image",), "head": ("emb0", "emb1")}
TF32_NOTE = "TF32 is a tensor-core format of NVIDIA GPUs (Ampere and later); a CPU has no TF32 arithmetic"
FP16_NOTE = ("FP16 model with float32 inputs/outputs; ONNX Runtime's CPU provider lacks FP16 kernels for most "
             "operators and inserts Casts to float32 around them, so its speed here is as measured, not what a GPU "
             "would give")


class OrtEngine:
    """An engine folder (or a bare ``.onnx`` file with companions) run by ONNX Runtime on the CPU."""

    backend = BACKEND

    def __init__(self, paths: dict[str, Path], precision: str, variant: str, image_size: int, threads: int = 0):
        self.path = paths["pair"]
        self.precision, self.variant, self.image_size = precision, variant, image_size
        try:
            self.sessions = {part: session(p, threads) for part, p in paths.items()}
        except Exception as error:  # ORT raises its own types for files that are not models
            raise unreadable(self.path, error) from error

    @classmethod
    def open(cls, path: Path, sidecar: dict | None, threads: int = 0) -> "OrtEngine":
        """From a sidecar when there is one; else a bare export (precision from its contents, FP32 if plain)."""
        from kinship.export import companion_paths

        if sidecar:
            folder = Path(path).parent
            paths = {part: folder / name for part, name in sidecar["parts"].items()}
            return cls(paths, sidecar["precision"], sidecar["variant"], int(sidecar["image_size"]), threads)
        files = companion_paths(path)
        paths = {part: p for part, p in zip(PARTS, files.all()) if p.is_file()}
        facts = read_model_facts(path)
        precision = facts.metadata.get("kinship.engine.precision", "fp32")
        return cls(paths, Precision.parse(precision).numeric, precision, facts.image_size, threads)

    def _run(self, part: str, *arrays: np.ndarray) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in zip(INPUTS[part], arrays)}
        return self.sessions[part].run(None, feeds)[0]

    def run_pairs(self, img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
        return self._run("pair", img0, img1).astype(np.float32, copy=False)

    def run_pairs_timed(self, img0: np.ndarray, img1: np.ndarray) -> tuple[np.ndarray, PhaseTimes]:
        # On the CPU there is no transfer to separate out: the whole call is compute.
        started = time.perf_counter()
        logits = self.run_pairs(img0, img1)
        return logits, PhaseTimes(None, (time.perf_counter() - started) * 1e3, None, None)

    def embed(self, images: np.ndarray) -> np.ndarray | None:
        return self._run("encoder", images) if "encoder" in self.sessions else None

    def head(self, emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray | None:
        return self._run("head", emb0, emb1) if "head" in self.sessions else None


# --------------------------------------------------------------------------- building


def _optimise(source: Path, target: Path, threads: int) -> None:
    # EXTENDED fusions are portable across x86 CPUs; ALL adds layout transforms tied to this CPU,
    # which the session still applies at load time.
    session(source, threads, level="extended", save_to=target)


def _convert(variant: str, sources: dict[str, Path], folder: Path, names: dict[str, str], calibration, options) -> list[str]:
    from kinship.engines.quantize import convert_fp16, quantize_qdq, settings_for

    if variant == "fp32":
        for part, source in sources.items():
            _optimise(source, folder / names[part], options.threads)
        return ["exported FP32 model, graph-optimised offline (ORT_ENABLE_EXTENDED) and saved"]
    if variant == "fp16":
        for part, source in sources.items():
            convert_fp16(source, folder / names[part])
        return [FP16_NOTE]
    settings = settings_for("cpu" if variant == "int8" else "tensorrt", options.calibration_method, options.reduce_range)
    batches = calibration_batches(calibration, sources)
    for part, source in sources.items():
        quantize_qdq(source, folder / names[part], batches[part], settings)
    notes = [settings.describe(), "quant_pre_process skipped (its symbolic shape inference fails on dynamo "
             "exports); ONNX shape inference ran instead", f"{len(calibration)} calibration pairs"]
    if variant == "int8-qdq":
        notes.append("the symmetric signed Q/DQ model TensorRT takes, run here by ONNX Runtime to check its accuracy")
    return notes


def build_ort_engine(onnx_path: Path, out_dir: Path, variant: Precision, calibration: Path | None,
                     options: EngineConfig) -> EngineOutcome:
    """Build ``variant`` of ``onnx_path`` for ONNX Runtime on the CPU into ``out_dir/onnxruntime-<variant>/``."""
    if variant == "tf32":
        return EngineOutcome(BACKEND, variant, "tf32", STATUS_NOT_APPLICABLE, build=BuildFacts(None, 0, 0.0, [TF32_NOTE]))
    started = time.perf_counter()
    sources = source_parts(Path(onnx_path), options.companions)
    image_size = read_model_facts(sources["pair"]).image_size
    calibration_set = calibration_for(variant, calibration, image_size)
    names = target_names(sources)
    final = variant_dir(out_dir, BACKEND, variant)
    with atomic_folder(final) as folder:
        notes = _convert(variant, sources, folder, names, calibration_set, options)
        _stamp_all(folder, names, sources, variant)
        engine = OrtEngine({p: folder / n for p, n in names.items()}, variant.numeric, variant, image_size)
        _smoke_test(engine, image_size)
        explanation = _explain_size(folder, names) if variant.is_int8 else {}
        seconds = time.perf_counter() - started
        write_sidecar(folder, {
            "backend": BACKEND, "variant": variant, "precision": variant.numeric, "image_size": image_size,
            "parts": names, "source": str(onnx_path), "notes": notes, "build_seconds": round(seconds, 3),
            "size_explanation": explanation,
        })
        sizes = file_sizes(folder, names)
    parts = {p: final / n for p, n in names.items()}
    return EngineOutcome(BACKEND, variant, variant.numeric, STATUS_BUILT,
                         build=BuildFacts(parts["pair"], sizes["pair"], seconds, notes, parts, sizes, explanation))


def _stamp_all(folder: Path, names: dict[str, str], sources: dict[str, Path], variant: str) -> None:
    """Carry each export's ``kinship.*`` metadata into its converted file, plus the engine's precision."""
    for part, name in names.items():
        metadata = read_model_facts(sources[part]).metadata
        metadata.update({"kinship.engine.precision": variant, "kinship.engine.backend": BACKEND})
        stamp_metadata(folder / name, metadata)


def _smoke_test(engine: OrtEngine, image_size: int) -> None:
    """Load and run each part once, so a file ONNX Runtime cannot run fails the build, not the benchmark."""
    images = np.zeros((2, 3, image_size, image_size), np.float32)
    logits = engine.run_pairs(images, images)
    if logits.shape != (2,) or not np.all(np.isfinite(logits)):
        raise RuntimeError(f"{engine.path.name}: smoke run gave shape {logits.shape} or non-finite logits")
    embeddings = engine.embed(images)
    if embeddings is not None:
        engine.head(embeddings, embeddings)


def _explain_size(folder: Path, names: dict[str, str]) -> dict:
    from kinship.engines.quantize import qdq_census

    return {part: qdq_census(folder / name) for part, name in names.items()}
