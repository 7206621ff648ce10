#!/usr/bin/env python3
"""Follow a deployment run in the terminal: its log lines and those of every flow run nested under it, as they happen.

``prefect deployment run --watch`` shows the parent run only; ``kinship/full`` does its work in child runs on
other pools (``kinship-train``, ``kinship-engines``), so it printed nothing but heartbeats. This follower
starts the run (or attaches to one), finds the children through the REST API (flow runs whose parent task
run belongs to a followed run, recursively), and prints every run's log lines and state changes in time
order, each prefixed by its flow's name. It exits when the parent run ends: 0 on Completed, else 1 with one
line naming the final state and the run's UI page. Ctrl-C stops following; the run goes on.

    source .stack/env
    python deployments/follow.py kinship/full --param 'dataset_uri="s3://kinship/datasets/demo"' \
        --param 'train={"epochs":2}'
    python deployments/follow.py --flow-run-id 1b2c...

Plain HTTP with the stack's basic auth, through ``kinship.server_retries.PrefectApi`` (a busy server's 503 is
retried, never fatal); no Prefect settings or imports in this process. This file is the command (its arguments,
starting a run, the last line); the runs and the polling loop are ``deployments/run_follower.py``, the lines
``deployments/log_lines.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
from pathlib import Path
from typing import Iterable, TextIO

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deployments.run_follower import Follower  # noqa: E402
from kinship.cli.output import key_values  # noqa: E402
from kinship.errors import UserError  # noqa: E402
from kinship.server_retries import PrefectApi  # noqa: E402

# The follower's name for the one Prefect API client (the tests and earlier scripts use ``follow.Api``).
Api = PrefectApi


# ---------------------------------------------------------------- starting a run


def parse_params(pairs: Iterable[str]) -> dict:
    """``KEY=VALUE`` pairs as ``prefect deployment run --param`` reads them: VALUE as JSON, else as a string."""
    try:
        return key_values(pairs, "--param")
    except UserError as error:
        raise SystemExit(f"follow: {error}") from None


def start_run(api: PrefectApi, deployment: str, parameters: dict) -> dict:
    """Create a flow run of ``flow/deployment`` (the deployment's defaults fill what ``parameters`` leaves out).

    The create carries an idempotency key (``PrefectApi`` adds one), so a retry after a lost answer returns
    the run the first try made instead of starting a second one."""
    flow_name, sep, name = deployment.partition("/")
    if not sep:
        raise SystemExit(f"follow: {deployment!r} is not FLOW/DEPLOYMENT (e.g. kinship/full)")
    found = api(f"/deployments/name/{flow_name}/{name}")
    return api(f"/deployments/{found['id']}/create_flow_run", {"parameters": parameters})


# ---------------------------------------------------------------- the end of a run


def final_line(api: PrefectApi, run: dict) -> str:
    """One line for a run that did not complete: its final state, the state's message, its UI page."""
    state = run.get("state") or {}
    message = f": {state['message']}" if state.get("message") else ""
    return f"run {run['name']} ended {state.get('name') or state.get('type')}{message}; see {api.run_page(run['id'])}"


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployment", nargs="?", help="FLOW/DEPLOYMENT to run, e.g. kinship/full")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter (VALUE read as JSON, else as a string); repeatable")
    parser.add_argument("--params", default=None, help="parameters as one JSON object")
    parser.add_argument("--flow-run-id", default=None, help="follow this existing flow run instead of starting one")
    parser.add_argument("--all", action="store_true", dest="everything",
                        help="every line: the workers' and pull steps' too, and whole tracebacks")
    args = parser.parse_args(argv)
    if bool(args.deployment) == bool(args.flow_run_id):
        parser.error("give either a deployment to run or --flow-run-id")
    try:
        api = PrefectApi.from_env()
    except LookupError as error:
        raise SystemExit(f"follow: {error}") from None
    try:
        if args.flow_run_id:
            run = api(f"/flow_runs/{args.flow_run_id}")
            print(f"following run {run['name']} ({run['id']}): {api.run_page(run['id'])}", file=out, flush=True)
        else:
            parameters = {**(json.loads(args.params) if args.params else {}), **parse_params(args.param)}
            run = start_run(api, args.deployment, parameters)
            print(f"started {args.deployment} run {run['name']} ({run['id']}): {api.run_page(run['id'])}",
                  file=out, flush=True)
    except urllib.error.HTTPError as error:  # a deployment or run that does not exist, parameters refused (422)
        what = args.flow_run_id or args.deployment
        print(f"follow: {what}: {error.code} {error.reason} {error.read()[:500].decode(errors='replace')}",
              file=sys.stderr)
        return 2
    except urllib.error.URLError as error:
        print(f"follow: the Prefect API at {api.api_url} does not answer ({error.reason}): is the stack up?",
              file=sys.stderr)
        return 2
    try:
        final = Follower(api, run["id"], out, args.everything).follow()
    except KeyboardInterrupt:
        print(f"\nstopped following; run {run['name']} goes on. Follow it again: python deployments/follow.py "
              f"--flow-run-id {run['id']}  (UI: {api.run_page(run['id'])})", file=out, flush=True)
        return 130
    if (final.get("state") or {}).get("type") == "COMPLETED":
        print(f"run {final['name']} completed: {api.run_page(final['id'])}", file=out, flush=True)
        return 0
    print(final_line(api, final), file=out, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
