"""The status page in a real headless Chromium (Debian's `chromium`, driven by playwright): it loads,
a provider's row turns red when its fake provider goes down, and green again when it comes back.

tests/run.sh installs Debian's `chromium`; playwright's own browser download does not work offline,
so the test launches /usr/bin/chromium and fails (never skips) when it is missing. `ROUTER_SCREENSHOT`
names a file to save the page to (docs/status-page.png comes from here).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import FakeProviderFactory
from tests.support.daemon import DaemonProcess, free_port
from tests.support.policies import env_with_keys, policy_text, provider_block, route_block

CHROMIUM = "/usr/bin/chromium"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.slow
async def test_a_provider_row_turns_red_when_it_goes_down_and_green_when_it_recovers(
        fake_provider: FakeProviderFactory, tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: tests/run.sh installs Debian's chromium package", pytrace=False)
    from playwright.async_api import async_playwright, expect

    a, b = await fake_provider("a"), await fake_provider("b")
    port_a = urlsplit(a.base_url).port
    admin_port = free_port()
    providers = {"a": provider_block(a, keyed=False, breaker={"consecutive_failures": 1},
                                     health_probe={"interval_s": 0.5}),
                 "b": provider_block(b, keyed=False)}
    text = policy_text(providers, {"chat": route_block(("a", "m"), ("b", "m"))},
                       server={"admin": {"port": admin_port}})
    async with DaemonProcess(text, tmp_path, env=env_with_keys()) as daemon, aiohttp.ClientSession() as session, \
            async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 520})
            await page.goto(f"http://127.0.0.1:{admin_port}/admin/")
            row = page.locator('tr[data-provider="a"]')
            await expect(row).to_have_attribute("data-status", "green", timeout=10_000)
            await expect(page.locator('tr[data-provider="b"]')).to_have_attribute("data-status", "green")

            await a.stop()
            async with session.post(daemon.chat_url, json=CHAT) as response:  # fails over to b, ejects a
                assert response.status == 200 and response.headers["x-router-provider"] == "b"
            await expect(row).to_have_attribute("data-status", "red", timeout=10_000)
            assert "ejected" in await row.inner_text()
            if os.environ.get("ROUTER_SCREENSHOT"):
                await page.screenshot(path=os.environ["ROUTER_SCREENSHOT"])

            await a.start(port=port_a)  # the health probe finds it back, with no client request
            await expect(row).to_have_attribute("data-status", "green", timeout=10_000)
            assert "serving" in await row.inner_text()
        finally:
            await browser.close()
