"""Unit tests of the artifact store on a local folder (``LocalStore``): no servers needed."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import pytest

from kinship.cli.data_push import add_push_command
from kinship.errors import UserError
from kinship.storage import (
    MANIFEST_NAME,
    ArtifactNotFound,
    ArtifactRef,
    IntegrityError,
    LocalStore,
    S3Store,
    StoreSettings,
    parse_uri,
    store_from_settings,
    store_from_uri,
    validate_key,
)


@pytest.fixture
def settings(tmp_path: Path) -> StoreSettings:
    return StoreSettings(scratch=tmp_path / "scratch")


@pytest.fixture
def store(tmp_path: Path, settings: StoreSettings) -> LocalStore:
    return LocalStore(tmp_path / "store", settings)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def stored_path(store: LocalStore, ref: ArtifactRef) -> Path:
    return Path(parse_uri(ref.uri).key)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial-" in p.name) if folder.exists() else []


def check_compare_and_swap(store, key: str = "pointer.json") -> None:
    """The contract of ``get_json_versioned`` / ``put_json_if_version`` (shared with the S3 tests)."""
    from concurrent.futures import ThreadPoolExecutor

    assert store.get_json_versioned(key) == (None, None)
    first = store.put_json_if_version({"n": 0}, key, None)
    assert first is not None and store.get_json(first) == {"n": 0}
    assert store.put_json_if_version({"n": 99}, key, None) is None  # "only if absent" refused: it exists now
    value, version = store.get_json_versioned(key)
    assert value == {"n": 0} and version
    assert store.put_json_if_version({"n": 1}, key, version) is not None
    assert store.put_json_if_version({"n": 2}, key, version) is None  # stale: another write came in between
    assert store.get_json_versioned(key)[0] == {"n": 1}

    def increment(_: int) -> int:
        for attempt in range(1, 200):
            value, version = store.get_json_versioned(key)
            if store.put_json_if_version({"n": value["n"] + 1}, key, version) is not None:
                return attempt
        raise AssertionError("never won a swap")

    with ThreadPoolExecutor(4) as pool:
        attempts = list(pool.map(increment, range(12)))
    assert store.get_json_versioned(key)[0] == {"n": 13}  # no increment lost to a race
    assert len(attempts) == 12


def test_put_get_round_trip(tmp_path: Path, store: LocalStore) -> None:
    data = os.urandom(70_000)
    ref = store.put_file(write(tmp_path / "model.onnx", data), "models/run1/model.onnx")
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.size == len(data)
    assert ref.uri.startswith("file://") and ref.key == "models/run1/model.onnx"
    assert store.get_file(ref).read_bytes() == data
    assert store.get_file(ref, tmp_path / "out" / "m.onnx").read_bytes() == data
    assert store.get_file(ref.uri, f"{tmp_path}/dir/").name == "model.onnx"
    assert store.get_file("models/run1/model.onnx", tmp_path / "by-key").read_bytes() == data
    assert store.exists("models/run1/model.onnx") and not store.exists("models/run1/other")
    assert store.list() == ["models/run1/model.onnx"] and store.list("models/run2") == []


@pytest.mark.parametrize("damage", ["tamper", "truncate"])
def test_mismatch_is_detected_and_nothing_left(tmp_path: Path, store: LocalStore, damage: str) -> None:
    data = os.urandom(50_000)
    ref = store.put_file(write(tmp_path / "w.bin", data), "w.bin")
    target = stored_path(store, ref)
    if damage == "tamper":
        target.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, one bit off
    else:
        target.write_bytes(data[:1000])
    dest = tmp_path / "out" / "w.bin"
    with pytest.raises(IntegrityError, match="w.bin"):
        store.get_file(ref, dest)
    assert not dest.exists() and leftovers(tmp_path / "out") == []
    assert leftovers(store.settings.scratch) == []
    assert not store.cache.path(ref.sha256).exists()


def test_bare_uri_is_checked_against_recorded_digest(tmp_path: Path, store: LocalStore) -> None:
    ref = store.put_file(write(tmp_path / "a.txt", b"original"), "a.txt")
    stored_path(store, ref).write_bytes(b"replaced")
    with pytest.raises(IntegrityError):
        store.get_file(ref.uri, tmp_path / "a.txt.out")
    assert not (tmp_path / "a.txt.out").exists()


def test_second_get_comes_from_cache(tmp_path: Path, store: LocalStore) -> None:
    data = os.urandom(10_000)
    ref = store.put_file(write(tmp_path / "c.bin", data), "c.bin")
    first = store.get_file(ref)
    stored_path(store, ref).unlink()  # the store no longer has it: only the cache can answer
    assert store.get_file(ref) == first
    assert store.get_file(ref, tmp_path / "again.bin").read_bytes() == data


def test_damaged_cache_entry_is_fetched_again(tmp_path: Path, store: LocalStore) -> None:
    data = os.urandom(10_000)
    ref = store.put_file(write(tmp_path / "c.bin", data), "c.bin")
    cached = store.get_file(ref)
    cached.chmod(0o644)
    cached.write_bytes(b"junk")
    assert store.get_file(ref).read_bytes() == data


def test_compare_and_swap_on_a_folder(store: LocalStore) -> None:
    check_compare_and_swap(store)


def test_missing_object(store: LocalStore) -> None:
    with pytest.raises(ArtifactNotFound, match="nothing.bin"):
        store.get_file("nothing.bin")


@pytest.mark.parametrize(
    "key",
    ["../etc/passwd", "a/../../b", "/etc/passwd", "C:/x", "a\\b", "a\x00b", "line\nbreak", "tab\there", "a//b", "./a", "", "a/", ".kinship-meta/x"],
)
def test_bad_keys_are_rejected(tmp_path: Path, store: LocalStore, key: str) -> None:
    with pytest.raises(UserError) as error:
        validate_key(key)
    assert repr(key) in str(error.value) or "empty" in str(error.value)
    with pytest.raises(UserError):
        store.put_file(write(tmp_path / "f", b"x"), key)
    assert store.list() == []


@pytest.mark.parametrize("uri", ["s3://Bad_Bucket/x", "s3://b/../x", "s3://bucket/a\x01b", "http://host/x", "file://host/x", "file:///a/../b", "s3://bucket/k?v=1", "kinship/x"])
def test_bad_uris_are_rejected(uri: str) -> None:
    with pytest.raises(UserError):
        parse_uri(uri)


def test_uri_parsing() -> None:
    assert parse_uri("s3://kinship/datasets/rfiw/a.jpg") == parse_uri("s3://kinship/datasets/rfiw/a.jpg")
    loc = parse_uri("s3://kinship/datasets/rfiw/a.jpg")
    assert (loc.scheme, loc.bucket, loc.key) == ("s3", "kinship", "datasets/rfiw/a.jpg")
    assert parse_uri("s3://kinship", allow_empty_key=True).key == ""
    assert parse_uri(Path("/tmp/a b/c").as_uri()).key == "/tmp/a b/c"


def test_manifest_round_trip(tmp_path: Path, store: LocalStore) -> None:
    refs = [store.put_file(write(tmp_path / f"f{i}", os.urandom(100 + i)), f"set/f{i}") for i in range(3)]
    manifest_ref = store.write_manifest(refs, "set/manifest.json")
    assert store.read_manifest(manifest_ref) == {ref.key: ref for ref in refs}
    assert store.read_manifest("set/manifest.json") == {ref.key: ref for ref in refs}
    raw = json.loads(stored_path(store, manifest_ref).read_text())
    assert raw["set/f0"] == {"sha256": refs[0].sha256, "size": refs[0].size, "uri": refs[0].uri}


def test_tampered_json_is_detected(tmp_path: Path, store: LocalStore) -> None:
    ref = store.put_json({"champion": "run-1"}, "champion.json")
    assert store.get_json("champion.json") == {"champion": "run-1"}
    stored_path(store, ref).write_text('{"champion": "run-666"}\n')
    with pytest.raises(IntegrityError, match="champion.json"):
        store.get_json(ref)


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"F0001/MID1/P0001_face1.jpg": os.urandom(3000), "F0001/MID2/P0002_face2.jpg": os.urandom(2000), "train.csv": b"p1,p2\n"}
    for relative, data in files.items():
        write(root / relative, data)
    return files


def test_tree_round_trip_and_idempotent_push(tmp_path: Path, store: LocalStore) -> None:
    files = make_tree(tmp_path / "rfiw")
    events: list = []
    refs = store.put_tree(tmp_path / "rfiw", "datasets/rfiw", events.append)
    assert sorted(ref.key for ref in refs) == sorted(f"datasets/rfiw/{name}" for name in files)
    assert events[-1].info["uploaded"] == 3 and events[-1].info["skipped"] == 0
    store.put_tree(tmp_path / "rfiw", "datasets/rfiw", events.append)
    assert events[-1].info["uploaded"] == 0 and events[-1].info["skipped"] == 3
    write(tmp_path / "rfiw" / "train.csv", b"p1,p2,label\n")
    store.put_tree(tmp_path / "rfiw", "datasets/rfiw", events.append)
    assert events[-1].info["uploaded"] == 1 and events[-1].info["skipped"] == 2
    got = store.get_tree("datasets/rfiw", tmp_path / "got")
    assert (got / "train.csv").read_bytes() == b"p1,p2,label\n"
    assert (got / "F0001/MID1/P0001_face1.jpg").read_bytes() == files["F0001/MID1/P0001_face1.jpg"]
    assert (got / MANIFEST_NAME).is_file() and leftovers(tmp_path) == []
    assert store.get_tree(store.uri("datasets/rfiw"), got) == got  # same manifest: nothing to do


def test_tree_without_manifest_is_not_a_data_set(tmp_path: Path, store: LocalStore) -> None:
    store.put_file(write(tmp_path / "x", b"x"), "datasets/half/x")
    with pytest.raises(ArtifactNotFound, match="interrupted"):
        store.get_tree("datasets/half", tmp_path / "got")
    assert not (tmp_path / "got").exists()


def test_get_tree_refuses_a_non_empty_destination(tmp_path: Path, store: LocalStore) -> None:
    make_tree(tmp_path / "rfiw")
    store.put_tree(tmp_path / "rfiw", "d")
    write(tmp_path / "busy" / "mine.txt", b"keep me")
    with pytest.raises(UserError, match="busy"):
        store.get_tree("d", tmp_path / "busy")
    assert (tmp_path / "busy" / "mine.txt").read_bytes() == b"keep me"


def test_get_tree_with_damaged_member_leaves_nothing(tmp_path: Path, store: LocalStore) -> None:
    make_tree(tmp_path / "rfiw")
    refs = store.put_tree(tmp_path / "rfiw", "d")
    stored_path(store, refs[0]).write_bytes(b"damaged")
    with pytest.raises(IntegrityError):
        store.get_tree("d", tmp_path / "got")
    assert not (tmp_path / "got").exists() and leftovers(tmp_path) == []


def test_settings_from_env_hold_no_secret(tmp_path: Path) -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "very-secret-value",
        "AWS_DEFAULT_REGION": "eu-west-3",
        "KINSHIP_BUCKET": "kinship",
        "KINSHIP_PREFIX": "team/",
        "KINSHIP_SCRATCH": str(tmp_path),
    }
    settings = StoreSettings.from_env(env)
    assert settings.endpoint_url == "http://127.0.0.1:8333" and settings.region == "eu-west-3"
    assert settings.bucket == "kinship" and settings.prefix == "team" and settings.scratch == tmp_path
    assert "very-secret-value" not in repr(settings) and "AKIDEXAMPLE" not in repr(settings)
    assert StoreSettings.from_env({}).region == "us-east-1"
    with pytest.raises(UserError):
        StoreSettings.from_env({"KINSHIP_PREFIX": "../up"})


def test_choosing_a_store(tmp_path: Path, settings: StoreSettings) -> None:
    assert isinstance(store_from_settings(settings), LocalStore)
    s3 = store_from_settings(StoreSettings(bucket="kinship", endpoint_url="http://127.0.0.1:1", scratch=tmp_path))
    assert isinstance(s3, S3Store) and s3.uri("a/b") == "s3://kinship/a/b"
    rooted = store_from_uri("s3://kinship/datasets/rfiw", settings)
    assert rooted.uri("x.jpg") == "s3://kinship/datasets/rfiw/x.jpg"
    assert isinstance(store_from_uri((tmp_path / "s").as_uri(), settings), LocalStore)


def push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kinship")
    data = parser.add_subparsers(dest="command").add_parser("data").add_subparsers(dest="data_command")
    add_push_command(data)
    return parser


def test_data_push_cli_to_a_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KINSHIP_SCRATCH", str(tmp_path / "scratch"))
    make_tree(tmp_path / "rfiw")
    target = (tmp_path / "bucket" / "datasets" / "rfiw").as_uri()
    for expected_uploaded in (1, 0):  # one shard holds the three files; the second push sends nothing
        args = push_parser().parse_args(["data", "push", str(tmp_path / "rfiw"), target, "--json"])
        assert args.handler(args) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["uri"] == target and report["files"] == 3 and report["uploaded"] == expected_uploaded
        assert report["shards"] == 1
    assert (tmp_path / "bucket" / "datasets" / "rfiw" / MANIFEST_NAME).is_file()
    args = push_parser().parse_args(["data", "push", str(tmp_path / "missing"), target])
    with pytest.raises(UserError, match="missing"):
        args.handler(args)


@pytest.mark.parametrize("entry", [
    {"key": "d/../../escape.txt"},  # a key climbing out of the destination
    {"key": "d/a\nb"},  # a control character in a key
    {"uri": "file:///etc/passwd"},  # an entry outside the data set
    {"uri": "file:///tmp/x/../../etc/passwd"},
])
def test_a_hostile_manifest_is_refused_and_nothing_written(tmp_path: Path, store: LocalStore, entry: dict) -> None:
    ref = store.put_file(write(tmp_path / "f.txt", b"fine"), "d/f.txt")
    hostile = {"key": entry.get("key", "d/g.txt"), "uri": entry.get("uri", ref.uri), "sha256": ref.sha256, "size": ref.size}
    manifest = {"d/f.txt": {"sha256": ref.sha256, "size": ref.size, "uri": ref.uri},
                hostile["key"]: {k: hostile[k] for k in ("sha256", "size", "uri")}}
    store.put_json(manifest, f"d/{MANIFEST_NAME}")
    with pytest.raises(UserError, match="manifest entry|invalid (key|URI)") as error:  # refused before a byte is read
        store.get_tree("d", tmp_path / "out" / "got")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "escape.txt").exists()


def test_tasks_retry_trouble_but_not_mistakes_or_refusals() -> None:
    from types import SimpleNamespace

    from kinship.storage import StoreAccessError, StoreUnreachable
    from tasks.runtime import retry_unless_user_error

    def retried(error) -> bool:
        return retry_unless_user_error(None, None, SimpleNamespace(data=error))

    assert retried(StoreUnreachable("s3://b/k: gave up after 9 attempts over 45 s"))
    assert retried(ConnectionResetError("peer reset")) and retried(RuntimeError("worker hiccup"))
    assert not retried(StoreAccessError("s3://b/k: access denied (InvalidAccessKeyId)"))
    assert not retried(ArtifactNotFound("s3://b/k: no such object")) and not retried(UserError("bad value"))


# ---------------------------------------------------------------- links and special files are never followed


def plant_links(root: Path, outside: Path) -> dict[str, str]:
    """A data folder with one real photo and, beside it, a link to a file outside, a link to a folder outside, a
    dangling link, a fifo and a unix socket; returns ``{relative path: kind}`` of what must be skipped."""
    write(root / "train/F0001/MID1/P00001_face0.jpg", b"a real photo")
    write(outside / "secret.txt", b"MARKER-outside-the-data-set")
    write(outside / "folder" / "inside.jpg", b"MARKER-in-a-linked-folder")
    (root / "train/F0002/MID1").mkdir(parents=True)
    os.symlink(outside / "secret.txt", root / "train/F0002/MID1/P00012_face0.jpg")
    os.symlink(outside / "folder", root / "train/F0003")
    os.symlink(root / "nowhere", root / "train/dangling.jpg")
    os.mkfifo(root / "train/F0001/MID1/fifo.jpg")
    planted = {"train/F0002/MID1/P00012_face0.jpg": "file link", "train/F0003": "folder link",
               "train/dangling.jpg": "dangling link", "train/F0001/MID1/fifo.jpg": "fifo"}
    if len(str(root / "train/sock.jpg")) < 100:  # unix socket paths are short (104-108 bytes)
        import socket

        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(root / "train/sock.jpg"))
        listener.close()  # the socket file stays
        planted["train/sock.jpg"] = "socket"
    return planted


def in_thread(action, timeout: float = 30.0):
    """Run ``action`` in a thread and return its result; fail (instead of hanging) if it blocks, as on a fifo."""
    import threading

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "blocked: a fifo was opened?"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def stored_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def test_put_tree_skips_and_names_links_and_special_files(tmp_path: Path, store: LocalStore) -> None:
    skipped = plant_links(tmp_path / "rfiw", tmp_path / "outside")
    events: list = []
    refs = in_thread(lambda: store.put_tree(tmp_path / "rfiw", "datasets/rfiw", events.append))
    assert [ref.key for ref in refs] == ["datasets/rfiw/train/F0001/MID1/P00001_face0.jpg"]
    info = events[-1].info
    assert info["uploaded"] == 1 and info["skipped_links"] == len(skipped) and info["skipped_link_names"] == sorted(skipped)
    assert b"MARKER" not in stored_bytes(tmp_path / "store")  # no target's bytes were read
    assert store.list("datasets/rfiw") == ["datasets/rfiw/kinship-manifest.json", refs[0].key]
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_symlink()]


def test_a_folder_of_links_only_is_one_line(tmp_path: Path, store: LocalStore) -> None:
    write(tmp_path / "outside" / "secret.txt", b"MARKER")
    (tmp_path / "links").mkdir()
    os.symlink(tmp_path / "outside" / "secret.txt", tmp_path / "links" / "a.jpg")
    os.mkfifo(tmp_path / "links" / "b.jpg")
    expected = "^no files to upload in .*skipped 2 symbolic links or special files, not followed"
    with pytest.raises(UserError, match=expected) as error:
        in_thread(lambda: store.put_tree(tmp_path / "links", "d"))
    assert "\n" not in str(error.value) and not (tmp_path / "store").exists()


def test_put_file_refuses_links_and_special_files(tmp_path: Path, store: LocalStore) -> None:
    skipped = plant_links(tmp_path / "rfiw", tmp_path / "outside")
    for relative in skipped:
        with pytest.raises(UserError, match="not a regular file|not a file") as error:
            in_thread(lambda: store.put_file(tmp_path / "rfiw" / relative, "x.jpg"))
        assert "\n" not in str(error.value) and relative.rsplit("/", 1)[-1] in str(error.value)
    assert not (tmp_path / "store").exists() or b"MARKER" not in stored_bytes(tmp_path / "store")
    assert store.put_file(tmp_path / "outside" / "secret.txt", "named.txt").size == 27  # a file named itself: fine


def test_data_push_cli_names_what_it_did_not_follow(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KINSHIP_SCRATCH", str(tmp_path / "scratch"))
    skipped = plant_links(tmp_path / "rfiw", tmp_path / "outside")
    target = (tmp_path / "bucket" / "rfiw").as_uri()
    args = push_parser().parse_args(["data", "push", str(tmp_path / "rfiw"), target, "--json"])
    assert in_thread(lambda: args.handler(args)) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["files"] == 1 and report["skipped_links"] == len(skipped)
    assert report["skipped_link_names"] == sorted(skipped)
    assert captured.err == (f"kinship data push: skipped {len(skipped)} symbolic links or special files (not followed): "
                            + ", ".join(sorted(skipped)) + "\n")
    args = push_parser().parse_args(["data", "push", str(tmp_path / "rfiw"), target])
    assert in_thread(lambda: args.handler(args)) == 0
    table = capsys.readouterr().out
    assert "skipped_links" in table and "train/F0002/MID1/P00012_face0.jpg" in table
    assert b"MARKER" not in stored_bytes(tmp_path / "bucket")
