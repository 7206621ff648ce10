"""``kinship data push DIR URI``: upload a data set folder as a new version (``kinship.data_versions``).

A sharded push (the default) writes an immutable version named by its manifest's digest and moves ``URI/latest``;
the same content again makes no new version. ``--shard-mib 0`` still writes the unversioned layout of earlier
releases (one object per file, a manifest in ``URI/``).

This module registers nothing by itself (no ``register``); the ``data`` command group calls
``add_push_command(data_subparsers)`` to add ``push``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kinship.cli.output import add_json_flag, console, key_value_table, print_json, progress_bars
from kinship.data_versions import PushResult, emit_pushed_event, push_version
from kinship.errors import KinshipError, UserError
from kinship.progress import ProgressEvent
from kinship.shards import DEFAULT_SHARD_BYTES, MiB
from kinship.storage import MANIFEST_NAME, StoreSettings, count_not_followed, parse_uri, store_from_uri

SHOWN_SKIPS = 5  # skipped links named in the table and on stderr; --json carries them all (up to 1000)


class Terminated(KinshipError):
    """SIGTERM during a push: the uploads under way were aborted, nothing half-stored is left."""

    exit_code = 128 + signal.SIGTERM


def add_push_command(data_subparsers) -> argparse.ArgumentParser:
    """Add ``push`` to the ``data`` command group's subparsers and return its parser."""
    parser = data_subparsers.add_parser(
        "push",
        help="upload a data set folder to the artifact store (with a sha256 manifest)",
        description="Upload every file under DIR below URI, packed into tar shards of about --shard-mib MiB, "
        "then a manifest naming each shard's and each file's sha256, as a new version of the data set "
        "(URI/versions/ID, ID the manifest's digest) that URI/latest then names; identical content makes no new "
        "version. When PREFECT_API_URL is set, a new latest version sends the Prefect event kinship.dataset.pushed. "
        "(--shard-mib 0: one object per file and no versions, the layout of earlier releases, which fetch still "
        "reads.) "
        "Shards (files) already stored with the same sha256 are skipped, so an interrupted push can simply be rerun. "
        "Symbolic links and special files inside DIR are never followed: they are skipped and named. "
        "Endpoint and credentials come from AWS_ENDPOINT_URL_S3 / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; "
        "a server that is down is retried for KINSHIP_RETRY_WINDOW seconds (default 45) before giving up.",
    )
    parser.add_argument("dir", type=Path, help="local folder holding the data set")
    parser.add_argument("uri", help="destination, e.g. s3://kinship/datasets/rfiw (or file:///folder)")
    parser.add_argument("--shard-mib", type=_shard_mib, default=DEFAULT_SHARD_BYTES // MiB, metavar="MIB",
                        help=f"target shard size in MiB (default {DEFAULT_SHARD_BYTES // MiB}; 0: one object per file)")
    add_json_flag(parser)
    parser.set_defaults(handler=run_push)
    return parser


def run_push(args: argparse.Namespace) -> int:
    """Handler for ``kinship data push``: upload, then report the data set's URI and what was not followed."""
    if not args.dir.is_dir():
        raise UserError(f"not a folder: {args.dir}")
    location = parse_uri(args.uri, allow_empty_key=True)
    if location.scheme == "s3" and not location.key:
        raise UserError(f"{args.uri}: name a folder inside the bucket, e.g. s3://{location.bucket}/datasets/NAME")
    settings = StoreSettings.from_env()
    store = store_from_uri(args.uri, settings)
    last: list[ProgressEvent] = []
    pushed = None
    with progress_bars(enabled=not args.json) as draw, _sigterm_interrupts():

        def on_progress(event: ProgressEvent) -> None:
            last[:] = [event]
            draw(event)

        if args.shard_mib:
            pushed = push_version(args.dir, args.uri, args.shard_mib * MiB, settings, on_progress)
        else:
            store.put_tree(args.dir, "", on_progress)
    manifest = f"{pushed.dataset.uri}/{MANIFEST_NAME}" if pushed else store.uri(MANIFEST_NAME)
    summary = {**_summary(args.uri, manifest, last[0].info if last else {}), **_version_summary(pushed)}
    if summary["skipped_links"]:
        print(f"kinship data push: {_skip_line(summary)}", file=sys.stderr)
    warning = emit_pushed_event(pushed) if pushed and pushed.moved else None
    if warning:
        print(f"kinship data push: warning: {warning}", file=sys.stderr)
    if args.json:
        print_json(summary)
    else:
        shown = dict(summary, skipped_link_names=_named(summary["skipped_link_names"], summary["skipped_links"]))
        console.print(key_value_table("data push", shown))
        console.print(summary["note"])
        console.print(summary["uri"])
    return 0


def _shard_mib(text: str) -> int:
    """``--shard-mib``: a whole number of MiB, 0 for one object per file."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or value > 4096:
        raise argparse.ArgumentTypeError(f"--shard-mib must be a whole number from 0 to 4096, not {text!r}")
    return value


def _summary(uri: str, manifest: str, counts: dict) -> dict:
    """What the push did; ``uploaded``/``skipped`` count shards, or files when there are no shards."""
    return {
        "uri": uri.rstrip("/"),
        "manifest": manifest,
        "files": counts.get("files", 0),
        "shards": counts.get("shards", 0),
        "uploaded": counts.get("uploaded", 0),
        "skipped": counts.get("skipped", 0),
        "bytes_uploaded": counts.get("bytes", 0),
        "removed_stale_shards": counts.get("removed", 0),
        "skipped_links": counts.get("skipped_links", 0),
        "skipped_link_names": list(counts.get("skipped_link_names", [])),
    }


def _version_summary(pushed: PushResult | None) -> dict:
    """The version part of the summary: which version, whether it is new, what ``latest`` named before."""
    if pushed is None:
        return {"version": None, "note": "--shard-mib 0: one object per file, no versions"}
    dataset = pushed.dataset
    note = (f"new version {dataset.version}" if pushed.created
            else f"no new version: this content is version {dataset.version}")
    note += f", now latest (was {pushed.previous})" if pushed.moved else ", already latest"
    return {"version": dataset.version, "version_uri": dataset.uri, "sha256": dataset.sha256,
            "new_version": pushed.created, "latest_moved": pushed.moved, "previous": pushed.previous, "note": note}


def _skip_line(summary: dict) -> str:
    count = summary["skipped_links"]
    return f"skipped {count_not_followed(count)} (not followed): {_named(summary['skipped_link_names'], count)}"


def _named(names: list[str], count: int) -> str:
    shown = ", ".join(names[:SHOWN_SKIPS])
    return f"{shown}, ... ({count - SHOWN_SKIPS} more)" if count > SHOWN_SKIPS else shown


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While pushing, SIGTERM (a service stopping, ``kill``) raises ``Terminated`` in the main thread, so the
    uploads under way are aborted as for Ctrl-C; by default Python dies at once and leaves their parts behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame) -> None:
        raise Terminated("terminated (SIGTERM); the uploads under way were aborted: push again to finish")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
