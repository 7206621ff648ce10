"""CSV files read one bounded row at a time, so that one bad row costs that row and never the file: a line that is
not UTF-8, longer than ``MAX_CSV_LINE`` or with unbalanced quotes is counted with its line number and skipped;
only the header can refuse a file. ``kinship.layout`` reads the RFIW CSVs through it."""

from __future__ import annotations

import csv
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from kinship.errors import UserError

DROP_ROW_NOT_UTF8 = "CSV row that is not UTF-8 text"
DROP_ROW_TOO_LONG = "CSV row longer than 64 KiB"
DROP_ROW_UNPARSEABLE = "CSV row that cannot be parsed (unbalanced quotes)"

MAX_CSV_LINE = 64 * 1024  # bytes; RFIW rows are under 100, and a longer one must not cost its length in memory
_BOM = b"\xef\xbb\xbf"


class RowReport(Protocol):
    """Where a dropped row is counted (``kinship.layout.CheckReport``): per reason, a count and a few examples."""

    dropped: dict[str, int]
    examples: dict[str, list[str]]

    def count(self, table: dict[str, int], reason: str, example: str | None = None) -> None:
        """Count one ``reason`` in ``table``, keeping ``example`` while the reason still collects examples."""


@contextmanager
def open_csv(
    path: Path, required: tuple[str, ...], report: RowReport, optional: tuple[str, ...] = ()
) -> Iterator[tuple[Iterator[tuple[int, list[str]]], dict[str, int]]]:
    """(rows, columns): the rows of ``path`` past its header as (line number, cells), and the index of each
    required and present optional column.

    Rows are read one physical line at a time (RFIW CSVs have no multi-line fields), so no CSV is held in
    memory whole and one bad row costs one row: a line that is not UTF-8, longer than ``MAX_CSV_LINE`` or
    with unbalanced quotes is counted in ``report`` with its line number and skipped. Only the header can
    refuse the file (``UserError``): not UTF-8 text, or a required column missing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise UserError(f"{path.name}: cannot be read ({error.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise UserError(f"{path.name}: not a regular file")
        lines = _physical_lines(handle)
        header = _header(next(lines, b""), path.name)
        missing = [name for name in required if name not in header]
        if missing:
            found = shown(",".join(header), 120) if any(header) else "nothing"
            raise UserError(f"{path.name}: expected columns {','.join(required)}, found {found}")
        columns = {name: header.index(name) for name in (*required, *optional) if name in header}
        yield _rows(lines, path.name, report), columns


def _physical_lines(handle: BinaryIO, block_size: int = 16 * 1024) -> Iterator[bytes | None]:
    """Each line of ``handle`` without its line end, or None for a line longer than ``MAX_CSV_LINE``.

    Read in blocks (a per-line ``readline`` costs half again as much on a million rows); an over-long line
    is skipped as it streams by, so memory stays one block and its lines plus one line whatever the file
    holds (16 KiB blocks: the split of a 1 MiB block alone held 7 MiB of line objects, of 64 KiB 0.5 MiB)."""
    carry, overlong = b"", False
    while block := handle.read(block_size):
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        for raw in lines:
            if overlong:  # the tail of a line already known to be too long
                overlong = False
                yield None
            else:
                yield raw.rstrip(b"\r") if len(raw) <= MAX_CSV_LINE else None
        if len(carry) > MAX_CSV_LINE:
            carry, overlong = b"", True
    if overlong:
        yield None
    elif carry:
        yield carry.rstrip(b"\r")


def _header(raw: bytes | None, name: str) -> list[str]:
    if raw is None:
        raise UserError(f"{name}: header line is longer than {MAX_CSV_LINE // 1024} KiB (not a CSV)")
    try:
        text = raw.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{name}: header line is not UTF-8 text (not a CSV)") from None
    cells = split_row(text)
    if cells is None:
        raise UserError(f"{name}: header line cannot be parsed as CSV")
    return [cell.strip() for cell in cells]


def _rows(lines: Iterator[bytes | None], name: str, report: RowReport) -> Iterator[tuple[int, list[str]]]:
    for line, raw in enumerate(lines, start=2):
        if raw is None:
            count_row(report, DROP_ROW_TOO_LONG, name, line)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            count_row(report, DROP_ROW_NOT_UTF8, name, line)
            continue
        if not text.replace(",", "").strip():
            continue  # a blank line, or only separators
        cells = split_row(text)
        if cells is None:
            count_row(report, DROP_ROW_UNPARSEABLE, name, line)
        else:
            yield line, cells


def split_row(text: str) -> list[str] | None:
    """The cells of one CSV line, or None when its quotes do not balance."""
    if '"' not in text:
        return text.split(",")  # the common case, without the csv module's per-call cost
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error:
        return None


def count_row(report: RowReport, reason: str, name: str, line: int, detail: str = "") -> None:
    """Count one dropped row of file ``name`` under ``reason``; its example names the line (and ``detail``)."""
    # the example text is only built while the reason still collects examples (a million drops stay cheap)
    full = len(report.examples.get(reason, ())) >= 5
    report.count(report.dropped, reason, None if full else f"{name} line {line}{detail}")


def cell(cells: list[str], index: int | None) -> str:
    """The stripped cell at ``index`` of a row; "" for a column the file lacks or a row too short to have it."""
    return cells[index].strip() if index is not None and index < len(cells) else ""


def read_csv(
    path: Path, required: tuple[str, ...], report: RowReport, optional: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of ``path``, one at a time, as (line number, column -> stripped value; "" when absent)."""
    with open_csv(path, required, report, optional) as (rows, columns):
        for line, cells in rows:
            yield line, {name: cell(cells, columns.get(name)) for name in (*required, *optional)}


def shown(value: str, limit: int = 80) -> str:
    """``value`` quoted for a one-line message: control characters escaped, long values cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
