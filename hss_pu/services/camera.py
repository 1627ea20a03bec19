"""The cameras as the configuration document describes them (SetConfig / GetConfig).

SetConfig applies what it accepts, and refuses (error 13) what this device cannot apply
now, before anything is saved:

- ``video_encoding.quality``: the encoder restarts at that quality's resolution and a
  bitrate scaled to it; live pushes and recordings carry on (the recording's next segment
  is marked discontinue). A camera whose H.264 is passed through cannot change it: 13.
- ``image`` (flips) and ``osd``: drawn into the picture before encoding (the picamera2
  transform flips in the camera). Passthrough: 13. OSD text the font cannot draw: 13.
- ``on``: false stops capture and encoding (the worker ends), ends the channel's live
  pushes and recordings; true starts the camera again.

GetConfig reports what the encoder really runs (its size, rate, bitrate, GOP), not what
the document was computed to be.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, cast

from hss_pu.errors import UnsupportedConfig
from hss_pu.media import font
from hss_pu.media.channel import MediaChannel
from hss_pu.media.encoder import EncodeSettings, MediaError
from hss_pu.media.picture import OSD_POSITIONS, OsdPos, Picture
from hss_pu.services.channels import ChannelRegistry
from hss_pu.services.interfaces import RecordService
from hss_pu.services.live import LiveService
from hss_pu.wire.devconfig import quality_band
from hss_pu.wire.vd import StopRecordParams

__all__ = ["CameraService", "picture_of", "settings_for"]

log = logging.getLogger("hss_pu.camera")


def picture_of(channel_doc: Mapping[str, Any]) -> Picture:
    """The picture settings of one channel of the configuration document."""
    im, osd = channel_doc["image"], channel_doc["osd"]
    pos = osd["pos"] if osd["pos"] in OSD_POSITIONS else "topleft"
    return Picture(
        horflip=bool(im["horflip"]),
        verflip=bool(im["verflip"]),
        osd_text=str(osd["text"]),
        osd_font=int(osd["font"]),
        osd_pos=cast(OsdPos, pos),
    )


def settings_for(base: EncodeSettings, channel_doc: Mapping[str, Any]) -> EncodeSettings:
    """What the channel's encoder runs with: ``base`` (the config file's camera section,
    or the profile's defaults) unless the document asks for another quality, and the
    document's picture. A passthrough camera keeps its own size whatever the document."""
    ve = channel_doc["video_encoding"]
    s = base
    if not base.passthrough and ve["quality"] != quality_band(base.height):
        s = dataclasses.replace(
            base, width=int(ve["width"]), height=int(ve["height"]), bitrate=ve["bitrate"] * 1000
        )
    return dataclasses.replace(s, picture=picture_of(channel_doc))


def _shape(s: EncodeSettings) -> tuple[int, int, int]:
    return s.width, s.height, s.bitrate


