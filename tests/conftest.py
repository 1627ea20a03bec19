"""The fixtures every test may use; each name means one thing across the whole suite.

- ``platform``: the reference platform over TLS on loopback, knowing the rig's device
  (tests/support/rig.py: DEVICE, PASSWORD); options from ``@pytest.mark.platform(...)``.
- ``make_platform``: more of those (or one with other options), closed at the end.
- ``rig``: ``platform`` plus the daemon running in-process, online, with the rig's config
  (a small emulated camera); options from ``@pytest.mark.rig(...)``.
- ``make_rig``: more daemons (a restart on the same storage, other options) on ``platform``.
- ``spawn``: ``hss-pu ARGS`` as a process (support.rig.Proc), killed at the end if still up.
- ``config_file``: the rig's config for a platform as a file, for ``hss-pu run --config``.
- ``write_config``: a config file from a raw text template, for tests of the config parser.
- ``fake_picamera2``: the picamera2 modules faked (no Pi camera here); ``pki``: a private
  CA and server certificate for tests that serve HTTPS themselves.
- ``browser``: Debian's chromium, headless, driven by Playwright (support/browser.py);
  the test skips, saying why, when there is none.

A mark's options apply to every test under it; the closest one wins (a test's own mark
over its module's ``pytestmark``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hss_pu.reference_platform.pki import Pki, ensure_pki
from hss_pu.reference_platform.server import ReferencePlatform

from .support.browser import launch, why_no_browser
from .support.fake_picamera2 import FakeCamera
from .support.fake_picamera2 import install as install_fake_picamera2
from .support.rig import (
    DEVICE,
    MAC,
    PASSWORD,
    ConfigFile,
    MakePlatform,
    MakeRig,
    Proc,
    Rig,
    Spawn,
    daemon_config,
    start_daemon,
    start_platform,
    start_process,
    write_config_file,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser


def marked(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """The keyword options of every ``name`` mark on the test, the closest winning."""
    options: dict[str, Any] = {}
    for mark in reversed(list(request.node.iter_markers(name))):
        options.update(mark.kwargs)
    return options


@pytest.fixture
async def make_platform(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakePlatform]:
    """Start reference platforms (``platform``'s defaults, then the keyword options)."""
    made: list[ReferencePlatform] = []

    async def make(**options: Any) -> ReferencePlatform:
        opts = {**marked(request, "platform"), **options}
        state_dir = opts.pop("state_dir", tmp_path / f"platform{len(made) or ''}")
        p = await start_platform(state_dir, **opts)
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in reversed(made):
            await p.close()


@pytest.fixture
async def platform(make_platform: MakePlatform) -> ReferencePlatform:
    """The reference platform over TLS on loopback that knows the rig's device."""
    return await make_platform()


@pytest.fixture
async def make_rig(
    request: pytest.FixtureRequest, platform: ReferencePlatform, tmp_path: Path
) -> AsyncIterator[MakeRig]:
    """Run daemons on ``platform`` (storage tmp_path/"pu" unless ``storage=``), each
    stopped at the end; keyword options as support.rig.start_daemon."""
    rigs: list[Rig] = []

    async def make(**options: Any) -> Rig:
        opts = {**marked(request, "rig"), **options}
        storage = opts.pop("storage", tmp_path / "pu")
        r = await start_daemon(platform, storage, **opts)
        rigs.append(r)
        return r

    try:
        yield make
    finally:
        for r in rigs:
            await r.stop()


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    """``platform`` and the daemon in-process, online."""
    return await make_rig()


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start ``hss-pu`` processes (support.rig.start_process)."""
    procs: list[Proc] = []

    async def start(*args: str, **kw: Any) -> Proc:
        p = await start_process(*args, **kw)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            if p.returncode is None:
                await p.kill()
            await p.reap_leftovers(wait=0)


@pytest.fixture
def config_file(tmp_path: Path) -> ConfigFile:
    """Write the rig's config (support.rig.daemon_config, storage tmp_path/"state") for a
    platform or a bare schedule URL; returns the path."""

    def write(
        platform: ReferencePlatform | str,
        *,
        mode: int = 0o600,
        extra: str = "",
        name: str = "config.toml",
        **config: Any,
    ) -> Path:
        doc = daemon_config(platform, tmp_path / "state", **config)
        return write_config_file(doc, tmp_path / name, mode=mode, extra=extra)

    return write


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium for this test (support/browser.py), closed at the end."""
    why = why_no_browser()
    if why is not None:
        pytest.skip(why)
    async with launch() as b:
        yield b


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[FakeCamera]:
    """The picamera2 and libcamera modules faked for this test (support/fake_picamera2)."""
    return install_fake_picamera2(monkeypatch)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA and a server certificate for 127.0.0.1 and localhost (the reference
    platform's), for tests that serve HTTPS themselves."""
    return ensure_pki(tmp_path_factory.mktemp("pki"))


BASE_CONFIG = """\
[device]
id = "{device}"
{password_line}
mac = "{mac}"
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
    """Write a config file line by line (mode 0600 unless told otherwise), any line
    replaceable by raw text the typed config could not express, and return its path."""

    def write(
        *,
        password_line: str = f'password = "{PASSWORD}"',
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
                device=DEVICE,
                mac=MAC,
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
