"""Plots on the run page: the markdown artifact embeds each stored PNG (verified against its ref) as a data: URL.

No presigned store link: one is a bearer credential kept in Prefect's database and its dumps, and it stopped
working after 7 days. Against a local store and a real SeaweedFS alike (credentials required there: the markdown
carries none). On the shared ``kinship/full`` stack (when its lane starts it): both plot artifacts exist.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from kinship.storage import IntegrityError, LocalStore, S3Store, StoreSettings
from tasks.engines import MAX_EMBEDDED_BYTES, plots_markdown
from tests.flows_stack import kinship_stack  # noqa: F401  (session fixture: one stack per lane)
from tests.stack import WeedServer, weed_server  # noqa: F401  (fixture)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # the signature and some bytes: what matters is they come back
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
DATA_URL = "data:image/png;base64,"


def decoded(url: str) -> bytes:
    assert url.startswith(DATA_URL), url[:80]
    return base64.b64decode(url[len(DATA_URL):], validate=True)


def stored_pngs(store, folder: Path, names: list[str], size: int = 0) -> dict:
    refs = {}
    for name in names:
        path = folder / name
        path.write_bytes((PNG + name.encode()).ljust(size, b"\0"))
        refs[name] = store.put_file(path, f"report/{name}").to_dict()
    return refs


def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", replace(StoreSettings.from_env(), scratch=tmp_path / "scratch"))


def test_the_markdown_embeds_each_plot(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    refs = stored_pngs(store, tmp_path, ["throughput.png", "roc.png", "sizes.png"])
    refs["report.md"] = {"uri": store.uri("report/report.md")}  # not an image: not shown
    markdown = plots_markdown(store, refs)
    images = IMAGE.findall(markdown)
    assert [title for title, _ in images] == ["ROC curve (validation pairs)", "Throughput vs batch size", "Engine sizes"]
    assert [decoded(url) for _, url in images] == [PNG + name.encode() for name in ("roc.png", "throughput.png", "sizes.png")]
    assert "http" not in markdown and "valid until" not in markdown and refs["roc.png"]["uri"] in markdown
    assert plots_markdown(store, {"report.md": {"uri": store.uri("report.md")}}) is None


def test_a_plot_too_large_to_embed_is_named_and_a_tampered_one_is_refused(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    refs = stored_pngs(store, tmp_path, ["roc.png"], size=MAX_EMBEDDED_BYTES + 1)
    markdown = plots_markdown(store, refs)
    assert "![" not in markdown and f"Stored at `{refs['roc.png']['uri']}` (over 1024 KiB: too large" in markdown
    refs = stored_pngs(store, tmp_path, ["sizes.png"])
    Path(refs["sizes.png"]["uri"].removeprefix("file://")).write_bytes(b"\x89PNG other bytes")
    with pytest.raises(IntegrityError):  # plots_artifact logs it; never an unverified image
        plots_markdown(store, refs)


@pytest.mark.integration
def test_an_s3_stores_plots_are_embedded_with_no_link_or_credential(weed_server: WeedServer, monkeypatch,
                                                                    tmp_path: Path) -> None:
    for name, value in weed_server.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(replace(StoreSettings.from_env(), prefix=f"tests/{uuid.uuid4().hex[:10]}",
                            scratch=tmp_path / "scratch"))
    refs = stored_pngs(store, tmp_path, ["throughput.png", "roc.png"])
    markdown = plots_markdown(store, refs)
    images = IMAGE.findall(markdown)
    assert [decoded(url) for _, url in images] == [PNG + b"roc.png", PNG + b"throughput.png"]
    assert weed_server.endpoint not in markdown and "X-Amz" not in markdown
    assert weed_server.env()["AWS_ACCESS_KEY_ID"] not in markdown


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
        images = dict(IMAGE.findall(found[0]["data"]))
        assert {"ROC curve (validation pairs)", "Throughput vs batch size"} <= set(images), list(images)
        assert all(decoded(url).startswith(b"\x89PNG") for url in images.values())


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
