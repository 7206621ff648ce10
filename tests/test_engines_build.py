"""``kinship engines`` end to end on the CPU: every precision built, validated, benchmarked, reported;
one failing precision does not lose the others; bad names are one-line user errors."""

from __future__ import annotations

import json

import pytest

from kinship.cli import main
from kinship.engines.base import staged_dir, variant_dir
from kinship.engines.build import EnginesJob, build_engines, training_split
from kinship.engines.calibration import CalibrationConfig
from kinship.engines.config import CLI_ENGINES
from kinship.engines.precision import parse_precisions
from kinship.engines.registry import build_engine

QUICK = dict(engine=CLI_ENGINES.with_changes(backend="onnxruntime", bench_batches=(4,), bench_seconds=0.05, warmup_seconds=0.01),
             calibration_config=CalibrationConfig(batches=2, batch_size=16))


def _flaky_builder(failing: str):
    """The real builder, except that ``failing`` crashes after writing part of its engine."""

    def build(onnx_path, out_dir, variant, backend, calibration, options):
        if variant == failing:
            with staged_dir(variant_dir(out_dir, backend, variant)) as folder:
                (folder / "model.onnx").write_bytes(b"half-written")
                raise RuntimeError("simulated crash in the middle of the build")
        return build_engine(onnx_path, out_dir, variant, backend, calibration, options)

    return build


@pytest.fixture(scope="module")
def result(tiny_onnx, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    config = EnginesJob(precisions=parse_precisions("fp32,tf32,fp16,int8"), **QUICK)
    return build_engines(tiny_onnx, tiny_data, out, config, builder=_flaky_builder("fp16"))


def test_one_failed_precision_keeps_the_others(result):
    statuses = {r.variant: r.status for r in result.records}
    assert statuses == {"fp32": "built", "tf32": "not applicable", "fp16": "failed", "int8": "built"}
    assert "simulated crash" in result.record("fp16").reason
    assert not variant_dir(result.out_dir, "onnxruntime", "fp16").exists()
    assert not list(result.out_dir.glob(".*partial*"))
    for variant in ("fp32", "int8"):
        assert result.record(variant).validation is not None and result.record(variant).bench


def test_fp32_engine_matches_the_reference_and_int8_stays_close(result):
    fp32 = result.record("fp32").validation
    assert fp32.agreement.max_abs_diff < 1e-4 and fp32.agreement.decision_agreement == 1.0
    assert fp32.metrics["auc"] == pytest.approx(result.reference["auc"], abs=1e-6)
    int8 = result.record("int8").validation
    assert int8.agreement.pairs == result.validation["pairs"] > 100
    assert int8.agreement.decision_agreement > 0.8 and abs(int8.auc_delta) < 0.1
    assert int8.companion_max_abs_diff is not None and int8.companion_max_abs_diff < 0.5


def test_calibration_was_drawn_from_training_families(result):
    calibration = result.calibration
    assert calibration["pairs"] == 32 and calibration["method"] == "minmax"
    assert set(calibration["families_used"]).isdisjoint(calibration["val_families"])
    assert (result.out_dir / "calibration.npz").is_file()


def test_report_lists_every_precision_with_figures_only_where_measured(result):
    report = json.loads((result.out_dir / "report.json").read_text())
    rows = {row["variant"]: row for row in report["results"]}
    assert rows["fp16"]["status"] == "failed" and rows["fp16"]["size_bytes"] is None
    assert rows["tf32"]["status"] == "not applicable" and rows["tf32"]["bench"] == {}
    assert rows["int8"]["status"] == "ok" and rows["int8"]["bench"]["4"]["pairs_per_s"] > 0
    assert "QuantizeLinear" in rows["int8"]["int8_size_explanation"]
    assert rows["fp32"]["int8_size_explanation"] == ""
    markdown = (result.out_dir / "report.md").read_text()
    assert "simulated crash" in markdown and "tf32" in markdown


def test_engines_and_pytorch_are_timed_in_alternating_slices(result):
    report = json.loads((result.out_dir / "report.json").read_text())
    for row in report["results"]:
        if row["status"] == "ok":
            assert len(row["bench"]["4"]["rounds_pairs_per_s"]) == 3
    torch_figures = report["context"]["torch"]["4"]  # model.pt sits beside the tiny export
    assert len(torch_figures["rounds_pairs_per_s"]) == 3 and torch_figures["threads"] >= 1
    assert "alternating slices" in (result.out_dir / "report.md").read_text()


def test_run_config_beside_the_model_gives_the_split(tiny_onnx, tmp_path):
    assert training_split(tiny_onnx)[2].endswith("config.json")
    assert training_split(tmp_path / "model.onnx") == (0.2, 0, "training defaults")
    assert training_split(tmp_path / "model.onnx", 0.3, 5) == (0.3, 5, "command line")


def test_engines_command_json(tiny_onnx, tiny_data, tmp_path, capsys):
    code = main(["engines", "--onnx", str(tiny_onnx), "--data", str(tiny_data), "--out", str(tmp_path),
                 "--backend", "auto", "--precisions", "fp32,tf32", "--bench-batches", "", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["backend"] in ("onnxruntime", "tensorrt")
    assert [e["variant"] for e in payload["engines"]] == ["fp32", "tf32"]
    assert payload["engines"][0]["validation"]["agreement"]["decision_agreement"] == 1.0
    assert payload["calibration"] == {}  # no INT8 asked for: no calibration set drawn
    assert (tmp_path / "report.json").is_file()


@pytest.mark.parametrize("flag, value, message", [
    ("--precisions", "fp32,int4", "int4"),
    ("--backend", "openvino", "auto, onnxruntime, tensorrt"),
    ("--calibration-method", "mse", "minmax, entropy, percentile"),
    ("--profile", "8,4,16", "min <= opt <= max"),
])
def test_bad_names_are_one_line_user_errors(tiny_onnx, tiny_data, tmp_path, capsys, flag, value, message):
    code = main(["engines", "--onnx", str(tiny_onnx), "--data", str(tiny_data), "--out", str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_or_foreign_model_is_a_user_error(tiny_data, tmp_path, capsys):
    code = main(["engines", "--onnx", str(tmp_path / "none.onnx"), "--data", str(tiny_data), "--out", str(tmp_path / "o")])
    assert code == 2 and "none.onnx" in capsys.readouterr().err


def test_histogram_calibration_keeps_json_output_clean(tiny_onnx, tiny_data, tmp_path, capsys):
    # ONNX Runtime's histogram calibrators print progress on stdout: it must not reach --json output.
    calibration = tmp_path / "calib.npz"
    assert main(["calibrate", "--data", str(tiny_data), "--out", str(calibration), "--model", str(tiny_onnx),
                 "--batches", "1", "--batch-size", "32", "--json"]) == 0
    capsys.readouterr()
    code = main(["engines", "--onnx", str(tiny_onnx), "--data", str(tiny_data), "--out", str(tmp_path / "out"),
                 "--precisions", "int8", "--calibration", str(calibration), "--calibration-method", "percentile",
                 "--bench-batches", "", "--validation-pairs", "64", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["calibration"]["method"] == "percentile"
    assert payload["engines"][0]["status"] == "built" and payload["validation"]["pairs"] == 64
