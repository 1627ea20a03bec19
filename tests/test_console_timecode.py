"""The console's time-code reader (static/timecode.js) in a real browser: what
bench/console.py measures the browser's glass-to-glass delay with, so it must read a
known frame right and refuse what is not a code (or the bench would report garbage).
"""

from __future__ import annotations

import base64
import io
import threading
from typing import TYPE_CHECKING

import av
import numpy as np
import pytest

from hss_pu.media.encoder import EncodeSettings
from hss_pu.media.sources import EmulatedSource, read_timecode
from hss_pu.reference_platform.console.frontend import STATIC_DIR

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.browser

T0 = 1_767_225_600.123  # 2026-01-01, with milliseconds

PUT_RGB = """([w, h, data]) => {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const raw = Uint8Array.from(atob(data), (ch) => ch.charCodeAt(0));
  const img = new ImageData(w, h);
  for (let i = 0, j = 0; i < raw.length; i += 3, j += 4) {
    img.data[j] = raw[i]; img.data[j + 1] = raw[i + 1]; img.data[j + 2] = raw[i + 2];
    img.data[j + 3] = 255;
  }
  c.getContext("2d").putImageData(img, 0, 0);
  return hssReadTimecode(c);
}"""


def drawn(width: int, height: int, t: float) -> np.ndarray:
    """The emulated camera's frame at capture time ``t``, as RGB."""
    s = EncodeSettings(width, height, 10, 300_000, 10, "libx264")
    src = EmulatedSource(s, lambda: t, threading.Event(), realtime=False)
    src.open()
    return src.draw(3, t).to_ndarray(format="rgb24")


async def _page(browser: Browser) -> Page:
    page = await browser.new_page()
    await page.set_content("<!doctype html><html><body></body></html>")
    await page.add_script_tag(path=str(STATIC_DIR / "timecode.js"))
    return page


async def _read(page: Page, rgb: np.ndarray) -> float | None:
    h, w = rgb.shape[:2]
    data = base64.b64encode(np.ascontiguousarray(rgb).tobytes()).decode()
    value = await page.evaluate(PUT_RGB, [w, h, data])
    assert value is None or isinstance(value, float | int)
    return value


async def test_the_reader_reads_a_drawn_frame_and_refuses_other_pictures(
    browser: Browser,
) -> None:
    page = await _page(browser)
    for w, h in ((1280, 720), (640, 360), (320, 180)):
        rgb = drawn(w, h, T0)
        assert read_timecode(rgb) == T0  # the Python reader agrees on the same pixels
        assert await _read(page, rgb) == T0, (w, h)
    rgb = drawn(320, 180, T0)
    flipped = rgb.copy()
    flipped[4:8, 6:8] = 255 - flipped[4:8, 6:8]  # one code block: the CRC catches it
    assert await _read(page, flipped) is None
    assert await _read(page, np.full((180, 320, 3), 16, np.uint8)) is None
    noise = np.random.default_rng(1).integers(0, 255, (180, 320, 3), dtype=np.uint8)
    assert await _read(page, noise) is None
    assert await _read(page, rgb[:7]) is None  # too small to hold a code


def clip(times: list[float], width: int = 640, height: int = 360) -> bytes:
    """An H.264 MP4 of the emulated camera's frames captured at ``times`` (10 fps)."""
    s = EncodeSettings(width, height, 10, 300_000, 10, "libx264")
    src = EmulatedSource(s, lambda: times[0], threading.Event(), realtime=False)
    src.open()
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as c:
        st = c.add_stream("libx264", rate=10)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.bit_rate = 500_000
        for k, t in enumerate(times):
            for pkt in st.encode(src.draw(k, t)):
                c.mux(pkt)
        for pkt in st.encode(None):
            c.mux(pkt)
    return out.getvalue()


PLAY = """async ([data, seconds]) => {
  const v = document.createElement("video");
  v.muted = true;
  document.body.appendChild(v);
  const raw = Uint8Array.from(atob(data), (ch) => ch.charCodeAt(0));
  v.src = URL.createObjectURL(new Blob([raw], { type: "video/mp4" }));
  const samples = hssSampleTimecodes(v, seconds);
  await v.play();
  return await samples;
}"""


async def test_the_sampler_reads_the_frames_a_video_element_presents(browser: Browser) -> None:
    """Decoded H.264 in a <video> (limited-range YUV shown as RGB): every time code read
    is one the clip holds, and most frames are read at all."""
    times = [T0 + 0.1 * k + 0.001 * k for k in range(20)]  # 2 s, each code distinct
    page = await _page(browser)
    data = base64.b64encode(clip(times)).decode()
    samples = await page.evaluate(PLAY, [data, 2.5])
    read = [tc for tc, _shown in samples if tc is not None]
    assert set(read) <= {round(t, 3) for t in times}, read
    assert len(set(read)) >= 15, samples
    assert len(read) >= 0.9 * len(samples)
    shown = [s for _tc, s in samples]
    assert shown == sorted(shown)
