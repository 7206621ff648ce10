"""Errors the CLI reports as one line (no traceback), each with its exit code."""


class KinshipError(Exception):
    """An expected failure with a one-line message."""

    exit_code = 1


class UserError(KinshipError):
    """Bad input (a file, a value, a name): shown as one line, no traceback, exit code 2."""

    exit_code = 2


class CheckFailed(KinshipError):
    """A conversion did not reproduce its source within tolerance (export vs torch, engine vs FP32)."""

    exit_code = 1


class ArtifactMismatch(KinshipError):
    """An artifact is not the one a stage recorded or asked for: a data set pushed again after training, a file
    changed on disk since it was fetched, an engine built by another backend. Permanent: waiting never fixes it,
    so tasks do not retry it."""

    exit_code = 1


def first_line(error: BaseException, limit: int | None = None, typed: bool = False) -> str:
    """The first line of ``error``'s message, cut at ``limit`` characters; with ``typed``, after its type's name
    (``ValueError: ...``). An error without a message gives its type's name: the line is never empty."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    text = lines[0][:limit]
    return f"{type(error).__name__}: {text}" if typed else text


def reason_of(error: BaseException) -> str:
    """One line for a report: a KinshipError's own message, else the type and first line."""
    if isinstance(error, KinshipError):
        return first_line(error, 300) if str(error).strip() else ""
    return first_line(error, 300, typed=True)
