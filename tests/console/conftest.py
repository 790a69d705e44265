"""Console fixtures: Loom servers pointed at the scripted upstream, and headless Chromium driven by Playwright.

The browser is Debian's `chromium` (`make chromium` installs it); Playwright only drives it and never
downloads a browser of its own. Screenshots of the pages go to test-artifacts/console/ (not committed).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream
from tests.support.postgres import database_url_for
from tests.support.server import REPO, LoomServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Upper bounds for waits in the browser tests, not assertions on speed: generous, so that a loaded 2-core CI
# machine running other suites is slow but never flaky. (Playwright's own defaults: 5 s for expect, 30 s else.)
WAIT_MS = 60_000
ARTIFACTS = REPO / "test-artifacts" / "console"
KEY_SLOT = "loom.console.key"  # where the console keeps the key (sessionStorage), as static/js/api.js says


@pytest.fixture(scope="session")
def console_server(backend: str, upstream: FakeUpstream) -> Iterator[LoomServer]:
    """One server per backend, its model the scripted upstream (API-level tests)."""
    with LoomServer(
        database_url=database_url_for(backend),
        upstream_base_url=upstream.base_url,
        extra_env={"LOOM_SSE_KEEPALIVE_S": "0.3"},
    ) as server:
        yield server


@pytest.fixture(scope="session")
def e2e_server(upstream: FakeUpstream) -> Iterator[LoomServer]:
    """The browser tests' server (SQLite: what they test is the console, not the store)."""
    with LoomServer(upstream_base_url=upstream.base_url, extra_env={"LOOM_SSE_KEEPALIVE_S": "0.3"}) as server:
        yield server


@pytest.fixture(scope="session")
def e2e_other_key(e2e_server: LoomServer) -> str:
    return e2e_server.new_project_key("console-other")


@pytest.fixture()
def e2e_client(e2e_server: LoomServer) -> openai.OpenAI:
    return sdk_client(e2e_server)


# Package scope, not session: Playwright's sync API marks an event loop as running in the main thread
# while it is open, and every async test after it would then fail ("Runner.run() cannot be called from
# a running event loop"). It is closed when the console's tests are done.
@pytest.fixture(scope="package")
def playwright_driver() -> Iterator[Playwright]:
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: `make chromium` (Debian's `chromium` package) installs it.")
    browser = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


class Console:
    """A browser tab on the console of one server, with helpers the tests share."""

    def __init__(self, page: Page, server: LoomServer, errors: list[str]) -> None:
        self.page = page
        self.server = server
        self.errors = errors

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def sign_in_as(self, key: str) -> None:
        """Put the key where the sign-in page would (this tab's sessionStorage), for every page load."""
        self.page.context.add_init_script(f"sessionStorage.setItem({json.dumps(KEY_SLOT)}, {json.dumps(key)})")

    def open(self, path: str) -> Page:
        self.page.goto(self.origin + path)
        self.ready()
        return self.page

    def ready(self, timeout: float = WAIT_MS) -> str:
        """Wait until the page says it is done loading (ready) or has shown an error; return which."""
        self.page.wait_for_selector("main[data-state=ready], main[data-state=error]", timeout=timeout)
        return str(self.page.get_attribute("main", "data-state"))

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture()
def console(browser: Browser, e2e_server: LoomServer) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    context.set_default_timeout(WAIT_MS)
    yield Console(page, e2e_server, errors)
    context.close()
    # An uncaught exception in the page is a bug even when the test's assertions held.
    assert not errors, errors
