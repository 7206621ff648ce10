"""What the CPU benchmark scripts share: their command line and the model files they time.

``engines_cpu.py`` and ``investigate_cpu.py`` both import this module; it imports neither of them,
and they find it beside themselves (a script's own folder is first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

DEMO = Path("/work/runs/demo")
DATA = Path("/work/data/synth")


def parse_args(argv=None, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", type=Path, default=DEMO, help="folder with model.pt and model.onnx")
    parser.add_argument("--data", type=Path, default=DATA, help="data set whose test pairs shape the scoring comparison")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per engine per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="*", default=None, help="thread counts to compare (default: cores, then 1)")
    parser.add_argument("--investigate", action="store_true", help="also try ORT/PyTorch settings (opt level, spinning, layout)")
    return parser.parse_args(argv)


def model_files(run: Path) -> tuple[Path, Path, str]:
    """(model.pt, model.onnx, where they came from): the run folder's, or a fresh random-weight export."""
    if (run / "model.pt").is_file() and (run / "model.onnx").is_file():
        return run / "model.pt", run / "model.onnx", f"{run} (trained)"
    import torch

    from kinship.checkpoint import model_payload, save_atomic
    from kinship.export import export_checkpoint
    from kinship.model import ModelConfig, build_model

    folder = Path(tempfile.mkdtemp(prefix="kinship-bench-"))
    torch.manual_seed(0)
    save_atomic(model_payload(build_model(ModelConfig()).eval(), {"val_threshold": 0.0}), folder / "model.pt")
    images = np.random.default_rng(0).integers(0, 256, size=(16, 64, 64, 3), dtype=np.uint8)
    export_checkpoint(folder / "model.pt", folder / "model.onnx", images[:8], images[8:])
    return folder / "model.pt", folder / "model.onnx", f"{folder} (random weights: {run} has no model.pt + model.onnx)"
