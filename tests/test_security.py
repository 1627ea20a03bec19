"""Issue 13, item 5: the security promises, each checked against real peers.

Where each line of item 5 is shown (the rest of this file fills the gaps):

- secrets out of logs, uploads and status: here (debug level, live push with an SRT
  passphrase, hb_token, a log upload); also tests/test_logsetup.py (the redactor),
  tests/test_log_upload.py (uploaded range at info), tests/test_url_safety.py and
  tests/test_http_factory.py (errors name URLs without their secrets).
- MITM certificate refused: here, on Vs, Vd, Vr, snapshot, log upload and firmware
  download, against a second reference platform with its own CA on the same host name.
- world-readable secrets refused: tests/test_config.py (config with a password, password
  file), tests/test_daemon_process.py (``hss-pu run`` exits on it); here, world-only
  read bits (o+r without g+r).
- no listening network socket, control socket 0600: here, the daemon as a process.
- URL-safety refusals: tests/test_url_safety.py, tests/test_firmware_download.py (a URL
  the guard refuses is not fetched), tests/test_log_upload.py (refused URL -> 12).
- ``systemd-analyze security`` <= 2.0: tests/test_systemd_unit.py::test_security_exposure.
- fuzz: tests/test_fuzz_wire.py (100,000 Vd frames, 10,000 Vs and Vr replies, into the
  parsers), tests/test_vd_fuzz.py (10,500 frames through a live session, kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from hss_pu.clients.firmware import fetch_bundle
from hss_pu.clients.http import DownloadError, Trust, UrlGuard, platform_http
from hss_pu.config import load_config
from hss_pu.errors import ConfigError
from hss_pu.logsetup import REDACTED, OneLineFormatter
from hss_pu.reference_platform.server import ReferencePlatform

from .conftest import WriteConfig
from .support.rig import (
    DEVICE,
    MAC,
    PASSWORD,
    ConfigFile,
    MakePlatform,
    MakeRig,
    Spawn,
    start_daemon,
    until,
)  # fmt: skip

MitM = ReferencePlatform

HB_TOKEN = "hbTok-7Qz93LeakCheck"
SRT_PASS = "srtPass-K2v8LeakCheck"
WRONG_SRT_PASS = "srtWrong-M5x1LeakCheck"
SECRETS = (PASSWORD, HB_TOKEN, SRT_PASS, WRONG_SRT_PASS)


def _leaks(text: str | bytes, where: str) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [f"{s!r} in {where}" for s in SECRETS if s.encode() in data]


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.mark.platform(hb_interval=30, hb_token=HB_TOKEN)
async def test_secrets_stay_out_of_debug_logs_uploads_and_status(
    platform: ReferencePlatform, make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon at debug level through a login, GetServerInfo (hb_token), a live push
    with an SRT passphrase, one with a wrong passphrase, status and a log upload."""
    for name in ("", "hss_pu", "websockets", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    rig = await make_rig(log_level="debug")
    started = platform.now()
    reply = await rig.call("Settime", {"datetime": _utc(started), "tz": 0, "offset": 0})
    assert reply.err is None
    link = rig.daemon.link
    assert await until(lambda: link is not None and link.hb_token == HB_TOKEN, 10)
    assert link is not None
    # Defence in depth, for whatever a later change logs: a struct's repr of the
    # GetServerInfo reply, and the bare token (registered as a secret once received).
    logging.getLogger("hss_pu.test").debug("server info %r; token %s", link.server_info, HB_TOKEN)
    rx, reply = await platform.push_live(DEVICE, 0, "sec-live", passphrase=SRT_PASS)
    assert reply.err is None, reply
    await rx.wait_bytes(20_000, timeout=10)
    status = await rig.status()
    assert status["live"], status  # the push is in it, with libsrt's counters
    assert (await rig.call("StopLive", {"stream_id": "sec-live"})).err is None
    # A push whose passphrase the receiver does not share: the failure path logs too.
    bad = await platform.open_live("sec-bad", passphrase=SRT_PASS)
    url = bad.url.replace(SRT_PASS, WRONG_SRT_PASS)
    assert WRONG_SRT_PASS in url
    reply = await rig.call(
        "PushLive", {"channel": 0, "url": url, "stream_id": "sec-bad", "max_bitrate": 0}
    )
    if reply.err is None:  # refused later, by the handshake: wait until that is logged
        assert await until(lambda: "sec-bad" in caplog.text, 10)
        await rig.call("StopLive", {"stream_id": "sec-bad"})
    status_after = await rig.status()
    # The log range so far, uploaded to the platform as LogUploadAsync does it.
    assert rig.daemon.logfiles is not None and rig.daemon.logfiles.flush_pending()
    reply = await rig.call(
        "LogUploadAsync",
        {"trans_id": "sec-1", "start": _utc(started - 5), "end": _utc(platform.now() + 5),
         "url": platform.log_upload_url("sec.log")},
    )  # fmt: skip
    assert reply.err is None, reply
    upload = await platform.wait_log_upload("sec.log")

    # Not vacuous: debug logging did see the frames that carried each secret.
    formatter = OneLineFormatter(journald=False)
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "GetServerInfo" in text and "PushLive" in text and "login_passwd" in text
    assert REDACTED in text
    assert b"PushLive" in upload.body and len(upload.body) > 2_000

    leaks = _leaks(text, "the daemon's log lines (as its stderr formats them)")
    for p in (rig.storage / "logs").iterdir():
        leaks += _leaks(p.read_bytes(), f"log file {p.name}")
    leaks += _leaks(upload.body, "the uploaded log")
    leaks += _leaks(json.dumps(status), "status (pushing)")
    leaks += _leaks(json.dumps(status_after), "status")
    assert leaks == []


# --- MITM: a certificate from a CA the device does not trust, on the same host name ---


@pytest.fixture
async def mitm(platform: ReferencePlatform, make_platform: MakePlatform, tmp_path: Path) -> MitM:
    """A second reference platform on the same host (127.0.0.1), knowing the same device
    and password, with its own CA: what an attacker on the path would present."""
    other = await make_platform(state_dir=tmp_path / "mitm")
    assert platform.ca_file is not None and other.ca_file is not None
    assert other.ca_file.read_bytes() != platform.ca_file.read_bytes()
    assert other.options.host == platform.options.host
    return other


def _refused_tls(caplog: pytest.LogCaptureFixture) -> bool:
    return "CERTIFICATE_VERIFY_FAILED" in caplog.text or "does not verify" in caplog.text


async def test_mitm_on_vs_is_refused(
    platform: ReferencePlatform, mitm: MitM, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The device trusts the platform's CA and reaches the schedule URL... served by the
    MITM: no Vs request gets through, it keeps trying, and never logs in anywhere."""
    assert platform.ca_file is not None and mitm.ca_file is not None
    caplog.set_level(logging.INFO, logger="hss_pu")
    # The rig's config for the MITM's URL, with the CA file the device really trusts.
    mitm.ca_file.write_bytes(platform.ca_file.read_bytes())
    rig = await start_daemon(mitm, tmp_path / "pu", online=False)
    try:
        assert await until(lambda: caplog.text.count("CERTIFICATE_VERIFY_FAILED") >= 3, 10)
        assert mitm.vs_requests == [] and mitm.logins == [] and platform.logins == []
        assert not rig.task.done()
    finally:
        await rig.stop()


async def test_mitm_on_vd_is_refused_before_the_password_is_sent(
    platform: ReferencePlatform, mitm: MitM, make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    """Vs points the device at the MITM's Vd port: the TLS handshake fails, so the login
    URL (with the password) is never sent; the device goes back to Vs and logs in."""
    caplog.set_level(logging.INFO, logger="hss_pu")
    platform.vs_overrides.append({"Secure_PassPort": mitm.vd_port})
    rig = await make_rig(online=False, backoff_scale=0.001)  # 15 failures before Vs again
    await rig.wait_online(timeout=20)
    assert _refused_tls(caplog), caplog.text[-2000:]
    assert mitm.logins == [] and len(platform.vs_requests) >= 2
    assert platform.logins and platform.logins[-1].accepted


async def test_mitm_on_snapshot_log_upload_and_vr_is_refused(
    mitm: MitM, make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    """URLs on the MITM in Snapshot, LogUploadAsync and StartRecord's cbk_url: nothing
    reaches it (no request at all: the handshake fails first), and each is a failure."""
    caplog.set_level(logging.INFO, logger="hss_pu")
    rig = await make_rig()
    r = await rig.call("Snapshot", {"channel": 0, "url": mitm.upload_url("mitm.jpg")})
    assert r.err is not None and "verif" in r.err.msg, r
    r = await rig.call(
        "LogUploadAsync",
        {"trans_id": "mitm-1", "start": "2020-01-01T00:00:00", "end": "2030-01-01T00:00:00",
         "url": mitm.log_upload_url("mitm.log")},
    )  # fmt: skip
    assert r.err is None, r  # accepted; the upload then fails
    done = await rig.platform.wait_record(
        lambda rec: rec.name == "LogDone" and rec.params.get("trans_id") == "mitm-1", timeout=15
    )
    assert done.params["status"] == "fail", done.params
    r = await rig.start_record("mitm-rec", seg_duration=1, cbk_url=mitm.vr_cbk_url(0))
    assert r.err is None, r
    # The first segment's create meets the MITM's certificate: refused, not retried.
    assert await until(lambda: "Vr create failed: TLS certificate" in caplog.text, 15)
    await rig.stop_record("mitm-rec")
    assert mitm.uploads == [] and mitm.log_uploads == []
    assert sum(mitm.vr.requests.values()) == 0 and not mitm.vr.segments
    assert mitm.vs_requests == [] and mitm.logins == []


async def test_mitm_on_firmware_download_is_refused(
    platform: ReferencePlatform, mitm: MitM, tmp_path: Path
) -> None:
    """The firmware download client as the daemon builds it (the platform's CA, the
    system store, the URL guard), pointed at a bundle on the MITM: not one request."""
    fake = tmp_path / "fw.bundle"
    fake.write_bytes(b"\0" * 4096)
    name = mitm.firmware.add(fake)
    guard = UrlGuard(allow_insecure=False, platform_hosts=lambda: [platform.options.host])
    async with platform_http(
        MAC, str(platform.ca_file), trust=Trust.UPLOADS, timeout=5, guard=guard
    ) as http:
        with pytest.raises(DownloadError, match="verif"):
            await fetch_bundle(
                http, mitm.firmware.url_for(name), tmp_path / "staged",
                accept_head=lambda head: None, progress=lambda got, total: None,
                backoff=lambda n: 0.01,
            )  # fmt: skip
    assert mitm.firmware.requests_for(name) == []
    assert not (tmp_path / "staged").exists()


# --- no listening network socket ---------------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _inet_sockets(pid: int, ours: set[int]) -> list[tuple[str, str, str, str]]:
    """(table, local, remote, state) of each TCP/UDP/raw socket the process holds."""
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                f = line.split()
                if int(f[9]) in ours:
                    found.append((table, f[1], f[2], f[3]))
    return found


def _listeners(sockets: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """A TCP socket in LISTEN (0A), or a UDP/raw one with no peer (anyone may send to it):
    what ``ss -l`` would show."""
    return [
        s for s in sockets
        if (s[0].startswith("tcp") and s[3] == "0A")
        or (not s[0].startswith("tcp") and s[2].endswith(":0000"))
    ]  # fmt: skip


def _ephemeral(local: str) -> bool:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return low <= int(local.rsplit(":", 1)[1], 16) <= high


def _unix_listeners(pid: int, ours: set[int]) -> list[str]:
    found = []
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[6]) in ours and int(f[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            found.append(f[7] if len(f) > 7 else "(unnamed)")
    return found


async def test_the_daemon_listens_on_no_network_socket(
    platform: ReferencePlatform, config_file: ConfigFile, spawn: Spawn, tmp_path: Path
) -> None:
    """``hss-pu run`` as a process, online, pushing live and recording: it holds TCP and
    UDP sockets (Vd, SRT, Vr) but listens on none; its one listening socket is the Unix
    control socket, mode 0600."""
    control = tmp_path / "state" / "control.sock"
    p = await spawn("run", "--config", str(config_file(platform)))
    await platform.wait_online(DEVICE, timeout=20)
    rx, reply = await platform.push_live(DEVICE, 0, "sec-sock")
    assert reply.err is None, reply
    body = {"session_id": "sec-rec", "channel": 0, "max_bitrate": 0, "seg_duration": 1,
            "seg_max_size": 8 << 20, "seg_max_count": 5, "start_ts": platform.now(),
            "cbk_url": platform.vr_cbk_url(0)}  # fmt: skip
    assert (await platform.call(DEVICE, "StartRecord", body, timeout=20)).err is None
    await rx.wait_bytes(20_000, timeout=15)
    assert await until(lambda: platform.vr.segments[0], 15)  # a segment went up over Vr
    pid = p.proc.pid
    seen: set[tuple[str, str, str, str]] = set()
    for _ in range(5):
        ours = _socket_inodes(pid)
        sockets = _inet_sockets(pid, ours)
        seen.update(sockets)
        # libsrt's caller socket is UDP bound to an ephemeral port and not connect()ed at
        # the OS level (libsrt matches peers itself): one per push, gone with the push.
        # Anything else with no peer is a listener.
        udp = _listeners(sockets)
        assert all(s[0].startswith("udp") and _ephemeral(s[1]) for s in udp), sockets
        assert len(udp) <= 1, sockets
        assert _unix_listeners(pid, ours) == [str(control)]
        await asyncio.sleep(0.2)
    # Not vacuous: the tables were read and hold the daemon's live connections.
    assert any(s[0].startswith("tcp") and s[3] == "01" for s in seen), seen  # Vd, Vr
    srt = {s for s in seen if s[0].startswith("udp")}
    assert len(srt) == 1, seen
    mode = control.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    # The push ends: its UDP socket goes, and no network listener of any kind is left.
    assert (await platform.call(DEVICE, "StopLive", {"stream_id": "sec-sock"})).err is None
    assert await until(lambda: not _listeners(_inet_sockets(pid, _socket_inodes(pid))), 10), (
        _inet_sockets(pid, _socket_inodes(pid))
    )
    rc, _ = await p.stop()
    assert rc == 0


# --- secrets files readable by others ----------------------------------------------------


@pytest.mark.parametrize("mode", [0o604, 0o606, 0o640, 0o660, 0o601])
@pytest.mark.parametrize("holder", ["config", "password_file"])
def test_a_secrets_file_readable_by_others_is_refused(
    write_config: WriteConfig, tmp_path: Path, holder: str, mode: int
) -> None:
    """World-only bits (o+r without g+r) and group bits alike, on the config holding the
    password and on a password file: refused, naming the key, not the secret. (The
    one-line message of ``hss-pu check`` and ``hss-pu run``'s exit 2 are
    tests/test_config.py and tests/test_daemon_process.py.)"""
    if holder == "config":
        path, key = write_config(mode=mode), "device.password"
    else:
        pw = tmp_path / "password"
        pw.write_text("file-secret-123\n")
        os.chmod(pw, mode)
        path, key = write_config(password_line=f'password_file = "{pw}"'), "device.password_file"
    with pytest.raises(ConfigError, match=f"{key}: .*readable by group/others") as ei:
        load_config(path)
    assert PASSWORD not in str(ei.value) and "file-secret" not in str(ei.value)
    os.chmod(path if holder == "config" else tmp_path / "password", 0o600)
    assert load_config(path).password.reveal() in (PASSWORD, "file-secret-123")


# --- URL safety: the gap the existing tests left (PushLive) -----------------------------


async def test_push_live_to_another_local_host_is_refused(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    """PushLive's srt:// target under the URL-safety host rules (docs/protocol.md,
    reading 26): the platform's own host (127.0.0.1) streams; ``localhost`` (the same
    machine by another name), link-local and private addresses are 12 at once, and
    nothing is sent. The HTTP URLs' refusals are tests/test_url_safety.py,
    tests/test_alarms.py, tests/test_log_upload.py, tests/test_playback.py and
    tests/test_firmware_download.py."""
    rig = await make_rig()
    p = rig.platform
    rx = await p.open_live("sec-local")
    for url in (
        rx.url.replace("127.0.0.1", "localhost"),
        "srt://169.254.169.254:9000?streamid=x",
        "srt://10.0.0.1:9000",
        "srt://[::ffff:127.0.0.1]:9000",
    ):
        r = await rig.call(
            "PushLive", {"channel": 0, "url": url, "stream_id": "sec-local", "max_bitrate": 0},
            timeout=5,
        )  # fmt: skip
        assert r.err is not None and r.err.code == 12, (url, r)
    assert rig.daemon.live is not None and rig.daemon.live.pushes == {}
    assert rx.bytes_received == 0
    r = await rig.call(
        "PushLive", {"channel": 0, "url": rx.url, "stream_id": "sec-local", "max_bitrate": 0}
    )
    assert r.err is None, r  # the platform's own host, as written in schedule_url
    await rx.wait_bytes(10_000, timeout=10)
