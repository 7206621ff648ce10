"""Reading the Kaggle RFIW layout and ``kinship data check``: a clean set, every untidy case, the fatal ones."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from kinship import layout
from kinship.cli import main
from kinship.errors import UserError
from kinship.files import file_digest
from kinship.images import OversizedImage, UnreadableImage
from kinship.layout import UNKNOWN_TYPE, dataset_fingerprint, parse_img_pair, read_dataset

SIZE = (32, 32)


def write_image(path: Path, size=SIZE, mode="RGB", fmt="JPEG", seed=0) -> Path:
    """A tiny image whose pixels depend on ``seed`` (so distinct files have distinct bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, color=(seed * 37 % 256, 90, 200) if mode == "RGB" else seed * 37 % 256)
    image.putpixel((seed % size[0], 0), (255, 255, 255) if mode == "RGB" else 255)
    image.save(path, format=fmt)
    return path


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def make_clean(root: Path) -> Path:
    """Two families of two people with two images each, related within each family, 4 test images, 3 pairs."""
    seed = 0
    for family in ("F0001", "F0002"):
        for mid in ("MID1", "MID2"):
            for n in (1, 2):
                seed += 1
                write_image(root / "train" / family / mid / f"P{seed:05d}_face{n}.jpg", seed=seed)
    write_csv(root / "train_relationships.csv", "p1,p2", ["F0001/MID1,F0001/MID2", "F0002/MID1,F0002/MID2"])
    for n in range(1, 5):
        write_image(root / "test" / f"face{n:05d}.jpg", seed=100 + n)
    pairs = ["face00001.jpg-face00002.jpg,0", "face00003.jpg-face00004.jpg,0", "face00001.jpg-face00004.jpg,0"]
    write_csv(root / "sample_submission.csv", "img_pair,is_related", pairs)
    return root


@pytest.fixture
def clean(tmp_path) -> Path:
    return make_clean(tmp_path / "data")


def add_relationships(root: Path, *rows: str) -> None:
    with (root / "train_relationships.csv").open("a") as handle:
        handle.write("".join(f"{row}\n" for row in rows))


