"""This host's data set copies (kinship.dataset_cache through pipeline.fetch_dataset): reuse, verification,
least-recently-used eviction under a cap, copies held by a stage, one fill for concurrent fetches."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kinship.cli import main
from kinship.dataset_cache import CacheSettings, DatasetCache, hold
from kinship.errors import UserError
from kinship.pipeline import fetch_dataset
from kinship.storage import StoreSettings, store_from_uri

KiB = 1024


def push_set(tmp_path: Path, name: str, files: int = 6, size: int = 20 * KiB) -> str:
    source = tmp_path / "sources" / name
    for i in range(files):
        path = source / "train" / f"F{i:04d}" / "MID1" / f"P{i:05d}_face0.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    uri = (tmp_path / "store" / name).as_uri()
    store_from_uri(uri, StoreSettings(scratch=tmp_path / "push-scratch")).put_tree(source, "", shard_bytes=1024 * KiB)
    return uri


def fetch(uri: str, scratch: Path) -> tuple[Path, str]:
    events = []
    handle = fetch_dataset(uri, StoreSettings(scratch=scratch), events.append)
    return handle.path, events[-1].info["cache"]


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch) -> Path:
    for name in ("KINSHIP_CACHE_MAX_GB", "KINSHIP_CACHE_VERIFY", "KINSHIP_CACHE_GRACE_S"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "host"


def test_a_second_fetch_reuses_the_copy_and_a_damaged_copy_is_fetched_again(tmp_path: Path, scratch: Path, caplog) -> None:
    uri = push_set(tmp_path, "a")
    path, status = fetch(uri, scratch)
    assert status == "filled"
    shards = tmp_path / "store" / "a" / "shards"
    shards.rename(tmp_path / "away")  # the store has no shards now: a hit must not need them
    try:
        assert fetch(uri, scratch) == (path, "hit")
    finally:
        (tmp_path / "away").rename(shards)
    victim = next(path.rglob("*.jpg"))
    victim.write_bytes(b"\0" * victim.stat().st_size)  # same size, other bytes: only the sha256 can tell
    with caplog.at_level(logging.WARNING, logger="kinship.dataset_cache"):
        assert fetch(uri, scratch) == (path, "refilled")
    assert victim.relative_to(path).as_posix() in caplog.text and "sha256 differs" in caplog.text
    assert fetch(uri, scratch) == (path, "hit")


def test_least_recently_used_copies_go_first_and_held_ones_stay(tmp_path: Path, scratch: Path, monkeypatch) -> None:
    uris = {name: push_set(tmp_path, name) for name in "abcd"}  # ~120 KiB on disk each
    monkeypatch.setenv("KINSHIP_CACHE_MAX_GB", str(300 * KiB / 1024**3))  # room for two
    monkeypatch.setenv("KINSHIP_CACHE_GRACE_S", "0")
    cache = DatasetCache(CacheSettings.from_env(scratch))
    paths = {}
    for name in "ab":
        paths[name], _ = fetch(uris[name], scratch)
        time.sleep(0.02)
    fetch(uris["a"], scratch)  # a is now more recently used than b
    paths["c"], _ = fetch(uris["c"], scratch)
    assert not paths["b"].exists() and paths["a"].is_dir() and paths["c"].is_dir()
    assert [entry.uri for entry in cache.entries()] == [uris["a"], uris["c"]]
    with hold(paths["a"]):  # a stage reads a: fetching d evicts c although a is older
        paths["d"], _ = fetch(uris["d"], scratch)
        assert paths["a"].is_dir() and not paths["c"].exists() and paths["d"].is_dir()
    monkeypatch.setenv("KINSHIP_CACHE_GRACE_S", "3600")  # everything used within the grace period stays, over the cap
    fetch(uris["b"], scratch)
    assert all(paths[name].is_dir() for name in "abd")


CONCURRENT = """
import json, sys
from pathlib import Path
from kinship.pipeline import fetch_dataset
from kinship.storage import StoreSettings
events = []
fetch_dataset(sys.argv[1], StoreSettings(scratch=Path(sys.argv[2])), events.append)
print(events[-1].info["cache"])
"""


def test_concurrent_fetches_on_one_host_share_one_download(tmp_path: Path, scratch: Path) -> None:
    uri = push_set(tmp_path, "a", files=40, size=50 * KiB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINSHIP_")}
    runs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, uri, str(scratch)], stdout=subprocess.PIPE, text=True,
                             env=env, cwd=Path(__file__).resolve().parents[1]) for _ in range(3)]
    statuses = sorted(run.communicate(timeout=120)[0].strip() for run in runs)
    assert statuses == ["filled", "hit", "hit"]
    copies = [p.name for p in (scratch / "datasets").iterdir() if not p.name.startswith(".")]
    records = [p.stem for p in (scratch / "datasets" / ".entries").glob("*.json")]
    assert len(copies) == 1 and copies == records


@pytest.mark.parametrize("name, value", [("KINSHIP_CACHE_MAX_GB", "lots"), ("KINSHIP_CACHE_VERIFY", "never"),
                                         ("KINSHIP_CACHE_GRACE_S", "-5")])
def test_a_bad_cache_setting_is_one_line(tmp_path: Path, scratch: Path, monkeypatch, capsys, name: str, value: str) -> None:
    uri = push_set(tmp_path, "a", files=2)
    monkeypatch.setenv("KINSHIP_SCRATCH", str(scratch))
    monkeypatch.setenv(name, value)
    assert main(["data", "check", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and repr(value) in err and "Traceback" not in err


def test_settings_read_from_the_environment(tmp_path: Path) -> None:
    settings = CacheSettings.from_env(tmp_path, {"KINSHIP_CACHE_MAX_GB": "1.5", "KINSHIP_CACHE_VERIFY": "size"})
    assert settings == replace(CacheSettings(tmp_path / "datasets"), max_bytes=int(1.5 * 1024**3), verify="size")


def test_decoded_image_arrays_are_verified_on_reuse_and_evicted_under_the_same_cap(tmp_path: Path, scratch: Path,
                                                                                   monkeypatch) -> None:
    from PIL import Image

    from kinship import image_cache

    monkeypatch.setenv("KINSHIP_SCRATCH", str(scratch))
    paths = []
    for i in range(4):
        paths.append(tmp_path / "photos" / f"{i}.png")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (60 * i, 20, 200)).save(paths[-1])
    first = np.array(image_cache.load_or_build(paths, 32, "set-a")[0])  # not the mapping of the file damaged below
    array = next((scratch / "images").glob("*.npy"))
    data = bytearray(array.read_bytes())
    data[-1] ^= 0xFF  # one pixel byte flipped on disk
    array.write_bytes(bytes(data))
    again, _ = image_cache.load_or_build(paths, 32, "set-a")
    assert np.array_equal(again, first)  # decoded again: the damaged array was not served
    monkeypatch.setenv("KINSHIP_CACHE_MAX_GB", str(1.5 * array.stat().st_size / 1024**3))  # room for one array
    monkeypatch.setenv("KINSHIP_CACHE_GRACE_S", "0")
    time.sleep(0.02)
    image_cache.load_or_build(paths, 24, "set-a")  # another size: a second array; the older one goes
    names = [entry.name for entry in DatasetCache(CacheSettings.from_env(scratch)).entries()]
    assert len(names) == 1 and names[0].startswith("images/") and len(list((scratch / "images").glob("*.npy"))) == 1



def test_a_copy_being_read_is_still_reused_at_once(tmp_path: Path, scratch: Path) -> None:
    import threading

    uri = push_set(tmp_path, "a")
    path, _ = fetch(uri, scratch)
    outcome: list = []
    with hold(path):  # another flow's training reads this copy (its shared lock)
        second = threading.Thread(target=lambda: outcome.append(fetch(uri, scratch)), daemon=True)
        second.start()
        second.join(timeout=30)
        assert outcome == [(path, "hit")]  # verified and reused under a shared lock: no wait for the reader


def test_a_set_larger_than_the_whole_cap_is_refused_before_its_fill(tmp_path: Path, scratch: Path, monkeypatch) -> None:
    """Eviction runs after a fill, so it cannot bound one: the fill is checked against the cap before it writes."""
    uri = push_set(tmp_path, "a")  # 120 KiB of files
    monkeypatch.setenv("KINSHIP_CACHE_MAX_GB", str(60 * KiB / 1024**3))
    with pytest.raises(UserError, match="more than this host's cache may hold"):
        fetch(uri, scratch)
    copies = [p for p in (scratch / "datasets").iterdir() if not p.name.startswith(".")]
    assert copies == [] and not list((scratch / "datasets").rglob("*.jpg"))


def test_the_download_cache_is_under_the_same_cap(tmp_path: Path, scratch: Path, monkeypatch) -> None:
    """Every store read leaves a verified copy in cache/sha256 (models, checkpoints, objects of a per-file set):
    they are evicted least recently used first with the data sets, a hit counting as a use, within the grace."""
    store = store_from_uri((tmp_path / "store").as_uri(), StoreSettings(scratch=scratch))
    refs = {}
    for name in "abc":
        (tmp_path / name).write_bytes(os.urandom(100 * KiB))
        refs[name] = store.put_file(tmp_path / name, name)
        store.get_file(refs[name])
    cached = {name: store.cache.path(ref.sha256) for name, ref in refs.items()}
    now = time.time()
    for name, age in (("a", 2000), ("b", 3000), ("c", 1000)):
        os.utime(cached[name], (now - age, now - age))
    store.get_file(refs["b"])  # a hit: b is now the most recently used
    assert cached["b"].stat().st_mtime > now - 60
    monkeypatch.setenv("KINSHIP_CACHE_MAX_GB", str(250 * KiB / 1024**3))
    monkeypatch.setenv("KINSHIP_CACHE_GRACE_S", "600")
    removed = DatasetCache(CacheSettings.from_env(scratch)).evict()
    assert removed == [f"cache/{refs['a'].sha256}"]
    assert not cached["a"].exists() and cached["b"].is_file() and cached["c"].is_file()
    monkeypatch.setenv("KINSHIP_CACHE_MAX_GB", "0")  # over the cap, but b was used within the grace period
    assert DatasetCache(CacheSettings.from_env(scratch)).evict() == [f"cache/{refs['c'].sha256}"]
    assert cached["b"].is_file()
