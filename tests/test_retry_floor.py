"""No retry loop spins without a delay, whatever backoff_scale or a source does."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from hss_pu.media.channel import MediaChannel
from hss_pu.media.encoder import EncodeSettings
from hss_pu.media.sources import DemuxSource
from hss_pu.services.live import LivePush
from hss_pu.srt import SRT_ENOSERVER, SrtError, SrtSender, parse_srt_url

SETTINGS = EncodeSettings(320, 180, 15, 300_000, 15, "libx264")


async def test_live_reconnects_never_spin_even_with_a_tiny_backoff_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    async def refused(cls: type[SrtSender], /, url: Any, **kw: Any) -> SrtSender:
        nonlocal calls
        calls += 1
        raise SrtError(SRT_ENOSERVER, "cannot resolve the host", op="connect")

    monkeypatch.setattr(SrtSender, "connect", classmethod(refused))
    media = MediaChannel(0, "emulated", SETTINGS, time.time)  # never started: no packets
    push = LivePush(
        media,
        parse_srt_url("srt://receiver.invalid:9000"),
        "s",
        backoff_scale=1e-9,  # 0 is refused by the config; the floor must hold anyway
        rng=random.Random(1),
    )
    task = asyncio.create_task(push._run())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 2 <= calls <= 12, calls  # at most one try per 50 ms


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_camera_retried_without_backoff_still_waits() -> None:
    url = f"rtsp://127.0.0.1:{_closed_port()}/stream"  # refused at once, every time
    ch = MediaChannel(0, url, SETTINGS, time.time, retry_backoff=(0.0, 0.0))
    await ch.start()
    await asyncio.sleep(0.5)
    await ch.stop()
    assert ch.stats.last_error is not None and "refused" in ch.stats.last_error
    assert 2 <= ch.stats.retries <= 12, ch.stats.retries


async def test_a_file_without_a_picture_is_an_error_not_a_busy_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that demuxes but never decodes (damaged): looping it produces nothing and
    costs no pacing wait, so without a guard the worker would reopen it flat out."""
    bad = tmp_path / "bad.mkv"
    with av.open(str(bad), "w") as out:
        st = out.add_stream("h264", rate=15)
        st.width, st.height = 320, 180
        for k in range(3):
            p = av.Packet(b"\x00\x00\x00\x01\x09\xf0")  # an access unit delimiter alone
            p.stream, p.pts, p.dts, p.time_base = st, k, k, Fraction(1, 15)
            out.mux(p)
    opens = 0
    real_open = DemuxSource._open_container

    def counting(self: DemuxSource) -> Any:
        nonlocal opens
        opens += 1
        return real_open(self)

    monkeypatch.setattr(DemuxSource, "_open_container", counting)
    s = EncodeSettings(160, 90, 15, 300_000, 15, "libx264")  # decoded for re-encoding
    ch = MediaChannel(0, f"file:{bad}", s, time.time, retry_backoff=(0.2, 0.2))
    await ch.start()
    await asyncio.sleep(0.5)
    await ch.stop()
    assert opens <= 6, opens
    assert ch.stats.last_error is not None and "no picture" in ch.stats.last_error


async def test_a_live_push_task_that_fails_is_logged_at_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the push loop is reported when it happens, not swallowed at StopLive."""

    class Sender:
        async def close(self) -> None:
            pass

    async def connected(self: LivePush) -> Any:
        return Sender()

    async def broken(self: LivePush) -> None:
        raise RuntimeError("push loop bug")

    monkeypatch.setattr(LivePush, "_connect", connected)
    monkeypatch.setattr(LivePush, "_run", broken)
    media = MediaChannel(0, "emulated", SETTINGS, time.time)
    push = LivePush(
        media, parse_srt_url("srt://127.0.0.1:9000"), "s", backoff_scale=1.0, rng=random.Random(1)
    )
    await push.start()
    for _ in range(50):
        if "task live-s failed" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert "task live-s failed" in caplog.text and "push loop bug" in caplog.text
    await push.stop()
