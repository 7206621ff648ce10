"""``S3Store``: objects in an S3-compatible bucket through boto3, written with their sha256 in the user metadata
(``x-amz-meta-sha256``). Credentials come from boto3's default chain; a server that is down or failing is retried
for ``StoreSettings.retry_window`` seconds, a refusal is one line at once."""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from kinship.errors import UserError
from kinship.files import unlink_quietly
from kinship.store.base import _Cancel
from kinship.store.keys import StoreURI, validate_bucket, validate_prefix
from kinship.store.local_files import _LocalFile
from kinship.store.refs import ArtifactNotFound, StoreAccessError, StoreUnreachable
from kinship.store.settings import PRESIGN_MAX_S, MiB, StoreSettings
from kinship.store.transfer import _TreeStore

_SHA_META = "sha256"
_STALE_WRITE = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")  # a conditional write lost
_JSON_LIMIT = 64 * MiB

# The store's log lines keep the name they had when the store was one module: tests and users filter on it.
log = logging.getLogger("kinship.storage")


class S3Store(_TreeStore):
    """Objects in an S3-compatible bucket (AWS, SeaweedFS, MinIO...) under ``settings.prefix``."""

    scheme = "s3"

    def __init__(self, settings: StoreSettings, client: Any = None):
        if not settings.bucket:
            raise UserError("no bucket configured: set KINSHIP_BUCKET or use an s3://bucket/... URI")
        super().__init__(settings)
        self.bucket = validate_bucket(settings.bucket)
        self.prefix = validate_prefix(settings.prefix)
        self.client = client or make_s3_client(settings)
        self._transfer_config = _transfer_config(settings)
        self._own_uploads: set[str] = set()  # upload ids of the multipart uploads this process began
        events = getattr(getattr(self.client, "meta", None), "events", None)
        if events is not None:
            events.register("after-call.s3.CreateMultipartUpload", self._note_upload)

    def _note_upload(self, parsed: dict | None = None, **_: Any) -> None:
        """botocore's after-call hook of CreateMultipartUpload (s3transfer's too): remember the upload as ours."""
        upload_id = (parsed or {}).get("UploadId")
        if upload_id:
            self._own_uploads.add(upload_id)

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix}, endpoint={self.settings.endpoint_url or 'aws'})"

    def _object_uri(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    def _upload_file(self, source: _LocalFile, loc: StoreURI, on_bytes: Callable[[int], None], cancel: _Cancel) -> None:
        extra = {"Metadata": {_SHA_META: source.sha256}}
        multipart = source.size >= self.settings.multipart_threshold
        attempts = itertools.count(1)

        def attempt() -> None:
            cancel.check()
            if next(attempts) > 1 and multipart:  # the failed attempt's parts, if its own abort missed the server
                self._abort_incomplete([loc.key], quick=True)
            self._transfer(source.handle, loc, extra, on_bytes, cancel)

        try:
            # S3 makes an object visible only when its PUT (or multipart completion) succeeds: never half-written.
            self._call(f"upload {source.path} to s3://{loc.bucket}/{loc.key}", attempt)
        except BaseException as error:
            if multipart and not isinstance(error, StoreUnreachable):  # a gone server cannot be asked to abort
                self._abort_incomplete([loc.key], quick=True)
            raise

    def _transfer(self, handle: BinaryIO, loc: StoreURI, extra: dict, on_bytes: Callable[[int], None],
                  cancel: _Cancel) -> None:
        """One upload through s3transfer, from the start of ``handle``, which ``cancel`` can stop from another
        thread. On any exception, an interrupt included, the manager cancels the transfer and waits for
        s3transfer's cleanup, which aborts the multipart upload it began."""
        from boto3.s3.transfer import ProgressCallbackInvoker, create_transfer_manager

        # s3transfer closes the file of a single-request upload: give it a duplicate, so a retry can read ours again.
        with os.fdopen(os.dup(handle.fileno()), "rb") as body:
            body.seek(0)
            with create_transfer_manager(self.client, self._transfer_config) as manager:
                transfer = manager.upload(body, loc.bucket, loc.key, extra_args=extra,
                                          subscribers=[ProgressCallbackInvoker(on_bytes)])
                with cancel.tracking(transfer):
                    transfer.result()

    def _abort_stale_uploads(self, keys: list[str]) -> int:
        return self._abort_incomplete([self._location(key).key for key in keys])

    def _abort_incomplete(self, full_keys: list[str], quick: bool = False) -> int:
        """Abort the incomplete multipart uploads of exactly ``full_keys`` in this bucket that this process began
        or that are older than ``settings.stale_upload_s`` (never another process's upload under way); how many.

        Parts of an upload that was never completed nor aborted stay stored (and billed) without being listed as
        objects. A store that will not list uploads (no right to, not implemented) is a warning, not a failed
        push. ``quick``, on the way out of a failure: one try, and nothing raised but an interrupt, so the
        failure itself is what the caller sees; what is left, the next push of these keys or the bucket's
        lifecycle rule removes.
        """
        wanted = set(full_keys)
        prefix = os.path.commonprefix(sorted(wanted))
        what = f"abort incomplete uploads under s3://{self.bucket}/{prefix}"
        if not quick:
            try:
                return self._call(what, lambda: self._abort_listed(prefix, wanted))
            except StoreAccessError as error:
                if isinstance(error, StoreUnreachable):
                    raise
                log.warning("%s; left to the bucket's lifecycle rule, if it has one", error)
                return 0
        try:
            with _s3_errors(what, self.settings.endpoint_url):
                return self._abort_listed(prefix, wanted)
        except Exception as error:  # noqa: BLE001  (never mask the failure being handled)
            log.info("%s: not done (%s: %s)", what, type(error).__name__, error)
            return 0

    def _abortable(self, upload: dict) -> bool:
        """Whether a listed multipart upload is ours, or old enough that no live push can still be sending it."""
        if upload["UploadId"] in self._own_uploads:
            return True
        initiated = upload.get("Initiated")
        if not isinstance(initiated, datetime):
            return False  # no age given: it may be another push's, under way
        age = datetime.now(timezone.utc) - (initiated if initiated.tzinfo else initiated.replace(tzinfo=timezone.utc))
        return age.total_seconds() >= self.settings.stale_upload_s

    def _abort_listed(self, prefix: str, wanted: set[str]) -> int:
        from botocore.exceptions import ClientError

        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
        stale = [(item["Key"], item["UploadId"]) for page in pages for item in page.get("Uploads", [])
                 if item["Key"] in wanted and self._abortable(item)]
        for key, upload_id in stale:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "NoSuchUpload":  # gone meanwhile: fine
                    raise
        if stale:
            log.info("aborted %d incomplete multipart upload(s) under s3://%s/%s", len(stale), self.bucket, prefix)
        return len(stale)

    def _upload_bytes(self, data: bytes, loc: StoreURI, sha256: str) -> None:
        self._call(f"write s3://{loc.bucket}/{loc.key}", lambda: self.client.put_object(
            Bucket=loc.bucket, Key=loc.key, Body=data, Metadata={_SHA_META: sha256}, ContentType="application/json"))

    def _download(self, loc: StoreURI, dest: Path, on_bytes: Callable[[int], None]) -> None:
        def attempt() -> None:
            unlink_quietly(dest)
            self.client.download_file(loc.bucket, loc.key, str(dest), Config=self._transfer_config, Callback=on_bytes)

        self._call(f"download s3://{loc.bucket}/{loc.key}", attempt)

    def _read_bytes(self, loc: StoreURI) -> tuple[bytes, str | None]:
        def attempt() -> tuple[bytes, str | None]:
            response = self.client.get_object(Bucket=loc.bucket, Key=loc.key)
            if response.get("ContentLength", 0) > _JSON_LIMIT:
                raise UserError(f"s3://{loc.bucket}/{loc.key} is too large to read as JSON")
            return response["Body"].read(), response.get("Metadata", {}).get(_SHA_META)

        return self._call(f"read s3://{loc.bucket}/{loc.key}", attempt)

    def _stat(self, loc: StoreURI) -> tuple[int, str | None] | None:
        try:
            head = self._call(f"stat s3://{loc.bucket}/{loc.key}",
                              lambda: self.client.head_object(Bucket=loc.bucket, Key=loc.key))
        except ArtifactNotFound:
            return None
        return int(head["ContentLength"]), head.get("Metadata", {}).get(_SHA_META)

    def _version(self, loc: StoreURI) -> str | None:
        try:
            return self._call(f"stat s3://{loc.bucket}/{loc.key}",
                              lambda: self.client.head_object(Bucket=loc.bucket, Key=loc.key))["ETag"]
        except ArtifactNotFound:
            return None

    def _upload_bytes_if(self, data: bytes, loc: StoreURI, sha256: str, version: str | None) -> bool:
        from botocore.exceptions import ClientError, ParamValidationError

        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}  # S3 conditional writes

        def put() -> bool:
            try:
                self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, Metadata={_SHA_META: sha256},
                                       ContentType="application/json", **condition)
            except ParamValidationError as error:
                if not any(name in str(error) for name in condition):
                    raise
                raise UserError(_no_conditional_writes(f"s3://{loc.bucket}/{loc.key}", next(iter(condition)))) from None
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                if code in _STALE_WRITE or status in ("409", "412"):
                    return False
                raise
            return True

        return self._call(f"write s3://{loc.bucket}/{loc.key} if unchanged", put)

    def _sizes(self, prefix: str) -> dict[str, int]:
        full = self._full_key(prefix)
        listing_prefix = f"{full}/" if full else ""
        strip = len(f"{self.prefix}/") if self.prefix else 0

        def attempt() -> dict[str, int]:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=listing_prefix)
            return {item["Key"][strip:]: int(item["Size"]) for page in pages for item in page.get("Contents", [])}

        return self._call(f"list s3://{self.bucket}/{listing_prefix}", attempt)

    def _delete(self, loc: StoreURI) -> None:
        self._call(f"delete s3://{loc.bucket}/{loc.key}",
                   lambda: self.client.delete_object(Bucket=loc.bucket, Key=loc.key))

    def _some_keys(self, loc: StoreURI, limit: int) -> list[str]:
        prefix = f"{loc.key}/" if loc.key else ""
        response = self._call(f"list s3://{loc.bucket}/{prefix}", lambda: self.client.list_objects_v2(
            Bucket=loc.bucket, Prefix=prefix, MaxKeys=limit))
        return [item["Key"] for item in response.get("Contents", [])]

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``; while the server is unreachable or failing, retry it with backoff (see StoreSettings).

        S3's refusals (no such object, access denied) become one-line ``UserError``s at once, never retried.
        A server still failing ``retry_window`` seconds after the first failure is one ``StoreAccessError``
        naming the endpoint and the object.
        """
        first_failure = None
        for attempt in itertools.count(1):
            try:
                with _s3_errors(what, self.settings.endpoint_url):
                    return action()
            except _ServerTrouble as trouble:
                now = time.monotonic()
                first_failure = first_failure or now
                remaining = self.settings.retry_window - (now - first_failure)
                if remaining <= 0:
                    raise StoreUnreachable(
                        f"{what}: gave up after {attempt} attempts over {now - first_failure:.0f} s, "
                        f"S3 endpoint {self.settings.endpoint_url or 'AWS'} unreachable or failing ({trouble})"
                    ) from None
                delay = min(self.settings.retry_max_delay, self.settings.retry_base_delay * 2 ** (attempt - 1))
                delay = min(remaining, delay * (0.5 + random.random()))  # jitter: parallel transfers spread out
                log.warning("%s: attempt %d failed (%s); retrying in %.1f s", what, attempt, trouble, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def presigned_url(self, key_or_uri: str, expires_s: int = PRESIGN_MAX_S) -> str:
        """A URL that GETs the object for ``expires_s`` seconds (1 s to ``PRESIGN_MAX_S``) without credentials.

        Signed locally (no request is made): a missing object answers 404 only when the URL is used.
        """
        if not 1 <= expires_s <= PRESIGN_MAX_S:
            raise ValueError(f"expires_s must be between 1 s and 7 days, got {expires_s}")
        loc = self._to_location(key_or_uri)
        return self.client.generate_presigned_url("get_object", Params={"Bucket": loc.bucket, "Key": loc.key},
                                                  ExpiresIn=int(expires_s))


class _ServerTrouble(Exception):
    """The server could not be reached or failed (5xx) even after botocore's own retries: worth retrying."""

    def __init__(self, error: BaseException):
        text = " ".join(str(error).split())  # one line, whatever botocore put in it
        super().__init__(f"{type(error).__name__}: {text[:200]}")


