"""Data set versions: immutable versions named by their manifest digest, ``latest`` by compare-and-swap, shared
shards, resolve / pull through the host cache, prune that keeps every referenced version, the pushed event."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from kinship.champion import promote_if_better
from kinship.cli import main
from kinship.data_versions import (
    DatasetVersionError, emit_pushed_event, list_versions, prune, pull, push_version, record_use, resolve_dataset,
)
from kinship.shards import MIN_SHARD_BYTES
from kinship.storage import MANIFEST_NAME, IntegrityError, LocalStore, StoreSettings

SHARD = MIN_SHARD_BYTES


def make_set(root: Path, families: int) -> Path:
    """``families`` families of two people with two photos each (bytes only: nothing here decodes them)."""
    for number in range(1, families + 1):
        for person in (1, 2):
            folder = root / "train" / f"F{number:04d}" / f"MID{person}"
            folder.mkdir(parents=True, exist_ok=True)
            for photo in (1, 2):
                (folder / f"P{number:05d}_face{photo}.jpg").write_bytes(f"{number}-{person}-{photo}".encode() * 300)
    rows = "".join(f"F{n:04d}/MID1,F{n:04d}/MID2\n" for n in range(1, families + 1))
    (root / "train_relationships.csv").write_text("p1,p2\n" + rows)
    return root


@pytest.fixture
def settings(tmp_path: Path) -> StoreSettings:
    return StoreSettings(scratch=tmp_path / "scratch")


@pytest.fixture
def name_uri(tmp_path: Path) -> str:
    return (tmp_path / "bucket" / "datasets" / "demo").as_uri()


@pytest.fixture
def champion_store(tmp_path: Path, settings: StoreSettings) -> LocalStore:
    return LocalStore(tmp_path / "artifacts", settings)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}


def test_a_push_is_a_version_the_same_content_none_and_a_bigger_set_sends_only_new_shards(tmp_path, settings, name_uri) -> None:
    v1 = push_version(make_set(tmp_path / "v1", 120), name_uri, SHARD, settings)
    assert v1.created and v1.moved and v1.previous is None
    assert v1.dataset.uri == f"{name_uri}/versions/{v1.dataset.version}" and v1.dataset.sha256.startswith(v1.dataset.version)
    again = push_version(tmp_path / "v1", name_uri, SHARD, settings)
    assert not again.created and not again.moved and again.counts["uploaded"] == 0 and again.dataset == v1.dataset
    v2 = push_version(make_set(tmp_path / "v2", 180), name_uri, SHARD, settings)
    assert v2.created and v2.moved and v2.previous == v1.dataset.version
    assert 0 < v2.counts["uploaded"] < v2.counts["shards"]  # the shards of v1's families are shared, not sent again
    listed = list_versions(name_uri, settings)
    assert [(info.version, info.latest, info.families, info.people, info.images) for info in listed] == [
        (v2.dataset.version, True, 180, 360, 720), (v1.dataset.version, False, 120, 240, 480)]


def test_resolve_names_one_exact_version(tmp_path, settings, name_uri) -> None:
    v1 = push_version(make_set(tmp_path / "v1", 8), name_uri, SHARD, settings).dataset
    v2 = push_version(make_set(tmp_path / "v2", 12), name_uri, SHARD, settings).dataset
    assert resolve_dataset(name_uri, settings) == v2
    assert resolve_dataset(f"{name_uri}@{v1.version[:6]}", settings) == v1
    assert resolve_dataset(f"{name_uri}@{v1.version}", settings) == v1
    assert resolve_dataset(v1.uri, settings) == v1
    with pytest.raises(DatasetVersionError, match="no version begin with"):
        resolve_dataset(f"{name_uri}@ffff", settings)


def test_an_unversioned_set_is_read_as_itself_and_adopted_by_the_next_push(tmp_path, settings) -> None:
    old_uri = (tmp_path / "bucket" / "datasets" / "old").as_uri()
    store = LocalStore(tmp_path / "bucket" / "datasets" / "old", settings)
    store.put_tree(make_set(tmp_path / "v0", 6), "", shard_bytes=SHARD)  # how push wrote data sets before versions
    old = resolve_dataset(old_uri, settings)
    assert old.uri == old_uri and not old.versioned
    new = push_version(make_set(tmp_path / "v1", 9), old_uri, SHARD, settings).dataset
    listed = {info.version: info for info in list_versions(old_uri, settings)}
    assert set(listed) == {old.version, new.version} and listed[old.version].created is None
    assert resolve_dataset(f"{old_uri}@{old.version}", settings).sha256 == old.sha256  # the same content, the same digest


def test_pull_fetches_any_version_through_the_host_cache(tmp_path, settings, name_uri) -> None:
    from kinship.pipeline import fetch_dataset

    v1 = push_version(make_set(tmp_path / "v1", 10), name_uri, SHARD, settings).dataset
    push_version(make_set(tmp_path / "v2", 14), name_uri, SHARD, settings)
    resolved, dest = pull(f"{name_uri}@{v1.version}", tmp_path / "out1", settings)
    assert resolved == v1 and files_of(dest) == files_of(tmp_path / "v1")
    _, dest = pull(name_uri, tmp_path / "out2", settings)
    assert files_of(dest) == files_of(tmp_path / "v2")
    # a reader that does not resolve gets the latest through the root copy: the same digest, the same cached copy
    assert fetch_dataset(name_uri, settings).sha256 == resolve_dataset(name_uri, settings).sha256


def test_damaged_or_missing_pointers_and_manifests_are_one_line(tmp_path, settings, name_uri) -> None:
    root = tmp_path / "bucket" / "datasets" / "demo"
    with pytest.raises(DatasetVersionError, match="no data set at"):
        resolve_dataset(name_uri, settings)
    v1 = push_version(make_set(tmp_path / "v1", 5), name_uri, SHARD, settings).dataset
    store = LocalStore(root, settings)
    store.put_json({"format": "kinship-dataset-latest/1", "version": "../../etc"}, "latest")
    with pytest.raises(DatasetVersionError, match="damaged data set pointer") as error:
        resolve_dataset(name_uri, settings)
    assert "\n" not in str(error.value)
    assert main(["data", "pull", name_uri, str(tmp_path / "out")]) == 2
    store.put_json({"format": "kinship-dataset-latest/1", "version": "0" * 16, "sha256": "0" * 64}, "latest")
    with pytest.raises(DatasetVersionError, match="no version 0000000000000000"):
        resolve_dataset(name_uri, settings)
    # a version whose manifest is not the one its name promises is refused before any shard is read
    store.put_json({**store.get_json(f"versions/{v1.version}/{MANIFEST_NAME}"), "note": "edited"},
                   f"versions/{v1.version}/{MANIFEST_NAME}")
    with pytest.raises(DatasetVersionError, match="damaged version manifest"):
        resolve_dataset(f"{name_uri}@{v1.version}", settings)
    with pytest.raises(IntegrityError, match="manifest is damaged"):
        store.get_tree(v1.uri, tmp_path / "raw")


def test_prune_keeps_latest_the_champion_s_and_recently_used_versions(tmp_path, settings, name_uri, champion_store) -> None:
    pushed = [push_version(make_set(tmp_path / f"v{n}", 4 + 3 * n), name_uri, SHARD, settings).dataset
              for n in range(4)]
    ref = {"uri": "s3://kinship/runs/r/train/model.onnx", "key": "model.onnx", "sha256": "0" * 64, "size": 1}
    trained_on_v0 = {"run_id": "r0", "metrics": {"best_val_auc": 0.7}, "train_config": {}, "manifest": ref,
                     "dataset": {"uri": pushed[0].uri, "sha256": pushed[0].sha256},
                     "artifacts": {"model.onnx": ref, "model.pt": ref}}
    assert promote_if_better(champion_store, trained_on_v0, {"manifest": {}, "engines": [{"variant": "fp32", "status": "built"}]})["promoted"]
    now = datetime.now(timezone.utc)
    record_use(pushed[1], "recent-run", settings, when=now - timedelta(days=2))
    record_use(pushed[2], "old-run", settings, when=now - timedelta(days=40))
    listed = {info.version: info.references for info in list_versions(name_uri, settings, champion_store)}
    assert listed[pushed[0].version] == ("champion (run r0)", "champion history (run r0)")
    assert listed[pushed[1].version] == ("runs recent-run",)
    dry = prune(name_uri, keep=1, days=30, settings=settings, champion_store=champion_store, dry_run=True)
    assert dry.removed == (pushed[2].version,) and list_versions(name_uri, settings)[1].version == pushed[2].version
    result = prune(name_uri, keep=1, days=30, settings=settings, champion_store=champion_store)
    assert result.removed == (pushed[2].version,) and result.shards_removed >= 1
    assert set(result.kept) == {pushed[0].version, pushed[1].version, pushed[3].version}
    assert "champion" in result.kept[pushed[0].version] and "last 30 days" in result.kept[pushed[1].version]
    for kept in (pushed[0], pushed[1], pushed[3]):  # every shard a kept version names is still there
        _, dest = pull(f"{name_uri}@{kept.version}", tmp_path / f"check-{kept.version}", settings)
        assert len(files_of(dest)) == len(files_of(tmp_path / f"v{pushed.index(kept)}"))
    with pytest.raises(DatasetVersionError, match="no version"):
        resolve_dataset(f"{name_uri}@{pushed[2].version}", settings)


def test_the_cli_pushes_lists_and_prunes(tmp_path, name_uri, capsys, monkeypatch) -> None:
    monkeypatch.setenv("KINSHIP_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    source = make_set(tmp_path / "v1", 6)
    assert main(["data", "push", str(source), name_uri, "--json", "--shard-mib", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["new_version"] and first["latest_moved"] and first["manifest"].endswith(f"/versions/{first['version']}/{MANIFEST_NAME}")
    assert main(["data", "push", str(source), name_uri]) == 0
    assert f"no new version: this content is version {first['version']}, already latest" in capsys.readouterr().out
    store_uri = (tmp_path / "artifacts").as_uri()
    assert main(["data", "versions", name_uri, "--store", store_uri, "--json"]) == 0
    assert [v["version"] for v in json.loads(capsys.readouterr().out)] == [first["version"]]
    assert main(["data", "prune", name_uri, "--keep", "1", "--store", store_uri]) == 0
    assert "removed 0 version(s)" in capsys.readouterr().out
    assert main(["data", "prune", name_uri, "--keep", "0", "--store", store_uri]) == 2


class _Events(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Events.received.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_new_version_sends_the_pushed_event_and_a_failure_is_a_warning(tmp_path, settings, name_uri) -> None:
    result = push_version(make_set(tmp_path / "v1", 3), name_uri, SHARD, settings)
    assert emit_pushed_event(result, {}) is None  # no server named: nothing to send
    server = HTTPServer(("127.0.0.1", 0), _Events)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert emit_pushed_event(result, {"PREFECT_API_URL": f"http://127.0.0.1:{server.server_port}/api"}) is None
    finally:
        server.shutdown()
        server.server_close()
    path, events = _Events.received[-1]
    assert path == "/api/events" and events[0]["event"] == "kinship.dataset.pushed"
    assert events[0]["resource"]["prefect.resource.id"] == "kinship.dataset.demo"
    assert events[0]["resource"]["kinship.dataset.version"] == result.dataset.version
    assert events[0]["related"][0]["prefect.resource.role"] == "dataset-version"
    warning = emit_pushed_event(result, {"PREFECT_API_URL": f"http://127.0.0.1:{server.server_port}/api"})
    assert warning.startswith("could not send the kinship.dataset.pushed event")
