"""TensorRT backend: the CPU-side planning always; real builds only on an NVIDIA GPU with TensorRT 10."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kinship.cli import main
from kinship.data import SplitConfig
from kinship.engines.calibration import CalibrationConfig, build_calibration_set, save_calibration
from kinship.engines.config import EngineConfig
from kinship.engines.registry import build_engine, load_engine, resolve_backend
from kinship.engines.tensorrt_backend import (
    REQUIREMENT, add_calibration, chunks, layer_census, onnx_input_shapes, plan_parts, profile_shapes,
    tensorrt_unavailable_reason,
)
from kinship.engines.validate import compare_logits, reference_engine
from kinship.errors import UserError

SIZE = 32
UNAVAILABLE = tensorrt_unavailable_reason()
needs_gpu = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"{REQUIREMENT}: {UNAVAILABLE}")


@pytest.fixture(scope="module")
def calibration(tiny_data):
    return build_calibration_set(tiny_data, SIZE, SplitConfig(), CalibrationConfig(batches=3, batch_size=16))


def _sources(tiny_onnx):
    from kinship.engines.onnx_parts import source_parts

    return source_parts(tiny_onnx, companions=True)


def test_profile_covers_every_input_with_one_batch_range(tiny_onnx):
    shapes = profile_shapes(onnx_input_shapes(tiny_onnx), 1, 64, 1024)
    assert shapes == {name: ((1, 3, SIZE, SIZE), (64, 3, SIZE, SIZE), (1024, 3, SIZE, SIZE)) for name in ("img0", "img1")}
    head = profile_shapes(onnx_input_shapes(tiny_onnx.with_name("model.head.onnx")), 2, 8, 16)
    dim = head["emb0"][0][1]
    assert head == {"emb0": ((2, dim), (8, dim), (16, dim)), "emb1": ((2, dim), (8, dim), (16, dim))}


def test_profile_refuses_bad_ranges_and_dynamic_images():
    with pytest.raises(UserError, match="min <= opt <= max"):
        profile_shapes({"x": (-1, 3, 8, 8)}, 4, 2, 8)
    with pytest.raises(UserError, match="dynamic non-batch"):
        profile_shapes({"x": (-1, 3, -1, -1)}, 1, 2, 4)
    with pytest.raises(UserError):
        EngineConfig(min_batch=0)


def test_chunks_cover_a_batch_within_the_profile():
    parts = chunks(2500, 1024)
    assert [(p.start, p.stop) for p in parts] == [(0, 1024), (1024, 2048), (2048, 2500)]
    assert chunks(0, 8) == [] and chunks(3, 8) == [slice(0, 3)]


def test_calibrator_batches_follow_the_opt_shape(tiny_onnx, calibration, tmp_path):
    from kinship.engines.onnx_parts import embedder

    sources = _sources(tiny_onnx)
    options = EngineConfig(min_batch=1, opt_batch=16, max_batch=64)
    plans = plan_parts(sources, options)
    add_calibration(plans, calibration, tmp_path, embedder(sources), options)
    for part, plan in plans.items():
        for batch in plan.calibration_batches:
            for name, array in batch.items():
                assert array.shape == plan.shapes[name][1], (part, name)  # exactly the profile's opt shape
                assert array.dtype == np.float32 and array.flags["C_CONTIGUOUS"]
    assert len(plans["pair"].calibration_batches) == 48 // 16
    assert len(plans["encoder"].calibration_batches) == 96 // 16  # both sides of every pair
    embeddings = plans["head"].calibration_batches[0]["emb0"]
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)  # real FP32 encoder outputs
    paths = {plan.calibration_cache for plan in plans.values()}
    assert len(paths) == 3 and all(p.parent == tmp_path for p in paths)
    again = plan_parts(sources, options)
    add_calibration(again, calibration, tmp_path, embedder(sources), options)
    assert {p.calibration_cache for p in again.values()} == paths  # a rebuild reuses the same tables


def test_layer_census_reads_the_inspector_json():
    info = {"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution",
         "Outputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "Weights": {"Type": "Int8", "Count": 864}, "Bias": {"Type": "Float", "Count": 32}},
        {"Name": "reformat", "LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "gemm", "LayerType": "CaskGemm", "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}],
         "Weights": {"Type": "Half", "Count": 100}},
        {"Name": "norm", "LayerType": "Reduce", "Outputs": [{"Format/Datatype": "Float"}]},
    ]}
    census = layer_census(json.dumps(info))
    assert census["layers"] == census["detailed_layers"] == 4
    assert census["layers_by_precision"] == {"fp16": 1, "fp32": 2, "int8": 1}
    assert census["reformat_layers"] == 1
    assert census["weight_elements_by_type"] == {"fp16": 100, "fp32": 32, "int8": 864}
    names_only = layer_census(json.dumps({"Layers": ["conv1 + relu", "gemm"]}))
    assert names_only["layers_by_precision"] == {"unknown": 2} and names_only["detailed_layers"] == 0


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT is usable here: the refusal cannot be observed")
def test_choosing_tensorrt_without_it_is_a_clear_user_error(tiny_onnx, tiny_data, tmp_path, capsys):
    with pytest.raises(UserError, match=r"needs tensorrt>=10,<11 and an NVIDIA GPU: "):
        build_engine(tiny_onnx, tmp_path, "fp32", "tensorrt", None)
    assert resolve_backend("auto") == "onnxruntime"
    code = main(["engines", "--onnx", str(tiny_onnx), "--data", str(tiny_data), "--out", str(tmp_path / "out"),
                 "--backend", "tensorrt"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and REQUIREMENT in err
    fake = tmp_path / "model.engine"
    fake.write_bytes(b"plan")
    with pytest.raises(UserError, match=r"model\.engine: TensorRT backend needs"):
        load_engine(fake)


# ----------------------------------------------------------------------------- on a GPU only


@pytest.fixture(scope="module")
def calibration_file(calibration, tmp_path_factory):
    return save_calibration(calibration, tmp_path_factory.mktemp("trt-calibration") / "calib.npz")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant, max_diff", [("fp32", 1e-3), ("tf32", 2e-2), ("fp16", 5e-2), ("int8", 0.5), ("int8-qdq", 0.5)])
def test_tensorrt_engines_track_fp32(tiny_onnx, calibration, calibration_file, tmp_path, variant, max_diff):
    options = EngineConfig(min_batch=1, opt_batch=16, max_batch=64)
    built = build_engine(tiny_onnx, tmp_path, variant, "tensorrt", calibration_file, options)
    assert built.path.suffix == ".engine" and set(built.parts) == {"pair", "encoder", "head"}
    assert (tmp_path / "tensorrt.timing-cache").is_file()
    assert built.size_explanation["pair"]["layers"] > 0
    engine = load_engine(built.path)
    img0, img1 = calibration.img0[:40], calibration.img1[:40]
    reference = reference_engine(tiny_onnx).run_pairs(img0, img1)
    logits, times = engine.run_pairs_timed(img0, img1)
    assert compare_logits(reference, logits, float(np.median(reference))).max_abs_diff <= max_diff
    assert times.h2d_ms is not None and times.compute_ms > 0 and times.d2h_ms is not None
    big = np.concatenate([img0] * 3)[:100]  # beyond the profile's max batch: chunked
    assert engine.run_pairs(big, big).shape == (100,)
    assert np.abs(engine.head(engine.embed(img0), engine.embed(img1)) - logits).max() <= max(1e-3, max_diff / 2)


@pytest.mark.gpu
@needs_gpu
def test_int8_rebuild_reuses_the_calibration_cache(tiny_onnx, calibration_file, tmp_path):
    options = EngineConfig(min_batch=1, opt_batch=16, max_batch=64)
    build_engine(tiny_onnx, tmp_path, "int8", "tensorrt", calibration_file, options)
    caches = sorted(tmp_path.glob("calibration-*.cache"))
    assert len(caches) == 3
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in caches}
    build_engine(tiny_onnx, tmp_path, "int8", "tensorrt", calibration_file, options)
    assert sorted(tmp_path.glob("calibration-*.cache")) == caches
    assert all(p.read_bytes() == before[p][1] for p in caches)