BOTOCORE_CONDITIONAL_PUT = "1.35.69"  # the first botocore whose put_object takes IfMatch (S3's API of 2024-11-25)


def _no_conditional_writes(what: str, parameter: str) -> str:
    """The one line for a botocore too old to send a conditional write (permanent: installing a newer one fixes it)."""
    import botocore

    return (f"write {what}: botocore {botocore.__version__} cannot send a conditional write ({parameter} on "
            f"put_object, which the champion's compare-and-swap needs): install boto3/botocore >= "
            f"{BOTOCORE_CONDITIONAL_PUT} (pip install -U 'boto3>={BOTOCORE_CONDITIONAL_PUT}')")


def _transient_errors() -> tuple[type[BaseException], ...]:
    from boto3.exceptions import RetriesExceededError
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError
    from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceeded

    return (ConnectionError, HTTPClientError, IncompleteReadError, RetriesExceededError, TransferRetriesExceeded)


@contextmanager
def _s3_errors(what: str, endpoint: str | None) -> Iterator[None]:
    """Turn S3's refusals into ``UserError``s that name the object; a dead or failing server into ``_ServerTrouble``."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    try:
        yield
    except _transient_errors() as error:
        raise _ServerTrouble(error) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise StoreAccessError(f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
    except (ClientError, S3UploadFailedError) as error:
        client_error = error if isinstance(error, ClientError) else error.__context__
        if not isinstance(client_error, ClientError):
            raise
        if _status(client_error) in (500, 502, 503, 504):  # the server failing, not refusing (501 would not pass)
            raise _ServerTrouble(client_error) from None
        raise _translate_client_error(client_error, what, endpoint) from None


def _status(error: Any) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _translate_client_error(error: Any, what: str, endpoint: str | None) -> Exception:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchKey", "NotFound"):
        return ArtifactNotFound(f"{what}: no such object")
    if code == "NoSuchBucket":  # a misspelt bucket is a mistake in the URI: waiting will not create it
        return ArtifactNotFound(f"{what}: the bucket does not exist at {endpoint or 'AWS'}")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == 403:
        return StoreAccessError(f"{what}: access denied ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    return StoreAccessError(f"{what}: {code or status} {error.response.get('Error', {}).get('Message', '')}".rstrip())


def make_s3_client(settings: StoreSettings) -> Any:
    """A boto3 S3 client for ``settings``: botocore retries, timeouts, path-style addressing for custom endpoints."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.region,
        retries={"max_attempts": settings.max_attempts, "mode": settings.retry_mode},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=max(10, settings.max_workers * 4),
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
        signature_version="s3v4",
    )
    return boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url, config=config)


def _transfer_config(settings: StoreSettings) -> Any:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=settings.multipart_threshold,
        multipart_chunksize=settings.multipart_chunksize,
        max_concurrency=4,
        use_threads=True,
    )
    # Uploads read an open file (never a path a link could be swapped into), and s3transfer holds each part of
    # such a file in memory: 4 parts in flight + 2 read ahead, not its default 10 (80 MiB per file at 8 MiB).
    config.max_in_memory_upload_chunks = 6
    return config
