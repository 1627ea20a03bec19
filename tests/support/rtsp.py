"""IP cameras for tests and benches: tests/support/rtsp_server.py (gst-rtsp-server under
Debian's /usr/bin/python3) serving a clip made once with ffmpeg.

:func:`rtsp_unavailable` says why the server cannot run here (a test skips with it);
:class:`RtspServer` starts it and gives each mount's URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def rtsp_unavailable() -> str | None:
    """None when the RTSP server can run, else why not (scripts/setup-system.sh installs
    its Debian packages)."""
    probe = (
        "import gi; gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "assert all(Gst.ElementFactory.find(e) for e in "
        "('matroskademux', 'h264parse', 'rtph264pay'))"
    )
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON}: {exc}"
    if r.returncode != 0:
        return (
            "gst-rtsp-server unavailable (make setup installs it): "
            + (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        )
    return None


def make_clip(path: Path, size: tuple[int, int], seconds: int, fps: int = 25) -> Path:
    """A pre-encoded H.264 clip (1 s GOP, no B-frames, like an IP camera) in Matroska."""
    if path.exists():
        return path
    w, h = size
    bitrate = max(200_000, w * h * 2)  # about 4 Mbit/s at 1080p
    tmp = path.with_suffix(".tmp.mkv")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size={w}x{h}:rate={fps}", "-t", str(seconds), "-c:v", "libx264",
         "-preset", "ultrafast", "-tune", "zerolatency", "-b:v", str(bitrate),
         "-maxrate", str(bitrate), "-bufsize", str(bitrate // 2), "-g", str(fps), "-bf", "0",
         "-pix_fmt", "yuv420p", str(tmp)],
        check=True, timeout=600,
    )  # fmt: skip
    tmp.rename(path)
    return path


@dataclass
class RtspServer:
    clip: Path
    mounts: int = 1
    user: str = ""
    password: str = ""
    port: int = 0
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)

    def url(self, i: int) -> str:
        cred = f"{self.user}:{self.password}@" if self.user else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}/cam{i}"

    async def start(self, timeout: float = 15.0) -> None:
        args = ["--file", str(self.clip), "--mounts", str(self.mounts)]
        if self.user:
            args += ["--user", self.user, "--password", self.password]
        self.proc = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, str(SERVER), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            line = b""
        if not line.startswith(b"ready "):
            await self.stop()
            raise RuntimeError(f"RTSP server did not start: {line!r}")
        self.port = int(line.split()[1])

    async def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.returncode is not None:
            return
        p.terminate()
        try:
            await asyncio.wait_for(p.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid
