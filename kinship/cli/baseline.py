"""``kinship baseline``: raw-pixel cosine similarity on the validation pairs."""

from __future__ import annotations

from pathlib import Path

from kinship.cli.output import add_json_flag, console, key_value_table, print_json, progress_bars
from kinship.data import SplitConfig, prepare


def register(subparsers) -> None:
    parser = subparsers.add_parser("baseline", help="ROC AUC of raw-pixel cosine similarity on validation pairs")
    parser.add_argument("--data", type=Path, required=True, help="data set folder (RFIW layout)")
    parser.add_argument("--seed", type=int, default=0, help="family split seed")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from kinship.baseline import BASELINE_SIZE, pixel_baseline

    with progress_bars(enabled=not args.json) as on_progress:
        prepared = prepare(args.data, BASELINE_SIZE, SplitConfig(seed=args.seed), on_progress=on_progress)
    result = pixel_baseline(prepared)
    if args.json:
        print_json(result.to_dict())
    else:
        console.print(key_value_table("raw-pixel baseline (validation pairs)", result.to_dict()))
    return 0
