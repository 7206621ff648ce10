"""Sharded data sets (kinship.shards through the store): packing, the manifest, unpacking, hostile shards."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from kinship.cli import main
from kinship.errors import UserError
from kinship.shards import SHARDED_FORMAT, MemberEntry, ShardedManifest, ShardEntry, ShardIntegrityError, pack_shards, unpack_shard
from kinship.storage import MANIFEST_NAME, IntegrityError, LocalStore, StoreSettings, store_from_uri

KiB = 1024


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_set(root: Path, count: int = 40, size: int = 6 * KiB) -> dict[str, bytes]:
    files = {f"train/F{i // 10:04d}/MID{i % 3 + 1}/P{i:05d}_face0.jpg": os.urandom(size + i) for i in range(count)}
    files["train_relationships.csv"] = b"p1,p2\n"
    files["dossier/" + "long-name-" * 20 + ".txt"] = b"a name over tar's 100-byte field"  # needs a PAX header
    for name, data in files.items():
        write(root / name, data)
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}


@pytest.fixture
def settings(tmp_path: Path) -> StoreSettings:
    return StoreSettings(scratch=tmp_path / "scratch")


def pushed(tmp_path: Path, settings: StoreSettings, files_root: Path, shard_bytes: int = 64 * KiB):
    uri = (tmp_path / "store" / "set").as_uri()
    store = store_from_uri(uri, settings)
    return store, uri, store.put_tree(files_root, "", shard_bytes=shard_bytes)


def test_round_trip_splits_into_shards_and_unpacks_byte_for_byte(tmp_path: Path, settings: StoreSettings) -> None:
    files = make_set(tmp_path / "src")
    store, uri, refs = pushed(tmp_path, settings, tmp_path / "src")
    manifest = json.loads((tmp_path / "store" / "set" / MANIFEST_NAME).read_text())
    assert manifest["format"] == SHARDED_FORMAT and len(refs) == len(manifest["shards"]) >= 4  # ~250 KiB in 64 KiB shards
    assert all(shard["size"] <= 64 * KiB or shard["members"] == 1 for shard in manifest["shards"])
    assert sorted(manifest["files"]) == sorted(files)
    got = store.get_tree(uri, tmp_path / "got")
    assert tree(got) == files and not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]
    # each file's recorded offset points at its bytes inside its shard (what a ranged GET reads)
    name = sorted(files)[7]
    entry = manifest["files"][name]
    shard = tmp_path / "store" / "set" / manifest["shards"][entry["shard"]]["key"]
    with open(shard, "rb") as handle:
        handle.seek(entry["offset"])
        assert handle.read(entry["size"]) == files[name]


def test_a_second_push_sends_nothing_and_a_changed_set_drops_its_stale_shards(tmp_path: Path, settings) -> None:
    make_set(tmp_path / "src")
    store, uri, first = pushed(tmp_path, settings, tmp_path / "src")
    events = []
    again = store.put_tree(tmp_path / "src", "", events.append, shard_bytes=64 * KiB)
    assert [r.key for r in again] == [r.key for r in first]  # deterministic bytes, same digests, same keys
    assert events[-1].info["uploaded"] == 0 and events[-1].info["skipped"] == len(first)
    # a photo edited in place (same size): only its shard is sent again, and the old one is removed. (A change of
    # size moves the later shards' boundaries: they are repacked and sent again, still correct.)
    changed = tmp_path / "src" / "train" / "F0000" / "MID1" / "P00000_face0.jpg"
    changed.write_bytes(b"changed".ljust(changed.stat().st_size, b"!"))
    store.put_tree(tmp_path / "src", "", events.append, shard_bytes=64 * KiB)
    assert events[-1].info["uploaded"] == 1 and events[-1].info["removed"] == 1
    on_disk = sorted(p.name for p in (tmp_path / "store" / "set" / "shards").iterdir())
    manifest = json.loads((tmp_path / "store" / "set" / MANIFEST_NAME).read_text())
    assert on_disk == sorted(s["key"].split("/")[1] for s in manifest["shards"])
    assert tree(store.get_tree(uri, tmp_path / "got"))["train/F0000/MID1/P00000_face0.jpg"] == changed.read_bytes()


def test_the_one_object_per_file_layout_is_still_read(tmp_path: Path, settings: StoreSettings) -> None:
    files = make_set(tmp_path / "src", count=5)
    uri = (tmp_path / "store" / "old").as_uri()
    store = store_from_uri(uri, settings)
    store.put_tree(tmp_path / "src", "")  # how earlier versions pushed
    assert "format" not in json.loads((tmp_path / "store" / "old" / MANIFEST_NAME).read_text())
    assert tree(store.get_tree(uri, tmp_path / "got")) == files


def test_a_file_larger_than_a_shard_gets_its_own(tmp_path: Path) -> None:
    write(tmp_path / "a", b"a" * 10)
    write(tmp_path / "big", b"b" * 200 * KiB)
    write(tmp_path / "c", b"c" * 10)
    shards = list(pack_shards([(tmp_path / n, n) for n in ("a", "big", "c")], tmp_path / "work", 64 * KiB))
    assert [sorted(s.members) for s in shards] == [["a"], ["big"], ["c"]]
    with pytest.raises(UserError, match="too small"):
        list(pack_shards([(tmp_path / "a", "a")], tmp_path / "work", 100))


def rewrite_shard(store_root: Path, index: int, build) -> None:
    """Replace shard ``index`` with other bytes and make the manifest (and its record) agree with its digest, as
    a store's writer could: the shard then passes its sha256 and only the member checks can catch it."""
    import hashlib

    manifest_path = store_root / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    shard_path = store_root / manifest["shards"][index]["key"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    shard_path.write_bytes(buffer.getvalue())
    manifest["shards"][index]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    manifest["shards"][index]["size"] = len(buffer.getvalue())
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    manifest_path.write_bytes(data)
    meta = store_root / ".kinship-meta" / f"{MANIFEST_NAME}.json"
    meta.write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}))
    os.rename(shard_path, shard_path)  # same key: the test is about contents, not names


