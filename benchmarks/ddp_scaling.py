#!/usr/bin/env python3
"""Data-parallel training: images/s with 1 and 2 processes (torchrun + Gloo on this CPU), gradient bytes per step,
and the communication time per step it implies on a multi-GPU host at stated link speeds.

On a 2-core machine the point is correctness and overhead, not speed: 2 processes share the same 2 cores that 1
process uses with 2 threads. The projection is arithmetic on the measured gradient size: a ring all-reduce moves
2 (N-1)/N x the gradient bytes through each GPU's link per step.

Usage, from the repository root::

    .venv/bin/python benchmarks/ddp_scaling.py [--families 80] [--epochs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kinship.train_config import TrainConfig  # noqa: E402

# Per-GPU link bandwidths a user would have (one direction, what NCCL/RCCL reach in practice, stated not measured).
LINKS = {"PCIe 3.0 x16 (~12 GB/s)": 12e9, "PCIe 4.0 x16 (~24 GB/s)": 24e9, "NVLink 3 (~250 GB/s)": 250e9}
TRAIN = ["--image-size", "64", "--width", "16", "--embedding-dim", "128", "--batch-size", "64"]


def images_per_second(data: Path, out: Path, nproc: int, epochs: int) -> dict:
    done = subprocess.run([str(Path(sys.prefix) / "bin" / "kinship"), "train", "--data", str(data), "--out", str(out),
                           *TRAIN, "--epochs", str(epochs), "--nproc", str(nproc), "--json"],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    later = result["epochs"][1:] or result["epochs"]  # the first epoch carries start-up (threads, allocator)
    return {"nproc": nproc, "images_per_second": sum(e["images_per_second"] for e in later) / len(later),
            "val_auc": result["best_val_auc"]}


def gradient_bytes(people: int) -> int:
    """fp32 gradient bytes per step: the model's parameters plus the identity classifier's (one row per person)."""
    import torch

    config = TrainConfig(image_size=64, width=16, embedding_dim=128)
    from kinship.model import build_model

    model = build_model(config.model_config())
    with torch.no_grad():
        width = int(model.encoder(torch.zeros(1, 3, 64, 64)).shape[1])
    return 4 * (sum(p.numel() for p in model.parameters()) + people * width)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from kinship.synth import SynthConfig, generate

    with tempfile.TemporaryDirectory(prefix="kinship-ddp-") as temp:
        data = Path(temp) / "data"
        generate(SynthConfig(families=args.families, test_families=4, size=64, seed=5), data)
        rows = [images_per_second(data, Path(temp) / f"run{n}", n, args.epochs) for n in (1, 2)]
        people = sum(1 for _ in (data / "train").glob("F*/MID*"))
    grad = gradient_bytes(int(people * 0.8))
    projection = {name: {gpus: 2 * (gpus - 1) / gpus * grad / bandwidth * 1e3 for gpus in (2, 4)}
                  for name, bandwidth in LINKS.items()}
    report = {"measured": rows, "gradient_bytes_per_step": grad, "allreduce_ms_per_step": projection}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    base = rows[0]["images_per_second"]
    print(f"{'processes':>10}{'images/s':>11}{'vs 1':>7}{'val AUC':>9}")
    for row in rows:
        print(f"{row['nproc']:>10}{row['images_per_second']:>11.0f}{row['images_per_second'] / base:>7.2f}"
              f"{row['val_auc']:>9.3f}")
    print(f"gradient per step: {grad / 1e6:.2f} MB (fp32: parameters + identity classifier)")
    print("ring all-reduce time per step (no overlap with compute assumed):")
    for name, by_gpus in projection.items():
        print(f"  {name:<26}" + "  ".join(f"{gpus} GPUs {ms:.3f} ms" for gpus, ms in by_gpus.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
