"""``kinship tune``: search the training recipe on the user's own families (``kinship.tune``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from kinship.cli.output import add_json_flag, console, key_values, print_json, progress_bars, table


def register(subparsers) -> None:
    from kinship.tune import TuneConfig

    defaults = TuneConfig()
    parser = subparsers.add_parser("tune", help="search the training recipe on your own validation families (Optuna)")
    parser.add_argument("--data", type=Path, required=True, help="data set folder (RFIW layout)")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for recipe.json, trials.csv, the plots, trial runs and (by default) the study")
    parser.add_argument("--budget-minutes", type=float, default=defaults.budget_minutes,
                        help="time of the study's trials, summed over every process that joins it (default %(default)s)")
    parser.add_argument("--trials", type=int, default=0, help="stop after this many finished trials (0 = budget only)")
    parser.add_argument("--storage", default="", help="Optuna storage URL shared by every process of the study, e.g. "
                        "postgresql+psycopg2://user:pass@host/db (default: sqlite in --out)")
    parser.add_argument("--study", default="kinship-tune", help="study name; processes with the same one share trials")
    parser.add_argument("--holdout", type=float, default=defaults.holdout_fraction,
                        help="share of families no trial opens, scored at the end (default %(default)s)")
    parser.add_argument("--folds", type=int, default=defaults.folds,
                        help="groups of the other families: trials train on all but one and are scored on it")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="family roles and the sampler's seed")
    parser.add_argument("--required-margin", type=float, default=defaults.required_margin,
                        help="the best recipe must beat raw-pixel cosine by this on validation, else no recipe")
    parser.add_argument("--init", default="", help="a pretrained model.pt (kinship pretrain): the search may start from it")
    parser.add_argument("--min-epochs", type=int, default=defaults.min_epochs)
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig field every trial keeps, e.g. --set batch_size=32")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def fixed_fields(pairs: list[str]) -> dict:
    """``key=value`` strings as TrainConfig fields (values parsed as JSON where they can be); an unknown field is
    one line."""
    from dataclasses import fields

    from kinship.train_config import TrainConfig

    return key_values(pairs, "--set", {f.name for f in fields(TrainConfig)})


def run(args) -> int:
    from kinship.tune import TuneConfig, tune

    config = TuneConfig(budget_minutes=args.budget_minutes, trials=args.trials, holdout_fraction=args.holdout,
                        folds=args.folds, seed=args.seed, image_size=args.image_size, device=args.device, init=args.init,
                        required_margin=args.required_margin,
                        min_epochs=args.min_epochs, max_epochs=args.max_epochs, fixed=fixed_fields(args.set))
    if not args.json:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("kinship.tune").setLevel(logging.INFO)
    with progress_bars(enabled=not args.json) as on_progress:
        result = tune(args.data, args.out, config, args.storage, args.study, on_progress)
    if args.json:
        print_json(result.to_dict())
    else:
        _print(result)
    if result.recipe_path is None:
        print(f"kinship tune: {result.message}", file=sys.stderr)
        return 1
    return 0


def _print(result) -> None:
    rows = [["best trial (validation fold)", result.val_auc, result.pixel_val_auc, result.val_auc - result.pixel_val_auc]]
    if result.defaults_val_auc is not None:
        rows.append(["defaults (validation fold)", result.defaults_val_auc, result.pixel_val_auc,
                     result.defaults_val_auc - result.pixel_val_auc])
    rows.append(["best trial (held-out families)", result.held_out_auc, result.pixel_held_out_auc,
                 result.held_out_auc - result.pixel_held_out_auc])
    if result.defaults_held_out_auc is not None:
        rows.append(["defaults (held-out families)", result.defaults_held_out_auc, result.pixel_held_out_auc,
                     result.defaults_held_out_auc - result.pixel_held_out_auc])
    trials = ", ".join(f"{n} {state}" for state, n in sorted(result.trials.items()))
    console.print(table(f"recipe search: {trials} in {result.spent_minutes:.1f} min; families {result.families}",
                        ["model", "AUC", "raw pixels", "margin"], rows))
    if result.recipe_path:
        console.print(f"{result.message} -> {result.recipe_path} (kinship train --recipe {result.recipe_path})")
    console.print(f"trial table {result.table_path}; plots " + ", ".join(str(p) for p in result.plots))
