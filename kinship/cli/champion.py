"""``kinship champion show | history | rollback``: the champion pointer, its history, and going back.

The store is ``--store URI`` (``s3://bucket[/prefix]`` or ``file:///folder``), else the one the flows use
(``KINSHIP_BUCKET`` / ``KINSHIP_PREFIX``, or the in-process store under ``KINSHIP_SCRATCH``).
"""

from __future__ import annotations

import argparse

from rich.markup import escape

from kinship.cli.output import add_json_flag, console, key_value_table, print_json, table


def register(subparsers) -> None:
    parser = subparsers.add_parser("champion", help="the champion model: show it, its history, roll it back")
    parser.set_defaults(handler=lambda args: _print_help(parser))
    group = parser.add_subparsers(dest="champion_command", metavar="SUBCOMMAND")
    show = group.add_parser("show", help="the champion pointer: run, AUC, data version, code commit, engines")
    history = group.add_parser("history", help="every promotion, refusal and rollback, newest first")
    history.add_argument("--limit", type=int, default=None, help="only the newest LIMIT entries")
    back = group.add_parser("rollback", help="make an earlier champion the champion again (compare-and-swap)",
                            description="Restore the pointer the previous champion (or --to RUN) was promoted with. "
                            "If any run is promoted meanwhile, nothing is rolled back (exit 2): no promotion is lost.")
    back.add_argument("--to", dest="to_run", default=None, metavar="RUN", help="the run to restore (default: the previous champion)")
    back.add_argument("--reason", required=True, help="why, recorded in the pointer and the history")
    for command, handler in ((show, run_show), (history, run_history), (back, run_rollback)):
        command.add_argument("--store", default=None, metavar="URI",
                             help="the artifact store (default: KINSHIP_BUCKET / KINSHIP_PREFIX, as the flows)")
        add_json_flag(command)
        command.set_defaults(handler=handler)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def open_store(uri: str | None):
    """The store named by ``--store``, else the flows' store from the environment."""
    from kinship.storage import StoreSettings, store_from_settings, store_from_uri

    settings = StoreSettings.from_env()
    return store_from_uri(uri, settings) if uri else store_from_settings(settings)


def run_show(args) -> int:
    """Handler of ``kinship champion show``."""
    from kinship.champion import CHAMPION_KEY, read_champion

    store = open_store(args.store)
    pointer = read_champion(store)
    if args.json:
        print_json(pointer)
    elif pointer is None:
        console.print(f"no champion yet ({store.uri(CHAMPION_KEY)})")
    else:
        console.print(key_value_table("champion", _summary(pointer)))
    return 0


def _summary(pointer: dict) -> dict:
    dataset = pointer.get("dataset") or {}
    rollback = pointer.get("rollback") or {}
    return {"run": pointer.get("run_id"), "val_auc": pointer.get("val_auc"), "promoted": pointer.get("promoted"),
            "data set": dataset.get("uri"), "data version": pointer.get("data_version"),
            "code commit": pointer.get("code_commit"), "engines": ", ".join(pointer.get("engines") or []),
            "model": (pointer.get("model") or {}).get("uri"),
            "previous": (pointer.get("previous") or {}).get("run_id"),
            **({"rolled back from": f"{rollback.get('from_run_id')}: {rollback.get('reason')}"} if rollback else {})}


def run_history(args) -> int:
    """Handler of ``kinship champion history``."""
    from kinship.champion import history_rows, read_history

    entries = read_history(open_store(args.store), args.limit)
    if args.json:
        print_json(entries)
        return 0
    rows = history_rows(entries)
    columns = ["at", "kind", "run", "champion", "data_version", "code_commit", "reason"]
    console.print(table("champion history (newest first)", columns,
                        [[escape(str(row[column] if row[column] is not None else "")) for column in columns] for row in rows]))
    return 0


def run_rollback(args) -> int:
    """Handler of ``kinship champion rollback``."""
    from kinship.champion import rollback

    outcome = rollback(open_store(args.store), args.reason, args.to_run)
    if args.json:
        print_json(outcome)
    else:
        console.print(escape(outcome["reason"]))
    return 0
