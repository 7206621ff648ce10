"""The finished run in the Prefect UI, in headless Chromium: nested child runs and the report artifacts show."""

from __future__ import annotations

import pytest

from deployments import driver
from deployments.ui import chromium_path, open_run, ui_page
from tests.flows_stack import kinship_stack  # noqa: F401  (session fixture)

pytestmark = [
    pytest.mark.integration, pytest.mark.slow,
    pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def run(kinship_stack):
    stack = kinship_stack.stack
    parent = driver.flow_run(stack, kinship_stack.first.flow_run_id)
    children = driver.child_runs(stack, parent["id"])
    return stack, parent, children, driver.run_id_of(children)


def test_run_page_shows_the_nested_child_runs_on_their_pools(run) -> None:
    stack, parent, children, _ = run
    with ui_page(stack.ui_url, stack.env["PREFECT_API_AUTH_STRING"]) as page:
        open_run(page, parent["id"], tab="Subflow Runs")
        assert page.get_by_text(parent["name"]).first.is_visible()
        assert page.get_by_text("Completed").first.is_visible()
        for child in children:
            page.get_by_text(child["name"], exact=True).wait_for()
        listing = page.inner_text("body")
        assert "2 Flow runs" in listing or "2 Flow run" in listing
        # the pools' names come from separate requests; on a loaded machine one can fail once ("No access" where
        # the pool goes): the page asks again when reloaded
        if not all(pool in listing for pool in ("rocm", "cuda")):
            open_run(page, parent["id"], tab="Subflow Runs")
        page.wait_for_function("['rocm', 'cuda'].every(pool => document.body.innerText.includes(pool))",
                               timeout=30_000)


def test_run_page_lists_the_report_artifacts_and_renders_the_report(run) -> None:
    stack, parent, _, run_id = run
    with ui_page(stack.ui_url, stack.env["PREFECT_API_AUTH_STRING"]) as page:
        open_run(page, parent["id"], tab="Artifacts")
        for text in ("kinship-report", "kinship-engines", "run report", "champion pointer"):
            page.get_by_text(text, exact=True).first.wait_for()
        report = next(a for a in driver.artifacts(stack, parent["id"]) if a.get("key") == "kinship-report")
        page.goto(f"/artifacts/artifact/{report['id']}", wait_until="networkidle")
        page.get_by_role("heading", name=f"kinship run {run_id}").wait_for()
        assert page.get_by_text("Engines", exact=True).first.is_visible()
