"""The index-build and batch-search deployments on the session's local stack: a gallery of two tiny families pushed
to S3, indexed on the ``cuda`` pool, searched with a labelled probe; results in S3 and artifacts on the run page."""

from __future__ import annotations

import csv
import io
import shutil

import pytest

from deployments import driver
from tests.flows_stack import kinship_stack  # noqa: F401  (session fixture)
from tests.stack import localstack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_index_then_search_deployments(kinship_stack, tiny_run, tmp_path) -> None:  # noqa: F811
    stack = kinship_stack.stack
    bucket = stack.env["KINSHIP_BUCKET"]
    gallery = tmp_path / "gallery"
    families = sorted((kinship_stack.data_dir / "train").iterdir())[:2]
    for family in families:
        shutil.copytree(family, gallery / "train" / family.name)
    shutil.copy(kinship_stack.data_dir / "train_relationships.csv", gallery)
    driver.push(stack, gallery, f"s3://{bucket}/datasets/search-gallery")
    index = f"s3://{bucket}/indexes/search-tiny"
    built = driver.run_deployment(stack, "kinship-index/index", {"config": {
        "model": str(tiny_run / "model.pt"), "images": f"s3://{bucket}/datasets/search-gallery", "out": index,
        "shard_images": 16}})
    assert built.returncode == 0, built.output[-4000:]
    figures = {a["key"]: a for a in driver.artifacts(stack, built.flow_run_id) if a.get("key")}
    assert "index-build" in figures

    photos = sorted((gallery / "train" / families[0].name / "MID1").glob("*.jpg"))[:2]
    relative = sorted(p.name for p in (gallery / "train" / families[0].name).iterdir() if p.name != "MID1")[0]
    probes = tmp_path / "probes.csv"
    probes.write_text("probe,image,relatives\n" + "".join(
        f"p1,{p.relative_to(gallery).as_posix()},{families[0].name}/{relative}\n" for p in photos))
    out = f"s3://{bucket}/searches/search-tiny"
    searched = driver.run_deployment(stack, "kinship-search/search", {"config": {
        "index": index, "probes": str(probes), "images": str(gallery), "out": out, "top": 10}})
    assert searched.returncode == 0, searched.output[-4000:]
    artifacts = {a["key"]: a for a in driver.artifacts(stack, searched.flow_run_id) if a.get("key")}
    assert {"search-ranked", "search-metrics"} <= set(artifacts)
    env = stack.env
    client = localstack.s3_client(env["AWS_ENDPOINT_URL_S3"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    body = client.get_object(Bucket=bucket, Key="searches/search-tiny/ranked.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [int(r["rank"]) for r in rows] == list(range(1, 11))
