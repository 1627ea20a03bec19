"""A fake of the picamera2 (and libcamera) modules: the surface hss_pu.media.sources uses,
for tests of the Pi camera backend on machines without one (the one fake in the suite
for hardware that is not here)."""

from __future__ import annotations

import sys
import threading
import time
import types
from typing import Any, ClassVar

import numpy as np
import pytest

__all__ = ["FakeCamera", "install"]


class FakeCamera:
    """``picamera2.Picamera2``: records what it is told (``config``, ``encoder``,
    ``calls``, ``pre_callback``); as a hardware encoder it feeds the ``h264`` buffers
    from a thread at ``fps``, as a YUV source it hands out the ``yuv`` frames in turn.
    A configured ``lores`` stream hands out the ``lores`` frames (YUV420, as the ISP
    makes them), to ``make_array("lores")`` and, while recording, to ``post_callback``."""

    h264: ClassVar[list[tuple[bytes, bool]]] = []
    yuv: ClassVar[list[np.ndarray]] = []
    lores: ClassVar[list[np.ndarray]] = []
    lux: ClassVar[float | None] = None  # libcamera's light estimate in the metadata
    instances: ClassVar[list[FakeCamera]] = []
    fps = 60

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.encoder: Any = None
        self.pre_callback: Any = None
        self.post_callback: Any = None
        self.calls: list[str] = []
        # Camera Module 3's full sensor, and the controls set while running.
        self.camera_properties: dict[str, Any] = {
            "PixelArraySize": (4608, 2592),
            "ScalerCropMaximum": (0, 0, 4608, 2592),
        }
        self.controls: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._n = 0
        FakeCamera.instances.append(self)

    def create_video_configuration(self, **kw: Any) -> dict[str, Any]:
        return kw

    refuse_lores = False  # configure() raises for a lores stream, as some ISPs might

    def configure(self, config: dict[str, Any]) -> None:
        if self.refuse_lores and "lores" in config:
            raise RuntimeError("lores stream not supported")
        self.config = config

    def start_recording(self, encoder: Any, output: Any) -> None:
        self.calls.append("start_recording")
        self.encoder = encoder
        assert isinstance(output, sys.modules["picamera2.outputs"].Output)
        output.start()

        def feed() -> None:
            for i, (data, key) in enumerate(self.h264):
                if self._stop.wait(1 / self.fps):
                    return
                if self.post_callback is not None and self.lores:
                    lores = self.lores[i % len(self.lores)]
                    self.post_callback(self._request(lores, i, lores))
                output.outputframe(data, key, round(i * 1e6 / 30))

        self._thread = threading.Thread(target=feed, daemon=True)
        self._thread.start()

    def stop_recording(self) -> None:
        self.calls.append("stop_recording")
        self._stop.set()

    def start(self) -> None:
        self.calls.append("start")

    def set_controls(self, controls: dict[str, Any]) -> None:
        self.controls.append(dict(controls))

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")

    def capture_request(self) -> Any:
        time.sleep(1 / self.fps)
        array = self.yuv[self._n % len(self.yuv)]
        lores = self.lores[self._n % len(self.lores)] if self.lores else None
        req = self._request(array, self._n, lores)
        self._n += 1
        return req

    def _request(self, main: np.ndarray, n: int, lores: np.ndarray | None = None) -> Any:
        ts = 10**12 + n * 33_333_333
        arrays = {"main": main, "lores": main if lores is None else lores}
        meta: dict[str, Any] = {"SensorTimestamp": ts}
        if self.lux is not None:
            meta["Lux"] = self.lux
        return types.SimpleNamespace(
            array=arrays["main"],
            arrays=arrays,
            make_array=lambda name: arrays[name],
            get_metadata=lambda: meta,
            release=lambda: None,
        )


class Output:
    """``picamera2.outputs.Output``: the source subclasses it."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False

    def start(self) -> None:
        self.recording = True

    def outputframe(self, frame: bytes, keyframe: bool = True, timestamp: Any = None) -> None:
        raise AssertionError("the subclass must override outputframe")


class H264Encoder:
    def __init__(self, bitrate: Any = None, repeat: bool = True, iperiod: Any = None) -> None:
        self.bitrate, self.repeat, self.iperiod = bitrate, repeat, iperiod


class MappedArray:
    """``picamera2.MappedArray`` over a request that carries its ``array``."""

    def __init__(self, request: Any, stream: str) -> None:
        arrays = getattr(request, "arrays", None)
        self.array = arrays[stream] if arrays is not None else request.array

    def __enter__(self) -> MappedArray:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Transform:
    """``libcamera.Transform``."""

    def __init__(self, hflip: int = 0, vflip: int = 0) -> None:
        self.hflip, self.vflip = hflip, vflip


def install(monkeypatch: pytest.MonkeyPatch) -> type[FakeCamera]:
    """Put the fake modules in ``sys.modules`` (undone by ``monkeypatch``), the camera's
    class-wide state emptied."""
    mods = {
        "picamera2": types.ModuleType("picamera2"),
        "picamera2.encoders": types.ModuleType("picamera2.encoders"),
        "picamera2.outputs": types.ModuleType("picamera2.outputs"),
        "libcamera": types.ModuleType("libcamera"),
    }
    mods["picamera2"].Picamera2 = FakeCamera  # type: ignore[attr-defined]
    mods["picamera2"].MappedArray = MappedArray  # type: ignore[attr-defined]
    mods["picamera2.encoders"].H264Encoder = H264Encoder  # type: ignore[attr-defined]
    mods["picamera2.outputs"].Output = Output  # type: ignore[attr-defined]
    mods["libcamera"].Transform = Transform  # type: ignore[attr-defined]
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    FakeCamera.instances = []
    FakeCamera.h264 = []
    FakeCamera.yuv = []
    FakeCamera.lores = []
    FakeCamera.refuse_lores = False
    FakeCamera.lux = None
    return FakeCamera
