"""The Prefect UI of a local stack in headless Chromium (Debian's ``chromium``, driven by Playwright).

Playwright's own browser download cannot work offline, so it drives the system browser through
``executable_path``. The server requires its API auth string; the UI keeps it (base64) in
``localStorage['prefect-password']``, set here before the first page loads, as the login form would.
"""

from __future__ import annotations

import json
import shutil
from base64 import b64encode
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def chromium_path() -> Path | None:
    """Debian's chromium, or another ``chromium`` on PATH; None when there is none."""
    if CHROMIUM.is_file():
        return CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


@contextmanager
def ui_page(ui_url: str, auth_string: str, width: int = 1400, height: int = 1000) -> Iterator:
    """A Playwright page logged in to the Prefect UI at ``ui_url``; the browser is closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("no chromium: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=FLAGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, base_url=ui_url)
            password = b64encode(auth_string.encode()).decode()
            context.add_init_script(f"window.localStorage.setItem('prefect-password', {json.dumps(password)})")
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def open_run(page, flow_run_id: str, tab: str | None = None) -> None:
    """Open a flow run's page (optionally one of its tabs) and wait until its header shows."""
    page.goto(f"/runs/flow-run/{flow_run_id}", wait_until="networkidle")
    page.get_by_text("Subflow Runs", exact=True).first.wait_for()
    if tab:
        page.get_by_text(tab, exact=True).first.click()
        page.wait_for_load_state("networkidle")
