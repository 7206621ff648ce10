"""``kinship pipeline``: every stage in one process against a local store, the champion rule, the report."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kinship import pipeline
from kinship.engines import build as engines_build
from kinship.champion import CHAMPION_KEY, decide, promote_if_better, read_champion
from kinship.checkpoint_mirror import resume_possible as _resume_possible
from kinship.engines.config import EngineConfig
from kinship.local_run import PipelineConfig, run_pipeline
from kinship.local_run import engines_half as _engines_half
from kinship.run_report import render
from kinship.engine_stages import NoEngineBuilt, require_an_engine
from kinship.manifests import ENGINES_MANIFEST_FORMAT, TRAIN_MANIFEST_FORMAT
from kinship.pipeline import ONNX_FILES, local_dataset, open_local_store, read_manifest
from kinship.storage import file_digest, parse_uri
from kinship.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = PipelineConfig(
    train=TrainConfig(epochs=1, image_size=32, width=8, embedding_dim=32, max_batches_per_epoch=4),
    precisions=("fp32", "int8"),
    engines=EngineConfig(bench_batches=(1, 8), bench_seconds=0.2, warmup_seconds=0.05),
    required_margin=-1.0,  # a 4-batch model tests the plumbing; the raw-pixel gate has its own test below
)


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    return run_pipeline(tiny_data, out, TINY, run_id="test-run"), out


def local_file(ref: dict) -> Path:
    return Path(parse_uri(ref["uri"]).key)


def strings(value):
    """Every string inside a JSON-like value."""
    if isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


@pytest.mark.slow
def test_pipeline_stores_every_artifact_with_its_digest(finished) -> None:
    result, out = finished
    train, engines = result.train, result.engines
    assert train["format"] == TRAIN_MANIFEST_FORMAT and engines["format"] == ENGINES_MANIFEST_FORMAT
    expected = {"model.pt", "metrics.json", "config.json", "calibration.npz", *ONNX_FILES}
    assert set(train["artifacts"]) == expected
    refs = list(train["artifacts"].values())
    refs += [ref for engine in engines["engines"] for ref in engine["artifacts"].values()]
    refs += list(engines["report"].values()) + list(result.report["artifacts"].values())
    for ref in refs:
        path = local_file(ref)
        assert path.is_relative_to(out / "store"), ref["uri"]
        assert file_digest(path) == (ref["sha256"], ref["size"]), ref["uri"]
    # Manifests name store objects only: no bare local path of the host that made them.
    for text in strings({"train": train, "engines": engines}):
        assert not text.startswith("/"), text


@pytest.mark.slow
def test_pipeline_builds_each_precision_and_reads_back_its_manifests(finished) -> None:
    result, _ = finished
    store = open_local_store(finished[1])
    train = read_manifest(store, result.train["manifest"], TRAIN_MANIFEST_FORMAT)
    assert train["metrics"]["best_val_auc"] == result.train["metrics"]["best_val_auc"]
    assert 0.0 <= train["metrics"]["best_val_auc"] <= 1.0
    assert train["train_config"]["max_batches_per_epoch"] == 4
    assert {e["variant"]: e["status"] for e in result.engines["engines"]} == {"fp32": "built", "int8": "built"}
    for engine in result.engines["engines"]:
        assert any(name.endswith(".onnx") for name in engine["artifacts"]), engine["artifacts"]
        assert "engine.json" in engine["artifacts"]
    with pytest.raises(Exception, match="not a kinship-engines-manifest"):
        read_manifest(store, result.train["manifest"], ENGINES_MANIFEST_FORMAT)


def test_precisions_are_benchmarked_together_after_their_builds(finished) -> None:
    result, out = finished
    report = json.loads(local_file(result.engines["report"]["report.json"]).read_text())
    rows = {row["variant"]: row for row in report["results"]}
    for variant in ("fp32", "int8"):
        bench = rows[variant]["bench"]
        assert sorted(int(batch) for batch in bench) == [1, 8]
        # one sweep over both: each timed in the same three alternating slices per batch
        assert all(len(figures["rounds_pairs_per_s"]) == 3 for figures in bench.values())
    assert report["context"]["reference_batch"] == 8 and report["context"]["ceiling"]["gflops"] > 0
    assert "alternating slices" in local_file(result.engines["report"]["report.md"]).read_text()


@pytest.mark.slow
def test_pipeline_report_and_first_champion(finished) -> None:
    result, out = finished
    text = (out / "report.md").read_text()
    assert text == local_file(result.report["artifacts"]["report.md"]).read_text()
    assert "# kinship run test-run" in text
    for variant in ("fp32", "int8"):
        assert f"| {variant} | {result.engines['backend']} | ok |" in text
    assert result.promotion["promoted"] and "no champion yet" in result.promotion["reason"]
    champion = read_champion(open_local_store(out))
    assert champion["run_id"] == "test-run"
    assert champion["model"]["sha256"] == result.train["artifacts"]["model.onnx"]["sha256"]
    assert set(result.stage_seconds) >= {"train model", "export", "calibration", "engines", "report"}


@pytest.mark.slow
def test_champion_is_only_replaced_by_a_better_model(finished) -> None:
    result, out = finished
    store = open_local_store(out)
    before = store.get_json(CHAMPION_KEY)
    auc = result.train["metrics"]["best_val_auc"]

    def candidate(run_id: str, value: float) -> dict:
        return {**result.train, "run_id": run_id, "metrics": {**result.train["metrics"], "best_val_auc": value}}

    for run_id, value in (("worse", auc - 0.01), ("tie", auc)):
        kept = promote_if_better(store, candidate(run_id, value), result.engines, required_margin=-1.0)
        assert not kept["promoted"] and "champion kept" in kept["reason"]
        assert store.get_json(CHAMPION_KEY) == before
    better = promote_if_better(store, candidate("better", auc + 0.01), result.engines, required_margin=-1.0)
    assert better["promoted"]
    after = store.get_json(CHAMPION_KEY)
    assert after["run_id"] == "better" and after["previous"] == {"run_id": "test-run", "val_auc": auc}


def test_a_run_without_a_built_engine_fails_and_is_never_promoted(finished, tiny_data, tmp_path: Path) -> None:
    result, out = finished
    store = open_local_store(out)
    before = store.get_json(CHAMPION_KEY)
    # TF32 alone on a CPU host: the report says "not applicable", and there is nothing to deploy
    engines = _engines_half(store, "tf32-only", result.train["manifest"], local_dataset(tiny_data), ["tf32"], TINY.engines,
                            tmp_path / "work", lambda event: None)
    assert [e["status"] for e in engines["engines"]] == ["not applicable"]
    with pytest.raises(NoEngineBuilt, match=r"no engine was built for run tf32-only: tf32 not applicable \(.+\); report: "):
        require_an_engine(engines)
    better = {**result.train, "run_id": "tf32-only",
              "metrics": {**result.train["metrics"], "best_val_auc": result.train["metrics"]["best_val_auc"] + 0.1}}
    kept = promote_if_better(store, better, engines)
    assert not kept["promoted"] and "no built engine" in kept["reason"]
    assert store.get_json(CHAMPION_KEY) == before
    assert require_an_engine(result.engines) is result.engines


def test_in_process_a_failed_input_and_a_failed_benchmark_degrade_as_in_the_flow(
        finished, tiny_data, tmp_path: Path, monkeypatch, caplog) -> None:
    # the flow's rules, now the library's: INT8 fetches its own calibration set, so a damaged one fails INT8
    # alone; a benchmark that breaks leaves the engines reported without speeds; failed rows get the run facts
    result, out = finished
    store = open_local_store(out)
    manifest = read_manifest(store, result.train["manifest"], TRAIN_MANIFEST_FORMAT)
    manifest.pop("manifest")
    calibration = {**manifest["artifacts"]["calibration.npz"], "sha256": "0" * 64}
    manifest["artifacts"] = {**manifest["artifacts"], "calibration.npz": calibration}
    ref = store.put_json(manifest, "runs/damaged/train/manifest.json").to_dict()

    def broken(*args, **kwargs):
        raise RuntimeError("the timer broke")

    monkeypatch.setattr(engines_build, "sweep_engines", broken)  # the benchmark's sweep
    with caplog.at_level(logging.WARNING, logger="kinship"):
        engines = _engines_half(store, "damaged", ref, local_dataset(tiny_data), ["int8", "fp32"], TINY.engines,
                                tmp_path / "work", lambda event: None)
    status = {e["variant"]: e["status"] for e in engines["engines"]}
    assert status == {"fp32": "built", "int8": "failed"}
    rows = {row["variant"]: row for row in engines["rows"]}
    assert rows["fp32"]["reason"].startswith("benchmark failed: ") and "the timer broke" in rows["fp32"]["reason"]
    assert rows["fp32"]["bench_batches"] == [] and rows["int8"]["reason"]
    assert engines["reference"] is not None and engines["environment"]  # run-wide facts, though int8 is first
    assert "int8 failed, the other precisions go on" in caplog.text
    assert "benchmark failed, engines reported without speeds" in caplog.text


def test_orchestration_imports_no_heavy_library() -> None:
    # every flow run is a fresh process that imports its flow: torch alone would add about 1.3 s to each start
    modules = sorted(f"{path.parent.name}.{path.stem}" for folder in ("flows", "tasks")
                     for path in (REPO / folder).glob("*.py") if path.stem != "__init__")
    heavy = ("torch", "onnxruntime", "tensorrt", "pycuda", "optuna")
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
            f"loaded = [h for h in {heavy!r} if h in sys.modules]; print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_a_model_that_does_not_beat_raw_pixels_is_never_promoted(finished) -> None:
    result, out = finished
    store = open_local_store(out)
    before = store.get_json(CHAMPION_KEY)
    metrics = result.train["metrics"]
    assert {"pixel_baseline_auc", "margin_over_baseline", "beats_baseline"} <= set(metrics)
    # far above the champion, but only 0.01 above raw-pixel cosine on its own validation pairs
    weak = {**result.train, "run_id": "weak",
            "metrics": {**metrics, "best_val_auc": 0.99, "pixel_baseline_auc": 0.98}}
    kept = promote_if_better(store, weak, result.engines)
    assert not kept["promoted"]
    assert "vs raw-pixel cosine 0.9800 (+0.0100: FLAGGED, not 0.02 above raw pixels): champion kept" in kept["reason"]
    assert store.get_json(CHAMPION_KEY) == before
    report = render("weak", weak, result.engines, kept, [])
    assert "FLAGGED" in report and "never promoted to champion" in report


def test_champion_decision_rule() -> None:
    assert decide(0.7, None).promote
    assert decide(0.71, {"val_auc": 0.7, "run_id": "a"}).promote
    assert not decide(0.7, {"val_auc": 0.7, "run_id": "a"}).promote
    assert not decide(0.69, {"val_auc": 0.7, "run_id": "a"}).promote
    assert not decide(float("nan"), None).promote
    assert not decide(None, {"val_auc": 0.5}).promote
    assert decide(0.6, {"run_id": "a"}).promote  # a pointer without an AUC cannot defend itself


def test_resume_only_for_the_same_configuration(tmp_path: Path) -> None:
    config = TrainConfig(epochs=2)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    (tmp_path / "config.json").write_text(json.dumps({"train": TrainConfig(epochs=2).__dict__}))
    assert _resume_possible(tmp_path, config)
    assert not _resume_possible(tmp_path, replace(config, epochs=3))
    (tmp_path / "checkpoints" / "last.pt").unlink()
    assert not _resume_possible(tmp_path, config)


def kinship_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kinship", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--precisions", "fp99"], "unknown precision fp99"),
    (["--backend", "cuda"], "unknown backend 'cuda'"),
    (["--bench-batches", "0"], "--bench-batches values must be at least 1"),
])
def test_cli_refuses_bad_settings_in_one_line(tiny_data, tmp_path: Path, args, message) -> None:
    done = kinship_cli("pipeline", "--data", str(tiny_data), "--out", str(tmp_path / "out"), *args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_unknown_train_config_fields(tiny_data, tmp_path: Path) -> None:
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"epochs": 1, "epochz": 2}))
    done = kinship_cli("pipeline", "--data", str(tiny_data), "--out", str(tmp_path / "out"), "--train-config", str(config))
    assert done.returncode == 2 and "unknown TrainConfig fields epochz" in done.stderr


def test_the_library_never_imports_prefect() -> None:
    code = ("import sys, kinship.pipeline, kinship.champion, kinship.run_report, kinship.cli.pipeline; "
            "sys.exit(1 if any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0


def test_precision_type_lists_every_engine_variant() -> None:
    from typing import get_args

    from kinship.engines.precision import PRECISIONS, PrecisionName

    assert get_args(PrecisionName) == PRECISIONS
