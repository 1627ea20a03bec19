"""PlayVideo / CtrlVideo / QueryVideoStatus: a file from the platform played on a speaker.

PlayVideo and CtrlVideo are events: nothing is answered, so everything that goes wrong
(a URL the URL-safety rules refuse, a failed or too large download, a file that does not
decode, a speaker that fails) is a log line, and QueryVideoStatus says ``stopped``.
A refused URL changes nothing (what was playing goes on). Otherwise a PlayVideo replaces
what the channel was playing: the old playback is stopped and its threads gone before
the new download starts, so there is never more than one per channel.

The file is downloaded whole first (through the guarded client, at most the profile's
``audio.play_max_mb``, streamed to a private temporary file under storage.dir that is
removed when the playback ends), then played by :class:`hss_pu.media.player.Player`.
QueryVideoStatus says ``playing`` from the PlayVideo on (downloading included): the
platform asked for it to play and it has not stopped; a pause during the download is
kept and the file starts paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hss_pu.bridge import LoopBridge
from hss_pu.clients.http import (
    DownloadError,
    Trust,
    UploadError,
    UrlGuard,
    UrlNotAllowed,
    download,
    platform_http,
)
from hss_pu.errors import NotSupported
from hss_pu.media.player import OutputSpec, Player, PlayResult
from hss_pu.wire.urls import redact_url
from hss_pu.wire.vd import CtrlVideoParams, PlayVideoParams, QueryVideoStatusResp

__all__ = ["DOWNLOAD_TIMEOUT", "PlaybackService"]

log = logging.getLogger("hss_pu.playback")

DOWNLOAD_TIMEOUT = 120.0  # the whole download, however slowly the server sends
READ_TIMEOUT = 10.0
STOP_WAIT = 5.0  # how long a replaced or stopped playback's threads get to finish
CLOSE_WAIT = 1.0  # the same when the daemon stops (it has 5 s for everything)
PREFIX = "play-"

State = Literal["stopped", "pausing", "playing"]


@dataclass
class _Session:
    """One PlayVideo on one channel, from the download to the end."""

    channel: int
    url: str
    state: State = "playing"
    player: Player | None = None
    task: asyncio.Task[None] | None = None
    ended: asyncio.Future[PlayResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def where(self) -> str:
        return redact_url(self.url)


class PlaybackService:
    """The channels with a speaker (``outputs``); the others answer NotSupported."""

    def __init__(
        self,
        outputs: Mapping[int, OutputSpec],
        max_bytes: Mapping[int, int],
        *,
        work_dir: Path,
        mac: str,
        ca_file: str | None,
        guard: UrlGuard,
    ) -> None:
        self.outputs = dict(outputs)
        self.max_bytes = dict(max_bytes)
        self.work_dir = work_dir
        self.guard = guard
        self._http = platform_http(
            mac, ca_file, trust=Trust.UPLOADS, timeout=READ_TIMEOUT, guard=guard
        )
        self._sessions: dict[int, _Session] = {}
        self._last_url: dict[int, str] = {}
        self._bridge: LoopBridge | None = None
        self.finished: list[tuple[int, PlayResult]] = []  # the last few, for status

    async def start(self) -> None:
        """The work directory, emptied of what a previous run left (a crash mid-play)."""
        self._bridge = LoopBridge()
        await asyncio.to_thread(self._prepare_dir)

    def _prepare_dir(self) -> None:
        self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for p in self.work_dir.glob(f"{PREFIX}*"):
            with contextlib.suppress(OSError):
                p.unlink()

    async def close(self) -> None:
        for ch in list(self._sessions):
            await self._end(ch, CLOSE_WAIT)
        await self._http.aclose()

    # --- the PlaybackService protocol ------------------------------------------------------

    def _output(self, channel: int) -> OutputSpec:
        out = self.outputs.get(channel)
        if out is None:
            raise NotSupported(f"channel {channel} has no audio output")
        return out

    async def play(self, p: PlayVideoParams) -> None:
        out = self._output(p.channel)
        where = redact_url(p.url)
        try:
            await self.guard.check(p.url)
        except UrlNotAllowed as exc:
            log.warning("playback ch%d: PlayVideo refused: %s", p.channel, exc)
            return
        except UploadError as exc:
            log.warning("playback ch%d: PlayVideo not started: %s", p.channel, exc)
            return
        await self._end(p.channel)
        s = _Session(p.channel, p.url)
        self._sessions[p.channel] = s
        self._last_url[p.channel] = p.url
        log.info("playback ch%d: PlayVideo %s to the %s", p.channel, where, out.describe())
        s.task = asyncio.create_task(self._run(s, out), name=f"playback-ch{p.channel}")

    async def control(self, p: CtrlVideoParams) -> None:
        self._output(p.channel)
        s = self._sessions.get(p.channel)
        if s is None:
            log.info("playback ch%d: CtrlVideo %s ignored: nothing is playing", p.channel, p.op)
            return
        if p.op == "stop":
            log.info("playback ch%d: stopped by CtrlVideo", p.channel)
            await self._end(p.channel)
        elif p.op == "pause" and s.state == "playing":
            s.state = "pausing"
            if s.player is not None:
                s.player.pause()
            log.info("playback ch%d: paused", p.channel)
        elif p.op == "resume" and s.state == "pausing":
            s.state = "playing"
            if s.player is not None:
                s.player.resume()
            log.info("playback ch%d: resumed", p.channel)

    def status(self, channel: int) -> QueryVideoStatusResp:
        self._output(channel)
        s = self._sessions.get(channel)
        if s is None:
            return QueryVideoStatusResp(status="stopped", url=self._last_url.get(channel, ""))
        return QueryVideoStatusResp(status=s.state, url=s.url)

    def report(self) -> dict[int, dict[str, Any]]:
        """``hss-pu status``: per channel with a speaker (URLs without their secrets)."""
        out: dict[int, dict[str, Any]] = {}
        for ch, spec in self.outputs.items():
            s = self._sessions.get(ch)
            entry: dict[str, Any] = {
                "status": s.state if s else "stopped",
                "url": redact_url(s.url if s else self._last_url.get(ch, "")),
                "output": spec.describe(),
                "position": round(s.player.position, 2) if s and s.player else 0.0,
            }
            last = next((r for c, r in reversed(self.finished) if c == ch), None)
            if last is not None:
                entry["last"] = {"reason": last.reason, "error": last.error,
                                 "played": round(last.played, 2)}  # fmt: skip
            out[ch] = entry
        return out

    # --- one playback ----------------------------------------------------------------------

    async def _end(self, channel: int, wait: float = STOP_WAIT) -> None:
        """Stop the channel's playback (if any) and wait for its threads and its file."""
        s = self._sessions.get(channel)
        if s is None or s.task is None:
            return
        if s.player is not None:
            s.player.stop()
        else:
            s.task.cancel()  # still downloading
        _, pending = await asyncio.wait({s.task}, timeout=wait)
        if pending:
            log.error("playback ch%d: did not stop within %.0f s", channel, wait)
            s.task.cancel()
        if self._sessions.get(channel) is s:
            del self._sessions[channel]

    async def _run(self, s: _Session, out: OutputSpec) -> None:
        path: Path | None = None
        try:
            path = await self._download(s)
            if path is None:
                return
            assert self._bridge is not None
            bridge = self._bridge

            def on_end(r: PlayResult) -> None:  # the output thread
                bridge.set_result(s.ended, r)

            s.player = Player(path, out, on_end, name=f"play-ch{s.channel}")
            s.player.start(paused=s.state == "pausing")
            r = await s.ended
            self.finished = [*self.finished[-7:], (s.channel, r)]
            short = r.expected is not None and r.played < r.expected - 0.5
            if r.reason == "error":
                log.warning(
                    "playback ch%d: %s: %s (%.1f s played)", s.channel, s.where, r.error, r.played
                )
            elif r.reason == "end" and short:
                log.warning(
                    "playback ch%d: %s ended early: %.1f of the %.1f s it declares (truncated?)",
                    s.channel, s.where, r.played, r.expected,
                )  # fmt: skip
            else:
                log.info(
                    "playback ch%d: %s %s after %.1f s (%d audio, %d video frames)",
                    s.channel, s.where, "ended" if r.reason == "end" else "stopped",
                    r.played, r.audio_frames, r.video_frames,
                )  # fmt: skip
        except Exception:
            log.exception("playback ch%d: failed", s.channel)
        finally:
            if s.player is not None:
                s.player.stop()  # a no-op once it has ended; else its threads end now
            if path is not None:
                await asyncio.to_thread(_unlink, path)
            s.state = "stopped"
            if self._sessions.get(s.channel) is s:
                del self._sessions[s.channel]

    async def _download(self, s: _Session) -> Path | None:
        """The file, or None (logged) when it could not be had."""
        cap = self.max_bytes.get(s.channel, 16 << 20)
        fd, name = await asyncio.to_thread(
            tempfile.mkstemp, prefix=PREFIX, suffix=".media", dir=self.work_dir
        )
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                size = await download(self._http, s.url, f, max_bytes=cap, timeout=DOWNLOAD_TIMEOUT)
        except (DownloadError, UploadError) as exc:
            await asyncio.to_thread(_unlink, path)
            log.warning("playback ch%d: download failed: %s", s.channel, exc)
            return None
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_unlink, path))
            raise
        log.info("playback ch%d: %s downloaded (%d bytes)", s.channel, s.where, size)
        return path


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
