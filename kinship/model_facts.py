"""What an exported ONNX model says about itself, read in one place: its ``kinship.*`` metadata (image size,
threshold, precision), its input names and shapes, its opset; and the one writer of that metadata.

Every consumer of an exported model (scorers, engine builders, calibration, TensorRT planning) reads it here,
so a file that is not an ONNX model, or not a kinship export, is refused with the same message everywhere.
Light on purpose: ``onnx`` is imported only when a file is read, never torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kinship.errors import UserError, first_line

IMAGE_SIZE = "kinship.image_size"


def unreadable(path: str | Path, error: BaseException) -> UserError:
    """The one refusal for a file that ONNX (or ONNX Runtime) cannot load as a model."""
    return UserError(f"{path} is not a loadable ONNX model: {first_line(error, 160, typed=True)}")


def load_onnx(path: str | Path, external_data: bool = True) -> Any:
    """The ``onnx.ModelProto`` at ``path``; a missing file or one that is not a model is one ``UserError``."""
    import onnx

    if not Path(path).is_file():
        raise UserError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as error:  # protobuf raises DecodeError and others for files that are not models
        raise unreadable(path, error) from error


@dataclass(frozen=True)
class ModelFacts:
    """An ONNX file's facts: its metadata, its graph inputs (name -> shape, -1 for a dynamic axis), its opset."""

    path: Path
    metadata: dict[str, str]
    inputs: dict[str, tuple[int, ...]]
    opset: int

    @property
    def image_size(self) -> int:
        """The image side the model takes; a file without it is not a kinship export (one ``UserError``)."""
        if IMAGE_SIZE not in self.metadata:
            raise UserError(f"{self.path} is an ONNX model but not a kinship export (no {IMAGE_SIZE} metadata)")
        return int(self.metadata[IMAGE_SIZE])

    @property
    def val_threshold(self) -> float | None:
        """The decision threshold chosen on validation at training time, when recorded."""
        try:
            return float(self.metadata.get("kinship.val_threshold", ""))
        except ValueError:
            return None


def read_model_facts(path: str | Path) -> ModelFacts:
    """The facts of the ONNX file at ``path`` (its weights are not loaded)."""
    model = load_onnx(path, external_data=False)
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = {value.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
              for value in model.graph.input if value.name not in initializers}
    opset = max((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), default=0)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    return ModelFacts(Path(path), metadata, inputs, opset)


def stamp_metadata(path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Replace the metadata of the ONNX file at ``path`` with ``metadata`` (values as text) and save it
    self-contained: the exporter writes none of ours and converters do not all carry it over."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save_model(model, str(path), save_as_external_data=False)
