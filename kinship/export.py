"""Export a checkpoint to ONNX (pair model, encoder, head) and check it against PyTorch.

Each file is self-contained (no external ``.data``), has a dynamic batch axis and named inputs, and
carries metadata: image size, normalisation, the training data's fingerprint and the code version.
Nothing is left at the final names unless every check passed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kinship import __version__
from kinship.checkpoint import load_model
from kinship.errors import CheckFailed, UserError, first_line
from kinship.images import NORMALISE_MEAN, NORMALISE_STD
from kinship.manifests import ExportCheck
from kinship.model_facts import read_model_facts, stamp_metadata

OPSET = 18  # what torch's dynamo exporter writes
# 17 for TensorRT 8.5/8.6, whose ONNX parsers stop at opset 17 (a Tesla M40 needs TensorRT 8.5.3). The exporter
# itself cannot write 17: asked to, it exports at 18 and converts before optimising, which fails on our Reduce
# nodes (their axes are not constants yet) and keeps 18 with only a warning. So 17 is converted here, afterwards.
OPSETS = (17, 18)
RTOL, ATOL = 1e-3, 1e-5


@dataclass(frozen=True)
class ExportedModels:
    """The three files written side by side."""

    pair: Path  # img0, img1 -> logit
    encoder: Path  # image -> embedding
    head: Path  # emb0, emb1 -> logit

    def all(self) -> tuple[Path, Path, Path]:
        return (self.pair, self.encoder, self.head)


def companion_paths(pair_path: Path) -> ExportedModels:
    """``model.onnx`` -> ``model.onnx``, ``model.encoder.onnx``, ``model.head.onnx``."""
    pair_path = Path(pair_path)
    stem = pair_path.name[: -len(".onnx")] if pair_path.name.endswith(".onnx") else pair_path.name
    return ExportedModels(pair_path, pair_path.with_name(f"{stem}.encoder.onnx"), pair_path.with_name(f"{stem}.head.onnx"))


def _export_one(module, args: tuple, path: Path, input_names: list[str], output_name: str, opset: int = OPSET) -> None:
    # The exporter warns once per missing torchvision op; we use none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = {name: {0: batch} for name in input_names}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=[output_name],
            dynamic_shapes=dynamic, opset_version=OPSET, external_data=False, dynamo=True, optimize=True,
        )
    if opset != OPSET:
        convert_opset(path, opset)


def convert_opset(path: Path, opset: int) -> None:
    """Rewrite the ONNX file at ``path`` to ``opset`` with ONNX's version converter (a checked export follows).

    From 18 to 17 the converter moves Reduce* axes from an input back to an attribute but leaves the 18-only
    ``noop_with_empty_axes`` attribute on them (only ReduceSum has it at 13-17): it is dropped where the axes are
    given, as it then has no effect. Initializers only the old axes inputs used are dropped too.
    """
    import onnx
    from onnx import version_converter

    try:
        model = version_converter.convert_version(onnx.load(str(path)), opset)
    except Exception as error:  # the converter raises RuntimeError/ValueError naming the node it cannot adapt
        raise CheckFailed(f"ONNX cannot convert {Path(path).name} to opset {opset}: {first_line(error, 200)}") from error
    for node in model.graph.node:
        reduce_with_axes = node.op_type.startswith("Reduce") and any(a.name == "axes" for a in node.attribute)
        if reduce_with_axes and node.op_type != "ReduceSum":
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend(kept)
    used = {name for node in model.graph.node for name in node.input}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save_model(model, str(path), save_as_external_data=False)


class _EncoderOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, image):
        return self.encoder(image)


class _HeadOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.head = model.head

    def forward(self, emb0, emb1):
        return self.head(emb0, emb1)


def metadata_for(model_metadata: dict, image_size: int, part: str) -> dict[str, str]:
    """The key/value metadata stamped into each ONNX file."""
    return {
        "kinship.part": part,
        "kinship.image_size": str(image_size),
        "kinship.normalise_mean": json.dumps(NORMALISE_MEAN),
        "kinship.normalise_std": json.dumps(NORMALISE_STD),
        "kinship.data_fingerprint": str(model_metadata.get("data_fingerprint", "")),
        "kinship.code_version": __version__,
        "kinship.val_auc": str(model_metadata.get("val_auc", "")),
        "kinship.val_threshold": str(model_metadata.get("val_threshold", "")),
        # The training configuration carries the family split, so evaluation of the ONNX file
        # scores exactly the validation families the checkpoint was selected on.
        "kinship.train_config": json.dumps(model_metadata.get("train_config", {})),
    }


def _stamp(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    stamp_metadata(path, metadata)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def validation_sample(data_dir: Path, metadata: dict, image_size: int, count: int = 64, on_progress=None):
    """Up to ``count`` real validation pairs (uint8 NHWC each side) from the model's own split."""
    from kinship.data import prepare
    from kinship.train_config import TrainConfig

    config = TrainConfig.from_dict(metadata.get("train_config", {}))
    kwargs = {"on_progress": on_progress} if on_progress else {}
    prepared = prepare(Path(data_dir), image_size, config.split_config(), **kwargs)
    pairs = prepared.val_pairs
    return np.asarray(prepared.pixels[pairs.left[:count]]), np.asarray(prepared.pixels[pairs.right[:count]])


