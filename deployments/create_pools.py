#!/usr/bin/env python3
"""Create (or bring back in line) the three Prefect work pools; safe to run any number of times.

- ``rocm``: training jobs and the recipe search's trials; one at a time per GPU, which each worker's ``--limit 1``
  enforces (a pool limit would keep a second training host idle).
- ``cuda``: engine builds and benchmarks; one at a time per GPU, likewise by its workers' limits.
- ``orchestrator``: the parent flows only, so they never hold the slot their child runs need.

The pools and their limits are ``deployments/pools.json``, which the local stack (``infra/local/prefect_server.py``)
reads too.

Talks to the server named by ``PREFECT_API_URL`` (and ``PREFECT_API_AUTH_STRING`` when it needs one).
Usage: ``.venv/bin/python deployments/create_pools.py [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists
from prefect.workers.process import ProcessWorker

# pool name -> concurrency limit (null: unlimited)
POOLS: dict[str, int | None] = json.loads(Path(__file__).with_name("pools.json").read_text())


async def ensure_pool(client, name: str, limit: int | None) -> str:
    """Create ``name`` as a process pool with ``limit``; if it exists, only set the limit (keep its template)."""
    create = WorkPoolCreate(
        name=name,
        type="process",
        base_job_template=ProcessWorker.get_default_base_job_template(),
        concurrency_limit=limit,
        description=f"kinship {name} jobs" + (f", {limit} at a time" if limit else ""),
    )
    try:
        await client.create_work_pool(create)
        return "created"
    except ObjectAlreadyExists:
        existing = await client.read_work_pool(name)
        if existing.type != "process":
            raise SystemExit(f"create_pools: pool {name!r} exists with type {existing.type!r}, expected 'process'")
        if existing.concurrency_limit != limit:
            await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))
            return "updated"
        return "unchanged"


async def ensure_pools() -> dict[str, str]:
    async with get_client() as client:
        return {name: await ensure_pool(client, name, limit) for name, limit in POOLS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = asyncio.run(ensure_pools())
    if args.json:
        print(json.dumps({"pools": {n: {"status": s, "concurrency_limit": POOLS[n]} for n, s in results.items()}}))
    else:
        for name, status in results.items():
            print(f"work pool {name:<12} {status:<9} concurrency limit {POOLS[name] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
