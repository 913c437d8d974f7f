"""The dashboard: its summary stream, and the page in a real headless Chromium.

Chromium and chromedriver come from Debian's packages (`.ci/run` installs them);
without them the browser test fails rather than skips, like every other missing
piece of the integration tier.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from models.messages import PoolSummary
from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed
from tests.support.http import SECRET, Api, SseStream, token
from web.live import partition_of

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
_PAGE_TIMEOUT_S = 30.0


def _base(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.web_port}"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium at a laptop's 1366x768, driven through Debian's chromedriver."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    # Both paths given, so Selenium Manager has nothing to look up or download.
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to catch script errors
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
        "--window-size=1366,768",
        "--force-prefers-reduced-motion",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


async def _until(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """Wait in a thread, so the event loop keeps serving the API client meanwhile."""
    wait = WebDriverWait(driver, _PAGE_TIMEOUT_S, poll_frequency=0.1)
    return await asyncio.to_thread(wait.until, condition, f"timed out waiting for {what}")


def _page_state(driver: WebDriver) -> str | None:
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def _cell(driver: WebDriver, pool_id: str, column: str) -> str | None:
    found = driver.find_elements(
        By.CSS_SELECTOR, f'tr[data-pool="{pool_id}"] td[data-col="{column}"]'
    )
    return found[0].text if found else None


async def test_the_page_shows_pools_and_follows_matches_live(
    settings: Settings, worker_factory, browser: WebDriver, tmp_path: Path
) -> None:
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()
    names = TopicNames.with_prefix(settings.topic_prefix)

    started = time.monotonic()
    await asyncio.to_thread(browser.get, _base(settings) + "/")
    await _until(browser, lambda d: _page_state(d) == "live", "the page's stream to connect")
    # A reload would drop this marker: it proves the updates below arrive in place.
    browser.execute_script("window.__sameDocument = true;")

    async with Api(_base(settings)) as api:
        for pool_id, config in (
            ("interviews", {"match_on": ["difficulty"]}),
            ("study-groups", {"mode": "group", "group_size": 3}),
            ("meetups", {}),
        ):
            assert (await api.call("PUT", f"/pools/{pool_id}", json=config)).status == 202
        assert (await api.call("POST", "/pools/meetups/pause")).status == 202
        await wait_until_consumed(settings, names.command, timeout_s=60)
        for pool_id, user, criteria in (
            ("interviews", "ann", {"difficulty": "Easy"}),
            ("interviews", "cy", {"difficulty": "Hard"}),
            ("study-groups", "dee", {}),
            ("study-groups", "eli", {}),
            ("meetups", "fay", {}),
        ):
            body = {"user_id": user, "criteria": criteria}
            assert (await api.call("POST", f"/pools/{pool_id}/requests", json=body)).status == 202

        await _until(browser, lambda d: _cell(d, "interviews", "waiting") == "2", "2 waiting")
        await _until(browser, lambda d: _cell(d, "meetups", "status") == "paused", "a pause")
        before = _cell(browser, "interviews", "matches")
        assert before == "0"
        shown_at = time.monotonic()

        partner = {"user_id": "bob", "criteria": {"difficulty": "Easy"}}
        assert (await api.call("POST", "/pools/interviews/requests", json=partner)).status == 202
        await _until(browser, lambda d: _cell(d, "interviews", "matches") != before, "a match")
        matched_at = time.monotonic()

    assert _cell(browser, "interviews", "matches") == "1"
    assert browser.execute_script("return window.__sameDocument === true;")
    assert int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-stream-events")) > 0
    assert "paused" in (_cell(browser, "meetups", "blockers") or "")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    # Let the throughput chart draw its first whole bucket before the picture.
    chart = "#chart path.m-line"
    await _until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, chart), "the chart")

    ARTIFACTS.mkdir(exist_ok=True)
    kept = [_screenshot(browser, tmp_path / "dashboard.png")]
    browser.set_window_size(1920, 1080)
    kept.append(_screenshot(browser, tmp_path / "dashboard-1920.png"))
    print(
        f"\ndashboard: pools shown {shown_at - started:.1f} s after load, match shown "
        f"{matched_at - shown_at:.1f} s after the partner's request; screenshots "
        + ", ".join(str(path) for path in kept)
    )


def _screenshot(driver: WebDriver, picture: Path) -> Path:
    """Save to the test's directory and keep a copy under test-artifacts/ for CI."""
    assert driver.save_screenshot(str(picture))
    return Path(shutil.copy(picture, ARTIFACTS / picture.name))


async def test_the_stream_sends_a_summary_of_a_changed_pool(
    settings: Settings, worker_factory
) -> None:
    worker = worker_factory(jwt_secret=SECRET)
    worker.start()
    await worker.wait_ready()
    viewer = token("viewer")  # any user may watch; no admin role needed
    stream_url = _base(settings) + "/dashboard/stream"

    async with Api(_base(settings)) as api:
        async with api.session.get(_base(settings) + "/") as page:
            html = await page.text()
            # The page itself is public: it holds no data and asks with the caller's token.
            assert page.status == 200 and page.content_type == "text/html"
            assert (
                "<title>" in html
                and "default-src 'none'" in page.headers["Content-Security-Policy"]
            )
        async with api.session.get(stream_url) as missing:
            assert missing.status == 401 and "detail" in await missing.json()
        forged = token("viewer", secret="x" * 32)
        async with api.session.get(stream_url, params={"access_token": forged}) as refused:
            assert refused.status == 401

        async with api.session.get(stream_url, params={"access_token": viewer}) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            stream = SseStream(response)
            await stream.wait_live()
            created = await api.call("POST", "/pools/lobby/requests", as_user=viewer, json={})
            assert created.status == 202
            event = await stream.next_event(timeout_s=30)

    assert event.event == "summary"
    summary = PoolSummary.model_validate(event.data)
    assert (summary.pool_id, summary.requests_total, summary.waiting) == ("lobby", 1, 1)
    partition, _, offset = str(event.id).partition("-")
    assert int(partition) == partition_of("lobby", settings.topic_partitions)
    assert int(offset) >= 0
