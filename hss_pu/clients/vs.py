"""Vs client: ask the scheduling server which Vd server to use (clause 9.3.1).

Nothing of httpx escapes: every failure, a malformed ``schedule_url`` included (httpx's
``InvalidURL`` is no ``HTTPError``), is a :class:`VsError`, one failed attempt; the
reply is read up to :data:`MAX_REPLY` bytes, not whole.
"""

from __future__ import annotations

import time

import httpx

from hss_pu.clients.http import HttpClient
from hss_pu.errors import LinkError
from hss_pu.wire.urls import redact_url, scrub_url
from hss_pu.wire.vs import ServerAddr, VsFormatError, parse_server_addr, server_addr_path

__all__ = ["MAX_REPLY", "TIMEOUT", "VsError", "fetch_server_addr"]

# A getServerAddr reply is a few hundred bytes; more is not read into memory.
MAX_REPLY = 64 * 1024
TIMEOUT = 10.0  # s, for the client Vs is asked with (clients.http.platform_http)


class VsError(LinkError):
    """Scheduling failed; the message is safe to log."""


async def fetch_server_addr(
    client: HttpClient, schedule_url: str, mac: str
) -> tuple[ServerAddr, float]:
    """GET /Vs/getServerAddr; returns the reply and the host time it arrived. ``client``
    comes from ``platform_http(..., trust=Trust.PLATFORM)``."""
    url = schedule_url.rstrip("/") + server_addr_path(mac)
    try:
        async with client.stream("GET", url) as resp:
            body = await _read_bounded(resp)
    except VsError:
        raise
    except Exception as exc:  # httpx and anyio raise far more than HTTPError
        # Seen: InvalidURL, UnicodeError from IDNA, an ExceptionGroup wrapping the
        # OverflowError of port 99999. Whatever it is, this attempt failed.
        raise VsError(_failed(schedule_url, exc)) from None
    received = time.time()
    if resp.status_code != 200:
        raise VsError(f"Vs answered {resp.status_code}: {body[:200]!r}")
    try:
        return parse_server_addr(body), received
    except VsFormatError as exc:
        raise VsError(str(exc)) from None


async def _read_bounded(resp: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > MAX_REPLY:
            raise VsError(f"Vs reply too large (over {MAX_REPLY} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _failed(schedule_url: str, exc: BaseException) -> str:
    detail = scrub_url(str(exc), schedule_url)
    return f"Vs request to {redact_url(schedule_url)} failed: {type(exc).__name__}: {detail}"[:500]
