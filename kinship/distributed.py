"""Data-parallel training: N processes launched by torchrun, gradients averaged by DistributedDataParallel.

Gloo on CPU, NCCL on NVIDIA GPUs (RCCL on ROCm, under the same name). One process per GPU, each pinned to
``cuda:LOCAL_RANK``. What N changes and what it does not:

- the global batch is ``TrainConfig.batch_size`` whatever N is: every rank draws the same epoch of pairs from the
  same seed, cuts the same global batches, and trains on its share (pairs ``rank, rank + N, ...``); DDP averages
  the gradients, so each step follows the mean gradient of the whole global batch, with the same number of steps
  and the same learning-rate schedule as one process. (The in-batch contrastive term sees only its rank's
  share as negatives: equal in expectation, noisier per step.)
- augmentation draws from a generator seeded by (seed, epoch, rank), so ranks never repeat each other's noise;
- rank 0 alone evaluates, writes ``model.pt``, ``checkpoints/last.pt`` and ``metrics.json``; the checkpoint holds
  no rank state, so ``--resume`` continues it with any N;
- the parent (``launch``) waits on torchrun, reports each epoch as ``metrics.json`` grows, and turns a dead rank
  into one line naming the rank and its exit code (the task's retry then resumes from the last checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from kinship.errors import KinshipError, UserError
from kinship.progress import ProgressEvent, silent
from kinship.train_config import TrainConfig

log = logging.getLogger(__name__)

RDZV_ENV = "KINSHIP_RDZV_ENDPOINT"  # host:port of the rendezvous, for more than one node
_FAILED_RANK = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n?\s*exitcode\s*:\s*(-?\d+)")


class RankFailed(KinshipError):
    """A training process died; the message names its rank and exit code."""


@dataclass(frozen=True)
class Rank:
    """This process's place in the job (from torchrun's environment; a lone process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def current_rank() -> Rank:
    """The rank torchrun gave this process (RANK, WORLD_SIZE, LOCAL_RANK), or rank 0 of 1."""
    return Rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def check_config(config: TrainConfig) -> None:
    """Refuse, in one line, what data-parallel training does not support."""
    if config.nproc < 1 or config.nnodes < 1:
        raise UserError(f"--nproc and --nnodes must be at least 1 (got {config.nproc} and {config.nnodes})")
    if config.world_size > 1 and config.batch_size < config.world_size:
        raise UserError(f"--batch-size {config.batch_size} is smaller than the {config.world_size} processes sharing it")
    if config.world_size > 1 and config.folds > 1:
        raise UserError("--folds with --nproc > 1 is not supported: train the folds one process each")
    if config.world_size > 1 and config.backbone:
        raise UserError("--backbone with --nproc > 1 is not supported (its frozen trunk changes which parameters train)")


