"""``kinship pretrain``: train the encoder on a mixture of generated styles, a start for ``train``/``tune --init``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from kinship.cli.output import add_json_flag, console, print_json, progress_bars, table


def register(subparsers) -> None:
    from kinship.pretrain import PretrainConfig
    from kinship.synth import STYLE_NAMES
    from kinship.train_config import TrainConfig

    defaults, recipe = PretrainConfig(), TrainConfig()
    parser = subparsers.add_parser("pretrain", help="pretrain the encoder on a mixture of synthetic styles "
                                   "(a start for kinship train --init / kinship tune --init)")
    parser.add_argument("--styles", default=",".join(defaults.styles),
                        help=f"comma-separated generator styles to mix, from {', '.join(STYLE_NAMES)} (default %(default)s)")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for model.pt, pretrain.json, the run's files and the generated data/")
    parser.add_argument("--families", type=int, default=defaults.families, help="train families per style (default %(default)s)")
    parser.add_argument("--size", "--image-size", dest="image_size", type=int, default=defaults.image_size,
                        help="image side in pixels, drawn and trained at (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=recipe.epochs)
    parser.add_argument("--width", type=int, default=recipe.width, help="channels of the first encoder stage")
    parser.add_argument("--pool-grid", type=int, default=recipe.pool_grid,
                        help="encoder pools its last feature map to a GRID x GRID layout (1 = global average)")
    parser.add_argument("--embedding-dim", type=int, default=recipe.embedding_dim, help="width of the face embedding")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=recipe.device)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="draws the families and seeds the training")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes drawing families (output does not depend on it)")
    parser.add_argument("--max-batches-per-epoch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true",
                        help="replace the pretrained model in --out (generated styles with the same settings are reused)")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from kinship.pretrain import PretrainConfig, parse_styles, pretrain
    from kinship.train_config import TrainConfig

    recipe = TrainConfig(epochs=args.epochs, width=args.width, pool_grid=args.pool_grid, embedding_dim=args.embedding_dim,
                         device=args.device, seed=args.seed, max_batches_per_epoch=args.max_batches_per_epoch)
    config = PretrainConfig(styles=parse_styles(args.styles), families=args.families, image_size=args.image_size,
                            seed=args.seed, workers=args.workers, train=recipe)
    if not args.json:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    with progress_bars(enabled=not args.json) as on_progress:
        result = pretrain(config, args.out, on_progress, force=args.force)
    summary = result.as_dict()
    if args.json:
        print_json(summary)
        return 0
    rows = [[style, result.mixture.families[style], result.mixture.people[style], result.mixture.images[style],
             "reused" if style in result.reused else "generated"] for style in result.styles]
    console.print(table(f"pretraining mixture {result.mixture.root}", ["style", "families", "people", "images", "data"], rows))
    console.print(f"best epoch {result.best_epoch}: validation AUC {result.best_val_auc:.4f} (raw pixels "
                  f"{result.pixel_val_auc:.4f}) on {result.precision} in {result.minutes:.1f} min -> {result.model}")
    console.print(f"fine-tune: kinship train --init {result.model} {_architecture_flags(result.train_config)} ...; "
                  f"or let the search choose: kinship tune --init {result.model} --image-size {result.train_config.image_size}")
    return 0


def _architecture_flags(config) -> str:
    # --init needs the same architecture: these are the flags that decide it
    return (f"--image-size {config.image_size} --width {config.width} --embedding-dim {config.embedding_dim} "
            f"--pool-grid {config.pool_grid}")
