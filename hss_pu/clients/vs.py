"""Vs client: ask the scheduling server which Vd server to use (clause 9.3.1)."""

from __future__ import annotations

import ssl
import time

import httpx

from hss_pu.errors import LinkError
from hss_pu.wire.vs import ServerAddr, VsFormatError, parse_server_addr, server_addr_path

__all__ = ["VsError", "fetch_server_addr", "make_http_client", "tls_verify"]


class VsError(LinkError):
    """Scheduling failed; the message is safe to log."""


def tls_verify(ca_file: str | None) -> ssl.SSLContext:
    """The trust anchor: the configured CA file, else the system store."""
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return ssl.create_default_context()


def make_http_client(mac: str, ca_file: str | None, timeout: float = 10.0) -> httpx.AsyncClient:
    """One keep-alive client per platform host; every request carries Mac-Identity (9.2)."""
    return httpx.AsyncClient(
        verify=tls_verify(ca_file),
        headers={"Mac-Identity": mac},
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


async def fetch_server_addr(
    client: httpx.AsyncClient, schedule_url: str, mac: str
) -> tuple[ServerAddr, float]:
    """GET /Vs/getServerAddr; returns the reply and the host time it arrived."""
    url = schedule_url.rstrip("/") + server_addr_path(mac)
    try:
        resp = await client.get(url)
    except httpx.HTTPError as exc:
        raise VsError(f"Vs request to {schedule_url} failed: {type(exc).__name__}: {exc}") from None
    received = time.time()
    if resp.status_code != 200:
        raise VsError(f"Vs answered {resp.status_code}: {resp.text[:200]!r}")
    try:
        return parse_server_addr(resp.content), received
    except VsFormatError as exc:
        raise VsError(str(exc)) from None
