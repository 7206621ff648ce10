"""Reading local files for upload without following links: one regular file opened and hashed through the same
handle, a folder listed as lstat sees it, and an atomic copy out. A push cannot carry a file from outside its
folder (``/etc/passwd`` planted as a photo, or a folder swapped for a link after the listing) into the store."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from kinship.errors import UserError
from kinship.files import NotRegularFile, open_regular, stream_digest, write_atomic
from kinship.store.keys import MANIFEST_NAME, join_key, validate_key
from kinship.store.settings import MiB

NOT_FOLLOWED = "symbolic link or special file"  # what put_tree skips, in messages


@dataclass(frozen=True)
class _LocalFile:
    """A regular file opened for upload, with the digest of the bytes read from that same handle."""

    path: Path
    handle: BinaryIO
    sha256: str
    size: int


def _open_regular(path: Path, root: Path | None = None) -> BinaryIO:
    """``files.open_regular``, its refusals as one-line ``UserError``s naming the path."""
    try:
        return open_regular(path, root=root)
    except NotRegularFile:
        raise UserError(f"not a regular file ({NOT_FOLLOWED}, not followed): {path}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None


@contextmanager
def _regular_file(path: Path, root: Path | None = None) -> Iterator[_LocalFile]:
    """``path`` opened by ``_open_regular`` and hashed; uploads read the same handle, so the bytes sent are the
    bytes hashed from the file that was checked, even if the path (or, below ``root``, a folder on it) is swapped
    for a link meanwhile."""
    with _open_regular(path, root) as handle:
        sha256, size = stream_digest(handle)
        yield _LocalFile(path, handle, sha256, size)



def _copy_atomic(source: Path | BinaryIO, dest: Path) -> Path:
    """Copy ``source`` (a path, or an open file read from its start) to ``dest`` through a temporary name, so
    ``dest`` is either absent or complete."""
    if isinstance(source, Path):
        with open(source, "rb") as handle:
            return write_atomic(dest, lambda out: shutil.copyfileobj(handle, out, 4 * MiB))
    source.seek(0)
    return write_atomic(dest, lambda out: shutil.copyfileobj(source, out, 4 * MiB))


def _tree_files(root: Path, prefix: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """(file, key) for every regular file below ``root``, and the sorted relative paths of what is not followed.

    Entries are judged as lstat sees them: a symbolic link (to a file or a folder, dangling or not) and a special
    file (fifo, socket, device) is named, never followed, opened or descended into. A top-level manifest from
    ``get_tree`` is left out (it is written anew, last).
    """
    files: list[tuple[Path, str]] = []
    not_followed: list[str] = []
    pending = [root]
    while pending:
        for entry in _entries(pending.pop()):
            path = Path(entry.path)
            relative = path.relative_to(root).as_posix()
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
            elif not entry.is_file(follow_symlinks=False):
                not_followed.append(relative)
            elif relative != MANIFEST_NAME:
                files.append((path, join_key(prefix, validate_key(relative, f"file name in {root}"))))
    return sorted(files, key=lambda item: item[1]), sorted(not_followed)


def count_not_followed(count: int) -> str:
    """``"1 symbolic link or special file"``, ``"3 symbolic links or special files"``."""
    return f"{count} {NOT_FOLLOWED}" if count == 1 else f"{count} symbolic links or special files"


def _entries(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder``; an unreadable folder is one line, not a silently smaller data set."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise UserError(f"cannot read folder {folder}: {error.strerror}") from None
