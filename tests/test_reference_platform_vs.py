"""The reference platform's Vs over real TLS, and our Vs client against it."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import pytest

from hss_pu.clients.http import Trust, platform_http
from hss_pu.clients.vs import VsError, fetch_server_addr
from hss_pu.reference_platform.pki import ensure_pki
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.wire.vs import vd_base_url

from .support.rig import DEVICE, MAC, MakePlatform, start_daemon

pytestmark = pytest.mark.platform(clock_offset=3600)  # Vs tells the platform's time


async def test_schedule_over_verified_tls(platform: ReferencePlatform) -> None:
    assert platform.schedule_url.startswith("https://127.0.0.1:")
    async with platform_http(
        MAC, str(platform.ca_file), trust=Trust.PLATFORM, timeout=10.0
    ) as http:
        addr, received = await fetch_server_addr(http, platform.schedule_url, MAC)
    assert vd_base_url(addr, allow_insecure=False) == f"wss://127.0.0.1:{platform.vd_port}/Vd"
    assert addr.platform_time is not None
    assert addr.platform_time - received == pytest.approx(3600, abs=2)
    req = platform.vs_requests[-1]
    assert req.headers["mac-identity"] == MAC
    assert req.query == {"macid": MAC}


async def test_untrusted_ca_is_refused(platform: ReferencePlatform) -> None:
    # The system store does not know the platform's private CA: TLS must fail.
    async with platform_http(MAC, None, trust=Trust.PLATFORM, timeout=10.0) as http:
        with pytest.raises(VsError, match="ConnectError"):
            await fetch_server_addr(http, platform.schedule_url, MAC)


async def test_mac_identity_required(platform: ReferencePlatform) -> None:
    ctx = ssl.create_default_context(cafile=str(platform.ca_file))
    async with httpx.AsyncClient(verify=ctx) as http:
        r = await http.get(f"{platform.schedule_url}/Vs/getServerAddr?macid={MAC}")
        assert r.status_code == 400
        assert "Mac-Identity" in r.json()["info"]
        r = await http.get(f"{platform.schedule_url}/Vs/nothing")
        assert r.status_code == 404
    async with platform_http(
        MAC, str(platform.ca_file), trust=Trust.PLATFORM, timeout=10.0
    ) as http:
        with pytest.raises(VsError, match="400"):
            await fetch_server_addr(http, platform.schedule_url, "not-a-mac")


async def test_keep_alive_connection_reused(platform: ReferencePlatform) -> None:
    async with platform_http(
        MAC, str(platform.ca_file), trust=Trust.PLATFORM, timeout=10.0
    ) as http:
        for _ in range(3):
            await fetch_server_addr(http, platform.schedule_url, MAC)
    peers = {r.peer for r in platform.vs_requests}
    assert len(platform.vs_requests) == 3 and len(peers) == 1


def test_pki_reused_until_near_expiry(tmp_path: Path) -> None:
    a = ensure_pki(tmp_path)
    first = a.ca_file.read_bytes()
    time.sleep(0.01)
    b = ensure_pki(tmp_path)
    assert b.ca_file.read_bytes() == first
    assert (a.key_file.stat().st_mode & 0o077) == 0
    a.cert_file.write_text("garbage")
    c = ensure_pki(tmp_path)
    assert c.ca_file.read_bytes() != first  # regenerated when unusable


async def test_the_certificate_names_the_address_the_platform_serves_on(
    make_platform: MakePlatform, tmp_path: Path
) -> None:
    """``platform serve --host ADDRESS`` on a home server: a camera elsewhere (here, on
    another loopback address) verifies the platform by that address, and so does a
    browser opening the console there."""
    state = tmp_path / "home"
    p = await make_platform(host="127.0.0.2", state_dir=state, console=True, clock_offset=0.0)
    assert p.schedule_url.startswith("https://127.0.0.2:") and p.ca_file is not None
    rig = await start_daemon(p, tmp_path / "pu")
    try:
        assert p.online(DEVICE)
    finally:
        await rig.stop()
    ca = ssl.create_default_context(cafile=str(p.ca_file))
    async with httpx.AsyncClient(verify=ca, trust_env=False) as http:
        r = await http.get(f"{p.schedule_url}/console/login")
        assert r.status_code == 200
    first = p.ca_file.read_bytes()
    await p.close()
    # The same address again: the same CA (the cameras keep their copy of it).
    again = await make_platform(host="127.0.0.2", state_dir=state, clock_offset=0.0)
    assert again.ca_file is not None and again.ca_file.read_bytes() == first
    await again.close()
    assert ensure_pki(state / "pki", hosts=["cam-hub.home.arpa"]).ca_file.read_bytes() != first
