"""The artifact store against a real SeaweedFS (``weed mini`` on 127.0.0.1, credentials required)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from kinship.cli import main
from kinship.cli.data_push import add_push_command
from kinship.errors import UserError
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
from tests.stack import WeedServer, localstack, weed_server  # noqa: F401  (fixture)

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
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=data[:100_000], Metadata={"sha256": ref.sha256})
    with pytest.raises(IntegrityError, match="size mismatch"):
        store.get_file(ref, dest)  # truncated, under a forged record
    assert not dest.exists() and not store.cache.path(ref.sha256).exists()
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=b"short")
    with pytest.raises(IntegrityError):
        store.get_file(ref.uri, dest)  # no digest recorded on the replacement: nothing to trust
    assert not dest.exists()
    assert [p.name for p in store.settings.scratch.rglob("*") if p.is_file()] == []  # nothing cached, nothing partial


BAD_KEYS = ["../escape.txt", "a/../../b", "/etc/passwd", "a\x00b", "line\nbreak", "a\x7fb", "a\\b"]


def test_bad_keys_never_reach_the_server(tmp_path: Path, store: S3Store, s3_env: WeedServer) -> None:
    sent: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    source = write(tmp_path / "f.bin", b"x")
    for key in BAD_KEYS:
        calls = [lambda: store.put_file(source, key), lambda: store.get_file(key), lambda: store.put_json({}, key),
                 lambda: store.exists(key), lambda: store.list(key), lambda: store.get_tree(key, tmp_path / "got")]
        if not key.startswith("/"):  # s3://bucket//etc/passwd is the plain key etc/passwd, inside the bucket
            calls.append(lambda: store.get_file(f"s3://{s3_env.bucket}/{key}"))
        for call in calls:
            with pytest.raises(UserError) as error:
                call()
            assert "\n" not in str(error.value), (key, str(error.value))
    assert sent == []  # refused here, before any request
    assert not store.exists("fine") and len(sent) == 1  # the hook does see a request that is sent
    assert "Contents" not in s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=f"{store.prefix}/")


def test_compare_and_swap_with_conditional_writes(store: S3Store) -> None:
    from tests.test_storage import check_compare_and_swap

    check_compare_and_swap(store)


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
    present = f"{settings.prefix}/present.txt"
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=present, Body=b"kept")  # a refusal must not be a 404
    unsigned = boto3.session.Session().client("s3", endpoint_url=s3_env.endpoint, region_name=s3_env.region,
                                              config=Config(signature_version=UNSIGNED))
    wrong_secret = s3_env.client(secret_key="not-the-secret")
    unknown_key = s3_env.client(access_key="AKUNKNOWN", secret_key="whatever")
    intruder = f"{settings.prefix}/intruder.txt"
    for client in (unsigned, wrong_secret, unknown_key):
        answers: list[tuple[int, str]] = []  # what the server itself said, seen on the wire
        client.meta.events.register("after-call.s3", lambda http_response, **_: answers.append(
            (http_response.status_code, http_response.headers.get("Server", ""))))
        for call in (lambda: client.list_objects_v2(Bucket=s3_env.bucket),
                     lambda: client.put_object(Bucket=s3_env.bucket, Key=intruder, Body=b"x"),
                     lambda: client.get_object(Bucket=s3_env.bucket, Key=present),
                     lambda: client.head_object(Bucket=s3_env.bucket, Key=present)):
            with pytest.raises(ClientError) as refused:
                call()
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] in (401, 403)
        assert len(answers) == 4 and all(status == 403 and "SeaweedFS" in server for status, server in answers), answers
    for url in (f"{s3_env.endpoint}/{s3_env.bucket}/{present}", f"{s3_env.endpoint}/{s3_env.bucket}?list-type=2",
                f"http://127.0.0.1:{s3_env.ports['filer']}/buckets/{s3_env.bucket}/{present}"):  # no client at all
        status, body = localstack.http_get(url)
        # 404 from the filer: it serves no HTTP at all (-disableHttp; tests/test_weed_ports.py tries the rest)
        assert status in ((404,) if "/buckets/" in url else (401, 403)) and b"kept" not in body, (url, status)
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=f"{settings.prefix}/")
    assert [item["Key"] for item in listed["Contents"]] == [present]  # no intruder got in
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreAccessError, match="access denied") as denied:
        S3Store(settings).put_json({"a": 1}, "denied.json")
    assert "not-the-secret" not in repr(settings) and "not-the-secret" not in str(denied.value)


def push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kinship")
    data = parser.add_subparsers(dest="command").add_parser("data").add_subparsers(dest="data_command")
    add_push_command(data)
    return parser


@pytest.mark.parametrize("shard_mib", ["32", "0"], ids=["shards", "one-object-per-file"])
def test_data_push_is_idempotent(tmp_path: Path, settings: StoreSettings, s3_env: WeedServer, capsys,
                                 shard_mib: str) -> None:
    files = {"F0001/MID1/P1_face0.jpg": os.urandom(4000), "F0001/MID2/P2_face0.jpg": os.urandom(3000), "train.csv": b"a,b\n"}
    for relative, data in files.items():
        write(tmp_path / "rfiw" / relative, data)
    uri = f"s3://{s3_env.bucket}/{settings.prefix}/datasets/rfiw"
    reports = []
    for _ in range(2):
        args = push_parser().parse_args(["data", "push", str(tmp_path / "rfiw"), uri, "--json", "--shard-mib", shard_mib])
        assert args.handler(args) == 0
        reports.append(json.loads(capsys.readouterr().out))
    objects = 1 if shard_mib != "0" else 3  # one shard holds all three files
    assert [r["uploaded"] for r in reports] == [objects, 0] and [r["skipped"] for r in reports] == [0, objects]
    assert [r["files"] for r in reports] == [3, 3]
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=f"{settings.prefix}/datasets/rfiw/")
    stored = sorted(o["Key"].rsplit("rfiw/", 1)[1] for o in listed["Contents"])
    if shard_mib == "0":
        assert reports[0]["uri"] == uri and reports[0]["manifest"] == f"{uri}/{MANIFEST_NAME}"
        assert stored == sorted([*files, MANIFEST_NAME])
    else:  # one immutable version (issue 24): the second push of the same content makes none
        version = reports[0]["version"]
        assert reports[0]["manifest"] == f"{uri}/versions/{version}/{MANIFEST_NAME}"
        assert [r["new_version"] for r in reports] == [True, False] and reports[1]["version"] == version
        shards = [key for key in stored if key.startswith("shards/")]
        assert len(shards) == 1 and shards[0].startswith("shards/000000-")
        assert sorted(set(stored) - set(shards)) == sorted([MANIFEST_NAME, "latest", f"versions/{version}/{MANIFEST_NAME}",
                                                           f"versions/{version}/version.json"])
    got = S3Store(replace(settings, prefix="")).get_tree(uri, tmp_path / "got")
    assert {p.relative_to(got).as_posix(): p.read_bytes() for p in got.rglob("*") if p.is_file() and p.name != MANIFEST_NAME} == files
    manifest = s3_env.client().get_object(Bucket=s3_env.bucket, Key=f"{settings.prefix}/datasets/rfiw/{MANIFEST_NAME}")
    for text in (manifest["Body"].read().decode(), json.dumps(manifest["Metadata"]), repr(settings), repr(S3Store(settings))):
        assert s3_env.access_key not in text and s3_env.secret_key not in text  # credentials never stored or shown


# ---------------------------------------------------------------- data sets that are not there, or not intact


def one_line_error(capsys, *named: str) -> str:
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured
    assert captured.err.startswith("kinship data: error: ")
    for name in named:
        assert name in captured.err, (name, captured.err)
    return captured.err


def test_missing_and_empty_data_set_uris_name_the_uri(tmp_path: Path, settings: StoreSettings, s3_env: WeedServer,
                                                       monkeypatch, capsys) -> None:
    from tests.test_layout import make_clean

    monkeypatch.setenv("KINSHIP_SCRATCH", str(tmp_path / "scratch"))
    base = f"s3://{s3_env.bucket}/{settings.prefix}"
    root = S3Store(replace(settings, prefix=""))
    root.put_tree(make_clean(tmp_path / "tiny"), f"{settings.prefix}/sets/rfiw")
    root.put_file(write(tmp_path / "x", b"x"), f"{settings.prefix}/half/x")  # files without a manifest
    cases = {
        f"{base}/datasets/never-pushed": "nothing is stored there",
        f"{base}/datasets/": "nothing is stored there",  # an empty bucket prefix
        f"s3://{s3_env.bucket}/": "name its folder inside the bucket",
        f"{base}/half": "interrupted push",
        f"{base}/sets": f"sub-folders, e.g. {base}/sets/rfiw",
        "s3://no-such-bucket-here/datasets/x": "the bucket does not exist",
    }
    for uri, why in cases.items():
        with pytest.raises(UserError) as error:  # the store's own call
            root.get_tree(uri, tmp_path / "got")
        assert "\n" not in str(error.value) and uri.rstrip("/") in str(error.value) and why in str(error.value)
        assert main(["data", "check", uri]) == 2  # through kinship.pipeline.fetch_dataset, as the flows fetch
        one_line_error(capsys, uri.rstrip("/"), why)
    assert not (tmp_path / "got").exists() and not (tmp_path / "scratch" / "datasets").exists()


@pytest.mark.parametrize("shard_mib", ["32", "0"], ids=["shards", "one-object-per-file"])
def test_data_check_fetches_a_pushed_set_and_refuses_a_tampered_one(tmp_path: Path, settings: StoreSettings,
                                                                    s3_env: WeedServer, monkeypatch, capsys,
                                                                    shard_mib: str) -> None:
    from tests.test_layout import make_clean

    uri = f"s3://{s3_env.bucket}/{settings.prefix}/datasets/tiny"
    assert main(["data", "push", str(make_clean(tmp_path / "tiny")), uri, "--json", "--shard-mib", shard_mib]) == 0
    capsys.readouterr()
    monkeypatch.setenv("KINSHIP_SCRATCH", str(tmp_path / "scratch1"))
    assert main(["data", "check", uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["images"] == 8
    if shard_mib == "0":
        key = f"{settings.prefix}/datasets/tiny/train/F0002/MID1/P00005_face1.jpg"
    else:
        key = next(k for k in bucket_contents(s3_env, f"{settings.prefix}/datasets/tiny/shards/"))
    recorded = s3_env.client().head_object(Bucket=s3_env.bucket, Key=key)["Metadata"]
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=b"\xff\xd8 not the pushed image", Metadata=recorded)
    scratch = tmp_path / "scratch2"  # a fresh host: the verified copy cached by the first check is not there
    monkeypatch.setenv("KINSHIP_SCRATCH", str(scratch))
    assert main(["data", "check", uri]) == 2
    one_line_error(capsys, f"s3://{s3_env.bucket}/{key}", "size mismatch", "nothing was kept")
    assert [p.name for p in (scratch / "datasets").iterdir() if not p.name.startswith(".")] == []  # assembled aside
    assert not [p for p in scratch.rglob("*") if ".partial-" in p.name or p.name == "P00005_face1.jpg"]


def test_data_push_to_a_refusing_or_dead_server_is_one_line(tmp_path: Path, settings: StoreSettings, s3_env: WeedServer,
                                                            monkeypatch, capsys) -> None:
    from tests.test_layout import make_clean

    source = str(make_clean(tmp_path / "tiny"))
    assert main(["data", "push", source, "s3://no-such-bucket-here/datasets/x"]) == 2
    one_line_error(capsys, "s3://no-such-bucket-here/datasets/x", "the bucket does not exist", s3_env.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main(["data", "push", source, f"s3://{s3_env.bucket}/{settings.prefix}/datasets/x"]) == 2
    assert "not-the-secret" not in one_line_error(capsys, "access denied", f"{settings.prefix}/datasets/x")
    closed = f"http://127.0.0.1:{localstack.free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", closed)
    monkeypatch.setenv("KINSHIP_RETRY_WINDOW", "1")
    assert main(["data", "push", source, f"s3://{s3_env.bucket}/{settings.prefix}/datasets/x"]) == 2
    one_line_error(capsys, "gave up", closed, f"s3://{s3_env.bucket}/{settings.prefix}/datasets/x")


# ---------------------------------------------------------------- links are never followed into the bucket


def cli_env(server: WeedServer, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KINSHIP_"))}
    return {**env, **server.env(), "KINSHIP_SCRATCH": str(tmp_path / "cli-scratch")}


def bucket_contents(server: WeedServer, prefix: str) -> dict[str, bytes]:
    client = server.client()
    listed = client.list_objects_v2(Bucket=server.bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=server.bucket, Key=item["Key"])["Body"].read() for item in listed}


def test_data_push_cli_never_uploads_a_link_target(tmp_path: Path, settings: StoreSettings, s3_env: WeedServer) -> None:
    from tests.test_layout import make_clean

    marker = f"MARKER-{uuid.uuid4().hex}".encode()  # a host file outside the data set, like /etc/passwd
    write(tmp_path / "host" / "passwd", b"root:x:0:0:" + marker)
    write(tmp_path / "host" / "photos" / "P09999_face0.jpg", marker)
    data = make_clean(tmp_path / "tiny")
    regular = sum(1 for p in data.rglob("*") if p.is_file())  # before the links are planted
    planted = data / "train" / "F0002" / "MID1" / "P00012_face0.jpg"
    os.symlink(tmp_path / "host" / "passwd", planted)
    os.symlink(tmp_path / "host" / "photos", data / "train" / "F0002" / "MID9")
    uri = f"s3://{s3_env.bucket}/{settings.prefix}/datasets/tiny"
    done = subprocess.run([str(Path(sys.prefix) / "bin" / "kinship"), "data", "push", str(data), uri, "--json"],
                          env=cli_env(s3_env, tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = ["train/F0002/MID1/P00012_face0.jpg", "train/F0002/MID9"]
    expected = f"kinship data push: skipped 2 symbolic links or special files (not followed): {', '.join(names)}\n"
    assert done.stderr == expected
    report = json.loads(done.stdout)
    assert report["skipped_links"] == 2 and report["skipped_link_names"] == names and report["files"] == regular
    stored = bucket_contents(s3_env, f"{settings.prefix}/")
    assert not any(marker in body for body in stored.values())  # the target's bytes are nowhere in the bucket
    manifest = json.loads(stored.pop(f"{settings.prefix}/datasets/tiny/{MANIFEST_NAME}"))
    assert not any("P00012_face0" in name or "MID9" in name for name in [*stored, *manifest["files"]])
    shards = [key for key in stored if key.startswith(f"{settings.prefix}/datasets/tiny/shards/")]
    assert len(manifest["files"]) == regular and len(shards) == 1  # the regular files, in one shard
    # the rest is the version's bookkeeping (issue 24): its manifest (the same bytes), version.json and latest
    assert sorted(key.rsplit("/datasets/tiny/", 1)[1].split("/")[0] for key in stored if key not in shards) == [
        "latest", "versions", "versions"]


# ---------------------------------------------------------------- multipart uploads left behind are aborted


def incomplete_uploads(server: WeedServer, prefix: str) -> dict[str, list[int]]:
    """``{key: [part numbers]}`` of the multipart uploads begun and neither completed nor aborted under ``prefix``."""
    client = server.client()
    uploads = client.list_multipart_uploads(Bucket=server.bucket, Prefix=prefix).get("Uploads", [])
    return {item["Key"]: [part["PartNumber"] for part in client.list_parts(
        Bucket=server.bucket, Key=item["Key"], UploadId=item["UploadId"]).get("Parts", [])] for item in uploads}


def test_a_push_aborts_the_uploads_an_interrupted_push_left(tmp_path: Path, settings: StoreSettings, s3_env: WeedServer,
                                                            capsys, monkeypatch) -> None:
    big = write(tmp_path / "set" / "big.bin", os.urandom(6 * MiB))
    write(tmp_path / "set" / "small.txt", b"small")
    base = f"{settings.prefix}/datasets/set"
    client = s3_env.client()
    for key in (f"{base}/big.bin", f"{base}/small.txt", f"{base}-other/big.bin"):  # as a killed push leaves them
        begun = client.create_multipart_upload(Bucket=s3_env.bucket, Key=key)
        client.upload_part(Bucket=s3_env.bucket, Key=key, UploadId=begun["UploadId"], PartNumber=1, Body=b"x" * 5 * MiB)
    left = sorted(incomplete_uploads(s3_env, f"{settings.prefix}/"))
    assert left == [f"{base}-other/big.bin", f"{base}/big.bin", f"{base}/small.txt"]
    # Younger than KINSHIP_STALE_UPLOAD_S and begun by another process: it may be a concurrent push of the same
    # keys, under way, so they are left alone (aborting them by key killed that push with NoSuchUpload).
    assert main(["data", "push", str(tmp_path / "set"), f"s3://{s3_env.bucket}/{base}", "--json", "--shard-mib", "0"]) == 0
    capsys.readouterr()
    assert sorted(incomplete_uploads(s3_env, f"{settings.prefix}/")) == left
    monkeypatch.setenv("KINSHIP_STALE_UPLOAD_S", "0")  # now they count as stale (the server cannot be made older)
    write(tmp_path / "set" / "small.txt", b"small, edited")
    big.write_bytes(os.urandom(6 * MiB))
    assert main(["data", "push", str(tmp_path / "set"), f"s3://{s3_env.bucket}/{base}", "--json", "--shard-mib", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["uploaded"] == 2
    assert incomplete_uploads(s3_env, f"{settings.prefix}/") == {f"{base}-other/big.bin": [1]}  # only its own keys
    assert bucket_contents(s3_env, f"{base}/big.bin")[f"{base}/big.bin"] == big.read_bytes()
    client.create_multipart_upload(Bucket=s3_env.bucket, Key=f"{settings.prefix}/one/big.bin")
    S3Store(replace(settings, stale_upload_s=0)).put_file(big, "one/big.bin")  # a single file too (over 5 MiB)
    assert f"{settings.prefix}/one/big.bin" not in incomplete_uploads(s3_env, f"{settings.prefix}/")


# Runs the real CLI with s3transfer's parts after the first held back, so a signal lands mid-upload.
SLOW_PARTS = """
import sys, time
from s3transfer import upload
send = upload.UploadPartTask._main
def held_back(self, client, fileobj, bucket, key, upload_id, part_number, extra_args):
    if part_number > 1:
        time.sleep(2)
    return send(self, client, fileobj, bucket, key, upload_id, part_number, extra_args)
