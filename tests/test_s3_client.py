"""S3Store against botocore's own client, stubbed (no server): which multipart uploads a push aborts, and a
botocore too old for conditional writes. The same calls against a real server are in test_storage_s3.py."""

from __future__ import annotations

import re
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from kinship.errors import UserError
from kinship.storage import S3Store, StoreSettings
from tasks.runtime import is_transient

REPO = Path(__file__).resolve().parents[1]
KEY = "datasets/set/shards/000000-0123456789abcdef.tar"


@pytest.fixture
def client():
    return boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture
def store(client, tmp_path: Path) -> S3Store:
    return S3Store(StoreSettings(endpoint_url="http://127.0.0.1:9", bucket="kinship", scratch=tmp_path), client=client)


def upload(upload_id: str, age: timedelta) -> dict:
    return {"Key": KEY, "UploadId": upload_id, "Initiated": datetime.now(timezone.utc) - age}


def test_a_push_aborts_only_its_own_and_stale_uploads_of_a_key(client, store: S3Store) -> None:
    """Another process's upload of the same key under way (a concurrent push of the same set) is left alone:
    aborting it by key killed that push with NoSuchUpload."""
    with Stubber(client) as stub:
        stub.add_response("create_multipart_upload", {"Bucket": "kinship", "Key": KEY, "UploadId": "mine"})
        client.create_multipart_upload(Bucket="kinship", Key=KEY)  # as s3transfer begins one for this process
        stub.add_response("list_multipart_uploads", {"Uploads": [
            upload("mine", timedelta(seconds=5)), upload("theirs", timedelta(seconds=30)),
            upload("left-by-a-killed-push", timedelta(days=2))]}, {"Bucket": "kinship", "Prefix": KEY})
        for upload_id in ("mine", "left-by-a-killed-push"):
            stub.add_response("abort_multipart_upload", {}, {"Bucket": "kinship", "Key": KEY, "UploadId": upload_id})
        assert store._abort_stale_uploads([KEY]) == 2
        stub.assert_no_pending_responses()


def test_the_stale_age_comes_from_the_environment() -> None:
    assert StoreSettings.from_env({"KINSHIP_STALE_UPLOAD_S": "0"}).stale_upload_s == 0
    assert StoreSettings.from_env({}).stale_upload_s == 3600
    with pytest.raises(UserError, match="KINSHIP_STALE_UPLOAD_S"):
        StoreSettings.from_env({"KINSHIP_STALE_UPLOAD_S": "soon"})


def test_a_botocore_without_conditional_put_is_one_permanent_line(client, store: S3Store) -> None:
    """As a botocore older than 1.35.69 is: its put_object model has no IfMatch, so the call fails its
    parameter validation (before any request) and used to escape as a traceback that tasks retried."""
    client.meta.service_model.operation_model("PutObject").input_shape.members.pop("IfMatch")
    with pytest.raises(UserError, match=r"botocore .* cannot send a conditional write \(IfMatch on put_object.*"
                                        r"boto3>=1\.35\.69") as error:
        store.put_json_if_version({"run": "a"}, "champion.json", '"0123"')
    assert not is_transient(error.value) and "\n" not in str(error.value)


def test_the_boto3_floor_has_conditional_put() -> None:
    """pyproject's floor is the first boto3 whose botocore takes IfMatch on put_object (botocore 1.35.69: the
    S3 API change of 2024-11-25; 1.35.68's PutObjectRequest has IfNoneMatch only)."""
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.search(r">=([\d.]+)", line).group(1) for line in requirements if line.startswith("boto3"))
    assert tuple(map(int, floor.split("."))) >= (1, 35, 69)
    assert "IfMatch" in boto3.client("s3", region_name="us-east-1").meta.service_model.operation_model(
        "PutObject").input_shape.members