def check_json(root: Path, capsys) -> dict:
    assert main(["data", "check", str(root), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return json.loads(out)


# --- a clean set ---------------------------------------------------------------------------------


def test_clean_set_counts(clean):
    dataset = read_dataset(clean)
    report = dataset.report
    assert (report.families, report.people, report.images) == (2, 4, 8)
    assert (report.relationships, report.test_images, report.test_pairs) == (2, 4, 3)
    assert report.dropped == {} and report.fixed == {} and report.notes == []
    assert report.image_sizes == {"32x32": 12} and report.common_size == "32x32"
    assert dataset.families() == {"F0001": ["F0001/MID1", "F0001/MID2"], "F0002": ["F0002/MID1", "F0002/MID2"]}
    assert all(rel.kind == UNKNOWN_TYPE for rel in dataset.relationships)
    assert dataset.test_pairs[0].line == 2 and dataset.test_pairs[0].left == "face00001.jpg"
    assert dataset.test_pairs[0].label is None


def test_progress_reports_every_image(clean):
    events = []
    read_dataset(clean, on_progress=events.append)
    checks = [event for event in events if event.stage == "check images"]
    assert {event.total for event in checks} == {12}
    assert [event.done for event in checks] == list(range(0, 13))


def test_types_and_labels_fill_kind_and_label(clean):
    write_csv(clean / "relationship_types.csv", "p1,p2,type", ["F0001/MID2,F0001/MID1,fd", "F0002/MID1,F0002/MID2,ms"])
    labels = ["face00001.jpg-face00002.jpg,1,bb", "face00003.jpg-face00004.jpg,0,none"]
    write_csv(clean / "test_labels.csv", "img_pair,is_related,relationship", labels)
    dataset = read_dataset(clean)
    kinds = {(rel.p1, rel.p2): rel.kind for rel in dataset.relationships}
    # the types file names the pair the other way round: its orientation wins (fd is directional)
    assert kinds == {("F0001/MID2", "F0001/MID1"): "fd", ("F0002/MID1", "F0002/MID2"): "ms"}
    assert [(p.label, p.kind) for p in dataset.test_pairs] == [(1, "bb"), (0, "none"), (None, None)]


# --- every untidy case, each counted --------------------------------------------------------------


def test_relationship_naming_person_without_folder(clean):
    add_relationships(clean, "F0001/MID1,F0001/MID9", "F0009/MID1,F0002/MID1")
    report = read_dataset(clean).report
    assert report.dropped == {layout.DROP_REL_NO_FOLDER: 2}
    assert report.relationships == 2
    assert report.examples[layout.DROP_REL_NO_FOLDER][0] == "train_relationships.csv line 4: F0001/MID1,F0001/MID9"


def test_relationship_naming_person_without_usable_images(clean):
    (clean / "train" / "F0001" / "MID3").mkdir()
    (clean / "train" / "F0001" / "MID3" / "broken.jpg").write_bytes(b"not a jpeg at all")
    add_relationships(clean, "F0001/MID1,F0001/MID3")
    dataset = read_dataset(clean)
    assert dataset.report.dropped == {
        layout.DROP_REL_NO_IMAGES: 1,
        layout.DROP_UNREADABLE_MEMBER: 1,
        UnreadableImage.reason: 1,
    }
    assert "F0001/MID3" not in dataset.people and dataset.report.relationships == 2


def test_duplicate_relationships_count_once(clean):
    add_relationships(clean, "F0001/MID2,F0001/MID1", "F0001/MID1,F0001/MID2", "F0002/MID1,F0002/MID2")
    dataset = read_dataset(clean)
    assert dataset.report.dropped == {layout.DROP_REL_DUPLICATE: 3}
    assert len(dataset.relationships) == 2


def test_self_relationship(clean):
    add_relationships(clean, "F0001/MID1,F0001/MID1")
    report = read_dataset(clean).report
    assert report.dropped == {layout.DROP_REL_SELF: 1} and report.relationships == 2


def test_malformed_relationship_rows(clean):
    add_relationships(clean, "F0001/MID1,", "F0001,F0001/MID2", "F0001/MID1/x,F0001/MID2")
    report = read_dataset(clean).report
    assert report.dropped == {layout.DROP_REL_MALFORMED: 3} and report.relationships == 2


def test_empty_member_and_family_folders(clean):
    (clean / "train" / "F0001" / "MID7").mkdir()
    (clean / "train" / "F0003").mkdir()
    dataset = read_dataset(clean)
    assert dataset.report.dropped == {layout.DROP_EMPTY_MEMBER: 1, layout.DROP_EMPTY_FAMILY: 1}
    assert dataset.report.people == 4 and dataset.report.families == 2


def test_truncated_and_corrupt_jpegs_are_dropped(clean):
    member = clean / "train" / "F0002" / "MID1"
    whole = write_image(member / "whole.jpg", size=(64, 64), seed=9).read_bytes()
    (member / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (member / "garbage.jpg").write_bytes(bytes(range(256)) * 4)
    (member / "whole.jpg").unlink()
    (clean / "test" / "face00004.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    dataset = read_dataset(clean)
    report = dataset.report
    assert report.dropped == {UnreadableImage.reason: 3, layout.DROP_PAIR_UNREADABLE: 2}
    assert report.images == 8 and len(dataset.people["F0002/MID1"].images) == 2
    assert report.test_images == 3 and report.test_pairs == 1
    assert "train/F0002/MID1/truncated.jpg" in report.examples[UnreadableImage.reason]


def test_grayscale_image_is_kept_and_counted(clean):
    write_image(clean / "train" / "F0001" / "MID1" / "gray.jpg", mode="L", seed=3)
    report = read_dataset(clean).report
    assert report.fixed == {layout.FIX_GRAYSCALE: 1} and report.images == 9 and report.dropped == {}


def test_images_of_another_size_are_kept_and_counted(clean):
    write_image(clean / "train" / "F0001" / "MID1" / "big.jpg", size=(48, 40), seed=4)
    write_image(clean / "test" / "face00009.jpg", size=(20, 20), seed=5)
    report = read_dataset(clean).report
    assert report.fixed == {layout.FIX_OTHER_SIZE: 2}
    assert report.image_sizes == {"32x32": 12, "20x20": 1, "48x40": 1} and report.common_size == "32x32"
    assert (report.images, report.test_images) == (9, 5)


def test_png_named_jpg_is_kept_and_counted(clean):
    write_image(clean / "train" / "F0002" / "MID2" / "really_a_png.jpg", fmt="PNG", seed=6)
    report = read_dataset(clean).report
    assert report.fixed == {layout.FIX_WRONG_FORMAT: 1} and report.images == 9
    assert report.examples[layout.FIX_WRONG_FORMAT] == ["train/F0002/MID2/really_a_png.jpg (PNG)"]


def test_stray_files_are_ignored_and_counted(clean):
    (clean / "train" / "F0001" / "MID1" / "notes.txt").write_text("hello")
    (clean / "train" / "F0001" / "MID1" / ".DS_Store").write_bytes(b"\0\0")
    (clean / "train" / "F0001" / "MID1" / "nested").mkdir()
    (clean / "train" / "F0002" / "Thumbs.db").write_bytes(b"\0")
    (clean / "train" / "README").write_text("x")
    (clean / "test" / "list.csv").write_text("x")
    report = read_dataset(clean).report
    assert report.dropped == {layout.DROP_STRAY_FILE: 6} and report.images == 8 and report.test_images == 4


def test_train_only_sets_are_valid(clean, capsys):
    (clean / "sample_submission.csv").unlink()
    no_submission = read_dataset(clean).report
    assert no_submission.notes == ["no sample_submission.csv: no test pairs"] and no_submission.test_images == 4
    for path in (clean / "test").iterdir():
        path.unlink()
    (clean / "test").rmdir()
    payload = check_json(clean, capsys)
    assert payload["notes"] == ["no test/ folder: train-only data set"]
    assert payload["counts"]["test_pairs"] == 0 and payload["counts"]["people"] == 4


def test_without_verification_files_are_only_listed(clean):
    (clean / "train" / "F0001" / "MID1" / "garbage.jpg").write_bytes(b"garbage")
    events = []
    report = read_dataset(clean, verify_images=False, on_progress=events.append).report
    assert report.images == 9 and report.dropped == {} and report.image_sizes == {}
    assert events == [] and len(report.notes) == 1


# --- img_pair entries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, left, right",
    [
        ("face05508.jpg-face01210.jpg", "face05508.jpg", "face01210.jpg"),
        ("my-face.jpeg-other-one.PNG", "my-face.jpeg", "other-one.PNG"),
    ],
)
def test_parse_img_pair_splits_after_the_extension(value, left, right):
    assert parse_img_pair(value) == (left, right)


@pytest.mark.parametrize(
    "value",
    [
        "../face1.jpg-face2.jpg",
        "/etc/face1.jpg-face2.jpg",
        "face1.jpg-..\\face2.jpg",
        "face1.jpg-face2.jpg\x00",
        "face1.jpg",
        "face1.jpg-face2.jpg-face3.jpg",
        "face1.jpg-face2",
        ".jpg-face2.jpg",
        "face1.gif-face2.jpg",
    ],
)
def test_parse_img_pair_rejects(value):
    with pytest.raises(ValueError):
        parse_img_pair(value)


@pytest.mark.parametrize(
    "value, reason, expected",
    [
        ("../face00001.jpg-face00002.jpg", layout.DROP_PAIR_MALFORMED, "path separator"),
        ("/tmp/face00001.jpg-face00002.jpg", layout.DROP_PAIR_MALFORMED, "path separator"),
        ("face00001.jpg-face00099.jpg", layout.DROP_PAIR_MISSING, "face00099.jpg"),
        ("face00001.jpg-face00002.jpg-face00003.jpg", layout.DROP_PAIR_MALFORMED, "exactly two"),
    ],
)
def test_bad_img_pair_costs_its_row_with_its_line_number(clean, capsys, value, reason, expected):
    with (clean / "sample_submission.csv").open("a") as handle:
        handle.write(f"face00002.jpg-face00003.jpg,0\n{value},0\n")
    dataset = read_dataset(clean)
    assert dataset.report.dropped == {reason: 1} and dataset.report.test_pairs == 4
    (example,) = dataset.report.examples[reason]
    assert example.startswith("sample_submission.csv line 6: ") and expected in example
    payload = check_json(clean, capsys)
    assert payload["dropped"] == {reason: 1} and payload["counts"]["test_pairs"] == 4


def test_a_quoted_newline_costs_two_rows_and_stays_on_one_line(clean, capsys):
    with (clean / "sample_submission.csv").open("a") as handle:
        handle.write('"face00001.jpg\nface00002.jpg",0\n')
    payload = check_json(clean, capsys)
    assert payload["dropped"] == {layout.DROP_ROW_UNPARSEABLE: 1, layout.DROP_PAIR_MALFORMED: 1}
    assert payload["examples"][layout.DROP_ROW_UNPARSEABLE] == ["sample_submission.csv line 5"]
    assert payload["counts"]["test_pairs"] == 3


def test_one_row_of_bytes_that_are_not_utf8_costs_that_row(clean, capsys):
    with (clean / "train_relationships.csv").open("ab") as handle:
        handle.write(b"F0001/MID1,\xff\xfe\xfa\nF0001/MID2,F0002/MID1\n")
    payload = check_json(clean, capsys)
    assert payload["dropped"] == {layout.DROP_ROW_NOT_UTF8: 1}
    assert payload["examples"][layout.DROP_ROW_NOT_UTF8] == ["train_relationships.csv line 4"]
    assert payload["counts"]["relationships"] == 3  # the row after the bad one is kept


def test_an_endless_row_costs_that_row_not_its_length_in_memory(clean):
    with (clean / "train_relationships.csv").open("a") as handle:
        handle.write("F0001/MID1," + "x" * (layout.MAX_CSV_LINE * 3) + "\nF0001/MID2,F0002/MID1\n")
    report = read_dataset(clean).report
    assert report.dropped == {layout.DROP_ROW_TOO_LONG: 1} and report.relationships == 3
    assert report.examples[layout.DROP_ROW_TOO_LONG] == ["train_relationships.csv line 4"]


def test_labels_without_the_optional_relationship_column(clean):
    write_csv(clean / "test_labels.csv", "img_pair,is_related", ["face00001.jpg-face00002.jpg,1", "face00003.jpg-face00004.jpg,x"])
    dataset = read_dataset(clean)
    assert [(p.label, p.kind) for p in dataset.test_pairs] == [(1, None), (None, None), (None, None)]
    assert dataset.report.dropped == {layout.DROP_LABEL_MALFORMED: 1}
    assert "test_labels.csv line 3: is_related 'x'" in dataset.report.examples[layout.DROP_LABEL_MALFORMED][0]


def test_an_unknown_relationship_type_costs_its_row(clean):
    write_csv(clean / "relationship_types.csv", "p1,p2,type", ["F0001/MID1,F0001/MID2,cousin", "F0002/MID1,F0002/MID2,ms"])
    dataset = read_dataset(clean)
    assert {rel.kind for rel in dataset.relationships} == {UNKNOWN_TYPE, "ms"}
    assert dataset.report.dropped == {layout.DROP_TYPE_UNKNOWN: 1}


def test_examples_never_carry_control_characters(clean):
    add_relationships(clean, "F0001/MID1,F9\x1b[2J/MID\x9b1")
    report = read_dataset(clean).report
    (example,) = report.examples[layout.DROP_REL_NO_FOLDER]
    assert "\x1b" not in example and "\x9b" not in example and "\\x1b" in example


# --- links, special files and oversized images -----------------------------------------------------


def test_links_and_special_files_are_named_in_their_own_row_and_never_read(clean, tmp_path, capsys):
    secret = tmp_path / "secret.jpg"
    write_image(secret, seed=77)
    member = clean / "train" / "F0002" / "MID1"
    (member / "P00012_face0.jpg").symlink_to(secret)
    (member / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (clean / "train" / "F0001" / "MID9").symlink_to(member)  # a linked member folder
    os.mkfifo(clean / "train" / "F0001" / "MID1" / "pipe.jpg")  # reading it would block forever
    (clean / "test" / "face00009.jpg").symlink_to(secret)
    payload = check_json(clean, capsys)
    assert payload["dropped"] == {layout.DROP_LINK: 5}
    assert sorted(payload["examples"][layout.DROP_LINK]) == [
        "test/face00009.jpg", "train/F0001/MID1/pipe.jpg", "train/F0001/MID9",
        "train/F0002/MID1/P00012_face0.jpg", "train/F0002/MID1/dangling.jpg"]  # fmt: skip
    assert payload["counts"]["images"] == 8 and payload["counts"]["people"] == 4


@pytest.mark.parametrize("name", ["train", "train_relationships.csv"])
def test_a_linked_train_folder_or_relationships_file_is_refused(clean, tmp_path, capsys, name):
    (clean / name).rename(tmp_path / name)
    (clean / name).symlink_to(tmp_path / name)
    assert main(["data", "check", str(clean)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err and name in err


def test_linked_optional_files_are_ignored_and_counted(clean, tmp_path):
    (clean / "sample_submission.csv").rename(tmp_path / "sample_submission.csv")
    (clean / "sample_submission.csv").symlink_to(tmp_path / "sample_submission.csv")
    report = read_dataset(clean).report
    assert report.dropped == {layout.DROP_LINK: 1} and report.test_pairs == 0


def test_an_image_over_the_pixel_limit_is_a_counted_drop_never_decoded(clean, monkeypatch, capsys):
    member = clean / "train" / "F0001" / "MID1"
    write_image(member / "big.jpg", size=(300, 200), seed=8)
    monkeypatch.setenv("KINSHIP_MAX_IMAGE_PIXELS", "50000")
    payload = check_json(clean, capsys)
    assert payload["dropped"] == {OversizedImage.reason: 1}
    assert payload["examples"][OversizedImage.reason] == ["train/F0001/MID1/big.jpg"]
    monkeypatch.setenv("KINSHIP_MAX_IMAGE_PIXELS", "lots")
    assert main(["data", "check", str(clean)]) == 2
    assert "KINSHIP_MAX_IMAGE_PIXELS='lots'" in capsys.readouterr().err


def test_a_decompression_bomb_costs_one_image_and_little_memory(clean):
    bomb = clean / "train" / "F0001" / "MID1" / "bomb.jpg"
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # 400 MP behind a few KiB, named .jpg
    assert bomb.stat().st_size < 100_000
    tracemalloc.start()
    report = read_dataset(clean).report
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.dropped == {OversizedImage.reason: 1} and report.images == 8
    assert peak < 20 * 2**20, peak


# --- fatal cases ----------------------------------------------------------------------------------


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


@pytest.mark.parametrize(
    "breakage, named",
    [
        (lambda root: _remove_tree(root / "train"), "train"),
        (lambda root: (root / "train_relationships.csv").unlink(), "train_relationships.csv"),
        (lambda root: write_csv(root / "train_relationships.csv", "a,b", ["F0001/MID1,F0001/MID2"]), "train_relationships.csv"),
        (lambda root: (root / "train_relationships.csv").write_text(""), "train_relationships.csv"),
        (lambda root: write_csv(root / "sample_submission.csv", "pair,is_related", ["x"]), "sample_submission.csv"),
        (lambda root: write_csv(root / "test_labels.csv", "img_pair,relationship", []), "test_labels.csv"),
        (lambda root: (root / "train_relationships.csv").write_bytes(b"\xff\xfe,p2\nF0001/MID1,F0001/MID2\n"), "train_relationships.csv"),
        (lambda root: (root / "train_relationships.csv").write_bytes(b"p1" + b"x" * 70_000 + b",p2\n"), "train_relationships.csv"),
    ],
)
def test_fatal_layout_problems_are_one_line_exit_2(clean, capsys, breakage, named):
    breakage(clean)
    assert main(["data", "check", str(clean)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and named in captured.err and "Traceback" not in captured.err


def test_missing_directory_is_a_user_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err


# --- CLI output and fingerprint -------------------------------------------------------------------


def test_json_output_is_one_object(clean, capsys):
    add_relationships(clean, "F0001/MID1,F0001/MID1")
    write_image(clean / "train" / "F0001" / "MID1" / "gray.jpg", mode="L", seed=3)
    payload = check_json(clean, capsys)
    assert payload["counts"] == {
        "families": 2, "people": 4, "images": 9, "relationships": 2,
        "test_images": 4, "test_pairs": 3, "common_size": "32x32",
    }  # fmt: skip
    assert payload["dropped"] == {layout.DROP_REL_SELF: 1} and payload["fixed"] == {layout.FIX_GRAYSCALE: 1}
    assert payload["examples"][layout.FIX_GRAYSCALE] == ["train/F0001/MID1/gray.jpg"]
    assert payload["fingerprint"] == dataset_fingerprint(read_dataset(clean))


def test_tables_for_people(clean, capsys):
    (clean / "train" / "F0001" / "MID1" / "notes.txt").write_text("x")
    assert main(["data", "check", str(clean)]) == 0
    out = capsys.readouterr().out
    assert "families" in out and layout.DROP_STRAY_FILE in out and "Fingerprint:" in out


def test_fingerprint_follows_content_not_location(clean, tmp_path):
    first = dataset_fingerprint(read_dataset(clean))
    moved = clean.rename(tmp_path / "elsewhere")
    assert dataset_fingerprint(read_dataset(moved)) == first
    (moved / "train" / "F0001" / "MID1" / "notes.txt").write_text("stray files are not content")
    assert dataset_fingerprint(read_dataset(moved)) == first
    image = next((moved / "train" / "F0002" / "MID2").iterdir())
    data = bytearray(image.read_bytes())
    data[-3] ^= 0x01  # one byte of entropy-coded data: still decodes
    image.write_bytes(bytes(data))
    changed_image = dataset_fingerprint(read_dataset(moved))
    assert changed_image != first
    add_relationships(moved, "F0001/MID1,F0002/MID1")
    assert dataset_fingerprint(read_dataset(moved)) != changed_image


def test_file_hash_in_chunks_matches_whole_file_hash(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 9000 + b"tail")  # a little over 2 MiB: crosses chunk boundaries
    assert file_digest(path, chunk=1 << 20)[0] == hashlib.sha256(path.read_bytes()).hexdigest()
