"""Plots on the run page: the markdown artifact shows each stored PNG through a presigned store URL.

Against a real SeaweedFS (credentials required): the URL in the markdown GETs the PNG's bytes with no
credentials, and a tampered signature is refused. A local store has no web address: the markdown says where
the file is instead. On the shared ``kinship/full`` stack (when its lane starts it): both plot artifacts exist.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kinship.storage import LocalStore, S3Store, StoreSettings
from tasks.engines import IMAGE_LINK_S, plots_markdown
from tests.flows_stack import kinship_stack  # noqa: F401  (session fixture: one stack per lane)
from tests.stack import WeedServer, weed_server  # noqa: F401  (fixture)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # the signature and some bytes: what matters is they come back
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def stored_pngs(store, folder: Path, names: list[str]) -> dict:
    refs = {}
    for name in names:
        path = folder / name
        path.write_bytes(PNG + name.encode())
        refs[name] = store.put_file(path, f"report/{name}").to_dict()
    return refs


@pytest.mark.integration
def test_the_markdown_shows_each_plot_through_a_presigned_url(weed_server: WeedServer, monkeypatch,
                                                              tmp_path: Path) -> None:
    for name, value in weed_server.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(replace(StoreSettings.from_env(), prefix=f"tests/{uuid.uuid4().hex[:10]}",
                            scratch=tmp_path / "scratch"))
    refs = stored_pngs(store, tmp_path, ["throughput.png", "roc.png"])
    refs["report.md"] = {"uri": store.uri("report/report.md")}  # not an image: not shown
    markdown = plots_markdown(store, refs, now=datetime(2026, 1, 1, tzinfo=timezone.utc))
    images = IMAGE.findall(markdown)
    assert [title for title, _ in images] == ["ROC curve (validation pairs)", "Throughput vs batch size"]
    for (title, url), name in zip(images, ["roc.png", "throughput.png"]):
        assert url.startswith(weed_server.endpoint) and f"X-Amz-Expires={IMAGE_LINK_S}" in url
        assert get(url) == PNG + name.encode()  # no credentials: the signature is the permission
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(re.sub(r"X-Amz-Signature=[0-9a-f]+", "X-Amz-Signature=" + "0" * 64, images[0][1]))
    assert refused.value.code == 403
    assert "valid until 2026-01-08 00:00 UTC" in markdown and refs["roc.png"]["uri"] in markdown
    with pytest.raises(ValueError):
        store.presigned_url(refs["roc.png"]["uri"], IMAGE_LINK_S + 1)  # SigV4 signs for 7 days at most


def test_a_local_store_says_where_the_plot_is_instead(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", replace(StoreSettings.from_env(), scratch=tmp_path / "scratch"))
    refs = stored_pngs(store, tmp_path, ["roc.png", "sizes.png"])
    assert store.presigned_url(refs["roc.png"]["uri"], 60) is None
    markdown = plots_markdown(store, refs)
    assert "![" not in markdown and "valid until" not in markdown
    assert f"Stored at `{refs['roc.png']['uri']}`: a local store has no web address" in markdown
    assert markdown.index("ROC curve") < markdown.index("Engine sizes")
    assert plots_markdown(store, {"report.md": {"uri": store.uri("report.md")}}) is None


@pytest.mark.integration
@pytest.mark.slow
def test_the_finished_run_shows_its_plots_on_both_pages(kinship_stack) -> None:
    from deployments import driver

    stack, parent_id = kinship_stack.stack, kinship_stack.first.flow_run_id
    engines = [c for c in driver.child_runs(stack, parent_id) if "engines" in c.get("tags", [])]
    pages = {"kinship-plots": parent_id, "engine-plots": engines[0]["id"]}
    for key, flow_run_id in pages.items():
        found = [a for a in driver.artifacts(stack, flow_run_id) if a.get("key") == key]
        assert found and found[0]["type"] == "markdown", key
        urls = [url for _, url in IMAGE.findall(found[0]["data"])]
        assert any("/roc.png?" in url for url in urls) and any("/throughput.png?" in url for url in urls), urls
        assert all(get(url).startswith(b"\x89PNG") for url in urls)


@pytest.mark.integration
@pytest.mark.slow
def test_the_ui_draws_the_plots(kinship_stack) -> None:
    from deployments import driver
    from deployments.ui import chromium_path, ui_page

    if chromium_path() is None:
        pytest.skip("no chromium (apt-get install -y chromium)")
    stack = kinship_stack.stack
    found = [a for a in driver.artifacts(stack, kinship_stack.first.flow_run_id) if a.get("key") == "kinship-plots"]
    with ui_page(stack.ui_url, stack.env["PREFECT_API_AUTH_STRING"]) as page:
        page.goto(f"/artifacts/artifact/{found[0]['id']}", wait_until="networkidle")
        page.get_by_alt_text("ROC curve (validation pairs)").wait_for()
        page.wait_for_function("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length >= 2")
        drawn = page.evaluate("Array.from(document.images).filter(i => i.naturalWidth > 0).map(i => i.alt)")
    assert {"ROC curve (validation pairs)", "Throughput vs batch size"} <= set(drawn)
