"""``kinship data ...``: commands about data sets in the Kaggle RFIW layout.

``data check DIR|URI`` reads a data set (a pushed one is fetched and sha256-verified first), decodes every
image once and says what it kept, dropped and fixed.
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
