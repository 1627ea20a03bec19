"""What motion and person detection cost, and how fast a motion alarm is raised.

Run: .venv/bin/python bench/motion.py [--seconds 20] [--trials 10]

Prints, on pictures of the emulated camera's static room with the walker in it:
- the capture thread's cost per frame (``MotionAnalyser.frame`` / ``.luma``: most frames
  return at once, ~5 a second are copied down), and the detector's cost per analysed
  picture on its worker, at 1280x720@30 (libx264 path) and at the Pi's lores sizes
  (320x240, 128x96; picamera2 path); CPU % of one core = both, per second of video;
- the same detector run inline on the capture thread, against the hand-off to the worker;
- a passthrough key frame's decode (the analysed rate is one per GOP there);
- the person detector per call (only while motion is on, at most 2 a second);
- latency: ``scene.set_motion(True)`` to the AlarmSink call (a real MediaChannel in real
  time, 640x360@30), p50 / p99 over ``--trials``; the persistence (two analysed frames at
  5 a second) is most of it, by design;
- and, from ``bench/alarms.py``, a sensor edge to AlarmNotify received by the platform
  (the daemon and the reference platform in this process), p50 / p99.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from av.video.frame import VideoFrame

from hss_pu.bridge import LoopBridge
from hss_pu.media.analysis import MotionAnalyser, parse_alarm_config
from hss_pu.media.channel import MediaChannel
from hss_pu.media.encoder import EncodeSettings, VideoEncoder
from hss_pu.media.motion import MotionDetector, analysis_step, downscale
from hss_pu.media.people import PeopleDetector, people_available
from hss_pu.media.sources import EmulatedSource, Scene

ON = parse_alarm_config({"motion": {"on": True, "sensitivity": 50}})


class NullSink:
    """Records each call with the time it came (``changed`` is set, on the loop)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, float, float]] = []
        self.changed: asyncio.Event | None = None

    def state(self, channel: int, kind: str, active: bool, at: float) -> None:
        self.calls.append((kind, active, at, time.time()))
        if self.changed is not None:
            self.changed.set()


def frames(w: int, h: int, n: int, motion: bool = True) -> tuple[list[VideoFrame], Scene]:
    scene = Scene("static")
    scene.set_motion(motion)
    src = EmulatedSource(
        EncodeSettings(w, h, 30, 1_000_000, 30, "libx264"),
        time.time,
        threading.Event(),
        realtime=False,
        scene=scene,
    )
    src.open()
    return [src.draw(k, 0.0) for k in range(n)], scene


