"""scripts/gpu_check.py (``make gpu-check``) end to end: --cpu runs every step with tiny sizes; without a GPU and
without --cpu it is one line and exit 2. No GPU figure is produced or claimed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_cpu_run_measures_every_step_and_writes_one_json(tmp_path):
    done = _run("--cpu", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "gpu-check.json").read_text())
    assert results["device"]["kind"] == "cpu"
    amp = results["amp"]
    for label, precision in (("fp32", "AMP off"), ("amp", "AMP bfloat16")):
        run = amp[label]
        assert precision in run["precision"] and len(run["epoch_seconds"]) == 2 and run["steady_epoch_seconds"] > 0
        assert 0.0 <= run["val_auc"] <= 1.0 and 0.0 <= run["val_accuracy"] <= 1.0
    assert amp["speedup"] == pytest.approx(amp["fp32"]["steady_epoch_seconds"] / amp["amp"]["steady_epoch_seconds"])
    assert {(row["dtype"], row["batch"]) for row in results["throughput"]} == {
        ("fp32", 1), ("fp32", 8), ("bfloat16", 1), ("bfloat16", 8)}
    assert all(row["pairs_per_s"] > 0 for row in results["throughput"])
    engines = results["engines"]
    assert engines["backend"] == "onnxruntime" and "stands in for TensorRT" in engines["why"]
    rows = {row["variant"]: row for row in engines["rows"]}
    assert rows["fp32"]["status"] == "built" and rows["fp32"]["hardware"] == "native" and rows["fp32"]["auc"] is not None
    assert rows["fp32"]["pairs_per_s"]["8"] > 0
    assert rows["tf32"]["status"] == "not applicable" and not rows["tf32"]["pairs_per_s"]
    assert rows["fp16"]["hardware"] == "runs FP32 kernels on this CPU"
    table = done.stdout
    assert table.startswith("gpu-check on ") and "(cpu), torch " in table.splitlines()[0]
    for text in ("AMP          fp32", "PyTorch      fp32 batch 8", "onnxruntime  tf32: not applicable",
                 f"wrote {tmp_path / 'gpu-check.json'}"):
        assert text in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the no-GPU line cannot be observed")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    done = _run("--out", str(tmp_path), timeout=60)
    assert done.returncode == 2
    assert done.stdout.count("\n") == 1 and "sees no CUDA or ROCm device" in done.stdout and done.stderr == ""
    assert not (tmp_path / "gpu-check.json").exists()
