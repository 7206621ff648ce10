"""The local stack's SeaweedFS reads and writes data for S3 clients with credentials, and for nobody else.

``weed mini`` listens on more ports than S3: master, volume and filer (HTTP and gRPC) and admin. Measured on 4.48
as ``infra/local/localstack.py`` first started it (JWT keys set, nothing else): an anonymous client on 127.0.0.1
got a write token from the master's ``/dir/assign`` (in its ``Authorization`` header) and stored a file on the
volume server with it (201); ``/submit`` stored one itself (201); ``/col/delete?collection=kinship`` deleted the
bucket's data (204, every S3 read failed after); ``/vol/grow`` and ``/vol/vacuum`` ran; and ``weed upload`` or
``weed shell`` (gRPC, no credentials) wrote files and read any object's metadata. Each test here tries one of those
paths as an anonymous client and asserts it is refused and that nothing was written or read.

What stays open, read-only and holding no object data: the master's status page and ``/cluster/status``, the
volume server's ``/status`` (volume ids, sizes, file counts, the data folder), the admin's ``/health`` and
``/metrics``. The tests use the volume server's ``/status`` as their witness that nothing was written.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import stat
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.listening import is_loopback, listening, unix_listeners
from tests.stack import WeedServer, localstack, venv_bin, weed_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

FORM = "multipart/form-data; boundary=kinship"


def form(data: bytes) -> bytes:
    """A one-file upload form, as the volume server and the master's ``/submit`` take them."""
    return (b'--kinship\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--kinship--\r\n")


def anonymous(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes, dict]:
    """(status, body, headers) of a request that carries no credential of any kind."""
    headers = {"Content-Type": FORM} if data is not None else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def over_socket(path: Path, method: str, target: str, data: bytes | None = None) -> tuple[int, bytes]:
    """An anonymous HTTP request over a unix socket (``-filer.localSocket``)."""

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(10)
            self.sock.connect(str(path))

    connection = Connection("localhost")
    try:
        connection.request(method, target, body=data)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Stored:
    """One object stored through S3 with credentials, and where SeaweedFS keeps its bytes."""

    def __init__(self, server: WeedServer, tmp: Path):
        self.server = server
        self.key = f"ports/{uuid.uuid4().hex[:10]}/secret.jpg"
        self.marker = f"MARKER-{uuid.uuid4().hex}".encode()
        server.client().put_object(Bucket=server.bucket, Key=self.key, Body=self.marker * 100)
        self.fid = self._file_id(tmp)
        self.volume_id = self.fid.split(",")[0]

    def _file_id(self, tmp: Path) -> str:
        """The object's file id, asked of the filer over gRPC from the stack's configuration folder (its
        certificate): the way an administrator still can, and the reason the anonymous tests below can aim at
        real data."""
        shell = weed_shell(self.server, f"fs.meta.cat /buckets/{self.server.bucket}/{self.key}",
                           cwd=self.server.conf_dir, home=tmp)
        found = re.search(r'"fileId":\s*"([0-9]+,[0-9a-f]+)"', shell.stdout)
        assert found, shell.stdout + shell.stderr
        return found.group(1)

    def url(self, port: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.server.ports[port]}{path}"

    def volumes(self) -> list[tuple]:
        """What the volume server holds: (id, files, bytes, deletions) per volume, from its open ``/status``."""
        status, body, _ = anonymous("GET", self.url("volume", "/status"))
        assert status == 200, body
        return sorted((v["Id"], v["FileCount"], v["Size"], v["DeleteCount"]) for v in json.loads(body)["Volumes"])

    def intact(self) -> bool:
        """Whether S3 with credentials still reads the object."""
        body = self.server.client().get_object(Bucket=self.server.bucket, Key=self.key)["Body"].read()
        return body == self.marker * 100


def weed_shell(server: WeedServer, command: str, cwd: Path, home: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    """``weed shell`` run in ``cwd`` (weed reads ``security.toml`` from there, then ``$HOME/.seaweedfs``); one
    refused keeps retrying, so after ``timeout`` seconds it is stopped and what it printed is returned."""
    ports = server.ports
    argv = [venv_bin("weed"), "shell", f"-master=127.0.0.1:{ports['master']}.{ports['master_grpc']}",
            f"-filer=127.0.0.1:{ports['filer']}.{ports['filer_grpc']}"]
    shell = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=cwd, env={**os.environ, "HOME": str(home)})
    try:
        out, err = shell.communicate(f"{command}\nexit\n", timeout=timeout)
    except subprocess.TimeoutExpired:
        shell.kill()
        out, err = shell.communicate()
    return subprocess.CompletedProcess(argv, shell.returncode, out, err)


@pytest.fixture(scope="module")
def stored(weed_server: WeedServer, tmp_path_factory) -> Stored:
    return Stored(weed_server, tmp_path_factory.mktemp("weed-home"))


def refused(answer: tuple[int, bytes, dict], stored: Stored) -> bool:
    """An answer that gave nothing away: an error status, no token, none of the object's bytes or file id."""
    status, body, headers = answer
    return status >= 400 and "Authorization" not in headers and stored.marker not in body and b"fid" not in body


def test_the_master_hands_out_no_token_and_changes_nothing(stored: Stored) -> None:
    before = stored.volumes()
    attempts = [("GET", "/dir/assign"), ("POST", "/dir/assign"), ("GET", f"/dir/lookup?fileId={stored.fid}"),
                ("GET", f"/dir/lookup?fileId={stored.fid}&read=yes"), ("GET", f"/dir/lookup?volumeId={stored.volume_id}"),
                ("GET", f"/{stored.fid}"), ("GET", "/vol/grow?count=1"), ("GET", "/vol/vacuum?garbageThreshold=0.0001"),
                ("GET", "/col/delete?collection=kinship"), ("GET", "/dir/status"), ("GET", "/vol/status"),
                ("GET", "/collection/info?collection=kinship")]
    answers = {f"{method} {path}": anonymous(method, stored.url("master", path)) for method, path in attempts}
    answers["POST /submit"] = anonymous("POST", stored.url("master", "/submit"), form(b"INTRUDER"))
    assert {what: answer[0] for what, answer in answers.items() if not refused(answer, stored)} == {}
    assert stored.volumes() == before and stored.intact()  # nothing written, grown, vacuumed or deleted


def test_the_volume_server_takes_no_read_or_write_without_a_token(stored: Stored) -> None:
    before = stored.volumes()
    new_fid = f"{stored.volume_id},ffffff0123456789"
    answers = {what: anonymous(method, stored.url("volume", f"/{fid}"), data) for what, method, fid, data in [
        ("read", "GET", stored.fid, None), ("read head", "HEAD", stored.fid, None),
        ("read as image", "GET", f"{stored.fid}.jpg", None),
        ("overwrite", "POST", stored.fid, form(b"INTRUDER")), ("overwrite put", "PUT", stored.fid, form(b"INTRUDER")),
        ("new file", "POST", new_fid, form(b"INTRUDER")), ("delete", "DELETE", stored.fid, None)]}
    assert {what: answer[0] for what, answer in answers.items() if not refused(answer, stored)} == {}
    assert stored.volumes() == before and stored.intact()


def test_the_filer_serves_no_http_on_its_port_nor_its_socket(stored: Stored) -> None:
    bucket = stored.server.bucket
    attempts = [("GET", f"/buckets/{bucket}/{stored.key}", None), ("GET", f"/buckets/{bucket}/{stored.key}?metadata=true", None),
                ("GET", f"/buckets/{bucket}/", None), ("PUT", f"/buckets/{bucket}/ports/intruder.jpg", b"INTRUDER"),
                ("POST", f"/buckets/{bucket}/ports/intruder2.jpg", form(b"INTRUDER")),
                ("DELETE", f"/buckets/{bucket}/{stored.key}", None)]
    answers = {f"tcp {method} {path}": anonymous(method, stored.url("filer", path), data) for method, path, data in attempts}
    sock = filer_socket(stored.server)
    answers.update({f"socket {method} {path}": (*over_socket(sock, method, path, data), {})
                    for method, path, data in attempts})
    assert {what: answer[0] for what, answer in answers.items() if not refused(answer, stored)} == {}
    listed = stored.server.client().list_objects_v2(Bucket=bucket, Prefix="ports/").get("Contents", [])
    assert [item["Key"] for item in listed if "intruder" in item["Key"]] == [] and stored.intact()


def filer_socket(server: WeedServer) -> Path:
    """Where the filer's unix socket must be, checked: inside the data folder when the path fits a socket address
    (``localstack.weed_argv`` asks for it there), else weed's default ``/tmp/seaweedfs-filer-PORT.sock``; a socket
    file there that the weed process listens on. A socket elsewhere (a flag dropped, weed renaming it) fails here
    instead of leaving the socket's requests untried."""
    inside = server.data_dir / "filer.sock"
    sock = inside if len(str(inside)) < 100 else Path(f"/tmp/seaweedfs-filer-{server.ports['filer']}.sock")
    assert os.path.lexists(sock) and stat.S_ISSOCK(os.lstat(sock).st_mode), f"no filer socket at {sock}"
    pids = {server.pid, *localstack.descendants(server.pid)}
    assert str(sock) in unix_listeners(pids), (sock, unix_listeners(pids))
    return sock


def test_every_port_weed_listens_on_is_loopback(weed_server: WeedServer) -> None:
    """``-ip.bind=127.0.0.1`` covers every server weed mini starts (master, volume, filer, S3, admin, HTTP and
    gRPC, and any port it picks itself): nothing listens on another address, nor on all of them."""
    pids = {weed_server.pid, *localstack.descendants(weed_server.pid)}
    listeners = listening(pids)
    assert ("127.0.0.1", weed_server.ports["s3"]) in listeners, listeners  # the right process, read right
    assert sorted(where for where in listeners if not is_loopback(where[0])) == []


def test_grpc_takes_no_client_without_the_stack_certificate(stored: Stored, tmp_path: Path) -> None:
    before = stored.volumes()
    ports = stored.server.ports
    master = f"-master=127.0.0.1:{ports['master']}.{ports['master_grpc']}"
    upload_file = tmp_path / "intruder.jpg"
    upload_file.write_bytes(b"INTRUDER")
    env = {**os.environ, "HOME": str(tmp_path)}  # no security.toml here nor in $HOME/.seaweedfs
    upload = subprocess.run([venv_bin("weed"), "upload", master, str(upload_file)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30)
    download = subprocess.run([venv_bin("weed"), "download", master, f"-dir={tmp_path}", stored.fid], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=30)
    assert upload.returncode != 0 and '"fid"' not in upload.stdout, upload.stdout + upload.stderr
    assert "fileUrl" not in upload.stdout and "error reading server preface" in upload.stderr + upload.stdout
    assert "error reading server preface" in download.stdout + download.stderr, download.stdout + download.stderr
    assert not any(stored.marker in p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    shell = weed_shell(stored.server, f"fs.meta.cat /buckets/{stored.server.bucket}/{stored.key}", cwd=tmp_path,
                       home=tmp_path, timeout=5)
    assert stored.fid.split(",")[1] not in shell.stdout, shell.stdout  # the certificate is what lets the fixture in
    assert stored.volumes() == before and stored.intact()


def test_the_admin_port_serves_no_data(stored: Stored) -> None:
    paths = ["/", "/admin", "/login", "/files", "/object-store/buckets", "/object-store/users", "/storage/volumes",
             "/cluster/volume-servers", "/api/s3/buckets", "/api/cluster/topology", "/api/users", "/api/files"]
    answers = {path: anonymous("GET", stored.url("admin", path)) for path in paths}
    assert {path: answer[0] for path, answer in answers.items() if not refused(answer, stored)} == {}
    for path in ("/health", "/metrics"):  # open by design, and nothing of the data in them
        status, body, _ = anonymous("GET", stored.url("admin", path))
        assert status == 200 and stored.marker not in body and stored.key.encode() not in body


def test_s3_with_credentials_still_reads_and_writes(stored: Stored, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    client, bucket = stored.server.client(), stored.server.bucket
    data = os.urandom(11 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    key = f"{stored.key}.multipart"
    client.upload_file(str(tmp_path / "big.bin"), bucket, key,
                       Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data and stored.intact()
    assert key in [item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix="ports/")["Contents"]]
    client.delete_object(Bucket=bucket, Key=key)


def test_the_bucket_aborts_incomplete_uploads_after_a_day(weed_server: WeedServer) -> None:
    rules = weed_server.client().get_bucket_lifecycle_configuration(Bucket=weed_server.bucket)["Rules"]
    assert rules == localstack.ABORT_INCOMPLETE_UPLOADS["Rules"]
