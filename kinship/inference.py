"""Scoring pairs with any model file: a PyTorch checkpoint, an exported ONNX model, or (later) an engine.

Every scorer exposes the two halves (``embed`` images, ``head`` on two embeddings) and the two-input
``pair`` path, on normalised NCHW float32 arrays, so evaluation code never cares what runs underneath.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from kinship.errors import UserError
from kinship.images import to_network_input


class PairScorer(Protocol):
    image_size: int
    metadata: dict

    def embed(self, images: np.ndarray) -> np.ndarray: ...

    def head(self, emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray: ...

    def pair(self, img0: np.ndarray, img1: np.ndarray) -> np.ndarray: ...


class TorchScorer:
    """A ``.pt`` checkpoint run by PyTorch eager in inference mode on the CPU."""

    def __init__(self, path: Path):
        from kinship.checkpoint import load_model

        self.model, self.metadata = load_model(path)
        self.image_size = self.model.config.image_size

    def _run(self, function, *arrays: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return function(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)).numpy()

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._run(self.model.encoder, images)

    def head(self, emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray:
        return self._run(self.model.head, emb0, emb1)

    def pair(self, img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
        return self._run(self.model, img0, img1)


class OnnxScorer:
    """An exported model (``X.onnx`` with ``X.encoder.onnx`` and ``X.head.onnx`` beside it) in ONNX Runtime."""

    def __init__(self, path: Path, providers: tuple[str, ...] = ("CPUExecutionProvider",), threads: int = 0):
        import onnxruntime as ort

        from kinship.export import companion_paths
        from kinship.model_facts import read_model_facts, unreadable

        files = companion_paths(path)
        missing = [str(p) for p in files.all() if not p.is_file()]
        if missing:
            raise UserError(f"exported model incomplete: missing {', '.join(missing)}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.sessions = {
                name: ort.InferenceSession(str(p), options, providers=list(providers))
                for name, p in zip(("pair", "encoder", "head"), files.all())
            }
        except Exception as error:  # ONNX Runtime raises its own exception types for non-models
            raise unreadable(path, error) from error
        facts = read_model_facts(files.pair)
        self.metadata = facts.metadata
        self.image_size = facts.image_size

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.sessions["encoder"].run(None, {"image": images})[0]

    def head(self, emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray:
        return self.sessions["head"].run(None, {"emb0": emb0, "emb1": emb1})[0]

    def pair(self, img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
        return self.sessions["pair"].run(None, {"img0": img0, "img1": img1})[0]


def open_scorer(path: Path) -> PairScorer:
    """The scorer for a model file, chosen by its suffix (``.pt`` or ``.onnx``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if path.suffix == ".pt":
        return TorchScorer(path)
    if path.suffix == ".onnx":
        return OnnxScorer(path)
    raise UserError(f"{path}: unknown model type {path.suffix!r} (expected .pt or .onnx)")


def validation_threshold(scorer: PairScorer) -> float | None:
    """The decision threshold (on the logit) chosen on validation at training time, if recorded."""
    value = scorer.metadata.get("val_threshold", scorer.metadata.get("kinship.val_threshold"))
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def score_image_pairs(
    scorer: PairScorer, pixels: np.ndarray, left: np.ndarray, right: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Logits for index pairs into ``pixels`` (uint8 NHWC): each unique image is embedded once."""
    unique = np.unique(np.concatenate((left, right)))
    embeddings = np.concatenate([
        scorer.embed(to_network_input(np.asarray(pixels[unique[s : s + batch_size]])))
        for s in range(0, len(unique), batch_size)
    ])
    row_of = np.searchsorted(unique, np.arange(unique.max() + 1))
    logits = [
        scorer.head(embeddings[row_of[left[s : s + batch_size]]], embeddings[row_of[right[s : s + batch_size]]])
        for s in range(0, len(left), batch_size)
    ]
    return np.concatenate(logits).astype(np.float64)
