"""Flow run names built from a run's parameters (data set and configuration), shown in the Prefect UI."""

from __future__ import annotations

from prefect.runtime import flow_run


def _dataset_name(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1] or str(uri)


def _config_tag(train) -> str:
    """The training configuration in a few characters; fields not given are TrainConfig's defaults."""
    from kinship.train_config import TrainConfig

    config = TrainConfig.from_dict(train) if isinstance(train, dict) else train
    text = f"e{config.epochs}-{config.image_size}px-w{config.width}"
    return text + (f"-b{config.max_batches_per_epoch}" if config.max_batches_per_epoch else "")


def full_run_name() -> str:
    """``<data set>-e<epochs>-<size>px-w<width>-<precisions>``, e.g. ``demo-e14-64px-w24-fp32+fp16+int8``."""
    parameters = flow_run.get_parameters()
    precisions = "+".join(parameters.get("precisions") or [])
    return f"{_dataset_name(parameters['dataset_uri'])}-{_config_tag(parameters.get('train') or {})}-{precisions}"


def train_run_name() -> str:
    """``train-<data set>-<config>-<run id>``."""
    parameters = flow_run.get_parameters()
    name = f"train-{_dataset_name(parameters['dataset_uri'])}-{_config_tag(parameters.get('train') or {})}"
    return name + (f"-{parameters['run_id']}" if parameters.get("run_id") else "")


def engines_run_name() -> str:
    """``engines-<precisions>-<run id>``."""
    parameters = flow_run.get_parameters()
    name = "engines-" + "+".join(parameters.get("precisions") or [])
    return name + (f"-{parameters['run_id']}" if parameters.get("run_id") else "")


def engine_build_run_name() -> str:
    """``engine-<precision>-<run id>``."""
    parameters = flow_run.get_parameters()
    name = f"engine-{parameters.get('precision')}"
    return name + (f"-{parameters['run_id']}" if parameters.get("run_id") else "")


def tune_run_name() -> str:
    """``tune-<data set>-<budget>min``."""
    parameters = flow_run.get_parameters()
    search = parameters.get("search") or {}
    budget = search.get("budget_minutes", 20) if isinstance(search, dict) else search.budget_minutes
    return f"tune-{_dataset_name(parameters['dataset_uri'])}-{budget:g}min"


def tune_trials_run_name() -> str:
    """``trials-<study>`` or ``finish-<study>``."""
    parameters = flow_run.get_parameters()
    return f"{'finish' if parameters.get('finish') else 'trials'}-{parameters.get('study')}"
