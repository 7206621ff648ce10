"""``kinship export | evaluate | submit | predict``: turning a trained model into files and answers."""

from __future__ import annotations

import json
from pathlib import Path

from kinship.cli.output import add_json_flag, console, key_value_table, print_json, progress_bars, table
from kinship.errors import UserError


def register(subparsers) -> None:
    export = subparsers.add_parser("export", help="export a checkpoint to ONNX (pair, encoder, head) and check it")
    export.add_argument("checkpoint", type=Path, help="RUN_DIR/model.pt")
    export.add_argument("--out", type=Path, required=True, help="FILE.onnx (encoder and head are written beside it)")
    export.add_argument("--data", type=Path, help="data set for the check on real images (default: the run's data)")
    export.add_argument("--opset", type=int, choices=(17, 18), default=18,
                        help="ONNX opset (default 18); 17 for TensorRT 8.5/8.6, whose ONNX parsers stop at 17 "
                             "(a Tesla M40 needs TensorRT 8.5.3)")
    add_json_flag(export)
    export.set_defaults(handler=run_export)

    evaluate = subparsers.add_parser("evaluate", help="ROC AUC, accuracy, loss, TAR@FAR and per-type accuracy")
    evaluate.add_argument("--model", type=Path, required=True, help=".pt or .onnx")
    evaluate.add_argument("--data", type=Path, required=True)
    add_json_flag(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    submit = subparsers.add_parser("submit", help="write a Kaggle submission for sample_submission.csv")
    submit.add_argument("--model", type=Path, required=True)
    submit.add_argument("--data", type=Path, required=True)
    submit.add_argument("--out", type=Path, required=True)
    add_json_flag(submit)
    submit.set_defaults(handler=run_submit)

    predict = subparsers.add_parser("predict", help="probability that two photos show blood relatives")
    predict.add_argument("--model", type=Path, required=True)
    predict.add_argument("images", type=Path, nargs=2, metavar="IMAGE")
    add_json_flag(predict)
    predict.set_defaults(handler=run_predict)


def _run_data_dir(checkpoint: Path) -> Path:
    config = checkpoint.parent / "config.json"
    try:
        return Path(json.loads(config.read_text())["data"])
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"pass --data: {config} does not name the training data") from error


def run_export(args) -> int:
    from kinship.checkpoint import read_checkpoint
    from kinship.export import export_checkpoint, validation_sample

    if args.out.suffix != ".onnx":
        raise UserError(f"--out must name a .onnx file, got {args.out}")
    metadata = read_checkpoint(args.checkpoint).get("metadata", {})
    size = int(metadata.get("train_config", {}).get("image_size", 0)) or None
    data_dir = args.data or _run_data_dir(args.checkpoint)
    if size is None:
        raise UserError(f"{args.checkpoint} records no image size: not a trained kinship model")
    with progress_bars(enabled=not args.json) as on_progress:
        img0, img1 = validation_sample(data_dir, metadata, size, on_progress=on_progress)
        files, checks = export_checkpoint(args.checkpoint, args.out, img0, img1, opset=args.opset)
    result = {
        "files": {name: str(path) for name, path in zip(("pair", "encoder", "head"), files.all())},
        "sizes": {name: path.stat().st_size for name, path in zip(("pair", "encoder", "head"), files.all())},
        "checks": checks,
        "opset": args.opset,
    }
    if args.json:
        print_json(result)
    else:
        rows = [(c["name"], c["samples"], c["max_abs_diff"], c["max_rel_diff"]) for c in checks]
        console.print(table(f"ONNX opset {args.opset}; ONNX Runtime vs PyTorch (rtol 1e-3, atol 1e-5): passed",
                            ["file", "samples", "max abs diff", "max rel diff"], rows))
    return 0


def run_evaluate(args) -> int:
    from kinship.evaluate import evaluate_model

    with progress_bars(enabled=not args.json) as on_progress:
        report = evaluate_model(args.model, args.data, on_progress=on_progress)
    if args.json:
        print_json(report.to_dict())
        return 0
    for name, part in (("validation families", report.validation), ("test pairs", report.test)):
        if part is None:
            continue
        summary = {k: v for k, v in part.to_dict().items() if k not in ("accuracy_by_type", "pairs_by_type")}
        console.print(key_value_table(f"{args.model.name} on {name}", summary))
        rows = [(kind, part.pairs_by_type[kind], acc) for kind, acc in part.accuracy_by_type.items()]
        console.print(table("accuracy by relationship type", ["type", "pairs", "accuracy"], rows))
    for note in report.notes:
        console.print(f"note: {note}")
    return 0


def run_submit(args) -> int:
    from kinship.predict import write_submission

    with progress_bars(enabled=not args.json) as on_progress:
        summary = write_submission(args.model, args.data, args.out, on_progress=on_progress)
    payload = {k: str(v) if isinstance(v, Path) else v for k, v in summary.__dict__.items()}
    print_json(payload) if args.json else console.print(key_value_table("submission written", payload))
    return 0


def run_predict(args) -> int:
    from kinship.predict import predict_pair

    prediction = predict_pair(args.model, *args.images)
    if args.json:
        print_json(prediction.__dict__)
    else:
        verdict = "" if prediction.related is None else (" (related)" if prediction.related else " (not related)")
        console.print(f"P(kin) = {prediction.probability:.4f}{verdict}")
    return 0
