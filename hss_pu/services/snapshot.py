"""Snapshot: a JPEG of the current frame, HTTP PUT to a URL.

The reply is sent only after the upload has succeeded (wire-notes); any failure is a
clear error naming what went wrong, never a silent success. The URL obeys the URL-safety
rules (clients.http.UrlGuard): a refused one is error 12 before a picture is even taken.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from hss_pu.clients.http import Trust, UploadError, UrlGuard, UrlNotAllowed, platform_http, upload
from hss_pu.errors import ChannelOffline, DeviceFailure, InvalidParam
from hss_pu.media.channel import MediaChannel
from hss_pu.services.urlcheck import check_rpc_url
from hss_pu.wire.vd import SnapshotParams

__all__ = ["SnapshotService"]

log = logging.getLogger("hss_pu.snapshot")

UPLOAD_TIMEOUT = 10.0


class SnapshotService:
    def __init__(
        self,
        media: Mapping[int, MediaChannel],
        *,
        mac: str,
        ca_file: str | None,
        guard: UrlGuard,
    ) -> None:
        self.media = media
        self.guard = guard
        # Upload URLs point at cloud storage (public CAs) or at the platform (its CA).
        self._http = platform_http(
            mac, ca_file, trust=Trust.UPLOADS, timeout=UPLOAD_TIMEOUT, guard=guard
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _check_url(self, url: str) -> None:
        await check_rpc_url(self.guard, url, "params.url")

    async def take(self, channel: int) -> bytes:
        media = self.media.get(channel)
        if media is None or not await media.wait_running():
            raise ChannelOffline(f"channel {channel} has no running camera")
        try:
            return await media.snapshot_jpeg()
        except Exception as exc:
            raise DeviceFailure(f"no picture from channel {channel}: {exc}") from None

    async def put(self, url: str, jpeg: bytes) -> None:
        try:
            await upload(self._http, url, jpeg, "image/jpeg")
        except UrlNotAllowed as exc:  # its name answered differently since the check
            raise InvalidParam(f"params.url: {exc}") from None
        except UploadError as exc:
            raise DeviceFailure(f"upload failed: {exc}") from None

    async def snapshot(self, p: SnapshotParams) -> None:
        await self._check_url(p.url)
        jpeg = await self.take(p.channel)
        await self.put(p.url, jpeg)
        log.info("snapshot ch%d: %d bytes uploaded", p.channel, len(jpeg))
