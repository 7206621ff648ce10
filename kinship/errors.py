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


def reason_of(error: BaseException) -> str:
    """One line for a report: a KinshipError's own message, else the type and first line."""
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return text if isinstance(error, KinshipError) else f"{type(error).__name__}: {text}".rstrip(": ")
