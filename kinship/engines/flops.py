"""The model's work: FLOPs per pair, 2 x multiply-accumulates of the convolutions and matrix products only
(bias adds, activations, pooling and normalisation are left out, as is usual), counted from the ONNX graph
at batch 1 (one pair for the pair model) or by PyTorch's FLOP counter for a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kinship.engines.base import read_sidecar
from kinship.errors import UserError
from kinship.model_facts import load_onnx

# Ops counted, and the index of their weight input: QLinear ops interleave scales and zero points.
# The com.microsoft fused forms are what ONNX Runtime's graph optimiser saves (Conv+Relu -> FusedConv).
_CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1}
_GEMM_OPS = ("Gemm", "FusedGemm")
_MATMUL_OPS = ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul")


def model_flops_per_pair(onnx_path: Path) -> int:
    """2 x MACs of every Conv/Gemm/MatMul (and their integer/QLinear forms) at batch 1.

    Every input's first (batch) axis is fixed to 1 and ONNX shape inference fills in the rest, so for
    the two-input model the count is per pair, for the encoder per image, for the head per pair.
    Shapes static inference leaves unknown are read from one ONNX Runtime run at batch 1.
    Raises ``UserError`` when the file is not an ONNX model or a counted op's shape stays unknown.
    """
    path = Path(onnx_path)
    model = load_onnx(path)
    shapes = inferred_shapes(model)
    unknown = [name for node in model.graph.node for name in _counted_tensors(node) if not _is_known(shapes.get(name))]
    if unknown:
        shapes.update(_run_shapes(model, unknown, path))
    total = 0
    for node in model.graph.node:
        total += _node_macs(node, shapes, path)
    return 2 * total


def inferred_shapes(model) -> dict[str, list[int | None]]:
    """Tensor name -> shape (None for an unknown size) from ONNX shape inference with every input at batch 1.

    Changes ``model`` in place: its inputs' batch axes are fixed to 1 and its own ``value_info`` dropped."""
    import onnx

    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers or not value.type.tensor_type.shape.dim:
            continue
        first = value.type.tensor_type.shape.dim[0]
        first.ClearField("dim_param")
        first.dim_value = 1
    # The exporter's own value_info holds symbolic sizes ("2*batch"); drop it so inference starts clean.
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    graph = inferred.graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes.setdefault(value.name, [d.dim_value if d.HasField("dim_value") else None for d in dims])
    return shapes


def _counted_tensors(node) -> list[str]:
    """The tensors whose shapes ``_node_macs`` reads (weights are initializers, always known)."""
    if node.op_type in _CONV_OPS:
        return [node.input[_CONV_OPS[node.op_type]], node.output[0]]
    if node.op_type in _GEMM_OPS or node.op_type in _MATMUL_OPS:
        return [node.input[0], node.output[0]]
    return []


def _is_known(shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _run_shapes(model, names: list[str], path: Path) -> dict[str, list[int]]:
    """Shapes of ``names`` observed by running the model once at batch 1 in ONNX Runtime.

    Static inference gives up where the exporter slices by a run-time size (the pair model splits
    its embeddings at ``Shape(img1)[0]``), so those shapes are measured instead.
    """
    import onnx
    import onnxruntime as ort

    graph, names = model.graph, list(dict.fromkeys(names))
    present = {value.name for value in graph.output}
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names if name not in present)
    initializers = {init.name for init in graph.initializer}
    feeds = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = np.zeros(dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = session.run(names, feeds)
    except Exception as error:  # ONNX Runtime's own exception types
        raise UserError(f"{path}: cannot count FLOPs, ONNX Runtime could not run it at batch 1: {str(error)[:160]}") from error
    return {name: list(array.shape) for name, array in zip(names, outputs)}


def _node_macs(node, shapes: dict, path: Path) -> int:
    if node.op_type in _CONV_OPS:
        weight = _known(shapes, node.input[_CONV_OPS[node.op_type]], node, path)
        out = _known(shapes, node.output[0], node, path)
        # out: [N, M, *spatial]; weight: [M, C/group, *kernel]: each output element costs C/group * kernel.
        return int(np.prod(out, dtype=np.int64) * np.prod(weight[1:], dtype=np.int64))
    if node.op_type in _GEMM_OPS or node.op_type in _MATMUL_OPS:
        a = _known(shapes, node.input[0], node, path)
        out = _known(shapes, node.output[0], node, path)
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[-2] if trans_a and len(a) > 1 else a[-1]
        return int(np.prod(out, dtype=np.int64) * k)  # every output element is a K-long dot product
    return 0


def _known(shapes: dict, name: str, node, path: Path) -> list[int]:
    shape = shapes.get(name)
    if not _is_known(shape):
        raise UserError(f"{path}: cannot count FLOPs, shape of {name!r} ({node.op_type} {node.name!r}) is unknown at batch 1")
    return shape


def torch_flops_per_pair(checkpoint: Path) -> int:
    """The same count for a ``.pt`` checkpoint, by PyTorch's FLOP counter on one pair (conv and matmul)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kinship.checkpoint import load_model

    model, _ = load_model(checkpoint)
    image = torch.zeros(1, 3, model.config.image_size, model.config.image_size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(image, image.clone())
    return int(counter.get_total_flops())


def flops_per_pair(model: Path) -> tuple[int | None, str]:
    """FLOPs per pair of a model file and how they were counted (None with the reason when unknown)."""
    model = Path(model)
    if model.suffix == ".pt":
        return torch_flops_per_pair(model), "PyTorch FLOP counter, one pair"
    sidecar = read_sidecar(model) or {}
    candidates = [model / sidecar["parts"]["pair"]] if model.is_dir() and sidecar else [model]
    candidates += [Path(sidecar["source"])] if sidecar.get("source") else []
    for candidate in candidates:
        if candidate.suffix == ".onnx" and candidate.is_file():
            try:
                return model_flops_per_pair(candidate), f"ONNX graph of {candidate.name} at batch 1"
            except UserError as error:
                return None, str(error)
    return None, "no ONNX graph to count FLOPs from"