upload.UploadPartTask._main = held_back
from kinship.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_an_interrupted_push_leaves_no_parts(tmp_path: Path, settings: StoreSettings, s3_env: WeedServer, capsys,
                                             monkeypatch, signum: int, code: int) -> None:
    write(tmp_path / "set" / "big.bin", os.urandom(20 * MiB))  # 3 parts at the default 8 MiB
    write(tmp_path / "set" / "small.txt", b"small")
    base = f"{settings.prefix}/datasets/set"
    push = subprocess.Popen([sys.executable, "-c", SLOW_PARTS, "data", "push", str(tmp_path / "set"),
                             f"s3://{s3_env.bucket}/{base}", "--shard-mib", "0"], env=cli_env(s3_env, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as in a terminal: a suite started in the background of a shell without job control
                            # inherits SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not incomplete_uploads(s3_env, f"{base}/").get(f"{base}/big.bin"):  # begun, part 1 stored
        assert push.poll() is None and time.monotonic() < deadline, push.communicate()
        time.sleep(0.05)
    push.send_signal(signum)
    _, err = push.communicate(timeout=60)
    assert push.returncode == code, err
    left = incomplete_uploads(s3_env, f"{base}/")
    assert MANIFEST_NAME not in "".join(bucket_contents(s3_env, f"{base}/"))
    if signum == signal.SIGKILL:  # nothing can run: the parts stay until a push of the same keys finds them stale
        assert left == {f"{base}/big.bin": [1]}
        monkeypatch.setenv("KINSHIP_STALE_UPLOAD_S", "0")  # (else: once older than an hour, or the bucket's rule)
        assert main(["data", "push", str(tmp_path / "set"), f"s3://{s3_env.bucket}/{base}", "--shard-mib", "0"]) == 0
        capsys.readouterr()
        assert incomplete_uploads(s3_env, f"{base}/") == {}
        return
    assert left == {} and err.count("\n") == 1 and ("interrupted" in err or "terminated (SIGTERM)" in err), err
    assert f"{base}/big.bin" not in bucket_contents(s3_env, f"{base}/")  # aborted, not finished first
