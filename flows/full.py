"""``kinship``: the whole job. Runs ``kinship-train`` (rocm pool) then ``kinship-engines`` (cuda pool) as nested
deployment runs, promotes the model to champion only if it beats the current one, and writes the report."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.naming import full_run_name
from kinship.baseline import REQUIRED_MARGIN
from kinship.champion_compare import DEFAULT_LEVEL
from kinship.engines.calibration import CalibrationConfig
from kinship.engines.config import EngineConfig
from kinship.engines.precision import DEFAULT_PRECISIONS, PrecisionName
from kinship.train_config import TrainConfig
from tasks.orchestration import (
    nothing_new, plan_run, promote_champion, publish_report, resolve_inputs, run_engines, run_training,
)
from tasks.tuning import choose_recipe


@flow(name="kinship", flow_run_name=full_run_name)
def kinship_flow(dataset_uri: str, train: TrainConfig = TrainConfig(), precisions: list[PrecisionName] = [p.value for p in DEFAULT_PRECISIONS],
                 engines: EngineConfig = EngineConfig(), calibration: CalibrationConfig = CalibrationConfig(),
                 force: bool = False, required_margin: float = REQUIRED_MARGIN, fan_out: bool = False,
                 recipe: str = "", split: Literal["stable", "seeded"] = "stable",
                 promotion_level: float = DEFAULT_LEVEL, only_if_new: bool = True) -> dict:
    """Train on ``dataset_uri``, build engines at ``precisions``, promote if better, report; ``force`` skips caches.

    ``recipe``: "" trains with ``train``; the store URI of a ``recipe.json`` (``kinship/tune``) trains with it;
    ``latest`` with the last recipe tuned for this data set (``train`` while there is none). A recipe decides the
    training; ``train``'s host knobs (device, AMP, processes) stay.

    ``required_margin``: how far the model's validation AUC must beat raw-pixel cosine on the same pairs for
    the model to be promoted to champion (a model below it is flagged in the report and never promoted).
    ``fan_out``: the engines run builds each precision as its own child run on the ``cuda`` pool.

    ``dataset_uri``: ``…/datasets/NAME`` trains on its latest version (resolved once, recorded), ``NAME@VERSION`` on
    that one. ``split``: ``stable`` (the store's families by a keyed hash of their ids: the same train / validation /
    held-out roles in every version) or ``seeded`` (``train.val_fraction`` and ``train.seed``, as before versions).
    With ``only_if_new`` (and not ``force``), a run whose data version, code commit and training configuration are
    those of an earlier decided run (promoted or refused) ends at once ("nothing new since run X"), with no child run. With the stable split the champion and the new model score the
    same held-out pairs, and the new model is promoted only when the lower bound of the AUC difference's paired
    bootstrap interval (``promotion_level``) is above 0."""
    run = plan_run(dataset_uri, precisions, engines)
    train = choose_recipe(recipe, dataset_uri, train) if recipe else train
    inputs = resolve_inputs(run, dataset_uri, train, split, only_if_new and not force)
    if inputs["nothing_new"]:
        return nothing_new(run, inputs)
    train_manifest = run_training(run, inputs["dataset"]["uri"], inputs["train"], calibration, force)
    engines_manifest = run_engines(run, train_manifest, engines, force, fan_out)
    promotion = promote_champion(run, inputs, train_manifest, engines_manifest, required_margin, promotion_level)
    return publish_report(run, train_manifest, engines_manifest, promotion)
