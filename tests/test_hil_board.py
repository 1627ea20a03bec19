"""Hardware-in-the-loop checks of the board itself; skipped off a Pi."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.hil


def test_gpio_chip_and_pin_factory() -> None:
    from gpiozero import Device

    assert any(Path("/dev").glob("gpiochip*"))
    Device.ensure_pin_factory()
    assert Device.pin_factory is not None
    assert Device.pin_factory.board_info.model  # gpiozero recognised the board


def test_picamera2_importable_with_camera() -> None:
    picamera2 = pytest.importorskip("picamera2")
    cams = picamera2.Picamera2.global_camera_info()
    assert cams, "no camera detected by libcamera"
