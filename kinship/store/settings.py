"""``StoreSettings``: where artifacts live and how transfers behave, read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from kinship.dataset_cache import scratch_root
from kinship.errors import UserError
from kinship.store.keys import validate_bucket, validate_endpoint, validate_prefix

MiB = 1024 * 1024
PRESIGN_MAX_S = 7 * 24 * 3600  # the longest a presigned URL may live: 7 days, SigV4's limit


@dataclass(frozen=True)
class StoreSettings:
    """Where artifacts live and how transfers behave. Holds no secrets: credentials come from boto3's chain."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    bucket: str | None = None
    prefix: str = ""
    scratch: Path = field(default_factory=lambda: scratch_root({}))
    multipart_threshold: int = 8 * MiB
    multipart_chunksize: int = 8 * MiB
    # botocore's own quick retries of one request (throttling, 5xx, a dropped connection): 3 retries after the
    # first try; a fraction of a second in all on a refused connection (measured: 4 sends in 0.2 s), up to 7 s
    # when the server asks to slow down (503 SlowDown).
    max_attempts: int = 3
    retry_mode: str = "standard"
    # Our retries around a whole transfer or call, for a server that is down or restarting: backoff from
    # retry_base_delay doubling up to retry_max_delay (each +-50 % jitter), for retry_window seconds after the
    # first failure, then one StoreAccessError naming the endpoint and key. Total retry window: 45 s, so an
    # outage of 30 s is survived with margin (tests/test_faults_s3.py, KINSHIP_TEST_OUTAGE_S=35: a 35.8 s
    # outage, 10-11 retries per transfer). Against a closed port the give-up came after 45.2 s and 16 attempts;
    # a host that drops packets instead adds up to 4 x connect_timeout for the last attempt.
    retry_window: float = 45.0
    retry_base_delay: float = 0.5
    retry_max_delay: float = 4.0
    max_workers: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # An incomplete multipart upload of a key being pushed is aborted when this process began it, or when it is
    # older than this: a younger one of another process may be a concurrent push of the same key (two pushes of
    # one set, two runs sharing a checkpoint slot), which an abort would kill with NoSuchUpload. What a killed
    # push left younger than this, a later push or the bucket's lifecycle rule (a day, in the local stack) removes.
    stale_upload_s: float = 3600.0

    def __post_init__(self) -> None:
        validate_endpoint(self.endpoint_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoreSettings:
        """Read the standard AWS variables plus ``KINSHIP_BUCKET``, ``KINSHIP_PREFIX``, ``KINSHIP_SCRATCH`` and
        ``KINSHIP_RETRY_WINDOW`` (seconds, default 45) and ``KINSHIP_STALE_UPLOAD_S`` (seconds, default 3600)."""
        env = os.environ if environ is None else environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        bucket = env.get("KINSHIP_BUCKET") or None
        return cls(
            endpoint_url=endpoint,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            bucket=validate_bucket(bucket) if bucket else None,
            prefix=validate_prefix(env.get("KINSHIP_PREFIX", "")),
            scratch=scratch_root(env),
            retry_window=_seconds(env, "KINSHIP_RETRY_WINDOW", cls.retry_window),
            stale_upload_s=_seconds(env, "KINSHIP_STALE_UPLOAD_S", cls.stale_upload_s),
        )

def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        raise UserError(f"{name}={value!r}: expected a number of seconds between 0 and 86400")
    return seconds