def _compare(name: str, expected: np.ndarray, actual: np.ndarray) -> ExportCheck:
    difference = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    check: ExportCheck = {"name": name, "max_abs_diff": float(difference.max()),
                          "max_rel_diff": float((difference / (np.abs(expected) + 1e-12)).max()), "samples": len(expected)}
    try:
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    except AssertionError as error:
        raise CheckFailed(
            f"{name}: ONNX Runtime differs from PyTorch beyond rtol={RTOL}, atol={ATOL} "
            f"(max abs diff {check['max_abs_diff']:.3g})"
        ) from error
    return check


def check_against_torch(model, files: ExportedModels, img0_uint8: np.ndarray, img1_uint8: np.ndarray) -> list[ExportCheck]:
    """Run each ONNX file in ONNX Runtime on real images and compare with the PyTorch model."""
    import onnxruntime as ort

    from kinship.images import to_network_input

    x0, x1 = to_network_input(img0_uint8), to_network_input(img1_uint8)
    with torch.inference_mode():
        e0, e1 = model.encoder(torch.from_numpy(x0)), model.encoder(torch.from_numpy(x1))
        expected = {"pair": model(torch.from_numpy(x0), torch.from_numpy(x1)).numpy(), "encoder": e0.numpy(), "head": model.head(e0, e1).numpy()}
    feeds = {
        "pair": {"img0": x0, "img1": x1},
        "encoder": {"image": x0},
        "head": {"emb0": e0.numpy(), "emb1": e1.numpy()},
    }
    checks = []
    for name, path in zip(("pair", "encoder", "head"), files.all()):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        checks.append(_compare(name, expected[name], session.run(None, feeds[name])[0]))
    return checks


def export_checkpoint(checkpoint: Path, out: Path, img0_uint8: np.ndarray, img1_uint8: np.ndarray,
                      opset: int = OPSET) -> tuple[ExportedModels, list[ExportCheck]]:
    """Export ``checkpoint`` to ``out`` (+ encoder and head beside it) at ONNX ``opset`` (18, or 17 for TensorRT
    8.x), check, then publish the files."""
    import onnx

    out = Path(out)
    if out.suffix != ".onnx":
        raise UserError(f"--out must name a .onnx file, got {out}")
    if opset not in OPSETS:
        raise UserError(f"ONNX opset {opset} is not one this export writes: choose {' or '.join(map(str, OPSETS))}")
    model, metadata = load_model(checkpoint)
    size = model.config.image_size
    final = companion_paths(out)
    partial = ExportedModels(*(p.with_name(f".{p.name}.partial") for p in final.all()))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Two distinct example tensors per model: passing one tensor twice lets the tracer treat both
    # inputs as the same value and fold them together (x0**2 - x1**2 became 0 in an early export).
    img0, img1 = torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)
    with torch.inference_mode():
        emb0, emb1 = model.encoder(img0).clone(), model.encoder(img1).clone()
    try:
        _export_one(model, (img0, img1), partial.pair, ["img0", "img1"], "logit", opset)
        _export_one(_EncoderOnly(model).eval(), (img0,), partial.encoder, ["image"], "embedding", opset)
        _export_one(_HeadOnly(model).eval(), (emb0, emb1), partial.head, ["emb0", "emb1"], "logit", opset)
        for part, path in zip(("pair", "encoder", "head"), partial.all()):
            _stamp(path, metadata_for(metadata, size, part))
        checks = check_against_torch(model, partial, img0_uint8, img1_uint8)
    except onnx.checker.ValidationError as error:
        _remove(partial.all())
        raise CheckFailed(f"onnx.checker rejected the export of {checkpoint}: {first_line(error)}") from error
    except BaseException:
        _remove(partial.all())
        raise
    for source, target in zip(partial.all(), final.all()):
        os.replace(source, target)
    return final, checks


def _remove(paths) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
        Path(f"{path}.data").unlink(missing_ok=True)


def read_metadata(path: Path) -> dict[str, str]:
    """The ``kinship.*`` metadata of an exported ONNX file (``kinship.model_facts`` reads it)."""
    return read_model_facts(path).metadata
