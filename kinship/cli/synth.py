"""``kinship synth``: write a synthetic data set in the Kaggle RFIW layout."""

from __future__ import annotations

import os
from pathlib import Path

from kinship.cli.output import add_json_flag, console, key_value_table, print_json, progress_bars, table
from kinship.synth import STYLE_NAMES, SynthConfig, SynthSummary, generate

DEFAULTS = SynthConfig()


def register(subparsers) -> None:
    parser = subparsers.add_parser("synth", help="generate synthetic families in the Kaggle RFIW layout")
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must be absent or empty)")
    parser.add_argument("--families", type=int, default=DEFAULTS.families, help=f"train families (default {DEFAULTS.families})")
    parser.add_argument("--test-families", type=int, default=DEFAULTS.test_families,
                        help=f"separate families photographed for test/ (default {DEFAULTS.test_families})")
    parser.add_argument("--size", type=int, default=DEFAULTS.size, help=f"image side in pixels (default {DEFAULTS.size})")
    parser.add_argument("--style", choices=STYLE_NAMES, default=DEFAULTS.style,
                        help=f"which generator draws the people (default {DEFAULTS.style}); see README, transfer benchmark")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="same seed, byte-identical output")
    parser.add_argument("--nuisance", type=float, default=DEFAULTS.nuisance,
                        help="scale of per-photo variation: 0 = studio photos, 1 = default, up to 3")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes drawing families (output does not depend on it)")
    parser.add_argument("--force", action="store_true", help="replace an existing data set in --out")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    config = SynthConfig(families=args.families, test_families=args.test_families, size=args.size,
                         seed=args.seed, nuisance=args.nuisance, workers=args.workers, style=args.style)
    with progress_bars(enabled=not args.json) as on_progress:
        summary = generate(config, args.out, on_progress, force=args.force)
    if args.json:
        print_json(summary.as_dict())
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary: SynthSummary) -> None:
    figures = summary.as_dict()
    relationships = figures.pop("relationships")
    figures["MB on disk"] = round(figures.pop("bytes") / 1e6, 1)
    console.print(key_value_table(f"synthetic data set {summary.out}", figures))
    console.print(table("train relationships by type", ["type", "pairs"], sorted(relationships.items())))
