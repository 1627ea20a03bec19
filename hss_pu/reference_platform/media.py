"""Media for PlayVideo: the clips the reference platform serves at ``/media/<name>``.

Files in ``<state_dir>/media`` are served as they are (``hss-pu platform play DEVICE
FILE`` copies a file there). Test tones are made with PyAV the first time they are asked
for: ``tone-<S>s.m4a`` (AAC in MP4), ``tone-<S>s.ogg`` (Opus) and ``tone-<S>s.mp4``
(H.264 and AAC: a clip with a picture), for S from 0.5 to 60 seconds.

A file goes out in 64 KiB chunks as the connection takes them (never whole in memory),
with its Content-Length, or, with ``?chunked=1``, without one (chunked encoding: a
server that does not say how large the body is). Every request is recorded with how
many bytes went out and whether the body was sent to the end, so a test sees that a
device stopped reading at its size limit.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hss_pu.fsutil import atomic_write
from hss_pu.reference_platform.web import Request, Response, json_response

__all__ = ["MEDIA_PREFIX", "MediaRequest", "MediaStore", "make_tone"]

log = logging.getLogger("hss_pu.platform.media")

MEDIA_PREFIX = "/media/"
CHUNK = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TONE = re.compile(r"^tone-(\d{1,2}(?:\.\d)?)s\.(m4a|ogg|mp4)$")
MAX_KEPT = 1000


@dataclass
class MediaRequest:
    name: str
    time: float
    mac: str
    status: int
    size: int = 0  # the file's size (0 when not served)
    sent: int = 0  # bytes handed to the connection
    complete: bool = False  # the whole body went out


def make_tone(path: Path, seconds: float, *, freq: float = 440.0, video: bool = False) -> None:
    """A sine tone (and, ``video``, a changing 160x90 picture at 10 fps) of ``seconds``:
    AAC for .m4a and .mp4, Opus for .ogg. Written atomically."""
    import av
    import numpy as np

    rate = 48000
    codec = "libopus" if path.suffix == ".ogg" else "aac"
    tmp = path.with_name(f".{path.name}.tmp")
    fmt, opts = ("ogg", {}) if path.suffix == ".ogg" else ("mp4", {"movflags": "faststart"})
    with av.open(str(tmp), "w", format=fmt, options=opts) as c:  # MP4: its index first
        a: Any = c.add_stream(codec, rate=rate, layout="mono")
        v: Any = None
        if video:
            v = c.add_stream("libx264", rate=10)
            v.width, v.height, v.pix_fmt = 160, 90, "yuv420p"
        n = int(seconds * rate)
        pcm = (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
        step = rate // 10  # a tenth of a second: one picture, interleaved with its sound
        for k, i in enumerate(range(0, n, step)):
            f = av.AudioFrame.from_ndarray(pcm[i : i + step].reshape(1, -1), format="flt",
                                           layout="mono")  # fmt: skip
            f.sample_rate, f.pts, f.time_base = rate, i, fractions.Fraction(1, rate)
            c.mux(a.encode(f))
            if v is not None:
                img = np.full((90, 160, 3), (k * 25) % 256, np.uint8)
                picture = av.VideoFrame.from_ndarray(img, format="rgb24")
                picture.pts = k
                c.mux(v.encode(picture))
        c.mux(a.encode(None))
        if v is not None:
            c.mux(v.encode(None))
    atomic_write(path, tmp.read_bytes(), 0o644)
    tmp.unlink()


class MediaStore:
    """Serves ``/media/<name>`` from ``directory``, making test tones on demand."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: list[MediaRequest] = []
        self._lock = asyncio.Lock()

    async def path_for(self, name: str) -> Path | None:
        """The file for ``name`` (a tone made now if it is one and absent), or None."""
        if not _NAME.match(name):
            return None
        path = self.directory / name
        if path.is_file():
            return path
        m = _TONE.match(name)
        if m is None or not 0.5 <= float(m[1]) <= 60:
            return None
        async with self._lock:
            if not path.is_file():
                self.directory.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(make_tone, path, float(m[1]), video=m[2] == "mp4")
        return path

    async def handle(self, req: Request) -> Response:
        name = req.path.removeprefix(MEDIA_PREFIX)
        rec = MediaRequest(name, time.time(), req.headers.get("mac-identity", ""), 404)
        self.requests.append(rec)
        del self.requests[:-MAX_KEPT]
        if req.method != "GET":
            rec.status = 405
            return json_response(405, b'{"info": "GET only"}')
        path = await self.path_for(name)
        if path is None:
            return json_response(404, b'{"info": "no such media"}')
        rec.status, rec.size = 200, path.stat().st_size
        headers = {"content-type": "application/octet-stream"}
        if req.query.get("chunked") != "1":
            headers["content-length"] = str(rec.size)
        log.info("media: %s (%d bytes) to %s", name, rec.size, rec.mac or req.peer)
        return Response(200, b"", headers, stream=self._chunks(path, rec))

    async def _chunks(self, path: Path, rec: MediaRequest) -> AsyncIterator[bytes]:
        with path.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                rec.sent += len(chunk)
                yield chunk
        rec.complete = True

    def requests_for(self, name: str) -> list[MediaRequest]:
        return [r for r in self.requests if r.name == name]
