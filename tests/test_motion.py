"""The motion detector (hss_pu.media.motion) on synthetic luma planes: each false alarm
users complain about, built, and a real object that must still be seen."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from hss_pu.media.motion import (
    MotionDetector,
    Transition,
    analysis_step,
    downscale,
    parse_regions,
    thresholds,
)

H, W = 120, 213
RATE = 5.0


def _room(rng: np.random.Generator) -> np.ndarray:
    """A still picture with texture and edges: walls, a floor, furniture, a window."""
    y = np.arange(H)[:, None]
    x = np.arange(W)[None, :]
    p = 150 + 20 * np.sin(x / 9.0) * np.cos(y / 7.0) + rng.normal(0, 6, (H, W))
    p[80:] = 95 + 10 * np.sin(x / 3.0)
    p[40:80, 20:60] = 60
    p[50:90, 140:190] = 200
    p[10:35, 90:130] = 230
    return p.astype(np.float32)


class Scene:
    """Frames of :func:`_room` at 5 fps with sensor noise, a light level, an object."""

    def __init__(self, seed: int = 1, noise: float = 2.5) -> None:
        self.rng = np.random.default_rng(seed)
        self.base = _room(self.rng)
        self.noise = noise
        self.gain = 1.0
        self.transform: Callable[[np.ndarray], np.ndarray] | None = None
        self.t = 1000.0

    def frame(self, obj: tuple[int, int, int, int, float] | None = None) -> np.ndarray:
        p = self.base.copy()
        if obj is not None:
            x, y, w, h, v = obj
            p[y : y + h, x : x + w] = v
        p = p * self.gain
        if self.transform is not None:
            p = self.transform(p)
        p = p + self.rng.normal(0, self.noise, p.shape)
        return np.clip(p, 0, 255).astype(np.uint8)

    def run(
        self, det: MotionDetector, n: int, obj: Callable[[int], object] | None = None
    ) -> Iterator[Transition]:
        for i in range(n):
            self.t += 1 / RATE
            box = obj(i) if obj is not None else None
            tr = det.feed(self.frame(box), self.t)  # type: ignore[arg-type]
            if tr is not None:
                yield tr


def _settled(scene: Scene, **kw: object) -> MotionDetector:
    det = MotionDetector(rate=RATE, **kw)  # type: ignore[arg-type]
    assert list(scene.run(det, 15)) == []
    return det


def _walker(x0: int, speed: int, y: int = 60, size: int = 18) -> Callable[[int], object]:
    return lambda i: (max(0, min(W - size, x0 + speed * i)), y, size, 2 * size, 40.0)


def test_an_object_crossing_starts_then_ends_motion_with_capture_times() -> None:
    scene = Scene()
    det = _settled(scene)
    t0 = scene.t
    walk = _walker(0, 12)
    got = list(scene.run(det, 20, walk))  # 4 s crossing (it stops at the right edge)
    assert got and got[0].active
    # Started at the first frame of the run, within the persistence time.
    assert t0 < got[0].at <= t0 + 1 / RATE + 1e-6
    later = list(scene.run(det, 10))  # it has gone: quiet
    transitions = got + later
    assert [t.active for t in transitions] == [True, False]
    assert transitions[1].at > got[0].at
    assert not det.active


def test_a_static_noisy_scene_for_60_s_is_quiet() -> None:
    for seed, noise in ((1, 2.5), (2, 6.0)):  # day, and a noisy night picture
        scene = Scene(seed, noise)
        det = MotionDetector(rate=RATE, sensitivity=100)  # the most sensitive
        assert list(scene.run(det, int(60 * RATE))) == []
        assert det.area == 0.0


@pytest.mark.parametrize("gain", [0.3, 0.6, 1.6, 3.0])
def test_a_sudden_global_brightness_change_is_no_motion(gain: float) -> None:
    scene = Scene()
    det = _settled(scene, sensitivity=100)
    scene.gain = gain  # lights on / off, exposure jump
    assert list(scene.run(det, 30)) == []
    # ... and it is not blind afterwards: an object is seen at once.
    got = list(scene.run(det, 10, _walker(10, 12)))
    assert [t.active for t in got] == [True]


def test_ir_cut_switching_is_no_motion_and_costs_no_blind_time() -> None:
    scene = Scene()
    det = _settled(scene, sensitivity=100)
    # A night picture under IR: materials reflect differently (a non-linear, non-global
    # change), darker and noisier.
    scene.transform = lambda p: 40 + 0.5 * p + 30 * np.sin(p / 25.0)
    scene.noise = 5.0
    assert list(scene.run(det, 30)) == []
    assert det.light_changes >= 1
    got = list(scene.run(det, 8, _walker(10, 12)))
    assert got and got[0].active
    # Started within ~0.6 s of the object appearing.
    assert got[0].at - (scene.t - 8 / RATE) <= 0.6


def test_flickering_ir_leds_are_no_motion() -> None:
    scene = Scene()
    det = _settled(scene, sensitivity=100)
    transitions = []
    for i in range(100):
        scene.gain = 1.0 + 0.25 * ((i * 7) % 3 - 1)  # irregular brightness flicker
        transitions += list(scene.run(det, 1))
    assert transitions == []


def test_slow_clouds_are_no_motion() -> None:
    scene = Scene()
    det = _settled(scene, sensitivity=100)
    transitions = []
    for i in range(150):  # 30 s of the light dimming and coming back
        scene.gain = 1.0 - 0.5 * np.sin(np.pi * i / 150)
        transitions += list(scene.run(det, 1))
    assert transitions == []


def test_a_region_excluding_the_object_sees_nothing_one_including_it_does() -> None:
    walk = _walker(0, 6, y=70, size=16)  # on the lower half, left to centre
    scene = Scene()
    det = _settled(scene, regions=parse_regions([[0.0, 0.0, 1.0, 0.45]]))
    assert list(scene.run(det, 25, walk)) == []
    scene = Scene()
    det = _settled(scene, regions=parse_regions([[0.0, 0.5, 0.5, 0.5]]))
    assert [t.active for t in scene.run(det, 25, walk)][:1] == [True]


def test_a_visitor_filling_the_picture_stays_motion() -> None:
    """A door-bell camera: someone walks up until they fill the picture."""
    scene = Scene()
    det = _settled(scene)

    def approach(i: int) -> object:
        w = min(W, 20 + 25 * i)
        h = min(H, 40 + 15 * i)
        return ((W - w) // 2, H - h, w, h, 30.0)

    got = list(scene.run(det, 5, approach))  # the last one fills 60 % of the picture
    assert [t.active for t in got] == [True]
    assert list(scene.run(det, 3, approach)) == []  # all of it: still motion
    assert det.active


def test_sensitivity_decides_a_small_object() -> None:
    def sees(sensitivity: int) -> bool:
        scene = Scene()
        det = _settled(scene, sensitivity=sensitivity)
        small = _walker(30, 4, y=60, size=5)  # 5x10 px: 0.2 % of the picture
        return any(t.active for t in scene.run(det, 15, small))

    assert sees(100)
    assert not sees(0)


def test_configure_applies_at_once_and_keeps_the_background() -> None:
    scene = Scene()
    det = _settled(scene, regions=parse_regions([[0.0, 0.0, 0.2, 0.2]]))
    walk = _walker(60, 4)
    assert list(scene.run(det, 6, walk)) == []
    det.configure(50, ())
    got = list(scene.run(det, 4, lambda i: walk(i + 6)))
    assert [t.active for t in got] == [True]  # no re-learning time
    assert det.stop(scene.t) == Transition(False, scene.t)


def test_thresholds_follow_the_documented_table() -> None:
    assert thresholds(0).floor == 40 and thresholds(100).floor == 10
    assert thresholds(50).min_area == pytest.approx(0.003)
    assert thresholds(-5) == thresholds(0) and thresholds(500) == thresholds(100)
    prev = thresholds(0)
    for s in range(1, 101):  # more sensitive at every step
        th = thresholds(s)
        assert th.floor <= prev.floor and th.min_area < prev.min_area
        prev = th


def test_regions_are_validated() -> None:
    assert parse_regions([]) == ()
    assert parse_regions([[0, 0, 1, 1]]) == ((0.0, 0.0, 1.0, 1.0),)
    for bad in (
        "x",
        [[0, 0, 1]],
        [[0, 0, 0, 1]],
        [[0.5, 0, 0.6, 1]],
        [[-0.1, 0, 0.5, 0.5]],
        [[0, 0, float("nan"), 1]],
        [[True, 0, 1, 1]],
        [[0, 0, 0.1, 0.1]] * 17,
    ):
        with pytest.raises(ValueError):
            parse_regions(bad)


def test_downscale_is_a_strided_copy() -> None:
    assert analysis_step(720) == 6 and analysis_step(240) == 2 and analysis_step(96) == 1
    big = np.arange(720 * 1280, dtype=np.uint32).astype(np.uint8).reshape(720, 1280)
    small = downscale(big, 6)
    assert small.shape == (120, 214) and small.flags.c_contiguous
    assert small[1, 1] == big[6, 6]
    lores = big[:96, :128]
    assert not np.shares_memory(downscale(lores, 1), lores)  # the owner reuses its buffer


def test_a_clock_set_back_does_not_keep_motion_on() -> None:
    scene = Scene()
    det = _settled(scene)
    assert [t.active for t in scene.run(det, 5, _walker(0, 12))] == [True]
    assert list(scene.run(det, 2)) == []  # gone: ending
    scene.t -= 3600  # Settime: an hour back, while motion is ending
    assert [t.active for t in scene.run(det, 10)] == [False]
