"""A real headless browser for the web console's tests: Debian's chromium (installed by
scripts/setup-system.sh) driven by Playwright for Python. Never ``playwright install``:
it downloads a browser build of its own, which this project does not use.

Tests that use it carry the ``browser`` mark (``pytest -m browser`` runs them alone) and
skip, saying why, only when there is no browser to drive.

HTTPS: :func:`launch` with ``trust=CA_FILE`` makes Chromium accept the certificate chains
that hold that CA's public key (``--ignore-certificate-errors-spki-list``, honoured with
the profile directory of its own Playwright gives every launch) and no other. That is
trusting the test platform's own CA, made for the test, without a system-wide change
(an NSS database in $HOME) and without ``ignore_https_errors``, which would take any
certificate at all and so could not notice the platform serving the wrong one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Error, Page, Response

__all__ = [
    "ARGS",
    "ARTIFACTS",
    "CHROMIUM",
    "PageErrors",
    "launch",
    "screenshot",
    "spki_pin",
    "why_no_browser",
]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Screenshots of each page (not committed: .gitignore).
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def why_no_browser() -> str | None:
    """None when a browser can be driven here, else why not (the skip reason)."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM}: scripts/setup-system.sh (make setup) installs Debian's chromium"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is missing: make setup installs the dev extra"
    return None


def spki_pin(ca_file: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the certificate in ``ca_file``: how
    Chromium names a key it is told to trust."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@contextlib.asynccontextmanager
async def launch(trust: Path | None = None) -> AsyncIterator[Browser]:
    """Chromium, headless, with no network of its own (no updates, no sync, no QUIC);
    ``trust``: a CA file whose certificates it accepts (the module's docstring)."""
    from playwright.async_api import async_playwright

    args = list(ARGS)
    if trust is not None:
        args.append(f"--ignore-certificate-errors-spki-list={spki_pin(trust)}")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class PageErrors:
    """What went wrong inside a page: uncaught exceptions, console errors, and every
    answer of 400 or more (with its URL)."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> Page:
        page.on("pageerror", self._on_error)
        page.on("console", self._on_console)
        page.on("response", self._on_response)
        return page

    def _on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.errors.append(f"{response.status}: {response.url}")

    def _on_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error}")

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")


async def screenshot(page: Page, name: str) -> Path:
    """The page as a PNG in tests/artifacts/ (for people, and the README)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