def add(tar: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = (len(data) if kind == tarfile.REGTYPE else 0), kind, link
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("case, why", [
    ("unlisted", "is not listed for this shard"),
    ("symlink", "is not a plain regular file (a symbolic link)"),
    ("escape", "is not listed for this shard"),
    ("swapped", "does not match its sha256"),
    ("missing", "listed file(s) missing"),
])
def test_a_hostile_shard_is_refused_and_nothing_is_kept(tmp_path: Path, settings: StoreSettings, case: str, why: str) -> None:
    files = {"a.txt": b"alpha", "b.txt": b"bravo"}
    for name, data in files.items():
        write(tmp_path / "src" / name, data)
    store, uri, _ = pushed(tmp_path, settings, tmp_path / "src")
    builders = {
        "unlisted": lambda t: (add(t, "a.txt", b"alpha"), add(t, "b.txt", b"bravo"), add(t, "extra.txt", b"x")),
        "symlink": lambda t: (add(t, "a.txt", b"", tarfile.SYMTYPE, "/etc/passwd"), add(t, "b.txt", b"bravo")),
        "escape": lambda t: (add(t, "../../escaped.txt", b"alpha"), add(t, "b.txt", b"bravo")),
        "swapped": lambda t: (add(t, "a.txt", b"bravo"), add(t, "b.txt", b"alpha")),  # same sizes, other bytes
        "missing": lambda t: add(t, "a.txt", b"alpha"),
    }
    rewrite_shard(tmp_path / "store" / "set", 0, builders[case])
    with pytest.raises(ShardIntegrityError, match=why.replace("(", r"\(").replace(")", r"\)")):
        store.get_tree(uri, tmp_path / "got")
    assert not (tmp_path / "got").exists() and not list(tmp_path.rglob("escaped.txt"))
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]


