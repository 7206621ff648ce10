"""How commands speak: one JSON object on stdout with ``--json``, rich tables and bars for people."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kinship.progress import ProgressEvent

console = Console()
err_console = Console(stderr=True)


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of tables")


def print_json(payload: Any) -> None:
    """Write ``payload`` as one JSON object on stdout (numpy scalars and paths become plain values)."""
    sys.stdout.write(json.dumps(payload, default=_jsonable, sort_keys=False) + "\n")
    sys.stdout.flush()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A rich table with ``columns`` headers; numbers are right-aligned and floats shown to 4 places."""
    result = Table(title=title)
    for name in columns:
        result.add_column(name)
    for row in rows:
        result.add_row(*(_cell(value) for value in row))
    return result


def key_value_table(title: str, items: dict[str, Any]) -> Table:
    return table(title, ["", "value"], [(key, value) for key, value in items.items()])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator:
    """Yield a progress callback that draws one rich bar per stage (on stderr, so --json stays clean).

    Bars are drawn only on a terminal: piped stderr keeps errors to their one line.
    """
    if not enabled or not err_console.is_terminal:
        yield lambda event: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def on_event(event: ProgressEvent) -> None:
            if event.stage not in tasks:
                tasks[event.stage] = progress.add_task(event.stage, total=event.total, info="")
            info = "  ".join(f"{k}={_cell(v)}" for k, v in event.info.items())
            progress.update(tasks[event.stage], completed=event.done, total=event.total, info=info)

        yield on_event


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers >= 1 from the flag ``name``; a bad one is a one-line ``UserError``."""
    from kinship.errors import UserError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as error:
        raise UserError(f"{name} must be comma-separated integers, got {text!r}") from error
    if any(v < 1 for v in values):
        raise UserError(f"{name} values must be at least 1, got {text!r}")
    return values


def key_values(pairs, flag: str, known: set[str] | None = None) -> dict:
    """``KEY=VALUE`` strings as ``prefect deployment run --param`` reads them: VALUE as JSON, else as a string. A pair
    without ``=``, or a key outside ``known``, is a one-line ``UserError`` naming ``flag``."""
    import json

    from kinship.errors import UserError

    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {pair!r} is not KEY=VALUE")
        if known is not None and key not in known:
            raise UserError(f"{flag} {pair}: {key} is not a TrainConfig field")
        try:
            values[key] = json.loads(text)
        except ValueError:
            values[key] = text
    return values
