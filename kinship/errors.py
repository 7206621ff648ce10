"""Errors that are the user's mistake: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a file, a value, a name): shown as one line, no traceback, exit code 2."""

    exit_code = 2
