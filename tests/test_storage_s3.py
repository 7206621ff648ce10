"""The artifact store against a real SeaweedFS (``weed mini`` on 127.0.0.1, credentials required)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import uuid
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from kinship.cli.data_push import add_push_command
from kinship.storage import (
    MANIFEST_NAME,
    MiB,
    ArtifactNotFound,
    IntegrityError,
    S3Store,
    StoreAccessError,
    StoreSettings,
    parse_uri,
)
from tests.stack import WeedServer, weed_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_env(weed_server: WeedServer, monkeypatch) -> WeedServer:
    """Credentials reach boto3 the standard way: through the environment."""
    for name, value in weed_server.env().items():
        monkeypatch.setenv(name, value)
    return weed_server


@pytest.fixture
def settings(s3_env: WeedServer, tmp_path: Path) -> StoreSettings:
    # A low multipart threshold lets a 12 MiB file exercise the multipart path; each test gets its own prefix.
    return replace(StoreSettings.from_env(), prefix=f"tests/{uuid.uuid4().hex[:10]}", scratch=tmp_path / "scratch",
                   multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, retry_base_delay=0.05)


@pytest.fixture
def store(settings: StoreSettings) -> S3Store:
    return S3Store(settings)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_multipart_round_trip_and_cache(tmp_path: Path, store: S3Store, s3_env: WeedServer) -> None:
    data = os.urandom(12 * MiB + 123)
    ref = store.put_file(write(tmp_path / "model.onnx", data), "models/big.onnx")
    assert ref.uri == f"s3://{s3_env.bucket}/{store.prefix}/models/big.onnx"
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.size == len(data)
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key=f"{store.prefix}/models/big.onnx")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # 3 parts of 5 MiB: the multipart path was taken
    assert head["Metadata"]["sha256"] == ref.sha256
    assert store.get_file(ref, tmp_path / "out" / "big.onnx").read_bytes() == data
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key=f"{store.prefix}/models/big.onnx")
    assert store.get_file(ref, tmp_path / "again.onnx").read_bytes() == data  # served by the cache: no object left


def test_tampered_object_is_refused(tmp_path: Path, store: S3Store, s3_env: WeedServer) -> None:
    data = os.urandom(300_000)
    ref = store.put_file(write(tmp_path / "w.bin", data), "w.bin")
    key = parse_uri(ref.uri).key
    # Even a tamperer who copies the recorded digest into the metadata is caught by the ref.
    forged = bytes([data[0] ^ 0xFF]) + data[1:]
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=forged, Metadata={"sha256": ref.sha256})
    dest = tmp_path / "out" / "w.bin"
    with pytest.raises(IntegrityError, match="w.bin"):
        store.get_file(ref, dest)
    assert not dest.exists() and [p.name for p in (tmp_path / "out").glob("*")] == []
    assert not store.cache.path(ref.sha256).exists()
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=b"short")
    with pytest.raises(IntegrityError):
        store.get_file(ref.uri, dest)  # no digest recorded on the replacement: nothing to trust
    assert not dest.exists()


def test_json_and_manifest(tmp_path: Path, store: S3Store, s3_env: WeedServer) -> None:
    refs = [store.put_file(write(tmp_path / f"f{i}", os.urandom(1000 + i)), f"set/f{i}") for i in range(3)]
    manifest = store.write_manifest(refs, "set/manifest.json")
    assert store.read_manifest(manifest) == {ref.key: ref for ref in refs}
    pointer = store.put_json({"champion": refs[0].to_dict()}, "champion.json")
    assert store.get_json("champion.json")["champion"]["sha256"] == refs[0].sha256
    assert store.exists("champion.json") and not store.exists("nothing.json")
    assert store.list("set") == ["set/f0", "set/f1", "set/f2", "set/manifest.json"]
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=parse_uri(pointer.uri).key, Body=b'{"champion": null}')
    with pytest.raises(IntegrityError):
        store.get_json(pointer)
    with pytest.raises(ArtifactNotFound):
        store.get_file("missing/model.onnx")


def test_anonymous_and_wrong_key_requests_are_refused(s3_env: WeedServer, settings: StoreSettings, monkeypatch) -> None:
    unsigned = boto3.session.Session().client("s3", endpoint_url=s3_env.endpoint, region_name=s3_env.region,
                                              config=Config(signature_version=UNSIGNED))
    wrong_secret = s3_env.client(secret_key="not-the-secret")
    unknown_key = s3_env.client(access_key="AKUNKNOWN", secret_key="whatever")
    for client in (unsigned, wrong_secret, unknown_key):
        for call in (lambda: client.list_objects_v2(Bucket=s3_env.bucket),
                     lambda: client.put_object(Bucket=s3_env.bucket, Key="intruder.txt", Body=b"x"),
                     lambda: client.get_object(Bucket=s3_env.bucket, Key="intruder.txt")):
            with pytest.raises(ClientError) as refused:
                call()
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] in (401, 403)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreAccessError, match="access denied"):
        S3Store(settings).put_json({"a": 1}, "denied.json")
    assert "not-the-secret" not in repr(settings)


def push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kinship")
    data = parser.add_subparsers(dest="command").add_parser("data").add_subparsers(dest="data_command")
    add_push_command(data)
    return parser


def test_data_push_is_idempotent(tmp_path: Path, settings: StoreSettings, s3_env: WeedServer, capsys) -> None:
    files = {"F0001/MID1/P1_face0.jpg": os.urandom(4000), "F0001/MID2/P2_face0.jpg": os.urandom(3000), "train.csv": b"a,b\n"}
    for relative, data in files.items():
        write(tmp_path / "rfiw" / relative, data)
    uri = f"s3://{s3_env.bucket}/{settings.prefix}/datasets/rfiw"
    reports = []
    for _ in range(2):
        args = push_parser().parse_args(["data", "push", str(tmp_path / "rfiw"), uri, "--json"])
        assert args.handler(args) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert [r["uploaded"] for r in reports] == [3, 0] and [r["skipped"] for r in reports] == [0, 3]
    assert reports[0]["uri"] == uri and reports[0]["manifest"] == f"{uri}/{MANIFEST_NAME}"
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=f"{settings.prefix}/datasets/rfiw/")
    assert sorted(o["Key"].rsplit("rfiw/", 1)[1] for o in listed["Contents"]) == sorted([*files, MANIFEST_NAME])
    got = S3Store(replace(settings, prefix="")).get_tree(uri, tmp_path / "got")
    assert {p.relative_to(got).as_posix(): p.read_bytes() for p in got.rglob("*") if p.is_file() and p.name != MANIFEST_NAME} == files
