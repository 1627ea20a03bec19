"""SRT for Vm: ``url`` (PushLive URL parsing, pure), ``lib`` (the ctypes binding over
libsrt 1.5, loaded on first use) and ``sender`` (a live-mode caller connection).

The names below are imported from their module on first use, so that importing
``hss_pu.srt.url`` (or this package) does not load the ctypes binding.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hss_pu.srt.lib import (
        LIVE_PAYLOAD_SIZE,
        SRT_EASYNCSND,
        SRT_ECONNLOST,
        SRT_ECONNREJ,
        SRT_EINVSOCK,
        SRT_ENOCONN,
        SRT_ENOSERVER,
        SrtError,
        SrtLib,
        SrtUnavailable,
        load,
    )
    from hss_pu.srt.sender import SrtSender, SrtStats
    from hss_pu.srt.url import (
        DEFAULT_CONNECT_TIMEOUT_MS,
        DEFAULT_LATENCY_MS,
        SrtUrl,
        maxbw_for_bitrate,
        parse_srt_url,
    )

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_MS",
    "DEFAULT_LATENCY_MS",
    "LIVE_PAYLOAD_SIZE",
    "SRT_EASYNCSND",
    "SRT_ECONNLOST",
    "SRT_ECONNREJ",
    "SRT_EINVSOCK",
    "SRT_ENOCONN",
    "SRT_ENOSERVER",
    "SrtError",
    "SrtLib",
    "SrtSender",
    "SrtStats",
    "SrtUnavailable",
    "SrtUrl",
    "load",
    "maxbw_for_bitrate",
    "parse_srt_url",
]

_MODULE = {
    **dict.fromkeys(
        (
            "DEFAULT_CONNECT_TIMEOUT_MS",
            "DEFAULT_LATENCY_MS",
            "SrtUrl",
            "maxbw_for_bitrate",
            "parse_srt_url",
        ),
        "url",
    ),
    **dict.fromkeys(("SrtSender", "SrtStats"), "sender"),
}


def __getattr__(name: str) -> Any:
    if name in ("lib", "sender", "url"):
        return importlib.import_module(f"hss_pu.srt.{name}")
    if name not in __all__:
        raise AttributeError(f"module 'hss_pu.srt' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hss_pu.srt.{_MODULE.get(name, 'lib')}"), name)