def start(device_type: str, rank: Rank):
    """Join the process group (NCCL on GPUs, Gloo on CPU) and return this rank's device."""
    import torch
    import torch.distributed as dist

    if device_type == "cuda":
        torch.cuda.set_device(rank.local_rank)
        device = torch.device("cuda", rank.local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return device


def stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def share(batch, rank: Rank):
    """This rank's pairs of a global batch: ``rank, rank + N, ...`` (every pair goes to exactly one rank)."""
    from kinship.pairs import PairSet

    if not rank.distributed:
        return batch
    pick = slice(rank.rank, None, rank.world)
    return PairSet(batch.left[pick], batch.right[pick], batch.label[pick], batch.kind[pick])


def all_sum(value: float) -> float:
    """The sum of ``value`` over every rank (a lone process: the value)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total.item())


# ---------------------------------------------------------------- the launcher (runs in the parent)


def launch(data_dir: Path, run_dir: Path, config: TrainConfig, resume: bool, on_progress=silent,
           on_checkpoint: Callable[[int], None] | None = None, cache_dir: Path | None = None) -> dict:
    """Train with ``config.nproc`` processes per node under torchrun and return rank 0's ``metrics.json``.

    Waits on torchrun, reporting each epoch as rank 0's ``metrics.json`` grows (and calling ``on_checkpoint``,
    as single-process training does). torchrun's output goes to ``run_dir/distributed.log``. Each rank runs
    ``kinship.distributed_worker`` (which calls ``kinship.train.train``: this module never imports it).
    """
    run_dir = Path(run_dir)
    argv = [sys.executable, "-m", "torch.distributed.run", *_rendezvous(config), f"--nproc-per-node={config.nproc}",
            "--max-restarts=0", "-m", "kinship.distributed_worker", json.dumps({
                "data": str(data_dir), "run": str(run_dir), "config": asdict(config), "resume": resume,
                "cache_dir": str(cache_dir) if cache_dir else None})]  # one argument: torchrun reads no options of ours
    env = dict(os.environ)
    # Each process gets its share of the cores: N processes with all threads each thrash on a small machine.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.nproc)))
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "distributed.log"
    log.info("training with %d process(es) per node on %d node(s): %s", config.nproc, config.nnodes, " ".join(argv[:8]))
    with open(log_path, "ab") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)
        seen = _watch(process, run_dir, config, on_progress, on_checkpoint)
    if process.returncode != 0:
        raise RankFailed(_failure_line(log_path, process.returncode, config, seen))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if on_checkpoint is not None and len(metrics["epochs"]) > seen:
        on_checkpoint(len(metrics["epochs"]))
    return metrics


def _rendezvous(config: TrainConfig) -> list[str]:
    if config.nnodes == 1:
        return ["--standalone"]
    endpoint = os.environ.get(RDZV_ENV, "")
    if not endpoint:
        raise UserError(f"--nnodes {config.nnodes} needs {RDZV_ENV}=host:port (the same on every node)")
    return [f"--nnodes={config.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}"]


def _watch(process: subprocess.Popen, run_dir: Path, config: TrainConfig, on_progress, on_checkpoint) -> int:
    """Until torchrun ends: one progress event (and checkpoint call) per epoch rank 0 completes; epochs seen."""
    seen = len(_epochs_done(run_dir))
    while process.poll() is None:
        time.sleep(1.0)
        epochs = _epochs_done(run_dir)
        if len(epochs) > seen:
            seen, last = len(epochs), epochs[-1]
            # the line single-process training logs, on its logger: whoever shows epochs sees these too
            logging.getLogger("kinship.train").info("epoch %d: %s", seen, last)
            on_progress(ProgressEvent(f"epoch {seen}/{config.epochs}", seen, config.epochs,
                                      {k: last[k] for k in ("train_loss", "val_auc", "images_per_second") if k in last}))
            if on_checkpoint is not None:
                on_checkpoint(seen)
    return seen


def _epochs_done(run_dir: Path) -> list[dict]:
    """Rank 0's epoch records so far (none while ``metrics.json`` is absent)."""
    try:
        return list(json.loads((run_dir / "metrics.json").read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _failure_line(log_path: Path, code: int, config: TrainConfig, epochs: int) -> str:
    """One line: which rank died with which exit code (from torchrun's error summary), and where resume goes."""
    text = log_path.read_text(errors="replace")[-20000:]
    root_cause = text[text.rfind("Root Cause"):] if "Root Cause" in text else text  # the rank that died first
    found = _FAILED_RANK.search(root_cause)
    who = f"rank {found.group(1)} of {config.world_size} exited with code {found.group(2)}" if found \
        else f"torchrun exited with code {code}"
    user_error = re.findall(r"kinship\.errors\.UserError: (.+)|UserError: (.+)", text)
    why = f" ({next(filter(None, user_error[-1]))})" if user_error else ""
    return (f"distributed training failed: {who}{why}; {epochs} epoch(s) are checkpointed and a resume continues "
            f"from there (log: {log_path})")
