#!/usr/bin/env python3
"""Data movement: push and fetch of a data set through SeaweedFS, tar shards beside one object per file.

Both layouts move the same folder through the same server in one run. For each: the push (``kinship data push``
from Python), a first fetch on two fresh "hosts" (two scratch folders, as the training and engines hosts), and a
second fetch on the first host (this host's copy reused, every file re-verified by sha256).

Usage, from the repository root (starts a private SeaweedFS on random ports and stops it by pid)::

    .venv/bin/python benchmarks/data_movement.py [--data data/demo] [--json]

Without --data it makes the demo set (``kinship synth --size 64``, 800 families) in a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kinship.dataset_cache import CacheSettings, DatasetCache  # noqa: E402
from kinship.pipeline import fetch_dataset  # noqa: E402
from kinship.storage import StoreSettings, store_from_uri  # noqa: E402
from tests.stack import running_weed  # noqa: E402

LAYOUTS = {"shards (32 MiB)": 32 * 1024 * 1024, "one object per file": None}


def measure(data: Path, server, work: Path, name: str, shard_bytes: int | None) -> dict:
    """Push ``data`` in one layout, fetch it on two fresh hosts, then again on the first; seconds for each."""
    os.environ.update(server.env())
    uri = f"s3://{server.bucket}/datasets/{name}"
    store = store_from_uri(uri, StoreSettings.from_env())
    started = time.perf_counter()
    refs = store.put_tree(data, "", shard_bytes=shard_bytes)
    row = {"layout": name, "objects": len(refs) + 1, "push_s": time.perf_counter() - started}
    for host in ("host1", "host2"):
        settings = StoreSettings(**{**StoreSettings.from_env().__dict__, "scratch": work / name / host})
        started = time.perf_counter()
        handle = fetch_dataset(uri, settings)
        row[f"fetch_{host}_s"] = time.perf_counter() - started
    started = time.perf_counter()
    fetch_dataset(uri, StoreSettings(**{**settings.__dict__, "scratch": work / name / "host1"}))
    row["reuse_s"] = time.perf_counter() - started
    row["bytes_on_disk"] = DatasetCache(CacheSettings.from_env(work / name / "host1")).entries()[0].bytes
    row["files"] = sum(1 for p in handle.path.rglob("*") if p.is_file()) - 1
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="data set folder (default: make the demo set)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kinship-move-") as temp:
        work = Path(temp)
        data = args.data
        if data is None:
            data = work / "demo"
            subprocess.run([str(Path(sys.prefix) / "bin" / "kinship"), "synth", "--out", str(data), "--size", "64"],
                           check=True, stdout=subprocess.DEVNULL)
        with running_weed(work / "weed") as server:
            rows = [measure(data, server, work, name.split(" ")[0], shard_bytes) for name, shard_bytes in LAYOUTS.items()]
    for row, name in zip(rows, LAYOUTS):
        row["layout"] = name
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"data set: {rows[0]['files']} files, {rows[0]['bytes_on_disk'] / 1e6:.0f} MB on disk; SeaweedFS on 127.0.0.1, "
          f"{os.cpu_count()} cores")
    print(f"{'layout':<22}{'objects':>8}{'push s':>9}{'fetch host1 s':>15}{'fetch host2 s':>15}{'reuse s':>9}")
    for row in rows:
        print(f"{row['layout']:<22}{row['objects']:>8}{row['push_s']:>9.1f}{row['fetch_host1_s']:>15.1f}"
              f"{row['fetch_host2_s']:>15.1f}{row['reuse_s']:>9.1f}")
    shards, files = rows
    print(f"shards vs one object per file: push {files['push_s'] / shards['push_s']:.1f}x, "
          f"fetch {files['fetch_host1_s'] / shards['fetch_host1_s']:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
