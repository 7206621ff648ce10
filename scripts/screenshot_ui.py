#!/usr/bin/env python3
"""Regenerate ``docs/ui-run.png`` (and ``docs/ui-report.png``): a finished ``kinship/full`` run in the Prefect UI.

By default this starts a private stack in a temporary folder (random ports), runs ``kinship/full`` on the
tiny configuration of the integration test, takes the screenshots and stops the stack by pid. With
``--stack-dir .stack`` it uses a running stack's most recent completed ``kinship/full`` run instead.

Needs Debian's chromium (``apt-get install -y chromium``). Usage, from the repository root::

    .venv/bin/python scripts/screenshot_ui.py [--stack-dir .stack] [--out docs/ui-run.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployments import driver  # noqa: E402
from deployments.ui import open_run, ui_page  # noqa: E402

TINY_PARAMETERS = {
    "dataset_uri": "s3://kinship/datasets/tiny",
    "train": {"epochs": 1, "image_size": 32, "width": 8, "embedding_dim": 32, "max_batches_per_epoch": 4},
    "precisions": ["fp32", "int8"],
    "engines": {"backend": "auto", "bench_batches": [1, 8], "bench_seconds": 0.2, "warmup_seconds": 0.05},
}


def latest_full_run(stack: driver.LocalStack) -> str:
    """The newest completed run of ``kinship/full`` on ``stack``."""
    deployment = stack.api("/deployments/name/kinship/full")
    runs = stack.api("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}},
                                          "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
                                          "sort": "END_TIME_DESC", "limit": 1})
    if not runs:
        raise SystemExit("screenshot_ui: no completed kinship/full run on this stack (make run first)")
    return runs[0]["id"]


def fresh_run(state_dir: Path) -> tuple[driver.LocalStack, str]:
    """A private stack with one tiny ``kinship/full`` run (the integration test's configuration)."""
    from kinship.synth import SynthConfig, generate

    data = state_dir / "tiny-data"
    generate(SynthConfig(families=24, test_families=4, size=64, seed=3), data)
    stack = driver.up(state_dir / "stack")
    driver.push(stack, data, TINY_PARAMETERS["dataset_uri"])
    driver.deploy(stack)
    outcome = driver.run_deployment(stack, "kinship/full", TINY_PARAMETERS)
    if outcome.returncode != 0:
        raise SystemExit(f"screenshot_ui: kinship/full did not complete:\n{outcome.output[-3000:]}")
    return stack, outcome.flow_run_id


def take(stack: driver.LocalStack, flow_run_id: str, out: Path) -> list[Path]:
    """The run page with its nested child runs, and the rendered report artifact."""
    out.parent.mkdir(parents=True, exist_ok=True)
    report_png = out.with_name("ui-report.png")
    with ui_page(stack.ui_url, stack.env["PREFECT_API_AUTH_STRING"], width=1400, height=960) as page:
        open_run(page, flow_run_id, tab="Subflow Runs")
        page.wait_for_timeout(1500)  # let the run graph finish drawing
        page.screenshot(path=str(out))
        report = next(a for a in driver.artifacts(stack, flow_run_id) if a.get("key") == "kinship-report")
        page.goto(f"/artifacts/artifact/{report['id']}", wait_until="networkidle")
        page.wait_for_timeout(500)
        page.screenshot(path=str(report_png))
    return [out, report_png]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack-dir", type=Path, help="use this running stack (e.g. .stack) instead of a fresh one")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ui-run.png")
    args = parser.parse_args()
    if args.stack_dir:
        stack = driver.LocalStack(args.stack_dir, driver.read_env_file(args.stack_dir / "env"))
        written = take(stack, latest_full_run(stack), args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="kinship-ui-") as folder:
            try:
                stack, flow_run_id = fresh_run(Path(folder))
                written = take(stack, flow_run_id, args.out)
            finally:
                driver.down(Path(folder) / "stack")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
