"""The family-search index: built once, rebuilt incrementally, resumed after a stop, a damaged shard detected by its
digest and rebuilt, unreadable images counted and named; and a query against it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kinship.search import index as index_module
from kinship.search.index import IndexBuildConfig, build_index


@pytest.fixture()
def gallery(tiny_data, tmp_path) -> Path:
    """Three families of the tiny set in the RFIW layout (a few dozen photos)."""
    root = tmp_path / "gallery"
    for family in sorted(p.name for p in (tiny_data / "train").iterdir())[:3]:
        shutil.copytree(tiny_data / "train" / family, root / "train" / family)
    return root


def _build(tiny_run, gallery, out, **kw):
    return build_index(IndexBuildConfig(model=str(tiny_run / "model.pt"), images=str(gallery), out=str(out),
                                        shard_images=8, **kw))


def test_rebuild_embeds_only_new_or_changed_images(tiny_run, gallery, tmp_path):
    first = _build(tiny_run, gallery, tmp_path / "index")
    assert first.embedded == first.images > 16 and first.reused == 0
    photos = sorted(gallery.rglob("*.jpg"))
    shutil.copy(photos[0], photos[0].with_name("added.jpg"))
    photos[1].write_bytes(photos[2].read_bytes())  # changed in place
    second = _build(tiny_run, gallery, tmp_path / "index")
    assert second.images == first.images + 1
    assert second.embedded == 2 and second.reused == first.images - 1


def test_interrupted_build_resumes_with_what_is_missing(tiny_run, gallery, tmp_path, monkeypatch):
    real = index_module._embed_chunk
    calls = []

    def stop_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(index_module, "_embed_chunk", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        _build(tiny_run, gallery, tmp_path / "index")
    monkeypatch.setattr(index_module, "_embed_chunk", real)
    resumed = _build(tiny_run, gallery, tmp_path / "index")
    assert resumed.shards_kept == 2 and resumed.reused == 16
    assert resumed.embedded == resumed.images - 16


def test_damaged_shard_is_detected_and_rebuilt(tiny_run, gallery, tmp_path):
    from kinship.search.query import search_index

    first = _build(tiny_run, gallery, tmp_path / "index")
    shard = sorted((tmp_path / "index" / "shards").glob("*.npz"))[1]
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF
    shard.write_bytes(bytes(data))
    second = _build(tiny_run, gallery, tmp_path / "index")
    assert second.damaged_shards == [f"shards/{shard.name}"]
    assert second.embedded == 8 and second.images == first.images
    assert not shard.exists()  # the damaged object is gone from the index, never used again
    probe = sorted((gallery / "train").glob("*/MID1/*.jpg"))[:2]
    result = search_index(str(tmp_path / "index"), probe, top=5)
    assert len(result.hits) == 5 and result.gallery == first.images


def test_unreadable_images_are_counted_and_named(tiny_run, gallery, tmp_path):
    family = sorted((gallery / "train").iterdir())[0]
    (family / "MID1" / "broken.jpg").write_bytes(b"not a jpeg at all")
    result = _build(tiny_run, gallery, tmp_path / "index")
    key = f"train/{family.name}/MID1/broken.jpg"
    assert list(result.bad) == [key] and result.bad[key]
    assert result.images == len(list(gallery.rglob("*.jpg"))) - 1


def test_batch_search_writes_ranked_csv_and_metrics(tiny_run, gallery, tmp_path):
    import csv

    from kinship.search.batch import BatchSearchConfig, run_batch

    _build(tiny_run, gallery, tmp_path / "index")
    family = sorted((gallery / "train").iterdir())[0]
    photos = sorted((family / "MID1").glob("*.jpg"))[:2]
    others = sorted(p.name for p in family.iterdir() if p.name != "MID1")
    probes = tmp_path / "probes.csv"
    probes.write_text("probe,image,relatives\n" + "".join(
        f"a,{p.relative_to(gallery).as_posix()},{family.name}/{others[0]}\n" for p in photos))
    result = run_batch(BatchSearchConfig(index=str(tmp_path / "index"), probes=str(probes), images=str(gallery),
                                         out=str(tmp_path / "out"), top=10))
    rows = list(csv.DictReader((tmp_path / "out" / "ranked.csv").open()))
    assert [int(r["rank"]) for r in rows] == list(range(1, 11)) and {r["probe"] for r in rows} == {"a"}
    assert result.probes == 1 and result.metrics["probes"] == 1 and 0.0 <= result.metrics["mAP@10"] <= 1.0
    assert result.metrics["rank@10"] == float(any(r["person"] == f"{family.name}/{others[0]}" for r in rows))


def test_cli_refuses_a_missing_index_and_a_missing_photo_in_one_line(tiny_run, gallery, tmp_path, capsys):
    from kinship.cli import main

    photo = str(next(gallery.rglob("*.jpg")))
    assert main(["search", "--index", str(tmp_path / "nothing"), "--probe", photo]) == 2
    assert "no index at" in capsys.readouterr().err
    _build(tiny_run, gallery, tmp_path / "index")
    assert main(["search", "--index", str(tmp_path / "index"), "--probe", str(tmp_path / "absent.jpg")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "absent.jpg" in err