class CameraService:
    """Applies the configuration document to the channels' cameras."""

    def __init__(
        self,
        media: Mapping[int, MediaChannel],
        base: Mapping[int, EncodeSettings],
        channels: ChannelRegistry,
        *,
        live: LiveService | None = None,
        record: RecordService | None = None,
    ) -> None:
        self.media = media
        self.base = base
        self.channels = channels
        self.live = live
        self.record = record

    # -- SetConfig: check, then apply ---------------------------------------------------

    def check(self, new: Mapping[str, Any], old: Mapping[str, Any]) -> None:
        """Raise UnsupportedConfig (13) for what a channel cannot apply; runs before the
        document is saved, so a refused SetConfig changes nothing."""
        for key, ch in new["channels"].items():
            cid = int(key)
            base = self.base.get(cid)
            if base is None:
                continue
            p = f"channels.{cid}"
            was = old["channels"][key]
            text = str(ch["osd"]["text"])
            missing = font.undrawable(text)
            if missing and text != was["osd"]["text"]:
                raise UnsupportedConfig(
                    f"{p}.osd.text: the OSD font cannot draw {missing[:8]!r} (ASCII only)"
                )
            if not base.passthrough:
                continue
            # The camera's own H.264 goes out untouched: nothing in the picture can change.
            allowed = {was["video_encoding"]["quality"]}
            if cid in self.media:
                allowed.add(self._reported(cid, was)["quality"])
            if ch["video_encoding"]["quality"] not in allowed:
                raise UnsupportedConfig(
                    f"{p}.video_encoding.quality: this camera's H.264 is passed through; "
                    "its resolution is set in the camera"
                )
            if not picture_of(ch).identity and picture_of(ch) != picture_of(was):
                raise UnsupportedConfig(
                    f"{p}: this camera's H.264 is passed through; flips and OSD cannot be "
                    "drawn into it (encoder = 'libx264' in the profile re-encodes)"
                )

    async def apply(self, doc: Mapping[str, Any]) -> None:
        """Make every camera run as ``doc`` says (after SetConfig, ResetConfig)."""
        for cid, media in self.media.items():
            ch = doc["channels"].get(str(cid))
            base = self.base.get(cid)
            if ch is None or base is None:
                continue
            settings = settings_for(base, ch)
            try:
                if not ch["on"]:
                    if media.enabled:
                        await self._end_streams(cid)
                        await media.set_enabled(False)
                    await media.reconfigure(settings)  # for when it is switched on
                    continue
                old = media.settings
                await media.reconfigure(settings)
                await media.set_enabled(True)
            except MediaError as exc:  # the camera failed: Keepalive shows the channel as 3
                log.error("camera ch%d: %s", cid, exc)
                continue
            if _shape(old) != _shape(settings):
                log.info(
                    "camera ch%d: now %dx%d at %d kbit/s",
                    cid,
                    settings.width,
                    settings.height,
                    settings.bitrate // 1000,
                )
                if self.live is not None:
                    self.live.retune(cid)

    async def _end_streams(self, cid: int) -> None:
        """The channel goes off: its live pushes and its recording end."""
        if self.live is not None:
            await self.live.end_channel(cid)
        session = self.channels.get(cid).record_session
        if self.record is not None and session is not None:
            await self.record.stop_record(StopRecordParams(channel=cid, session_id=session))
            log.info("camera ch%d: recording %s ended (switched off)", cid, session)

    # -- RebootChannel -----------------------------------------------------------------

    async def restart(self, cid: int) -> None:
        """Restart the channel's capture and encoder; pushes and recordings carry on. A
        channel switched off stays off."""
        media = self.media.get(cid)
        if media is None:
            return
        try:
            await media.restart()
        except MediaError as exc:  # Keepalive shows it: the camera's state is error (3)
            log.error("camera ch%d: restart failed: %s", cid, exc)
            return
        log.info("camera ch%d: restarted", cid)

    # -- GetConfig ---------------------------------------------------------------------

    def report(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """``doc`` with each channel's encoding as its camera really runs it."""
        out = dict(doc)
        chans = {k: dict(v) for k, v in doc["channels"].items()}
        for cid in self.media:
            ch = chans.get(str(cid))
            if ch is None:
                continue
            ch["video_encoding"] = self._reported(cid, ch)
            media = self.media[cid]
            if media.settings.passthrough:  # nothing is drawn into a passed-through stream
                ch["image"] = {**ch["image"], "horflip": False, "verflip": False}
                ch["osd"] = {**ch["osd"], "text": ""}
        out["channels"] = chans
        return out

    def _reported(self, cid: int, ch: Mapping[str, Any]) -> dict[str, Any]:
        media = self.media[cid]
        s = media.settings
        w, h, fps = s.width, s.height, s.fps
        video = media.hub.video
        if (s.passthrough or media.stats.passthrough) and video is not None:
            w, h, fps = video.width, video.height, video.fps or fps
        return {
            **ch["video_encoding"],
            "quality": quality_band(h),
            "width": w,
            "height": h,
            "fps": fps,
            "bitrate": s.bitrate // 1000,
            "gop": s.gop_frames,
        }
