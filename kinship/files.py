"""Local files written whole or not at all, their sha256, their locks, and opening only what is a regular file.

One atomic writer (``write_atomic``: a ``.NAME.partial-<random>`` sibling, renamed into place, removed on any
failure) and its folder twin (``atomic_folder``), one hasher (``file_digest``), one advisory lock (``file_lock``)
and one guarded open (``open_regular``) for the whole project.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

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


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final`` to fill; when the block ends without an error it replaces
    ``final`` (a folder already there is moved aside first and removed after, so a crash leaves either the old
    folder or the new one), and on any error it is removed. Its name carries ``PARTIAL_MARK``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = temp_sibling(final)
    partial.mkdir()
    try:
        yield partial
        previous = temp_sibling(final) if final.exists() else None
        if previous is not None:
            os.replace(final, previous)
        os.replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def file_lock(path: str | Path, exclusive: bool = True, wait: bool = True) -> Iterator[None]:
    """Hold an advisory ``flock`` on the file at ``path`` (created, with its folder, when missing) for the block:
    exclusive or shared. With ``wait=False`` a lock someone else holds raises ``BlockingIOError`` at once instead
    of waiting. The kernel drops it when the process dies, so a killed holder never leaves it stuck."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    with open(path, "a") as handle:
        fcntl.flock(handle, operation)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
