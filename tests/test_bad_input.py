"""User mistakes and hostile input, without servers: each is one line on stderr, exit 2, nothing left behind.

A huge relationships file on a tiny data set, data set URIs that name nothing, bad push destinations and
file names, settings that would leak credentials. The same mistakes against a real S3 server are in
``tests/test_storage_s3.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import subprocess
import sys
import time
import tracemalloc
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest

from kinship import layout
from kinship.cli import HeldWarnings, main
from kinship.errors import UserError
from kinship.layout import read_dataset
from kinship.storage import MANIFEST_NAME, ArtifactNotFound, LocalStore, StoreSettings
from tests.test_layout import make_clean

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, *named: str) -> str:
    """The captured stderr, checked to be one error line naming each of ``named``, with nothing on stdout."""
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert "Traceback" not in captured.err and captured.err.startswith("kinship data: error: "), captured.err
    for name in named:
        assert name in captured.err, (name, captured.err)
    return captured.err


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial-" in p.name) if folder.exists() else []


# ---------------------------------------------------------------- a relationships file far bigger than its data set


@pytest.mark.slow
def test_a_million_line_relationships_file_is_streamed(tmp_path: Path) -> None:
    root = make_clean(tmp_path / "data")  # 2 families, 4 people, 2 real relationships
    kin = ["F0001/MID1,F0001/MID2", "F0002/MID2,F0002/MID1"]
    with (root / "train_relationships.csv").open("a") as handle:
        for block in range(500):  # 1,000,000 lines: repeats of the real pairs, and 500,000 distinct strangers
            handle.write("".join(f"{kin[i % 2]}\nF0001/MID1,F8{block:03d}{i:04d}/MID1\n" for i in range(1000)))
    size = (root / "train_relationships.csv").stat().st_size
    began = time.monotonic()
    tracemalloc.start()
    try:
        dataset = read_dataset(root, verify_images=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    seconds = time.monotonic() - began
    assert dataset.report.relationships == 2
    assert dataset.report.dropped == {layout.DROP_REL_DUPLICATE: 500_000, layout.DROP_REL_NO_FOLDER: 500_000}
    assert len(dataset.report.examples[layout.DROP_REL_NO_FOLDER]) == 5
    # Holding the rows (or the text) would cost at least the file's size; streaming costs a few rows.
    assert peak < 1 * MiB and peak * 50 < size, (peak, size)
    print(f"\n{size / MiB:.1f} MiB relationships file, 1,000,002 rows: tracemalloc peak {peak / 1024:.0f} KiB, "
          f"read in {seconds:.1f} s (under tracemalloc)")


# ---------------------------------------------------------------- data sets that are not there


def push_tiny(tmp_path: Path, target: Path) -> Path:
    source = make_clean(tmp_path / "source")
    LocalStore(target, StoreSettings(scratch=tmp_path / "push-scratch")).put_tree(source, "")
    return target


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("KINSHIP_SCRATCH", str(tmp_path / "scratch"))
    return tmp_path / "scratch"


def test_missing_and_empty_data_set_uris_name_the_uri(tmp_path: Path, scratch: Path) -> None:
    from kinship.pipeline import fetch_dataset

    (tmp_path / "empty").mkdir()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train_relationships.csv").write_text("p1,p2\n")  # files, but no manifest
    push_tiny(tmp_path, tmp_path / "sets" / "rfiw")
    cases = {
        (tmp_path / "nowhere").as_uri(): "nothing is stored there",
        (tmp_path / "empty").as_uri() + "/": "nothing is stored there",
        (tmp_path / "half").as_uri(): "is missing (an interrupted push",
        (tmp_path / "sets").as_uri(): f"sub-folders, e.g. {(tmp_path / 'sets' / 'rfiw').as_uri()}",
    }
    for uri, why in cases.items():
        for fetch in (lambda: fetch_dataset(uri), lambda: LocalStore(tmp_path).get_tree(uri, tmp_path / "got")):
            with pytest.raises(ArtifactNotFound) as error:
                fetch()
            message = str(error.value)
            assert "\n" not in message and uri.rstrip("/") in message and why in message, message
    assert not (tmp_path / "got").exists() and not (scratch / "datasets").exists()


def test_data_check_of_a_uri_fetches_it_and_refuses_what_is_missing(tmp_path: Path, scratch: Path, capsys) -> None:
    dataset = push_tiny(tmp_path, tmp_path / "sets" / "rfiw")
    assert main(["data", "check", dataset.as_uri(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["relationships"] == 2
    missing = (tmp_path / "sets" / "other").as_uri()
    assert main(["data", "check", missing]) == 2
    one_line_error(capsys, missing, "no data set")


@pytest.mark.parametrize("uri, named", [
    ("s3://kinship/../x", "'..'"),
    ("s3://kinship/a\x01b", "control characters"),
    ("s3://Bad_Bucket/x", "invalid bucket name"),
    ("file:///tmp/a/../b", "'..'"),
    ("ftp://host/x", "unsupported URI scheme"),
])
def test_data_check_refuses_bad_uris(scratch: Path, capsys, uri: str, named: str) -> None:
    assert main(["data", "check", uri]) == 2
    one_line_error(capsys, named)


def test_data_check_refuses_a_tampered_data_set_and_keeps_nothing(tmp_path: Path, scratch: Path, capsys) -> None:
    dataset = push_tiny(tmp_path, tmp_path / "sets" / "rfiw")
    image = next(dataset.glob("train/F0002/MID1/*.jpg"))
    image.write_bytes(image.read_bytes()[:-10])  # truncated after the push
    assert main(["data", "check", dataset.as_uri()]) == 2
    one_line_error(capsys, image.name, "size mismatch", "nothing was kept")
    assert not (scratch / "datasets").exists() or [p for p in (scratch / "datasets").iterdir()
                                                   if not p.name.startswith(".")] == []  # no copy, locks aside
    assert partials(scratch) == []


# ---------------------------------------------------------------- bad push destinations and file names


@pytest.mark.parametrize("uri, named", [
    ("s3://kinship/../x", "'..'"),
    ("s3://kinship/a\x01b", "control characters"),
    ("s3://kinship/", "name a folder inside the bucket"),
    ("s3://Bad_Bucket/x", "invalid bucket name"),
    ("file:///tmp/a/../b", "'..'"),
    ("http://example.org/x", "unsupported URI scheme"),
    ("datasets/x", "not a store URI"),
])
def test_data_push_refuses_bad_destinations(tmp_path: Path, scratch: Path, capsys, uri: str, named: str) -> None:
    source = make_clean(tmp_path / "source")
    assert main(["data", "push", str(source), uri]) == 2
    one_line_error(capsys, named)


@pytest.mark.parametrize("name", ["line\nbreak.jpg", "tab\there.jpg", "back\\slash.jpg", ".kinship-meta"])
def test_data_push_refuses_unsafe_file_names_and_sends_nothing(tmp_path: Path, scratch: Path, capsys, name: str) -> None:
    source = make_clean(tmp_path / "source")
    (source / name).write_bytes(b"x")
    target = tmp_path / "bucket" / "rfiw"
    assert main(["data", "push", str(source), target.as_uri()]) == 2
    one_line_error(capsys, "file name", repr(name))
    assert not target.exists()  # names are checked before the first byte is sent


def test_data_push_refuses_a_missing_or_empty_folder(tmp_path: Path, scratch: Path, capsys) -> None:
    target = (tmp_path / "bucket" / "rfiw").as_uri()
    assert main(["data", "push", str(tmp_path / "nowhere"), target]) == 2
    one_line_error(capsys, "nowhere")
    (tmp_path / "empty").mkdir()
    assert main(["data", "push", str(tmp_path / "empty"), target]) == 2
    one_line_error(capsys, "no files to upload", "empty")
    assert not (tmp_path / "bucket").exists()


# ---------------------------------------------------------------- credentials stay out of settings and messages


SECRET_ENV = {
    "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333",
    "AWS_ACCESS_KEY_ID": "AKIDLEAKCHECK",
    "AWS_SECRET_ACCESS_KEY": "secret-that-must-not-leak",
    "KINSHIP_BUCKET": "kinship",
}


def test_settings_never_carry_credentials(tmp_path: Path) -> None:
    settings = StoreSettings.from_env({**SECRET_ENV, "KINSHIP_SCRATCH": str(tmp_path)})
    shown = [repr(settings), str(settings), json.dumps(asdict(settings), default=str)]
    from kinship.storage import S3Store

    shown.append(repr(S3Store(settings, client=object())))
    for text in shown:
        assert "AKIDLEAKCHECK" not in text and "secret-that-must-not-leak" not in text, text


@pytest.mark.parametrize("endpoint", ["http://AKID:s3cr3t-in-url@127.0.0.1:8333", "https://:s3cr3t-in-url@host"])
def test_an_endpoint_carrying_credentials_is_refused_without_echoing_them(endpoint: str, scratch: Path, monkeypatch,
                                                                        capsys, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="carries credentials") as error:
        StoreSettings(endpoint_url=endpoint)
    assert "s3cr3t-in-url" not in str(error.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    assert main(["data", "push", str(make_clean(tmp_path / "source")), "s3://kinship/datasets/x"]) == 2
    assert "s3cr3t-in-url" not in one_line_error(capsys, "carries credentials")


def test_a_bad_retry_window_is_one_line(tmp_path: Path, scratch: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KINSHIP_RETRY_WINDOW", "forever")
    assert main(["data", "push", str(make_clean(tmp_path / "source")), (tmp_path / "b").as_uri()]) == 2
    one_line_error(capsys, "KINSHIP_RETRY_WINDOW", "forever")


def test_local_manifest_holds_no_credentials(tmp_path: Path, monkeypatch) -> None:
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    target = push_tiny(tmp_path, tmp_path / "sets" / "rfiw")
    manifest = (target / MANIFEST_NAME).read_text()
    assert set(json.loads(manifest)["train_relationships.csv"]) == {"sha256", "size", "uri"}
    for path in [target / MANIFEST_NAME, *(target / ".kinship-meta").rglob("*.json")]:
        text = path.read_text()
        assert "AKIDLEAKCHECK" not in text and "secret-that-must-not-leak" not in text
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "secret-that-must-not-leak"  # the check above had one to leak


# ---------------------------------------------------------------- clean refusals: no library warning before the error


class Payload:
    """Unpickling this runs a shell command: what a hostile ``.pt`` file would do to ``pickle.load``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def run_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m kinship ARGV`` in a fresh process, as a user runs it (the user's warning settings)."""
    return subprocess.run([sys.executable, "-m", "kinship", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "submit"])
def test_a_malicious_pickle_checkpoint_is_refused_in_one_line_and_never_runs(tmp_path: Path, command: str) -> None:
    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "model.pt"
    with checkpoint.open("wb") as handle:  # protocol 4: the one torch warns about before refusing
        pickle.dump({"format": "kinship-checkpoint/1", "model_state": Payload(f"touch {shlex.quote(str(marker))}")},
                    handle, protocol=4)
    data = make_clean(tmp_path / "data")
    image = next((data / "test").glob("*.jpg"))
    args = {"predict": [str(image), str(image)], "submit": ["--data", str(data), "--out", str(tmp_path / "s.csv")]}
    env = {**os.environ, "KINSHIP_SCRATCH": str(tmp_path / "scratch")}
    done = run_cli(command, "--model", str(checkpoint), *args[command], env=env)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "Warning" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"kinship {command}: error: {checkpoint} is not a kinship checkpoint"), done.stderr
    assert not marker.exists() and not (tmp_path / "s.csv").exists()


def test_warnings_of_a_refused_command_are_dropped() -> None:
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(UserError), HeldWarnings():
            warnings.warn("a library's aside", UserWarning)
            raise UserError("refused")
    assert shown == []


def test_warnings_of_a_command_that_ends_otherwise_are_shown() -> None:
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with HeldWarnings():
            warnings.warn("worth knowing", UserWarning)
            assert shown == []  # held while the command may still be refused
        with pytest.raises(RuntimeError), HeldWarnings():  # a crash keeps them: they may explain it
            warnings.warn("before the crash", UserWarning)
            raise RuntimeError("bug")
    assert [str(w.message) for w in shown] == ["worth knowing", "before the crash"]


def test_a_long_command_shows_its_warnings_once_the_hold_ends() -> None:
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(UserError), HeldWarnings(seconds=0.05):
            warnings.warn("early", UserWarning)
            deadline = time.monotonic() + 10
            while not shown and time.monotonic() < deadline:  # the hold ends on its own, no new warning needed
                time.sleep(0.01)
            warnings.warn("late", UserWarning)  # shown at once
            assert [str(w.message) for w in shown] == ["early", "late"]
            raise UserError("a refusal after real work keeps what was already shown")
    assert [str(w.message) for w in shown] == ["early", "late"]
