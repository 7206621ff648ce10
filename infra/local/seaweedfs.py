"""SeaweedFS for the local stack: ``weed mini`` as its S3 store, credentials required on S3, mutual TLS on its
gRPC ports (its own CA), no HTTP API on the master nor the filer, and the bucket with its lifecycle rule.

Used by ``localstack.py`` (``up``) and by the tests' own ``weed mini`` (``tests/stack.py``).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infra.local.processes import (Stack, free_port, is_running, port_is_free, record, start_process, wait_until,
                                   write_private)

BUCKET = "kinship"
REGION = "us-east-1"
# SeaweedFS's gRPC ports take only clients with a certificate of this name, signed by the stack's own CA.
GRPC_NAME = "kinship-weed"
GRPC_SECTIONS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq", "client")
# Incomplete multipart uploads (a push killed mid-file) are removed a day after they began; SeaweedFS 4.48
# accepts this rule and returns it from GetBucketLifecycleConfiguration (tests/test_weed_ports.py).
ABORT_INCOMPLETE_UPLOADS = {"Rules": [{"ID": "abort-incomplete-multipart-uploads", "Status": "Enabled",
                                       "Filter": {"Prefix": ""},
                                       "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}
# Preferred ports (SeaweedFS defaults); a busy one is swapped for a free one on first up.
WEED_PORTS = {
    "s3": 8333, "s3_grpc": 18333, "master": 9333, "master_grpc": 19333, "volume": 9340, "volume_grpc": 19340,
    "filer": 8888, "filer_grpc": 18888, "admin": 23646, "admin_grpc": 33646,
}


@dataclass
class WeedConfig:
    """What a ``weed mini`` needs: where its data lives, its ports and the one S3 identity it accepts."""

    weed: Path
    data_dir: Path
    ports: dict[str, int]
    access_key: str
    secret_key: str
    jwt_keys: dict[str, str]
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"


def weed_ports(preferred: dict[str, int] | None = None) -> dict[str, int]:
    """All ports ``weed mini`` listens on: the preferred ones where free, else random free ones."""
    wanted = preferred or {}
    chosen: dict[str, int] = {}
    for name in WEED_PORTS:
        port = wanted.get(name)
        chosen[name] = port if port and port_is_free(port) and port not in chosen.values() else free_port()
    return chosen


def new_weed_secrets() -> dict[str, object]:
    """Fresh S3 credentials and JWT signing keys for a new stack (kept in its ``secrets.json``)."""
    return {
        "access_key": "KINSHIP" + secrets.token_hex(6).upper(),
        "secret_key": secrets.token_urlsafe(30),
        "jwt_keys": {name: secrets.token_urlsafe(24) for name in ("signing", "signing_read", "filer", "filer_read")},
    }


def write_weed_config_files(config: WeedConfig) -> Path:
    """The S3 identities file and ``security.toml`` (read from weed's working folder); returns that folder."""
    conf_dir = config.data_dir.parent / "conf"
    identities = {"identities": [{
        "name": "kinship",
        "credentials": [{"accessKey": config.access_key, "secretKey": config.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    write_private(conf_dir / "s3.json", json.dumps(identities, indent=2))
    keys = config.jwt_keys
    # JWT keys: the volume server and the filer take no read or write without a token signed with them. The
    # master hands such tokens to whoever asks over HTTP (/dir/assign), so weed_argv turns its HTTP API off.
    jwt = "".join(f'[{section}]\nkey = "{keys[name]}"\nexpires_after_seconds = 10\n\n' for section, name in (
        ("jwt.signing", "signing"), ("jwt.signing.read", "signing_read"),
        ("jwt.filer_signing", "filer"), ("jwt.filer_signing.read", "filer_read")))
    write_private(conf_dir / "security.toml", jwt + grpc_tls_toml(write_grpc_certificates(conf_dir)))
    return conf_dir


def write_grpc_certificates(conf_dir: Path, days: int = 825) -> dict[str, Path]:
    """A new CA and one certificate (``GRPC_NAME``) for every SeaweedFS component, client and server: mutual TLS
    on the gRPC ports, which otherwise hand out write tokens and file metadata to any local process. The CA's key
    is never written, so no further certificate can be signed; a restart makes new ones."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kinship local stack CA")])

    def certificate(subject, public_key, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca = certificate(ca_name, ca_key.public_key(), [(x509.BasicConstraints(ca=True, path_length=0), True)])
    leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GRPC_NAME)]), key.public_key(), [
        (x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    paths = {name: conf_dir / f"grpc-{name}" for name in ("ca.crt", "weed.crt", "weed.key")}
    write_private(paths["ca.crt"], ca.decode())
    write_private(paths["weed.crt"], leaf.decode())
    write_private(paths["weed.key"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()).decode())
    return paths


def grpc_tls_toml(paths: dict[str, Path]) -> str:
    """The ``security.toml`` sections that make every gRPC port of ``weed mini`` mutual TLS with ``paths``."""
    text = f'[grpc]\nca = "{paths["ca.crt"]}"\n\n'
    for section in GRPC_SECTIONS:
        text += (f'[grpc.{section}]\ncert = "{paths["weed.crt"]}"\nkey = "{paths["weed.key"]}"\n'
                 f'allowed_commonNames = "{GRPC_NAME}"\n\n')
    return text


def weed_argv(config: WeedConfig, conf_dir: Path) -> list[str]:
    """The ``weed mini`` command line: everything bound to 127.0.0.1, credentials required on S3."""
    p = config.ports
    data = config.data_dir
    argv = [
        str(config.weed), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}", "-admin.ui=false",
        # A throwaway admin password (the admin UI is off): the S3 secret must never be on a command line,
        # which every local user can read, nor in the mini.options file weed writes from it.
        f"-admin.password={secrets.token_urlsafe(24)}", "-webdav=false", "-master.telemetry=false",
        f"-s3.config={conf_dir / 's3.json'}", f"-bucket={config.bucket}",
        # No HTTP API on the master nor the filer: the master's /dir/assign gave any local process a write token
        # for the volume server, /submit wrote and /col/delete deleted the bucket's data, all without
        # credentials (measured on 4.48). S3 reaches them over gRPC, which is mutual TLS (security.toml).
        "-disableHttp",
    ]
    # Unix sockets default to /tmp/seaweedfs-*-PORT.sock; keep ours inside the data folder when the path fits.
    if len(str(data / "filer.sock")) < 100:
        argv += [f"-s3.localSocket={data / 's3.sock'}", f"-filer.localSocket={data / 'filer.sock'}"]
    return argv


def start_weed(config: WeedConfig, log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    """Start ``weed mini`` for ``config`` (not waiting for it); returns the process and its argv."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    conf_dir = write_weed_config_files(config)
    argv = weed_argv(config, conf_dir)
    return start_process(argv, log_path, env, cwd=conf_dir), argv


def s3_client(endpoint: str, access_key: str, secret_key: str):
    """A boto3 S3 client for ``weed mini``: path-style, one attempt, short timeouts (a readiness probe)."""
    import boto3
    from botocore.config import Config

    config = Config(region_name=REGION, retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2,
                    read_timeout=10, s3={"addressing_style": "path"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                                          aws_secret_access_key=secret_key, config=config)


def bucket_ready(config: WeedConfig) -> bool:
    """True once S3 answers our credentials and the bucket exists (created here if weed has not yet) with the
    lifecycle rule that removes incomplete multipart uploads."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(config.endpoint, config.access_key, config.secret_key)
    try:
        client.head_bucket(Bucket=config.bucket)
        return ensure_lifecycle(client, config.bucket)
    except ClientError as error:
        if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            try:
                client.create_bucket(Bucket=config.bucket)
            except ClientError:
                pass
        return False
    except BotoCoreError:
        return False


def ensure_lifecycle(client, bucket: str) -> bool:
    """Give ``bucket`` the ``ABORT_INCOMPLETE_UPLOADS`` rule (a rerun of ``kinship data push`` aborts the uploads
    of its own keys; this removes the rest). True once set; False while the server is still starting (5xx)."""
    from botocore.exceptions import ClientError

    try:
        client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=ABORT_INCOMPLETE_UPLOADS)
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500:
            return False
        raise RuntimeError(f"SeaweedFS refused the lifecycle rule on bucket {bucket}: {error}") from None
    return True


# ---------------------------------------------------------------- in the stack


def ensure_weed(stack: Stack, state: dict, secret: dict, timings: dict) -> None:
    """Start ``weed mini`` for the stack unless it runs, then wait until its bucket is ready."""
    ports = state["ports"]
    config = WeedConfig(weed=stack.venv / "bin" / "weed", data_dir=stack.state_dir / "seaweedfs" / "data",
                        ports=ports, access_key=secret["access_key"], secret_key=secret["secret_key"],
                        jwt_keys=secret["jwt_keys"])
    log = stack.state_dir / "logs" / "seaweedfs.log"
    alive: Callable[[], bool] | None = None
    if not is_running(state, "seaweedfs"):
        process, argv = start_weed(config, log, stack.clean_env())
        record(state, "seaweedfs", process, argv, log)
        stack.save(state)
        alive = lambda: process.poll() is None  # noqa: E731
    timings["seaweedfs"] = wait_until(lambda: bucket_ready(config), "SeaweedFS S3", 60, alive, log)
