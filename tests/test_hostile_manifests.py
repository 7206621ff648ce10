"""A data set manifest from a hostile (or broken) store: deeply nested JSON, a path listed as a file and as a
folder, a disk that fills while the set is written. Each is one line naming the manifest, and permanent (a task
does not retry it), never a traceback."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from kinship.errors import UserError
from kinship.pipeline import fetch_dataset
from kinship.storage import MANIFEST_NAME, StoreSettings, store_from_uri
from tasks.runtime import is_transient
from tests.test_shards import add, rewrite_shard, write

KiB = 1024


@pytest.fixture
def settings(tmp_path: Path, monkeypatch) -> StoreSettings:
    monkeypatch.delenv("KINSHIP_CACHE_MAX_GB", raising=False)
    return StoreSettings(scratch=tmp_path / "scratch")


def push(tmp_path: Path, settings: StoreSettings, files: dict[str, bytes]) -> tuple[Path, str]:
    for name, data in files.items():
        write(tmp_path / "src" / name, data)
    root = tmp_path / "store" / "set"
    store_from_uri(root.as_uri(), settings).put_tree(tmp_path / "src", "", shard_bytes=64 * KiB)
    return root, root.as_uri()


def replace_manifest(root: Path, data: bytes) -> None:
    """Write ``data`` as the manifest with a matching digest record, as a store's writer could."""
    (root / MANIFEST_NAME).write_bytes(data)
    (root / ".kinship-meta" / f"{MANIFEST_NAME}.json").write_text(
        json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}))


def refused(call, match: str) -> UserError:
    with pytest.raises(UserError, match=match) as error:
        call()
    assert MANIFEST_NAME in str(error.value) and "\n" not in str(error.value) and not is_transient(error.value)
    return error.value


def test_deeply_nested_json_is_one_line(tmp_path: Path, settings: StoreSettings) -> None:
    root, uri = push(tmp_path, settings, {"a.txt": b"alpha"})
    replace_manifest(root, b"[" * 200_000 + b"]" * 200_000)
    refused(lambda: store_from_uri(uri, settings).get_tree(uri, tmp_path / "got"), "nested too deeply")
    refused(lambda: fetch_dataset(uri, settings), "nested too deeply")
    assert not (tmp_path / "got").exists()


def test_a_path_listed_as_a_file_and_as_a_folder_is_one_line(tmp_path: Path, settings: StoreSettings) -> None:
    root, uri = push(tmp_path, settings, {"x.txt": b"alpha", "y.txt": b"bravo"})
    rewrite_shard(root, 0, lambda tar: (add(tar, "a", b"alpha"), add(tar, "a/b", b"bravo")))
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["files"] = {"a": manifest["files"]["x.txt"], "a/b": manifest["files"]["y.txt"]}
    replace_manifest(root, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    refused(lambda: store_from_uri(uri, settings).get_tree(uri, tmp_path / "got"), "lists a as a file and as the folder of a/b")
    refused(lambda: fetch_dataset(uri, settings), "lists a as a file and as the folder of a/b")
    assert not (tmp_path / "got").exists()


def test_a_disk_that_fills_while_a_set_is_written_is_one_line(tmp_path: Path, settings: StoreSettings, monkeypatch) -> None:
    from kinship import storage

    root, uri = push(tmp_path, settings, {"a.txt": b"alpha"})

    def full(shard_path, dest, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(dest / "a.txt"))

    monkeypatch.setattr("kinship.store.transfer.unpack_shard", full)  # where get_tree looks it up
    refused(lambda: store_from_uri(uri, settings).get_tree(uri, tmp_path / "got"), "No space left on device")
    assert not (tmp_path / "got").exists() and not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]
