"""Per-frame cost of the emulated camera path: source draw, x264 encode, TS mux.

Run: .venv/bin/python bench/encode.py [--size 1280x720] [--fps 30] [--seconds 10]
         [--bitrate 2000000] [--preset ultrafast] [--realtime]
Without --realtime the frames are produced back to back (the cost without the waits);
with it, paced as the daemon does. Prints one line per stage, then the budget share.
Each packet is also decoded and its drawn timecode read back: "glass" is capture to
decoded picture on this machine (no network), the floor for glass-to-glass latency.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import av

from hss_pu.media.encoder import EncodeSettings, VideoEncoder
from hss_pu.media.sources import EmulatedSource, RawVideo, read_timecode
from hss_pu.media.tsmux import TsMuxer


def line(name: str, ms: list[float]) -> str:
    ms_sorted = sorted(ms)
    p95 = ms_sorted[int(0.95 * (len(ms_sorted) - 1))]
    return (
        f"{name:<7} mean {statistics.fmean(ms):6.3f} ms  p50 {statistics.median(ms):6.3f}"
        f"  p95 {p95:6.3f}  max {ms_sorted[-1]:6.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bitrate", type=int, default=2_000_000)
    ap.add_argument("--preset", default="ultrafast")
    ap.add_argument("--realtime", action="store_true")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    s = EncodeSettings(w, h, args.fps, args.bitrate, args.fps, "libx264", preset=args.preset)
    src = EmulatedSource(s, time.time, threading.Event(), label="CH0", realtime=args.realtime)
    src.open()
    enc = VideoEncoder(s)
    out = bytearray()
    mux: TsMuxer | None = None
    draw: list[float] = []
    encode: list[float] = []
    muxing: list[float] = []
    glass: list[float] = []
    unread = 0
    decoder = av.CodecContext.create("h264", "r")
    frames = round(args.seconds * args.fps)
    t_start = time.perf_counter()
    n = 0
    while n < frames:
        t0 = time.perf_counter()
        item = src.read()
        if not isinstance(item, RawVideo):
            continue
        t1 = time.perf_counter()
        pkts = enc.encode(item.frame, item.pts, item.capture_time)
        t2 = time.perf_counter()
        for p in pkts:
            if mux is None:
                assert enc.info is not None
                mux = TsMuxer(enc.info, None, out.extend)
            mux.mux(p)
        t3 = time.perf_counter()
        for p in pkts:
            for f in decoder.decode(av.Packet(p.data)):
                code = read_timecode(f)
                if code is None:
                    unread += 1
                else:
                    glass.append((time.time() - code) * 1000)
        if args.realtime:  # the wait for the frame's due time is not drawing
            draw.append(src.draw_seconds * 1000 - sum(draw))
        else:
            draw.append((t1 - t0) * 1000)
        encode.append((t2 - t1) * 1000)
        muxing.append((t3 - t2) * 1000)
        n += 1
    wall = time.perf_counter() - t_start
    if mux is not None:
        mux.close()
    budget = 1000 / args.fps
    total = [a + b + c for a, b, c in zip(draw, encode, muxing, strict=True)]
    print(f"{w}x{h}@{args.fps} {args.preset} {args.bitrate} bit/s, {n} frames in {wall:.2f} s")
    for name, ms in (("source", draw), ("encode", encode), ("mux", muxing), ("total", total)):
        print(line(name, ms))
    if glass:
        print(line("glass", glass) + f"  (timecode unreadable in {unread} frames)")
    print(
        f"budget  {statistics.fmean(total) / budget:.1%} of {budget:.1f} ms per frame; "
        f"{len(out) * 8 / (n / args.fps) / 1000:.0f} kbit/s out; dropped {src.dropped}"
    )


if __name__ == "__main__":
    main()
