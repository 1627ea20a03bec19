"""A URL from an RPC's parameters, checked before the RPC does anything (wire-notes' URL
safety), so that every RPC answers a refused URL the same way: 12, nothing sent."""

from __future__ import annotations

from hss_pu.clients.http import UploadError, UrlGuard, UrlNotAllowed
from hss_pu.errors import DeviceFailure, InvalidParam

__all__ = ["check_rpc_url"]


async def check_rpc_url(guard: UrlGuard, url: str, param: str) -> None:
    """Raises InvalidParam (12) for a URL the rules refuse, DeviceFailure (1) when its host
    cannot be checked (its name does not resolve); ``param`` names it (``params.url``)."""
    try:
        await guard.check(url)
    except UrlNotAllowed as exc:
        raise InvalidParam(f"{param}: {exc}") from None
    except UploadError as exc:
        raise DeviceFailure(f"{param}: {exc}") from None
