#!/usr/bin/env python3
"""Where the last run of a deployment left its report, and its page in the Prefect UI (the end of ``make run``).

Reads the stack's client settings from the environment (``source .stack/env``), finds the newest run of
``--deployment`` (default ``kinship/full``), copies its report from the store to ``--out/report.md`` and
prints the report's store URI, the local copy, the champion decision, the engine table and the UI address.
Exit code 1 when that run did not complete.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployments import driver  # noqa: E402
from kinship.engines.outcome import REPORT_WORD, STATUS_BUILT  # noqa: E402

CLIENT_KEYS = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")


def newest_run(stack: driver.LocalStack, deployment: str) -> dict:
    flow_name, name = deployment.split("/")
    found = stack.api(f"/deployments/name/{flow_name}/{name}")
    runs = stack.api("/flow_runs/filter", {"deployments": {"id": {"any_": [found["id"]]}},
                                          "flow_runs": {"start_time": {"is_null_": False}},
                                          "sort": "START_TIME_DESC", "limit": 1})
    if not runs:
        raise SystemExit(f"show_run: {deployment} has not run yet")
    return runs[0]


def copy_report(run_id: str, out: Path) -> tuple[dict, Path]:
    """The run's summary (from the store, verified) and a local copy of its report."""
    from kinship.run_report import summary_key
    from kinship.storage import ArtifactRef, store_from_settings

    store = store_from_settings()
    summary = store.get_json(summary_key(run_id))
    report = store.get_file(ArtifactRef.from_dict(summary["report"]), out / "report.md")
    return summary, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployment", default="kinship/full")
    parser.add_argument("--out", type=Path, default=REPO / "out", help="folder for a local copy of the report")
    args = parser.parse_args()
    missing = [key for key in CLIENT_KEYS if key not in os.environ]
    if missing:
        raise SystemExit(f"show_run: {', '.join(missing)} not set (source .stack/env first)")
    stack = driver.LocalStack(REPO / ".stack", {key: os.environ[key] for key in CLIENT_KEYS})
    run = newest_run(stack, args.deployment)
    page = stack.client.run_page(run["id"])
    print(f"run       {run['name']}: {run['state_name']}")
    if run["state_type"] != "COMPLETED":
        print(f"UI        {page}")
        return 1
    children = driver.child_runs(stack, run["id"])
    if not children:  # the run found nothing new to train on (the same data version, code and configuration)
        notes = [a for a in driver.artifacts(stack, run["id"]) if a.get("key") == "kinship-nothing-new"]
        print(f"result    {notes[0]['data'].strip('*') if notes else 'no child run was started'}")
        print(f"UI        {page}")
        return 0
    summary, report = copy_report(driver.run_id_of(children), args.out.resolve())
    print(f"report    {summary['report']['uri']}")
    print(f"          copied to {report}")
    print(f"champion  {summary['reason']}")
    for row in summary["engines"]:
        built = row["status"] == REPORT_WORD[STATUS_BUILT]
        figures = f"{row['pairs_per_s']} pairs/s, AUC {row['auc']}" if built else row["note"]
        print(f"engine    {row['variant']:<9} {row['backend']:<12} {row['status']:<6} {figures}")
    print(f"UI        {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
