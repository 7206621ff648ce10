"""``kinship train``: train the Siamese network into a run folder."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path

from kinship.cli.output import add_json_flag, console, print_json, progress_bars, table


def register(subparsers) -> None:
    from kinship.train_config import TrainConfig

    defaults = TrainConfig()
    parser = subparsers.add_parser("train", help="train the Siamese network (AMP on GPU, CPU fallback)")
    parser.add_argument("--data", type=Path, required=True, help="data set folder (RFIW layout)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (config, metrics, checkpoints, model.pt)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (warm-up, then cosine)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--width", type=int, default=defaults.width, help="channels of the first encoder stage")
    parser.add_argument("--pool-grid", type=int, default=defaults.pool_grid,
                        help="encoder pools its last feature map to a GRID x GRID layout (1 = global average)")
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim, help="width of the face embedding")
    parser.add_argument("--arch", choices=("residual", "seed"), default=defaults.arch, help="seed = the original 3-layer CNN")
    parser.add_argument("--amp", choices=("auto", "off", "fp16", "bf16", "on"), default=defaults.amp,
                        help="mixed precision: auto (default) = bf16 where the GPU has fast bf16 (CUDA SM 8.0+, ROCm "
                             "gfx90a/gfx94x/gfx11xx), fp16 + grad scaler on other GPUs (pre-Ampere, RDNA1/RDNA2), "
                             "off on a CPU; fp16 / bf16 / off as asked; on = the old rule (bf16 wherever torch "
                             "supports it, else fp16; bf16 on a CPU)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--pairs-per-relationship", type=int, default=defaults.pairs_per_relationship,
                        help="kin pairs drawn per relationship per epoch (as many non-kin pairs are added)")
    parser.add_argument("--shift", type=int, default=defaults.shift, help="augmentation: random translation in pixels")
    parser.add_argument("--jitter", type=float, default=defaults.jitter, help="augmentation: brightness/contrast change")
    for name, what in (("rotate", "largest rotation, degrees"), ("zoom", "largest relative change of scale"),
                       ("colour", "largest gain per colour channel"), ("blur", "share of photos blurred"),
                       ("noise", "largest sensor-noise std"), ("erase", "share of photos with a patch painted over")):
        parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name), help=f"augmentation: {what}")
    parser.add_argument("--identity-weight", type=float, default=defaults.identity_weight,
                        help="weight of the identity-classifier loss (0 = off)")
    parser.add_argument("--contrastive-weight", type=float, default=defaults.contrastive_weight,
                        help="weight of the in-batch kin contrastive loss (0 = off)")
    parser.add_argument("--backbone", default="", help="pretrained trunk instead of our encoder: resnet18, resnet50 "
                        "(torchvision layout), iresnet50, iresnet100 (insightface backbone.pth layout); 112 px")
    parser.add_argument("--backbone-weights", default="", help="the weight file for --backbone (never downloaded)")
    parser.add_argument("--freeze-epochs", type=int, default=defaults.freeze_epochs,
                        help="with --backbone: epochs training only the projection and head (default %(default)s)")
    parser.add_argument("--backbone-lr-scale", type=float, default=defaults.backbone_lr_scale,
                        help="with --backbone: the trunk's learning rate relative to --lr once unfrozen")
    parser.add_argument("--folds", type=int, default=defaults.folds,
                        help="train K models, each holding out a different group of families; model.pt is their "
                             "ensemble (mean logit) and the cross-validated AUC is reported with its spread")
    parser.add_argument("--nproc", type=int, default=defaults.nproc,
                        help="data-parallel processes per node (torchrun + DDP: one per GPU; Gloo on CPU)")
    parser.add_argument("--nnodes", type=int, default=defaults.nnodes,
                        help="nodes taking part (needs KINSHIP_RDZV_ENDPOINT=host:port on every node)")
    parser.add_argument("--max-batches-per-epoch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--init", default="", help="start from this model.pt (same architecture, e.g. kinship "
                        "pretrain's); the default is random weights")
    parser.add_argument("--recipe", type=Path, help="a recipe.json from kinship tune: its values replace the defaults "
                        "(flags given on the command line still win)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_json_flag(parser)
    parser.set_defaults(handler=run, _defaults={a.dest: a.default for a in parser._actions})


def run(args) -> int:
    from kinship.train import TrainConfig, train

    from kinship.errors import UserError

    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if args.recipe is not None:
        from dataclasses import asdict, replace

        from kinship.tune import load_recipe

        # the recipe replaces the defaults; a flag typed on the command line (not at its default) still wins
        typed = {k: v for k, v in given.items() if v != args._defaults.get(k)}
        config = replace(load_recipe(args.recipe), **typed)
        given = asdict(config)
    config = TrainConfig(**given)
    if config.folds < 1 or config.folds > 20:
        raise UserError(f"--folds must be between 1 and 20, got {config.folds}")
    if not args.json:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    with progress_bars(enabled=not args.json) as on_progress:
        result = train(args.data, args.out, config, resume=args.resume, on_progress=on_progress)
    summary = {
        "run_dir": str(result.run_dir),
        "model": str(result.run_dir / "model.pt"),
        "best_epoch": result.best_epoch,
        "best_val_auc": result.best_auc,
        "precision": result.precision,
        **result.baseline.to_dict(),
        "epochs": result.history,
    }
    if result.fold_aucs:
        summary.update(folds=len(result.fold_aucs), cv_auc=result.best_auc, cv_auc_std=result.cv_auc_std,
                       fold_val_aucs=list(result.fold_aucs))
    if args.json:
        print_json(summary)
        return 0
    columns = ["epoch", "train_loss", "val_auc", "val_accuracy", "val_loss", "epoch_seconds", "images_per_second"]
    if result.fold_aucs:
        rows = [[k + 1, auc] for k, auc in enumerate(result.fold_aucs)]
        console.print(table(f"{len(rows)} folds on {result.precision}", ["fold", "best val_auc"], rows))
        console.print(f"cross-validated AUC {result.best_auc:.4f} +- {result.cv_auc_std:.4f} (std over folds); "
                      f"model.pt is the {len(rows)}-fold ensemble (mean logit)")
    else:
        console.print(table(f"training on {result.precision}", columns, [[r[c] for c in columns] for r in result.history]))
    console.print(f"best epoch {result.best_epoch}: {result.baseline.sentence()} -> {summary['model']}",
                  style=None if result.baseline.beats_baseline else "bold red")
    return 0
