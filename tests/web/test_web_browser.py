"""The web view in a real browser: Debian's chromium driven by Playwright, against uvicorn.

Opens the list, clicks into a FAILED execution, sees its graph and timeline; a retry
without the token is refused (403) and changes nothing; with the token it runs and the
page shows the saga COMPENSATED. Saves the screenshots of docs/images/ (1280x800).
Skipped (failed in CI) without Playwright or chromium.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import free_ports, poll, unavailable
from web_support import TOKEN, WebEnv

from celery_saga.models import SagaStatus
from celery_saga_web import create_app

CHROMIUM = os.environ.get("CELERY_SAGA_CHROMIUM", "/usr/bin/chromium")
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
VIEWPORT = {"width": 1280, "height": 800}
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium (the Debian package), through Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"Playwright for Python is not installed ({exc}): pip install playwright")
    if not os.path.exists(CHROMIUM):
        unavailable(f"chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def served(web_env: WebEnv) -> Iterator[str]:
    """The web view (actions on) served by uvicorn on a free port, in a thread."""
    import uvicorn

    app = create_app(web_env.store, celery_app=web_env.app, allow_actions=True, token=TOKEN)
    port = free_ports(1)[0]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        poll(lambda: server.started, 30, pytest.fail, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def test_list_execution_and_retry_in_a_browser(web_env: WebEnv, browser: Any, served: str) -> None:
    from playwright.sync_api import expect

    result, key = web_env.failed_booking()
    saga_id = result.saga_id
    page = browser.new_page(viewport=VIEWPORT)
    try:
        # The list: every execution, the FAILED one among them.
        page.goto(f"{served}/")
        expect(page.locator("#executions")).to_be_visible()
        row = page.locator("#executions tr", has=page.locator(f"a[href='/sagas/{saga_id}']"))
        expect(row.locator(".status")).to_have_text("failed")
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / "web-list.png"))

        # Into the execution: its graph and its timeline, drawn as SVG.
        row.locator(f"a[href='/sagas/{saga_id}']").click()
        page.wait_for_url(f"{served}/sagas/{saga_id}")
        expect(page.locator("#saga-status")).to_have_text("failed")
        expect(page.locator("#graph svg")).to_be_visible()
        expect(page.locator("#timeline svg")).to_be_visible()
        assert page.locator("#graph svg g.saga-node").count() >= 3  # start, 2 steps, end
        expect(page.locator("#step-0 .status").first).to_have_text("compensation_failed")

        # Retry without the token: refused, nothing changes.
        before = web_env.store.get(saga_id).to_dict()  # type: ignore[union-attr]
        with page.expect_response(f"{served}/sagas/{saga_id}/retry") as refused:
            page.locator("#action-retry button").click()
        assert refused.value.status == 403
        expect(page.locator("#error-detail")).to_contain_text("operator token is missing")
        assert web_env.store.get(saga_id).to_dict() == before  # type: ignore[union-attr]
        assert web_env.status(saga_id) is SagaStatus.FAILED

        # The bank is back; retry with the token: the saga ends COMPENSATED.
        web_env.sagas.switches.set(key, False)
        page.goto(f"{served}/sagas/{saga_id}")
        page.locator("#action-retry input[name=token]").fill(TOKEN)
        page.locator("#action-retry button").click()
        page.wait_for_url(f"{served}/sagas/{saga_id}?done=retry")
        expect(page.locator("#done")).to_contain_text("Retry asked for")
        expect(page.locator("#saga-status")).to_have_text("compensated", timeout=WAIT_MS)
        assert web_env.status(saga_id) is SagaStatus.COMPENSATED
        expect(page.locator("#timeline svg")).to_be_visible()

        # The screenshot of the docs: an order saga whose charge was declined.
        page.goto(f"{served}/sagas/{web_env.ids['compensated']}")
        expect(page.locator("#graph svg")).to_be_visible()
        page.screenshot(path=str(IMAGES / "web-execution.png"))
    finally:
        page.close()