def per_call_us(fn: Callable[[], object], n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def bench_detector(
    label: str,
    planes: list[np.ndarray],
    fps: int,
    video: list[VideoFrame] | None = None,
    rate: float = 5.0,
) -> None:
    """Capture side (per frame: ``video`` frames through ``frame()``, else the planes
    through ``luma()``) and worker side (per analysed picture)."""
    step = analysis_step(planes[0].shape[0])
    small = [downscale(p, step) for p in planes]
    det = MotionDetector(rate=rate)
    for i, p in enumerate(small[:20]):
        det.feed(p, i / rate)
    k = [0]

    def feed() -> None:
        det.feed(small[k[0] % len(small)], k[0] / rate)
        k[0] += 1

    detect_us = per_call_us(feed, 2000)
    down_us = per_call_us(lambda: downscale(planes[0], step), 2000)
    # The capture side as the analyser runs it: fps calls a second, rate of them copy.
    sink = NullSink()
    a = MotionAnalyser(0, sink, time.time, config=ON, rate=rate, bridge=_NoLoop())
    t = [0.0]

    def capture() -> None:
        i = round(t[0] * fps)
        if video is not None:
            a.frame(video[i % len(video)], t[0])
        else:
            a.luma(planes[i % len(planes)], t[0])
        t[0] += 1 / fps

    capture_us = per_call_us(capture, fps * 20)
    a.wait_idle()
    asyncio.run(a.close())
    cpu = (capture_us * fps + detect_us * rate) / 1e6 * 100
    h, w = planes[0].shape
    print(
        f"{label:<22} {w}x{h}@{fps} -> {small[0].shape[1]}x{small[0].shape[0]}: capture side "
        f"{capture_us:5.1f} µs/frame (downscale {down_us:4.1f} µs), detector "
        f"{detect_us:5.0f} µs/analysed frame, {rate:.0f}/s: {cpu:.2f} % of one core"
    )


class _NoLoop(LoopBridge):
    """No event loop in the benchmark: the reports run in place."""

    def __init__(self) -> None:
        self.dropped = 0

    def call(self, fn: Callable[..., object], *args: object) -> bool:
        fn(*args)
        return True


def bench_inline_vs_worker(planes: list[np.ndarray]) -> None:
    step = analysis_step(planes[0].shape[0])
    det = MotionDetector(rate=5)
    for i in range(20):
        det.feed(downscale(planes[i % len(planes)], step), i / 5)
    n = [0]

    def inline() -> None:
        det.feed(downscale(planes[n[0] % len(planes)], step), n[0] / 5)
        n[0] += 1

    a = MotionAnalyser(0, NullSink(), time.time, config=ON, bridge=_NoLoop())

    def handoff() -> None:
        a.luma(planes[n[0] % len(planes)], n[0] * 10.0)  # every call is analysed
        n[0] += 1
        a.wait_idle()

    def post_only() -> None:
        a.luma(planes[n[0] % len(planes)], n[0] * 10.0)
        n[0] += 1

    inline_us = per_call_us(inline, 500)
    post_us = per_call_us(post_only, 500)
    a.wait_idle()
    roundtrip_us = per_call_us(handoff, 500)
    asyncio.run(a.close())
    print(
        f"analysed frame on the capture thread: inline {inline_us:.0f} µs; handed to the "
        f"worker {post_us:.0f} µs (hand-off and wake-up round trip {roundtrip_us:.0f} µs)"
    )


def bench_keyframe_decode(w: int, h: int) -> None:
    fr, _ = frames(w, h, 2)
    enc = VideoEncoder(EncodeSettings(w, h, 30, 2_000_000, 30, "libx264"))
    pkts = [p for i, f in enumerate(fr) for p in enc.encode(f, i * 3000, 0.0)] + enc.flush()
    key = next(p for p in pkts if p.keyframe)
    a = MotionAnalyser(0, NullSink(), time.time, bridge=_NoLoop())
    us = per_call_us(lambda: a._decode(key.data), 50)
    asyncio.run(a.close())
    print(f"passthrough key frame {w}x{h}: decode {us / 1000:.1f} ms (one per GOP)")


def bench_people() -> None:
    if not people_available():
        print("person detector: unavailable (pip install 'hss-pu[people]')")
        return
    det = PeopleDetector()
    for w, h in ((426, 240), (320, 240)):
        fr, _ = frames(w * 3, h * 3, 60)
        pics = [f.reformat(width=w, height=h, format="gray").to_ndarray() for f in fr[10::10]]

        def call(pics: list[np.ndarray] = pics, k: list[int] = [0]) -> None:  # noqa: B006
            det.detect(pics[k[0] % len(pics)])
            k[0] += 1

        ms = per_call_us(call, 20) / 1000
        print(
            f"person detector {w}x{h}: {ms:.1f} ms per call; at 2 calls/s while motion is on: "
            f"{ms * 2 / 10:.1f} % of one core"
        )


async def bench_latency(trials: int) -> None:
    """set_motion(True) -> the sink's call, through a real channel in real time."""
    scene = Scene("static")
    s = EncodeSettings(640, 360, 30, 1_000_000, 30, "libx264")
    ch = MediaChannel(0, "emulated", s, time.time, scene=scene)
    sink = NullSink()
    changed = sink.changed = asyncio.Event()
    a = MotionAnalyser(0, sink, time.time, config=ON)
    ch.attach_analysis(a)
    await ch.start()
    lat: list[float] = []
    try:
        await asyncio.sleep(2.0)
        for _ in range(trials):
            changed.clear()
            t0 = time.time()
            scene.set_motion(True)
            await asyncio.wait_for(changed.wait(), 5)
            lat.append((sink.calls[-1][3] - t0) * 1000)
            changed.clear()
            scene.set_motion(False)
            await asyncio.wait_for(changed.wait(), 5)
            await asyncio.sleep(0.5)
    finally:
        await ch.stop()
        await a.close()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(
        f"motion alarm latency (scene edge -> AlarmSink.state, 640x360@30, {trials} trials): "
        f"p50 {statistics.median(lat):.0f} ms, p99 {p99:.0f} ms, max {lat[-1]:.0f} ms "
        f"(dropped {a.stats.dropped})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--trials", type=int, default=10)
    args = ap.parse_args()
    fr720, _ = frames(1280, 720, 60)
    luma720 = [f.to_ndarray(format="gray") for f in fr720]
    bench_detector("libx264 path (frame)", luma720, 30, video=fr720)
    for w, h in ((320, 240), (128, 96)):
        fr, _ = frames(w, h, 60)
        bench_detector("picamera2 lores", [f.to_ndarray(format="gray") for f in fr], 30)
    bench_inline_vs_worker(luma720)
    bench_keyframe_decode(1280, 720)
    bench_keyframe_decode(1920, 1080)
    bench_people()
    asyncio.run(bench_latency(args.trials))
    # The sensors' side of the alarm latency: a PIR edge to AlarmNotify at the platform.
    spec = importlib.util.spec_from_file_location("alarms", Path(__file__).with_name("alarms.py"))
    assert spec is not None and spec.loader is not None
    alarms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alarms)
    asyncio.run(alarms.run(20))


if __name__ == "__main__":
    main()
