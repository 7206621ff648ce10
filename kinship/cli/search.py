"""``kinship search-eval``, ``kinship index build`` and ``kinship search``: family search (RFIW Track 3).

``search-eval`` measures a model's ranking on a data set's held-out families beside random and raw-pixel
rankings; ``index build`` embeds a gallery into sharded embeddings in the store (or a folder), again only for
new or changed images; ``search`` ranks an index's images for one probe's photos.
"""

from __future__ import annotations

from pathlib import Path

from kinship.cli.output import add_json_flag, console, key_value_table, print_json, progress_bars, table


def register(subparsers) -> None:
    _register_eval(subparsers)
    _register_index(subparsers)
    _register_search(subparsers)


def _register_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "search-eval", help="family search mAP and Rank@k on held-out families, beside random and raw pixels",
        description="One probe per held-out family (all their photos) against a gallery of the other members and "
        "of distractor families; mAP and CMC Rank@1/5/10/20/50 for the model (both fusions of a probe's photos), "
        "raw-pixel cosine and random ranking, overall and per relationship type.")
    parser.add_argument("--model", type=Path, required=True, help="model.pt or exported FILE.onnx")
    parser.add_argument("--data", type=Path, required=True, help="data set folder (RFIW layout)")
    parser.add_argument("--families", type=Path, help="families JSON whose 'held_out' list is searched "
                        "(default: the validation families of --val-fraction/--seed, as the model was trained)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="the training split's validation share")
    parser.add_argument("--seed", type=int, default=0, help="the training split's seed")
    parser.add_argument("--probe-families", type=int, default=0, help="families giving a probe (0: half)")
    parser.add_argument("--distractor-families", type=int, default=-1, help="distractor families (-1: the rest)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the probe and distractor draw")
    add_json_flag(parser)
    parser.set_defaults(handler=run_eval)


def run_eval(args) -> int:
    from kinship.search.eval import SearchEvalConfig, evaluate_search, held_out_families
    from kinship.search.split import SearchSplitConfig

    config = SearchEvalConfig(
        split=SearchSplitConfig(args.probe_families, args.distractor_families, args.split_seed),
        val_fraction=args.val_fraction, seed=args.seed,
        held_out=held_out_families(args.families) if args.families else ())
    with progress_bars(enabled=not args.json) as on_progress:
        result = evaluate_search(args.model, args.data, config, on_progress)
    if args.json:
        print_json(result.to_dict())
        return 0
    console.print(key_value_table(f"search split (scored by {result.scorer})", result.split))
    columns = ["ranking", "mAP", "Rank@1", "Rank@5", "Rank@10", "Rank@20", "Rank@50"]
    console.print(table("family search", columns, [
        (name, report.overall.mean_ap, *report.overall.rank_at.values()) for name, report in result.reports.items()]))
    model_name = next(iter(result.reports))
    rows = [(kind, m.probes, *(result.reports[name].by_type[kind].mean_ap for name in result.reports),
             m.rank_at[10]) for kind, m in result.reports[model_name].by_type.items()]
    console.print(table("mAP per relationship type of the relative", ["type", "probes", *result.reports,
                                                                     "model Rank@10"], rows))
    return 0


def _register_index(subparsers) -> None:
    parser = subparsers.add_parser("index", help="build a family-search index of gallery embeddings")
    commands = parser.add_subparsers(dest="index_command", metavar="COMMAND", required=True)
    build = commands.add_parser(
        "build", help="embed a gallery into sharded embeddings plus a manifest (again: only new or changed images)",
        description="Embed every image under --images (a data set in the RFIW layout, a plain folder of photos, "
        "or an s3:// data set pushed with `kinship data push`) into shards of embeddings with a manifest (image "
        "key, person, family when known, sha256 of the image) at --out. A rerun embeds only new or changed images; "
        "a shard whose digest does not match is rebuilt; unreadable images are counted and named, not fatal.")
    build.add_argument("--model", type=Path, required=True, help="model.pt, exported FILE.onnx or engine")
    build.add_argument("--images", required=True, help="folder or s3://BUCKET/datasets/NAME")
    build.add_argument("--out", required=True, help="s3://BUCKET/indexes/NAME or a local folder")
    build.add_argument("--shard-images", type=int, default=4096, help="images per embedding shard")
    add_json_flag(build)
    build.set_defaults(handler=run_index_build)


def run_index_build(args) -> int:
    from kinship.search.index import IndexBuildConfig, build_index

    config = IndexBuildConfig(model=str(args.model), images=args.images, out=args.out, shard_images=args.shard_images)
    with progress_bars(enabled=not args.json) as on_progress:
        result = build_index(config, on_progress)
    if args.json:
        print_json(result.to_dict())
        return 0
    console.print(key_value_table(f"index {args.out}", {k: v for k, v in result.to_dict().items() if k != "bad"}))
    if result.bad:
        console.print(table("images left out", ["image", "reason"], sorted(result.bad.items())[:20]))
    return 0


def _register_search(subparsers) -> None:
    parser = subparsers.add_parser("search", help="rank an index's gallery for one person's photos")
    parser.add_argument("--index", required=True, help="s3://BUCKET/indexes/NAME or a local index folder")
    parser.add_argument("--probe", type=Path, nargs="+", required=True, help="photos of one person")
    parser.add_argument("--model", type=Path, help="model file (default: the one the index was built with)")
    parser.add_argument("--top", type=int, default=50, help="how many gallery images to list")
    parser.add_argument("--exact", action="store_true", help="exact head over the whole gallery (no shortlist)")
    add_json_flag(parser)
    parser.set_defaults(handler=run_search)


def run_search(args) -> int:
    from kinship.search.query import search_index

    with progress_bars(enabled=not args.json) as on_progress:
        result = search_index(args.index, args.probe, args.top, model=args.model, exact=args.exact,
                              on_progress=on_progress)
    if args.json:
        print_json(result.to_dict())
        return 0
    console.print(table(f"top {len(result.hits)} of {result.gallery:,} gallery images ({result.method})",
                        ["rank", "image", "person", "family", "logit"],
                        [(i + 1, h.key, h.person, h.family, h.logit) for i, h in enumerate(result.hits)]))
    return 0