def test_a_tampered_shard_fails_its_digest(tmp_path: Path, settings: StoreSettings) -> None:
    make_set(tmp_path / "src", count=5)
    store, uri, refs = pushed(tmp_path, settings, tmp_path / "src")
    shard = Path(refs[0].uri.removeprefix("file://"))
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        store.get_tree(uri, tmp_path / "got")
    assert not (tmp_path / "got").exists()


@pytest.mark.parametrize("value", ["-1", "big", "5000"])
def test_a_bad_shard_size_is_one_line(tmp_path: Path, capsys, value: str) -> None:
    make_set(tmp_path / "src", count=2)
    with pytest.raises(SystemExit) as exit_:
        main(["data", "push", str(tmp_path / "src"), (tmp_path / "store").as_uri(), "--shard-mib", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--shard-mib" in err and value in err and not (tmp_path / "store").exists()


def test_a_sharded_manifest_read_as_objects_names_the_mismatch(tmp_path: Path, settings: StoreSettings) -> None:
    make_set(tmp_path / "src", count=2)
    store, uri, _ = pushed(tmp_path, settings, tmp_path / "src")
    with pytest.raises(UserError, match="sharded data set manifest"):
        LocalStore(tmp_path / "store" / "set", settings).read_manifest(f"{uri}/{MANIFEST_NAME}")


MiB = 1024 * KiB


def sparse(tar: tarfile.TarFile, name: str, size: int) -> None:
    """A PAX (GNU 0.1) sparse member: one hole of ``size`` bytes, no data in the shard at all."""
    info = tarfile.TarInfo(name)
    info.pax_headers = {"GNU.sparse.map": "0,0", "GNU.sparse.size": str(size)}
    tar.addfile(info)


def shard_of(path: Path, build) -> Path:
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return path


@pytest.mark.parametrize("build, kind", [
    (lambda t: sparse(t, "a.txt", 4 * MiB), "a sparse file"),
    (lambda t: add(t, "a.txt", b"", tarfile.LNKTYPE, "b.txt"), "a hard link"),
    (lambda t: add(t, "a.txt", b"", tarfile.CHRTYPE), "a device"),
    (lambda t: add(t, "a.txt", b"", tarfile.BLKTYPE), "a device"),
    (lambda t: add(t, "a.txt", b"", tarfile.FIFOTYPE), "a fifo"),
    (lambda t: add(t, "a.txt", b"", tarfile.DIRTYPE), "a folder"),
], ids=["sparse", "hardlink", "chardev", "blockdev", "fifo", "folder"])
def test_only_plain_regular_members_are_unpacked(tmp_path: Path, build, kind: str) -> None:
    """A sparse member expands to any size from a few bytes of shard (tarfile's isreg() accepts it); it is refused
    before a byte is written, even when the manifest lists its true size and digest, as links, devices and fifos."""
    import hashlib

    shard = shard_of(tmp_path / "shard.tar", build)
    with tarfile.open(shard) as tar:
        size = tar.getmembers()[0].size
    digest = hashlib.sha256(b"\0" * size).hexdigest()  # the honest digest of what a sparse member expands to
    manifest = ShardedManifest((ShardEntry("shards/000000-0000000000000000.tar", "0" * 64, shard.stat().st_size, 1),),
                               {"a.txt": MemberEntry(digest, size, 0, 0)})
    with pytest.raises(ShardIntegrityError, match=f"a.txt is not a plain regular file \\({kind}\\)"):
        unpack_shard(shard, tmp_path / "out", manifest, 0, "shard 0")
    assert not list((tmp_path / "out").rglob("*.txt")) if (tmp_path / "out").exists() else True


def test_a_manifest_whose_members_do_not_fit_their_shard_is_refused_before_writing(tmp_path: Path,
                                                                                   settings: StoreSettings) -> None:
    """The reported attack: a 10 KiB shard holding a sparse member of many MiB, the manifest agreeing with it."""
    import hashlib

    write(tmp_path / "src" / "a.txt", b"alpha")
    store, uri, _ = pushed(tmp_path, settings, tmp_path / "src")
    size = 8 * MiB
    rewrite_shard(tmp_path / "store" / "set", 0, lambda t: sparse(t, "a.txt", size))
    manifest_path = tmp_path / "store" / "set" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["a.txt"].update(size=size, sha256=hashlib.sha256(b"\0" * size).hexdigest())
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    manifest_path.write_bytes(data)
    (tmp_path / "store" / "set" / ".kinship-meta" / f"{MANIFEST_NAME}.json").write_text(
        json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}))
    with pytest.raises(UserError, match="do not fit its 10240 bytes"):
        store.get_tree(uri, tmp_path / "got")
    assert not (tmp_path / "got").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size >= MiB]


