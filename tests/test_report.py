"""The engine report: rows that failed or do not apply carry no figures; files are complete PNG/JSON/Markdown."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from kinship.engines.timing import summarise
from kinship.engines.report import EngineResult, roc_points, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLOPS = 200_000_000
CEILING = {"gflops": 100.0, "library": "torch", "by_library": {"torch": 100.0, "numpy": 80.0}, "peak_gflops": 200.0,
           "peak_by_library": {"torch": 200.0, "numpy": 90.0}, "cpu_gflops": 160.0,
           "cpu_by_library": {"torch": 160.0, "numpy": 85.0}, "n": 1024, "threads": 2}


def _bench(latencies_ms, batch, cpu_s=None):
    return summarise(latencies_ms, batch=batch, cpu_s=cpu_s).to_dict()


def _ok_row() -> EngineResult:
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    logits = np.array([-2.0, 1.5, 0.2, 2.5, -0.1, -1.0, 0.9, 0.4])
    return EngineResult(
        "onnxruntime", "fp32", "ok", path="/engines/onnxruntime-fp32/model.onnx", size_bytes=1_450_000,
        build_seconds=1.5,
        validation={"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "agreement": 1.0, "auc": 0.875, "accuracy": 0.625,
                    "loss": 0.4396},
        bench={8: _bench([10.0, 10.0], 8), 64: _bench([100.0, 200.0, 300.0, 400.0], 64, cpu_s=0.8)},
        roc=roc_points(labels, logits),
    )


def _rows():
    failed = EngineResult.failed("onnxruntime", "int8", "build failed: quantizer | crashed")
    failed_dict = {**failed.to_dict(), "size_bytes": 123, "bench": {64: _bench([1.0], 64)}, "roc": {"fpr": [0, 1], "tpr": [0, 1]}}
    not_applicable = EngineResult.not_applicable("onnxruntime", "tf32", "TF32 is a tensor-core format")
    return [_ok_row().to_dict(), failed_dict, not_applicable]


def _context():
    return {"title": "Test report", "model": "model.onnx", "threads": 2, "ceiling": CEILING, "flops_per_pair": FLOPS,
            "torch": {"64": _bench([1000.0, 1000.0], 64)}, "notes": ["a note"]}


def test_report_files_and_failed_rows_without_figures(tmp_path):
    json_path, md_path = write_report(_rows(), tmp_path / "report", _context())
    folder = json_path.parent
    assert json_path.name == "report.json" and md_path.name == "report.md"
    for name in ("throughput.png", "roc.png", "sizes.png"):
        assert (folder / name).read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in folder.iterdir() if "partial" in p.name]
    report = json.loads(json_path.read_text())
    ok, failed, not_applicable = report["results"]
    assert [r["status"] for r in report["results"]] == ["ok", "failed", "not applicable"]
    for row in (failed, not_applicable):  # the figures the failed row arrived with were dropped
        assert row["size_bytes"] is None and row["bench"] == {} and row["roc"] is None and row["validation"] is None
        assert all(value is None for value in row["summary"].values())
    # batch 64: 4 calls in 1.0 s -> 256 pairs/s; 256 x 200 MFLOP = 51.2 GFLOP/s = 51.2% of 100
    assert ok["summary"]["pairs_per_s"] == pytest.approx(256.0)
    assert ok["summary"]["gflops"] == pytest.approx(51.2) and ok["summary"]["share_of_ceiling"] == pytest.approx(0.512)
    assert ok["summary"]["vs_torch"] == pytest.approx(256.0 / 64.0)
    # fastest call: 64 pairs in 100 ms -> 640 pairs/s -> 128 GFLOP/s = 64% of the 200 GFLOP/s fastest GEMM
    assert ok["summary"]["best_call_share"] == pytest.approx(0.64)
    # per CPU-second: 256 pairs in 0.8 CPU-s -> 320 pairs/CPU-s -> 64 GFLOP per CPU-s = 40% of 160
    assert ok["summary"]["cpu_share"] == pytest.approx(0.40)
    assert ok["summary"]["p50_ms"] == 250.0 and ok["summary"]["p99_ms"] == 400.0


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]  # "\|" inside a cell is escaped


def test_markdown_table(tmp_path):
    _, md_path = write_report(_rows(), tmp_path, _context())
    text = md_path.read_text()
    rows = {_cells(line)[1]: _cells(line) for line in text.splitlines() if line.startswith("| onnxruntime")}
    header = _cells(next(line for line in text.splitlines() if line.startswith("| backend")))
    assert all(len(cells) == len(header) for cells in rows.values())
    assert rows["fp32"][:5] == ["onnxruntime", "fp32", "ok", "1.45", "256.0"] and rows["fp32"][-3:] == ["51%", "40%", "4.00x"]
    assert rows["int8"][2] == "failed: build failed: quantizer \\| crashed" and set(rows["int8"][3:]) == {"—"}
    assert rows["tf32"][2].startswith("not applicable: TF32") and set(rows["tf32"][3:]) == {"—"}
    assert "100.0 GFLOP/s" in text and "200.0 MFLOP per pair" in text and "64.0 pairs/s" in text
    assert "![throughput](throughput.png)" in text and "a note" in text
    assert "INT8 (VNNI)" not in text  # only FP32 rows ran: no caveat needed


def test_plots_only_with_data(tmp_path):
    only_failures = [EngineResult.failed("tensorrt", "fp16", "no GPU")]
    json_path, md_path = write_report(only_failures, tmp_path, {})
    report = json.loads(json_path.read_text())
    assert report["plots"] == {"sizes": "sizes.png"}
    assert not (tmp_path / "roc.png").exists() and not (tmp_path / "throughput.png").exists()
    assert "failed: no GPU" in md_path.read_text()


def test_row_rules():
    with pytest.raises(ValueError):
        EngineResult("onnxruntime", "fp32", "done")
    with pytest.raises(ValueError):
        EngineResult("onnxruntime", "fp32", "failed")  # a failure needs its reason
    assert EngineResult("tensorrt", "int8", "built", variant="int8-qdq").status == "ok"


def test_roc_points():
    labels = np.tile([0, 1], 500)
    logits = np.linspace(-3, 3, 1000) + labels
    points = roc_points(labels, logits, max_points=50)
    assert len(points["fpr"]) <= 50 and points["fpr"][0] == 0.0 and points["tpr"][-1] == 1.0
    assert points["fpr"] == sorted(points["fpr"])


def test_context_measured_beside_a_run(tiny_run, tiny_onnx):
    from kinship.engines.flops import torch_flops_per_pair
    from kinship.engines.report import measure_context

    row = EngineResult("onnxruntime", "fp32", "ok", bench={64: _bench([5.0, 5.0], 64)})
    context = measure_context(tiny_onnx, [row], {"threads": 1, "reference_batch": 64}, ceiling_seconds=0.1)
    assert context["threads"] == 1 and context["ceiling"]["threads"] == 1 and context["ceiling"]["gflops"] > 0
    assert context["flops_per_pair"] == torch_flops_per_pair(tiny_run / "model.pt")
    assert context["torch"][64]["batch"] == 64 and context["torch"][64]["threads"] == 1


def _m40_rows():
    """Rows as a TensorRT build on a Tesla M40 (SM 5.2) records them: FP16 built from FP32 kernels, TF32 not applicable."""
    fp32 = _ok_row().to_dict()
    fp32.update(backend="tensorrt", path="/engines/tensorrt-fp32/model.engine", hardware="native")
    fp16 = {**fp32, "precision": "fp16", "variant": "fp16", "path": "/engines/tensorrt-fp16/model.engine",
            "hardware": "runs FP32 kernels on SM 5.2",
            "hardware_evidence": "Tesla M40 (SM 5.2) has no fast FP16; pair engine layers by input precision: fp32 31"}
    tf32 = EngineResult.not_applicable("tensorrt", "tf32", "TF32 needs tensor cores of SM 8.0+ (Ampere)")
    tf32.hardware, tf32.hardware_evidence = "not applicable", tf32.reason
    return [fp32, fp16, tf32]


def test_rows_say_what_the_device_does_with_each_precision(tmp_path):
    json_path, md_path = write_report(_m40_rows(), tmp_path, _context())
    report = json.loads(json_path.read_text())
    assert [(r["variant"], r["hardware"]) for r in report["results"]] == [
        ("fp32", "native"), ("fp16", "runs FP32 kernels on SM 5.2"), ("tf32", "not applicable")]
    text = md_path.read_text()
    rows = {_cells(line)[1]: _cells(line) for line in text.splitlines() if line.startswith("| tensorrt")}
    assert rows["fp32"][2] == "ok" and rows["fp16"][2] == "ok (runs FP32 kernels on SM 5.2)"
    assert rows["tf32"][2].startswith("not applicable: TF32 needs")
    section = text.split("## Precision on this device", 1)[1]
    assert "- **tensorrt fp16**: runs FP32 kernels on SM 5.2 (Tesla M40 (SM 5.2) has no fast FP16; pair engine " \
           "layers by input precision: fp32 31)" in section
    assert "- **tensorrt fp32**: native\n" in section
    assert "## Precision on this device" not in write_report(_rows(), tmp_path / "plain", _context())[1].read_text()


def test_hardware_support_per_backend():
    from kinship.engines.outcome import BuildFacts, EngineOutcome
    from kinship.engines.registry import hardware_support, outcome_hardware

    assert hardware_support("onnxruntime", "fp32") == ("native", "")
    assert hardware_support("onnxruntime", "int8-qdq") == ("native", "")
    state, why = hardware_support("onnxruntime", "fp16")
    assert state == "runs FP32 kernels on this CPU" and "casts to float32" in why
    assert hardware_support("onnxruntime", "tf32")[0] == "not applicable"
    sidecar = {"hardware": "runs FP32 kernels on SM 6.1", "hardware_evidence": "no fast FP16"}
    assert hardware_support("tensorrt", "fp16", sidecar) == ("runs FP32 kernels on SM 6.1", "no fast FP16")
    assert hardware_support("tensorrt", "fp16", {"backend": "tensorrt"}) == ("", "")  # built before it was recorded
    assert hardware_support("tensorrt", "tf32", None, "TF32 needs SM 8.0+") == ("not applicable", "TF32 needs SM 8.0+")
    assert hardware_support("pytorch", "fp32") == ("native", "")
    skipped = EngineOutcome("tensorrt", "tf32", "tf32", "not applicable", build=BuildFacts(None, 0, 0.0, ["TF32 needs SM 8.0+"]))
    assert outcome_hardware(skipped) == ("not applicable", "TF32 needs SM 8.0+")


def test_engines_cli_and_report_say_when_a_precision_runs_on_fp32_kernels(tiny_onnx, tiny_data, tmp_path, capsys):
    from kinship.cli import main

    code = main(["engines", "--onnx", str(tiny_onnx), "--data", str(tiny_data), "--out", str(tmp_path),
                 "--backend", "onnxruntime", "--precisions", "fp32,fp16", "--bench-batches", "",
                 "--validation-pairs", "64"])
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert code == 0 and "fp16 on this device: runs FP32 kernels on this CPU (ONNX Runtime's CPU provider" in out
    assert "fp32 on this device" not in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert {row["variant"]: row["hardware"] for row in report["results"]} == {
        "fp32": "native", "fp16": "runs FP32 kernels on this CPU"}
    assert "| onnxruntime | fp16 | ok (runs FP32 kernels on this CPU) |" in (tmp_path / "report.md").read_text()
