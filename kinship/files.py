"""Local files written whole or not at all, their sha256, and opening only what is a regular file.

One atomic writer (``write_atomic``: a ``.NAME.partial-<random>`` sibling, renamed into place, removed on any
failure), one hasher (``file_digest``) and one guarded open (``open_regular``) for the whole project.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

MiB = 1024 * 1024
PARTIAL_MARK = ".partial-"  # in every temporary name: listings skip them, tests look for leftovers


class NotRegularFile(OSError):
    """A symbolic link, fifo, socket or device where a regular file was expected: never followed or read."""


def file_digest(path: str | Path, chunk: int = 4 * MiB) -> tuple[str, int]:
    """sha256 hex digest and size in bytes of a local file, read in ``chunk``-byte blocks."""
    with open(path, "rb") as handle:
        return stream_digest(handle, chunk)


def stream_digest(handle: BinaryIO, chunk: int = 4 * MiB) -> tuple[str, int]:
    """sha256 hex digest and byte count of what is left to read in ``handle``."""
    digest = hashlib.sha256()
    size = 0
    while block := handle.read(chunk):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def temp_sibling(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (unique across the threads and processes writing it)."""
    return path.with_name(f".{path.name}{PARTIAL_MARK}{uuid.uuid4().hex[:12]}")


def unlink_quietly(path: Path) -> None:
    """Remove ``path`` if it is there."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def write_atomic(path: str | Path, content: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write ``content`` (bytes, UTF-8 text, or a function that writes to an open binary file) to ``path``
    through a temporary sibling renamed into place: ``path`` is either its old self or complete, never
    half-written, and the temporary file is gone whatever happens."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    try:
        with open(temp, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(temp, path)
    finally:
        unlink_quietly(temp)
    return path


def open_regular(path: str | Path, follow_links: bool = False, root: str | Path | None = None) -> BinaryIO:
    """``path`` opened for reading only if it is a regular file. Never through a symbolic link (unless
    ``follow_links``: a file a user named), never blocking on a fifo, never opening a device: lstat first, then
    O_NOFOLLOW | O_NONBLOCK and fstat, so what is read is the file that was checked.

    With ``root`` (a folder ``path`` lies below), no folder between ``root`` and the file may be a link either:
    O_NOFOLLOW guards only the last component, so a folder swapped for a link after a listing would lead outside
    (``open_below``). Raises ``NotRegularFile`` (an ``OSError``) for anything else, ``OSError`` when it cannot be
    opened."""
    if root is not None:
        return open_below(Path(root), Path(path).relative_to(root).as_posix())
    try:
        mode = (os.stat if follow_links else os.lstat)(path).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW))
    except NotRegularFile:
        raise
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO):  # became a link, or a socket, since the lstat
            raise NotRegularFile(error.errno, "not a regular file", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(fd, "rb")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_below(root: Path, relative: str) -> BinaryIO:
    """The regular file at ``relative`` below ``root``, reached folder by folder through directory descriptors
    (each opened O_DIRECTORY | O_NOFOLLOW relative to the last): a link anywhere below ``root`` is refused, not
    followed, whenever it was put there. ``root`` itself may be a link (the caller named it).
    Raises ``NotRegularFile`` for a link or special file on the way, ``OSError`` when it cannot be opened, and
    ``ValueError`` for a ``relative`` that is not a plain path below ``root`` (``..``, ``.``, empty or absolute:
    ``..`` is a real folder entry, so O_NOFOLLOW would not stop it climbing out)."""
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a plain path below {root}: {relative!r}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):  # a link or a file where a folder was listed
                    raise NotRegularFile(error.errno, "not a regular file (a folder on its path is not)",
                                         str(root / relative)) from None
                raise
            os.close(fd)
            fd = next_fd
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO):
                raise NotRegularFile(error.errno, "not a regular file", str(root / relative)) from None
            raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise NotRegularFile(errno.EINVAL, "not a regular file", str(root / relative))
    return os.fdopen(file_fd, "rb")
