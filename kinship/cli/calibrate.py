"""``kinship calibrate``: draw the INT8 calibration set (training families only) into one ``.npz``."""

from __future__ import annotations

from pathlib import Path

from kinship.cli.output import add_json_flag, console, key_value_table, print_json, progress_bars, table


def register(subparsers) -> None:
    from kinship.engines.calibration import CalibrationConfig

    defaults = CalibrationConfig()
    parser = subparsers.add_parser(
        "calibrate", help="draw a stratified INT8 calibration set of pairs from the training families",
        description="Draw batches*batch-size pairs from the TRAINING families of DIR (never validation "
        "families): half kin, spread evenly over relationship types, half unrelated. Writes normalised "
        "float32 img0/img1 with metadata to --out, atomically. Image size and split come from --model "
        "(its metadata and the run's config.json) unless given.",
    )
    parser.add_argument("--data", type=Path, required=True, help="data set folder (RFIW layout)")
    parser.add_argument("--out", type=Path, required=True, help="FILE.npz to write")
    parser.add_argument("--batches", type=int, default=defaults.batches)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="pairs per batch")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the pair drawing")
    parser.add_argument("--model", type=Path, help="the exported .onnx: image size and training split from it")
    parser.add_argument("--image-size", type=int, help="image size (default: from --model, else 64)")
    parser.add_argument("--val-fraction", type=float, help="share of families held out at training")
    parser.add_argument("--split-seed", type=int, help="seed of the training family split")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def _image_size(args) -> int:
    from kinship.model_facts import read_model_facts

    if args.image_size:
        return args.image_size
    if args.model is None:
        return 64
    return read_model_facts(args.model).image_size


def run(args) -> int:
    """Handler of ``kinship calibrate``."""
    from kinship.data import SplitConfig
    from kinship.engines.build import training_split
    from kinship.engines.calibration import CalibrationConfig, build_calibration_set, save_calibration

    config = CalibrationConfig(batches=args.batches, batch_size=args.batch_size, seed=args.seed)
    size = _image_size(args)
    val_fraction, split_seed, source = training_split(args.model, args.val_fraction, args.split_seed)
    split = SplitConfig(val_fraction=val_fraction, seed=split_seed)
    with progress_bars(enabled=not args.json) as on_progress:
        calibration = build_calibration_set(args.data, size, split, config, on_progress=on_progress)
    path = save_calibration(calibration, args.out)
    summary = {"out": str(path), "bytes": path.stat().st_size, "split_source": source, **calibration.meta}
    if args.json:
        print_json(summary)
        return 0
    meta = calibration.meta
    console.print(key_value_table("calibration set", {
        "file": str(path), "pairs": meta["pairs"], "image size": meta["image_size"],
        "families used": f"{len(meta['families_used'])} of {meta['train_families']} training families",
        "split": f"val_fraction={split.val_fraction} seed={split.seed} ({source})",
        "data fingerprint": meta["data_fingerprint"][:16], "bytes": summary["bytes"],
    }))
    console.print(table("pairs per type", ["type", "pairs"], sorted(meta["counts_by_type"].items())))
    return 0
