"""The ``kinship`` command line.

Each module in this package that defines ``register(subparsers)`` adds its commands; a command's
handler takes the parsed arguments and returns an exit code. User mistakes raise ``UserError`` and
end as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KinshipError as error:
        print(f"kinship {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"kinship {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
