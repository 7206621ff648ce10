"""Data-parallel training (kinship.distributed): 2 Gloo processes under torchrun against 1 process, checkpoints from
rank 0 only, a killed rank named in one line, and a resume with another process count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kinship.cli import main

KINSHIP = str(Path(sys.prefix) / "bin" / "kinship")
SMALL = ["--image-size", "32", "--width", "8", "--embedding-dim", "32", "--batch-size", "64", "--lr", "5e-3"]


@pytest.fixture(scope="module")
def mid_data(tmp_path_factory) -> Path:
    """80 families: a validation split of 16 families, enough pairs for AUCs that mean something at 0.02."""
    from kinship.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("ddp") / "mid"
    generate(SynthConfig(families=80, test_families=4, size=48, seed=5), out)
    return out


def train_cli(data: Path, out: Path, *extra: str) -> dict:
    done = subprocess.run([KINSHIP, "train", "--data", str(data), "--out", str(out), *SMALL, *extra, "--json"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_two_gloo_processes_train_the_model_one_process_trains(mid_data: Path, tmp_path: Path) -> None:
    one = train_cli(mid_data, tmp_path / "one", "--epochs", "10")
    two = train_cli(mid_data, tmp_path / "two", "--epochs", "10", "--nproc", "2")
    print(f"validation AUC: 1 process {one['best_val_auc']:.4f}, 2 processes {two['best_val_auc']:.4f}; "
          f"pixel baseline {one['pixel_baseline_auc']:.4f}")
    assert abs(one["best_val_auc"] - two["best_val_auc"]) <= 0.02
    assert two["best_val_auc"] > one["pixel_baseline_auc"] - 0.05  # it learned, not a coincidence at chance
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and [e["epoch"] for e in metrics["epochs"]] == list(range(1, 11))
    # one writer: exactly the files of a single-process run (plus torchrun's log), nothing per rank
    written = sorted(p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*") if p.is_file())
    single = sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert written == sorted([*single, "distributed.log"])


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the training process with ``RANK=rank`` below ``parent`` (read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"kinship.distributed" in cmdline and \
                f"TORCHELASTIC_RUN_ID".encode() in b"".join(environ) and str(parent).encode() in _ancestry(entry.name):
            return int(entry.name)
    return None


def _ancestry(pid: str) -> bytes:
    chain = []
    while pid and pid != "0":
        chain.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = stat.rsplit(")", 1)[1].split()[1]
    return " ".join(chain).encode()


@pytest.mark.slow
def test_a_killed_rank_is_one_line_and_resume_continues_with_any_count(mid_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    training = subprocess.Popen([KINSHIP, "train", "--data", str(mid_data), "--out", str(run), *SMALL,
                                 "--epochs", "4", "--nproc", "2", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (run / "metrics.json").exists():  # rank 0 finished epoch 1
        assert training.poll() is None and time.monotonic() < deadline, training.communicate()
        time.sleep(0.2)
    victim = rank_pid(training.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    out, err = training.communicate(timeout=300)
    assert training.returncode == 1 and out == "" and err.count("\n") == 1, err
    assert "rank 1 of 2 exited with code -9" in err and "resume continues" in err and "Traceback" not in err
    done = json.loads((run / "metrics.json").read_text())["epochs"]
    assert 1 <= len(done) < 4
    resumed = train_cli(mid_data, run, "--resume", "--nproc", "1")  # another process count: no rank state is kept
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3, 4]
    assert resumed["epochs"][: len(done)] == done  # the epochs before the kill are kept, not trained again


@pytest.mark.parametrize("args, named", [
    (["--nproc", "0"], "--nproc and --nnodes must be at least 1"),
    (["--nproc", "2", "--folds", "2"], "--folds with --nproc > 1"),
    (["--nproc", "2", "--nnodes", "2"], "KINSHIP_RDZV_ENDPOINT"),
    (["--nproc", "4", "--batch-size", "2"], "smaller than the 4 processes"),
])
def test_unsupported_process_layouts_are_one_line(tmp_path: Path, tiny_data: Path, capsys, monkeypatch, args, named) -> None:
    monkeypatch.delenv("KINSHIP_RDZV_ENDPOINT", raising=False)
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--epochs", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and not (tmp_path / "run" / "checkpoints").exists()
