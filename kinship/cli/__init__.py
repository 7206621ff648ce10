"""The ``kinship`` command line.

Each module in this package that defines ``register(subparsers)`` adds its commands; a command's
handler takes the parsed arguments and returns an exit code. User mistakes raise ``UserError`` and
end as one line on stderr with exit code 2, with no library warning printed before it (``HeldWarnings``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import threading
import warnings

from kinship import __version__
from kinship.errors import KinshipError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kinship", description="Kinship verification from face photos.")
    parser.add_argument("--version", action="version", version=f"kinship {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


# Refusals come from checking the input, within seconds of the start (a bad checkpoint: about 5 s on a busy
# 2-core machine, most of it importing torch); a warning later than this belongs to real work and is shown at once.
HOLD_SECONDS = 15.0


class HeldWarnings:
    """Hold the warnings of a command's first ``seconds``: dropped if the command is refused with a
    ``KinshipError`` (they would bury its one-line reason), shown when the hold ends or the command ends
    otherwise. After the hold every warning is shown as it comes, so a long command never sits on one.

    Shown through the ``warnings.showwarning`` in force at the start: the filters, the format and any
    redirection (``logging.captureWarnings``, pytest) stay the caller's.
    """

    def __init__(self, seconds: float = HOLD_SECONDS):
        self._seconds = seconds
        self._held: list[tuple] = []
        self._holding = True
        self._lock = threading.Lock()  # the timer's thread and the command's thread both reach the list

    def __enter__(self) -> "HeldWarnings":
        self._saved = warnings.catch_warnings()  # puts showwarning back on exit
        self._saved.__enter__()
        self._show = warnings.showwarning
        warnings.showwarning = self._hold_or_show
        self._timer = threading.Timer(self._seconds, self.release)
        self._timer.daemon = True
        self._timer.start()
        return self

    def _hold_or_show(self, *args) -> None:
        with self._lock:
            if self._holding:
                self._held.append(args)
                return
        self._show(*args)

    def release(self, show: bool = True) -> None:
        """End the hold: show what was held (or drop it when ``show`` is false); later warnings show at once."""
        with self._lock:
            held, self._held, self._holding = self._held, [], False
        for args in held if show else ():
            self._show(*args)

    def __exit__(self, kind, error, traceback) -> None:
        self._timer.cancel()
        self.release(show=not isinstance(error, KinshipError))
        self._saved.__exit__(kind, error, traceback)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        with HeldWarnings():
            return int(args.handler(args) or 0)
    except KinshipError as error:
        print(f"kinship {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"kinship {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
