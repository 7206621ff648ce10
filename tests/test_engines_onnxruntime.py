"""ONNX Runtime engines built from a tiny trained export: each precision builds, loads and tracks FP32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kinship.data import SplitConfig
from kinship.engines.base import staged_dir, variant_dir
from kinship.engines.calibration import CalibrationConfig, build_calibration_set, save_calibration
from kinship.engines.config import EngineConfig
from kinship.engines.outcome import STATUS_NOT_APPLICABLE
from kinship.engines.quantize import qdq_census, settings_for
from kinship.engines.registry import build_engine, load_engine
from kinship.engines.validate import compare_logits, reference_engine
from kinship.errors import UserError

SIZE = 32


@pytest.fixture(scope="module")
def calibration_file(tiny_data, tmp_path_factory):
    calibration = build_calibration_set(tiny_data, SIZE, SplitConfig(), CalibrationConfig(batches=4, batch_size=16))
    return save_calibration(calibration, tmp_path_factory.mktemp("calibration") / "calib.npz")


@pytest.fixture(scope="module")
def built(tiny_onnx, calibration_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort-engines")
    variants = ("fp32", "tf32", "fp16", "int8", "int8-qdq")
    return out, {v: build_engine(tiny_onnx, out, v, "onnxruntime", calibration_file, EngineConfig()) for v in variants}


@pytest.fixture(scope="module")
def pairs(tiny_data):
    calibration = build_calibration_set(tiny_data, SIZE, SplitConfig(val_fraction=0.5, seed=9),
                                        CalibrationConfig(batches=1, batch_size=48, seed=4))
    return calibration.img0, calibration.img1


def test_tf32_is_not_applicable_on_a_cpu(built):
    out, engines = built
    tf32 = engines["tf32"]
    assert tf32.status == STATUS_NOT_APPLICABLE and tf32.path is None and tf32.size_bytes == 0
    assert "TF32" in tf32.notes[0]
    assert not variant_dir(out, "onnxruntime", "tf32").exists()


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8", "int8-qdq"])
def test_each_variant_is_a_complete_engine_folder(built, variant):
    out, engines = built
    engine = engines[variant]
    folder = variant_dir(out, "onnxruntime", variant)
    assert engine.path == folder / "model.onnx"
    assert set(engine.parts) == {"pair", "encoder", "head"}
    assert all(p.is_file() for p in engine.parts.values())
    assert engine.size_bytes == engine.path.stat().st_size
    sidecar = json.loads((folder / "engine.json").read_text())
    assert sidecar["variant"] == variant and sidecar["image_size"] == SIZE
    assert not list(out.glob(".*partial*"))


@pytest.mark.parametrize("variant, max_diff", [("fp32", 1e-4), ("fp16", 5e-2), ("int8", 0.5), ("int8-qdq", 0.5)])
def test_engines_track_the_fp32_reference(built, tiny_onnx, pairs, variant, max_diff):
    _, engines = built
    img0, img1 = pairs
    reference = reference_engine(tiny_onnx).run_pairs(img0, img1)
    engine = load_engine(engines[variant].path)
    assert engine.precision == ("int8" if variant.startswith("int8") else variant)
    logits = engine.run_pairs(img0, img1)
    assert logits.shape == (len(img0),) and logits.dtype == np.float32
    agreement = compare_logits(reference, logits, threshold=float(np.median(reference)))
    assert agreement.max_abs_diff <= max_diff
    # The halves reproduce the pair model of the same engine.
    halves = engine.head(engine.embed(img0), engine.embed(img1))
    assert np.abs(halves - logits).max() <= max(1e-4, max_diff / 2)


def test_timed_runs_report_wall_time_only(built, pairs):
    engine = load_engine(built[1]["fp32"].path)
    logits, times = engine.run_pairs_timed(*pairs)
    assert times.compute_ms > 0 and times.h2d_ms is None and times.d2h_ms is None and times.enqueue_ms is None
    assert np.array_equal(logits, engine.run_pairs(*pairs))
    by_folder = load_engine(built[1]["fp32"].path.parent)  # an engine folder opens like its pair file
    assert by_folder.path == engine.path and np.array_equal(by_folder.run_pairs(*pairs), logits)


def test_int8_files_hold_quantized_weights(built, tiny_onnx):
    _, engines = built
    fp32 = qdq_census(engines["fp32"].path)
    assert fp32["quantize_linear"] == fp32["dequantize_linear"] == 0
    for variant in ("int8", "int8-qdq"):
        census = engines[variant].size_explanation["pair"]
        assert census == qdq_census(engines[variant].path)
        assert census["quantize_linear"] > 0 and census["dequantize_linear"] > 0
        assert census["initializer_bytes"].get("int8", 0) > census["initializer_bytes"].get("float32", 0)
        # Weights are 4x smaller in int8 than the float32 weights they replace.
        assert census["initializer_bytes"]["int8"] < fp32["initializer_bytes"]["float32"] / 3


def test_tensorrt_layout_is_symmetric(built):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(built[1]["int8-qdq"].path))
    zero_points = [t for t in model.graph.initializer if "zero_point" in t.name]
    assert zero_points and all(not numpy_helper.to_array(t).any() for t in zero_points)
    assert {numpy_helper.to_array(t).dtype.name for t in zero_points} == {"int8"}
    assert settings_for("tensorrt", "minmax").symmetric and not settings_for("cpu", "minmax").symmetric


def test_int8_without_calibration_is_a_user_error(tiny_onnx, tmp_path):
    with pytest.raises(UserError, match="calibration"):
        build_engine(tiny_onnx, tmp_path, "int8", "onnxruntime", None)
    assert list(tmp_path.iterdir()) == []


def test_failed_build_leaves_no_engine(tiny_onnx, tiny_data, tmp_path):
    wrong_size = build_calibration_set(tiny_data, 64, SplitConfig(), CalibrationConfig(batches=1, batch_size=4))
    calibration = save_calibration(wrong_size, tmp_path / "calib64.npz")
    with pytest.raises(UserError, match="64px"):
        build_engine(tiny_onnx, tmp_path / "out", "int8", "onnxruntime", calibration)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_staged_folder_vanishes_on_error_and_replaces_on_success(tmp_path):
    final = tmp_path / "onnxruntime-fp32"
    with pytest.raises(RuntimeError):
        with staged_dir(final) as folder:
            (folder / "model.onnx").write_bytes(b"half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    for content in (b"first", b"second"):
        with staged_dir(final) as folder:
            (folder / "model.onnx").write_bytes(content)
    assert (final / "model.onnx").read_bytes() == b"second" and [p.name for p in tmp_path.iterdir()] == [final.name]


def test_unknown_names_and_files_are_user_errors(tiny_onnx, tmp_path):
    with pytest.raises(UserError, match="fp32, tf32, fp16, int8"):
        build_engine(tiny_onnx, tmp_path, "int4", "onnxruntime", None)
    with pytest.raises(UserError, match="auto, onnxruntime, tensorrt"):
        build_engine(tiny_onnx, tmp_path, "fp32", "openvino", None)
    with pytest.raises(UserError, match="not found"):
        load_engine(tmp_path / "nothing.onnx")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(UserError, match="model.bin"):
        load_engine(odd)
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    with pytest.raises(UserError, match="fake.onnx"):
        load_engine(fake)


def test_entropy_calibration_is_not_minmax_in_disguise(tiny_onnx, calibration_file, tmp_path):
    # ONNX Runtime's defaults (128 bins into 128) make its entropy search return the min/max range.
    import onnx
    from onnx import numpy_helper

    from kinship.engines.calibration import fixed_batches, load_calibration, part_arrays
    from kinship.engines.quantize import quantize_qdq

    encoder = tiny_onnx.with_name("model.encoder.onnx")
    batches = fixed_batches(part_arrays(load_calibration(calibration_file), "encoder"), 32)
    scales = {}
    for method in ("minmax", "entropy"):
        target = tmp_path / f"{method}.onnx"
        quantize_qdq(encoder, target, batches, settings_for("cpu", method, reduce_range=False))
        scales[method] = {t.name: float(numpy_helper.to_array(t)) for t in onnx.load(str(target)).graph.initializer
                          if t.name.endswith("_scale") and numpy_helper.to_array(t).ndim == 0}
    assert scales["minmax"].keys() == scales["entropy"].keys()
    # Entropy clips outliers: some activation ranges must come out narrower than min/max.
    assert any(scales["entropy"][k] < 0.99 * scales["minmax"][k] for k in scales["minmax"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entropy.onnx", "minmax.onnx"]