def test_a_fetch_larger_than_the_free_disk_writes_nothing(tmp_path: Path, settings: StoreSettings, monkeypatch) -> None:
    import shutil

    from kinship import storage

    make_set(tmp_path / "src", count=10)
    store, uri, _ = pushed(tmp_path, settings, tmp_path / "src")
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 50 * KiB))
    with pytest.raises(UserError, match="needs 0.00 GB on the disk of .* which has 0.00 GB free; nothing was fetched"):
        store.get_tree(uri, tmp_path / "got")
    assert not (tmp_path / "got").exists() and not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]


def test_a_push_removes_the_packing_folders_a_killed_push_left(tmp_path: Path, settings: StoreSettings) -> None:
    import subprocess
    import time

    tmp = settings.scratch / "tmp"
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp / f"pack-{gone.pid}-0123456789ab"  # its process is gone: a SIGKILLed push's
    live = tmp / f"pack-{os.getppid()}-0123456789ab"  # a push under way in a live process
    old = tmp / "pack-ba9876543210"  # an older name without a process id, untouched for two days
    for folder in (dead, live, old):
        write(folder / "shard-000000.tar.partial", b"x" * KiB)
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    make_set(tmp_path / "src", count=3)
    pushed(tmp_path, settings, tmp_path / "src")
    assert sorted(p.name for p in tmp.iterdir()) == [live.name]


@pytest.mark.parametrize("shard_bytes", [64 * KiB, None], ids=["sharded", "one-object-per-file"])
def test_a_folder_swapped_for_a_link_after_the_listing_is_not_followed(tmp_path: Path, settings: StoreSettings,
                                                                        monkeypatch, shard_bytes) -> None:
    """O_NOFOLLOW guards only a path's last component: a listed folder replaced by a link to a folder outside the
    set, between the listing and the reads, used to carry the outside file into the store."""
    import shutil

    from kinship import storage

    secret = b"kinship-outside-secret"
    write(tmp_path / "src" / "train" / "F1" / "P1.jpg", b"photo")
    write(tmp_path / "src" / "train" / "F2" / "P2.jpg", b"other photo")
    write(tmp_path / "outside" / "P1.jpg", secret)
    listed = storage._tree_files

    def list_then_swap(root: Path, prefix: str):
        found = listed(root, prefix)
        shutil.rmtree(root / "train" / "F1")
        (root / "train" / "F1").symlink_to(tmp_path / "outside", target_is_directory=True)
        return found

    monkeypatch.setattr("kinship.store.transfer._tree_files", list_then_swap)  # where put_tree looks it up
    store = store_from_uri((tmp_path / "store" / "set").as_uri(), settings)
    with pytest.raises(UserError, match=r"not a regular file .*train/F1/P1\.jpg"):
        store.put_tree(tmp_path / "src", "", shard_bytes=shard_bytes)
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file() and secret in p.read_bytes()]
