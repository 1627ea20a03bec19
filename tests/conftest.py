from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform

BASE_CONFIG = """\
[device]
id = "PU-0001"
{password_line}
mac = "02:00:00:00:00:01"
profile = "{profile}"

[platform]
schedule_url = "{schedule_url}"
{ca_line}
backoff_scale = 0.01

[camera]
source = "emulated"
width = {width}
height = 720
fps = 30

[storage]
dir = "{storage}"
"""

WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a config file (mode 0600 unless told otherwise) and return its path."""

    def write(
        *,
        password_line: str = 'password = "s3cret-Pa55word"',
        profile: str = "emulated",
        schedule_url: str = "https://127.0.0.1:8443",
        ca_line: str = "",
        width: str = "1280",
        mode: int = 0o600,
        extra: str = "",
        name: str = "config.toml",
    ) -> Path:
        path = tmp_path / name
        path.write_text(
            BASE_CONFIG.format(
                password_line=password_line,
                profile=profile,
                schedule_url=schedule_url,
                ca_line=ca_line,
                width=width,
                storage=tmp_path / "state",
            )
            + extra
        )
        os.chmod(path, mode)
        assert stat.S_IMODE(path.stat().st_mode) == mode
        return path

    return write


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[ReferencePlatform]:
    """A reference platform over TLS on loopback whose clock runs one hour ahead."""
    p = ReferencePlatform(PlatformOptions(state_dir=tmp_path / "platform", clock_offset=3600))
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def on_raspberry_pi() -> bool:
    try:
        return "Raspberry Pi" in Path("/proc/device-tree/model").read_text(errors="replace")
    except OSError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Hardware-in-the-loop tests run only on a real Pi; elsewhere they skip, saying why."""
    if on_raspberry_pi():
        return
    skip = pytest.mark.skip(reason="hil: needs a Raspberry Pi (no /proc/device-tree/model)")
    for item in items:
        if "hil" in item.keywords:
            item.add_marker(skip)
