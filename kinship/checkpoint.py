"""Checkpoints: what a ``.pt`` file holds, and loading it safely.

Files hold only tensors and plain Python values so they load with ``torch.load(weights_only=True)``:
a checkpoint is never unpickled as arbitrary code.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from kinship import __version__
from kinship.errors import UserError, first_line
from kinship.files import write_atomic
from kinship.model import KinshipNet, ModelConfig, build_model

FORMAT = "kinship-checkpoint/1"


def save_atomic(payload: dict, path: Path) -> None:
    """Write ``payload`` with torch.save to a temp name, then rename: never a half-written ``.pt``."""
    write_atomic(path, lambda handle: torch.save(payload, handle))


def model_payload(model: KinshipNet, metadata: dict) -> dict:
    """The content of ``model.pt``: architecture, weights and what produced them."""
    return {
        "format": FORMAT,
        "code_version": __version__,
        "model_config": model.config.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": metadata,
    }


def read_checkpoint(path: Path) -> dict:
    """Load a kinship checkpoint's payload, refusing anything else with a one-line ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # torch warns about the pickle protocol of a file torch.save did not write: the file is refused (or
        # read) all the same, and the warning would only bury the one-line answer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for non-checkpoints; all mean the same to a user
        raise UserError(f"{path} is not a kinship checkpoint ({type(error).__name__})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a kinship checkpoint (format {_format_of(payload)!r}, expected {FORMAT!r})")
    return payload


def _format_of(payload) -> str | None:
    return payload.get("format") if isinstance(payload, dict) else type(payload).__name__


def load_model(path: Path) -> tuple[KinshipNet, dict]:
    """The network in ``path`` in eval mode, and the checkpoint's metadata."""
    payload = read_checkpoint(path)
    try:
        config = ModelConfig(**payload["model_config"])
        model = build_model(config)
        model.load_state_dict(payload["model_state"])
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        raise UserError(f"{path}: weights do not fit the kinship architecture: {first_line(error, 200)}") from error
    model.eval()
    return model, dict(payload.get("metadata", {}))
