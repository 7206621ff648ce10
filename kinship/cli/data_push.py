"""``kinship data push DIR URI``: upload a data set folder with its manifest.

This module registers nothing by itself (no ``register``); the ``data`` command group calls
``add_push_command(data_subparsers)`` to add ``push``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kinship.cli.output import add_json_flag, console, key_value_table, print_json, progress_bars
from kinship.errors import UserError
from kinship.progress import ProgressEvent
from kinship.storage import MANIFEST_NAME, StoreSettings, parse_uri, store_from_uri


def add_push_command(data_subparsers) -> argparse.ArgumentParser:
    """Add ``push`` to the ``data`` command group's subparsers and return its parser."""
    parser = data_subparsers.add_parser(
        "push",
        help="upload a data set folder to the artifact store (with a sha256 manifest)",
        description="Upload every file under DIR below URI, then a manifest naming each file's sha256. "
        "Files already stored with the same sha256 are skipped, so an interrupted push can simply be rerun. "
        "Endpoint and credentials come from AWS_ENDPOINT_URL_S3 / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; "
        "a server that is down is retried for KINSHIP_RETRY_WINDOW seconds (default 45) before giving up.",
    )
    parser.add_argument("dir", type=Path, help="local folder holding the data set")
    parser.add_argument("uri", help="destination, e.g. s3://kinship/datasets/rfiw (or file:///folder)")
    add_json_flag(parser)
    parser.set_defaults(handler=run_push)
    return parser


def run_push(args: argparse.Namespace) -> int:
    """Handler for ``kinship data push``: upload, then report the data set's URI."""
    if not args.dir.is_dir():
        raise UserError(f"not a folder: {args.dir}")
    location = parse_uri(args.uri, allow_empty_key=True)
    if location.scheme == "s3" and not location.key:
        raise UserError(f"{args.uri}: name a folder inside the bucket, e.g. s3://{location.bucket}/datasets/NAME")
    store = store_from_uri(args.uri, StoreSettings.from_env())
    last: list[ProgressEvent] = []
    with progress_bars(enabled=not args.json) as draw:

        def on_progress(event: ProgressEvent) -> None:
            last[:] = [event]
            draw(event)

        refs = store.put_tree(args.dir, "", on_progress)
    counts = last[0].info if last else {}
    summary = {
        "uri": args.uri.rstrip("/"),
        "manifest": store.uri(MANIFEST_NAME),
        "files": len(refs),
        "uploaded": counts.get("uploaded", 0),
        "skipped": counts.get("skipped", 0),
        "bytes_uploaded": counts.get("bytes", 0),
    }
    if args.json:
        print_json(summary)
    else:
        console.print(key_value_table("data push", summary))
        console.print(summary["uri"])
    return 0
