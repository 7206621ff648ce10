"""``kinship data ...``: commands about data sets in the Kaggle RFIW layout.

``data check DIR|URI`` reads a data set (a pushed one is fetched and sha256-verified first), decodes every
image once and says what it kept, dropped and fixed. ``data versions``, ``data pull`` and ``data prune`` work on
the versions ``data push`` writes (``kinship.data_versions``).
More subcommands join the group by adding one ``add_...(group)`` call in ``register``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from kinship.cli.output import add_json_flag, console, err_console, key_value_table, print_json, progress_bars, table
from kinship.layout import CheckReport, dataset_fingerprint, read_dataset


def register(subparsers) -> None:
    from kinship.cli.data_push import add_push_command

    group = data_group(subparsers)
    add_check(group)
    add_push_command(group)
    add_versions(group)
    add_pull(group)
    add_prune(group)


def data_group(subparsers):
    """Create the ``data`` command and return its subparsers, for each ``data`` subcommand to join."""
    parser = subparsers.add_parser("data", help="inspect and move data sets in the Kaggle RFIW layout")
    parser.set_defaults(handler=lambda args: _print_help(parser))
    return parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def add_check(group) -> None:
    parser = group.add_parser(
        "check",
        help="read a data set, decode every image, and report what was kept, dropped and fixed",
        description="Read DIR (train/FXXXX/MIDn/*.jpg, train_relationships.csv, optional test/ and "
        "sample_submission.csv), decode every image once, and report counts, what was dropped or fixed "
        "and why, and the data set fingerprint. A data set pushed with `kinship data push` can be named by "
        "its URI (s3://bucket/datasets/NAME or file:///folder): it is fetched into the scratch folder, every "
        "file checked against its manifest, first. Exit 0 when readable, 2 when not.",
    )
    parser.add_argument("dir", metavar="DIR|URI", help="the data set folder, or the URI of a pushed data set")
    add_json_flag(parser)
    parser.set_defaults(handler=run_check)


def run_check(args) -> int:
    """Handler of ``kinship data check``."""
    # Bars only on a terminal: piped stderr stays one line per error.
    with progress_bars(enabled=err_console.is_terminal) as on_progress:
        dataset = read_dataset(local_copy(args.dir, on_progress), on_progress=on_progress)
        fingerprint = dataset_fingerprint(dataset, on_progress=on_progress)
    if args.json:
        print_json(check_payload(dataset.root, dataset.report, fingerprint))
    else:
        _print_tables(dataset.report, fingerprint)
    return 0


def local_copy(dir_or_uri: str, on_progress=lambda event: None) -> Path:
    """The folder to read: ``dir_or_uri`` itself, or a verified copy of the data set pushed at that URI."""
    if "://" not in dir_or_uri:
        return Path(dir_or_uri)
    from kinship.pipeline import fetch_dataset  # imports torch: only when there is something to fetch

    return fetch_dataset(dir_or_uri, on_progress=on_progress).path


def check_payload(root: Path, report: CheckReport, fingerprint: str) -> dict:
    """The ``--json`` object of ``data check``."""
    return {
        "root": str(root),
        "counts": _counts(report),
        "image_sizes": report.image_sizes,
        "dropped": report.dropped,
        "fixed": report.fixed,
        "notes": report.notes,
        "examples": report.examples,
        "fingerprint": fingerprint,
    }


def _counts(report: CheckReport) -> dict:
    return {
        "families": report.families,
        "people": report.people,
        "images": report.images,
        "relationships": report.relationships,
        "test_images": report.test_images,
        "test_pairs": report.test_pairs,
        "common_size": report.common_size,
    }


def _print_tables(report: CheckReport, fingerprint: str) -> None:
    console.print(key_value_table("Data set", _counts(report)))
    for title, reasons in (("Dropped", report.dropped), ("Fixed (kept)", report.fixed)):
        if reasons:
            rows = [(escape(reason), count, escape(", ".join(report.examples.get(reason, [])[:3])))
                    for reason, count in reasons.items()]
            console.print(table(title, ["reason", "count", "examples"], rows))
        else:
            console.print(f"{title}: nothing")
    if len(report.image_sizes) > 1:
        sizes = ", ".join(f"{size} x{count}" for size, count in report.image_sizes.items())
        console.print(f"Image sizes: {sizes}")
    for note in report.notes:
        console.print(f"Note: {escape(note)}")
    console.print(f"Fingerprint: {fingerprint}")


# ---------------------------------------------------------------- versions


def _add_store_flag(parser) -> None:
    parser.add_argument("--store", default=None, metavar="URI",
                        help="the artifact store holding the champion and its history (default: KINSHIP_BUCKET / "
                        "KINSHIP_PREFIX, as the flows)")


def _champion_store(uri: str | None):
    from kinship.cli.champion import open_store

    return open_store(uri)


def add_versions(group) -> None:
    parser = group.add_parser("versions", help="list a pushed data set's versions and what references each",
                              description="List the versions of the data set at URI (s3://bucket/datasets/NAME), "
                              "newest first: when pushed, families, people, images, digest, whether latest, and "
                              "which runs (recorded uses) and which champion (pointer or history) reference it.")
    parser.add_argument("uri", metavar="URI")
    _add_store_flag(parser)
    add_json_flag(parser)
    parser.set_defaults(handler=run_versions)


def run_versions(args) -> int:
    """Handler of ``kinship data versions``."""
    from dataclasses import asdict

    from kinship.data_versions import list_versions

    versions = list_versions(args.uri, champion_store=_champion_store(args.store))
    if args.json:
        print_json([asdict(info) for info in versions])
        return 0
    rows = [(info.version + (" (latest)" if info.latest else ""), info.created or "before versions", info.families,
             info.people, info.images, info.sha256[:16], escape("; ".join(info.references))) for info in versions]
    console.print(table(f"versions of {escape(args.uri)}", ["version", "pushed", "families", "people", "images",
                                                           "sha256", "referenced by"], rows))
    return 0


def add_pull(group) -> None:
    parser = group.add_parser("pull", help="fetch one version of a pushed data set into a folder",
                              description="Fetch URI (…/datasets/NAME: the latest version; NAME@ID: that version) "
                              "through this host's cache, exactly as the flows do, every file verified, and copy it "
                              "into DIR (missing or empty).")
    parser.add_argument("uri", metavar="URI[@VERSION]")
    parser.add_argument("dir", type=Path, metavar="DIR")
    add_json_flag(parser)
    parser.set_defaults(handler=run_pull)


def run_pull(args) -> int:
    """Handler of ``kinship data pull``."""
    from kinship.data_versions import pull

    with progress_bars(enabled=not args.json) as on_progress:
        resolved, dest = pull(args.uri, args.dir, on_progress=on_progress)
    payload = {**resolved.to_dict(), "dir": str(dest)}
    if args.json:
        print_json(payload)
    else:
        console.print(key_value_table("data pull", payload))
    return 0


def add_prune(group) -> None:
    parser = group.add_parser("prune", help="remove old versions no champion or recent run references",
                              description="Remove the versions of URI beyond the newest --keep, except the latest, "
                              "any the champion or its history references and any a run recorded in the last "
                              "--days; then the shards no remaining version names. Not while a push of the same "
                              "data set is under way.")
    parser.add_argument("uri", metavar="URI")
    parser.add_argument("--keep", type=int, required=True, metavar="N", help="newest versions kept in any case")
    parser.add_argument("--days", type=float, default=30.0, metavar="D",
                        help="keep versions a run recorded in the last D days (default 30)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    _add_store_flag(parser)
    add_json_flag(parser)
    parser.set_defaults(handler=run_prune)


def run_prune(args) -> int:
    """Handler of ``kinship data prune``."""
    from dataclasses import asdict

    from kinship.data_versions import prune

    result = prune(args.uri, args.keep, args.days, champion_store=_champion_store(args.store), dry_run=args.dry_run)
    if args.json:
        print_json(asdict(result))
        return 0
    verb = "would remove" if result.dry_run else "removed"
    console.print(f"{verb} {len(result.removed)} version(s): {', '.join(result.removed) or 'none'}"
                  + ("" if result.dry_run else f"; {result.shards_removed} shard(s) no kept version names"))
    if result.kept:
        console.print(table("kept", ["version", "why"], sorted(result.kept.items())))
    return 0
