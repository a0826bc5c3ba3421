"""What the browser tests of the web UI share: Debian's Chromium under Playwright, the axe-core
accessibility check, signing in through the form."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.cluster import Node


@contextmanager
def chromium() -> Iterator[Browser]:
    """The system's Chromium (browsers cannot be downloaded here)."""
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is missing: run 'make install' (apt-get install chromium)"
    with sync_playwright() as pw:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        b = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def axe_clean(page: Page) -> None:
    """No accessibility violations (axe-core, run in the page)."""
    results = Axe().run(page)
    assert results.violations_count == 0, results.generate_report()


def sign_in(page: Page, node: Node, user: tuple[str, str], path: str = "/ui/") -> None:
    page.goto(node.url + path)
    expect(page).to_have_url(re.compile(r"/ui/signin\?next="))
    page.get_by_label("User name").fill(user[0])
    page.get_by_label("Password").fill(user[1])
    page.get_by_role("button", name="Sign in").click()
