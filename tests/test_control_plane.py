"""The daemon against the reference platform over TLS: login, Keepalive, every handled RPC."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import itertools
import logging
import random
import time
from typing import Any

import pytest

from hss_pu.logsetup import OneLineFormatter
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.retry import retry_delay
from hss_pu.wire.vd import MESSAGES, Code, decode_result

from .support.rig import DEVICE, MAC, MakePlatform, MakeRig, Rig

# The control plane alone: no cameras (so PushLive/Snapshot answer "not available"), the
# configured camera as GetConfig reports it; a platform whose clock runs an hour ahead.
pytestmark = [
    pytest.mark.platform(clock_offset=3600),
    pytest.mark.rig(start_media=False, size=(1280, 720), fps=30, bitrate=None),
]


async def test_login_url_and_first_keepalive(rig: Rig) -> None:
    login = await rig.platform.wait_login(lambda r: r.accepted)
    p = login.params
    assert p["login_code"] == DEVICE
    assert p["hardware_model"] == "HSS-PU-EMU"
    assert p["firmware_model"].startswith("hss-pu-emulated-")
    assert p["sdk"].startswith("hss-pu/")
    assert p["reconnect"] == "0"
    assert "login_passwd" not in p
    ka = await rig.platform.wait_record(lambda r: r.name == "Keepalive")
    assert ka.time - login.time < 1.0
    assert ka.params["mac_id"] == MAC and ka.params["state"] == 1
    assert ka.params["channels"] == [{"channel": 0, "state": 1, "alarm": 0}]
    gsi = await rig.platform.wait_record(lambda r: r.name == "GetServerInfo")
    assert gsi.params == {"mac_id": MAC, "state": 1}


async def test_handled_rpcs_answer_with_the_right_shape(rig: Rig) -> None:
    for name in ("QueryTime", "DevStatus"):
        reply = await rig.call(name)
        assert reply.err is None, reply
        decode_result(name, reply.resp)  # validates against the message's reply type
    status = (await rig.call("DevStatus")).resp
    assert status["dev_id"] == DEVICE and status["mac_addr"] == MAC
    assert status["ip_addr"] == "127.0.0.1"
    dt.datetime.strptime(status["last_upgrade_datetime"], "%Y-%m-%dT%H:%M:%S")
    cap = (await rig.call("GetCap")).resp
    # The rig trusts no firmware key: UpgradeFirmware would be refused, so GetCap says no.
    assert cap == {**rig.daemon.config.profile.capabilities(), "firmware_download_https": False}
    assert cap["media_protocol"] == "srt" and cap["ptz"] is True  # servos and zoom
    conf = (await rig.call("GetConfig")).resp
    assert conf["channels"]["0"]["video_encoding"]["width"] == 1280
    for name, params in (
        ("Settime", {"datetime": "2030-01-01T08:00:00", "tz": 8, "offset": 5}),
        ("KeepAwaken", {"channel": 0, "expired": 30}),
        ("ResetConfig", None),
    ):
        reply = await rig.call(name, params)
        assert reply.err is None and reply.resp == {}, (name, reply)
    assert rig.daemon.channels.awake(0)


async def test_settime_and_querytime_follow_tz_and_offset(rig: Rig) -> None:
    # Vs said the platform is one hour ahead: QueryTime reports the platform's time.
    q = (await rig.call("QueryTime")).resp
    reported = dt.datetime.strptime(q["datetime"], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=dt.timezone(dt.timedelta(hours=q["tz"]))
    )
    assert reported.timestamp() == pytest.approx(time.time() + 3600, abs=2)
    # Settime in UTC+8 to a time 10 minutes from the device's: the device adopts it and tz.
    target = rig.daemon.clock.now() + 600
    local = dt.datetime.fromtimestamp(target, dt.timezone(dt.timedelta(hours=8)))
    stamp = local.strftime("%Y-%m-%dT%H:%M:%S")
    assert (await rig.call("Settime", {"datetime": stamp, "tz": 8, "offset": 5})).err is None
    q = (await rig.call("QueryTime")).resp
    assert q["tz"] == 8
    got = dt.datetime.strptime(q["datetime"], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=dt.timezone(dt.timedelta(hours=8))
    )
    assert got.timestamp() == pytest.approx(target, abs=2)
    # Within `offset`: nothing changes.
    before = rig.daemon.clock.offset
    near = dt.datetime.fromtimestamp(rig.daemon.clock.now() + 3, dt.timezone(dt.timedelta(hours=8)))
    await rig.call(
        "Settime", {"datetime": near.strftime("%Y-%m-%dT%H:%M:%S"), "tz": 8, "offset": 10}
    )
    assert rig.daemon.clock.offset == before


async def test_host_clock_untouched(rig: Rig) -> None:
    wall0, mono0 = time.time(), time.monotonic()
    r = await rig.call("Settime", {"datetime": "2099-02-03T04:05:06", "offset": 0})
    assert r.err is None
    assert abs((time.time() - wall0) - (time.monotonic() - mono0)) < 1.0
    assert rig.daemon.clock.offset > 1e9  # the daemon's clock moved, the host's did not


@pytest.mark.parametrize(
    ("stamp", "tz"),
    [("2019-12-31T23:59:59", 0), ("2020-01-01T05:00:00", 8), ("2100-01-01T00:00:00", 0),
     ("2099-12-31T20:00:00", -12), ("9999-12-31T23:59:59", 14), ("0001-01-01T00:00:00", -12)],
)  # fmt: skip
async def test_settime_outside_2020_2100_is_12_and_changes_nothing(
    rig: Rig, stamp: str, tz: int
) -> None:
    before = rig.daemon.clock.offset
    r = await rig.call("Settime", {"datetime": stamp, "tz": tz, "offset": 0})
    assert r.err is not None and r.err.code == Code.PARAM, r
    assert "2020" in r.err.msg and "2100" in r.err.msg
    assert rig.daemon.clock.offset == before
    assert (await rig.call("QueryTime")).resp["tz"] == 0


async def test_settime_that_cannot_save_tz_changes_nothing(rig: Rig) -> None:
    before = rig.daemon.clock.offset
    (rig.storage / "devconfig.json").mkdir()  # the atomic rename onto it fails, even as root
    r = await rig.call("Settime", {"datetime": "2030-06-01T12:00:00", "tz": 3, "offset": 0})
    assert r.err is not None and r.err.code == Code.INTERNAL, r
    assert rig.daemon.clock.offset == before  # the clock did not move
    assert (await rig.call("QueryTime")).resp["tz"] == 0


async def test_error_codes(rig: Rig) -> None:
    r = await rig.call("NoSuchMethod", {"x": 1})
    assert r.err is not None and r.err.code == Code.UNSUPPORTED_METHOD
    r = await rig.call("KeepAwaken", {"channel": 0})
    assert r.err is not None and r.err.code == Code.PARAM and "expired" in r.err.msg
    r = await rig.call("KeepAwaken", {"channel": 7, "expired": 1})
    assert r.err is not None and r.err.code == Code.NO_CHANNEL
    r = await rig.call(
        "PushLive", {"channel": 7, "url": "srt://h:1", "stream_id": "s", "max_bitrate": 0}
    )
    assert r.err is not None and r.err.code == Code.NO_CHANNEL
    r = await rig.call("Settime", {"datetime": "2030-02-30T00:00:00", "offset": 1})
    assert r.err is not None and r.err.code == Code.PARAM
    # A PU->platform RPC name sent to the PU is not something it serves.
    r = await rig.call("Keepalive", {"mac_id": MAC, "state": 1})
    assert r.err is not None and r.err.code == Code.UNSUPPORTED_METHOD


SERVICE_LATER: dict[str, dict[str, Any] | None] = {
    "PushLive": {
        "channel": 0,
        "url": "srt://127.0.0.1:9?streamid=x",
        "stream_id": "s1",
        "max_bitrate": 0,
    },
    "StartRecord": {
        "session_id": "r1",
        "channel": 0,
        "max_bitrate": 0,
        "seg_duration": 4,
        "seg_max_size": 1 << 20,
        "seg_max_count": 4,
        "start_ts": 0,
        "cbk_url": "https://127.0.0.1/live/cseg/0",
    },
    "Snapshot": {"channel": 0, "url": "https://127.0.0.1/snap.jpg"},
    # No media, no recording store (LogUploadAsync works: tests/test_log_upload.py).
    "GetDiskInfo": None,
    "FormatDisk": None,
}


async def test_services_of_later_issues_answer_a_clear_error(rig: Rig) -> None:
    for name, params in SERVICE_LATER.items():
        r = await rig.call(name, params)
        assert r.err is not None, f"{name} must not fake success: {r}"
        assert r.err.code == Code.UNSUPPORTED_METHOD and "not available" in r.err.msg, r
    # Stopping what cannot be running is true as stated (wire-notes: succeeds either way).
    assert (await rig.call("StopLive", {"stream_id": "nope"})).resp == {}
    assert (await rig.call("StopRecord", {"session_id": "nope", "channel": 0})).resp == {}


async def test_every_platform_message_has_a_handler(rig: Rig) -> None:
    d = rig.daemon.dispatcher
    assert d is not None
    for spec in MESSAGES.values():
        if spec.direction == "platform->pu":
            prefix = "rpc_" if spec.kind == "rpc" else "ev_"
            assert callable(getattr(d, prefix + spec.name, None)), spec.name


async def test_bad_frames_keep_the_session(rig: Rig) -> None:
    logins = len(rig.platform.logins)
    await rig.platform.send_raw(DEVICE, "{not json")
    await rig.platform.send_raw(DEVICE, b"\x00\x01binary")
    await rig.platform.send_raw(DEVICE, '{"req": 5, "seq": 900}')  # malformed, but a 400 is owed
    await rig.platform.send_raw(DEVICE, "[1, 2, 3]")
    r = await rig.call("QueryTime")
    assert r.err is None
    assert len(rig.platform.logins) == logins  # same session
    link = rig.daemon.link
    assert link is not None and link.session is not None
    assert link.session.stats.malformed == 4


async def test_set_config_persists_and_survives_restart(rig: Rig, make_rig: MakeRig) -> None:
    patch = {
        "channels": {
            "0": {"video_encoding": {"quality": "sd", "fps": 5}, "osd": {"text": "Front door"}}
        },
        "tz": 2,
    }
    r = await rig.call("SetConfig", patch)
    assert r.err is None
    enc = r.resp["channels"]["0"]["video_encoding"]
    assert (enc["width"], enc["height"], enc["fps"]) == (640, 360, 30)  # fps is read-only
    bad = await rig.call("SetConfig", {"channels": {"3": {"on": False}}})
    assert bad.err is not None and bad.err.code == Code.NO_CHANNEL
    bad = await rig.call("SetConfig", {"channels": {"0": {"alarms": {"face": {"on": True}}}}})
    assert bad.err is not None and bad.err.code == Code.UNSUPPORTED_CONFIG
    bad = await rig.call("SetConfig", {"log_level": 9})
    assert bad.err is not None and bad.err.code == Code.PARAM
    # What the device cannot do: 13, not "saved and ignored".
    unapplied: list[dict[str, Any]] = [
        {"channels": {"0": {"video_encoding": {"encoder": "h265"}}}},
    ]
    for p in unapplied:
        bad = await rig.call("SetConfig", p)
        assert bad.err is not None and bad.err.code == Code.UNSUPPORTED_CONFIG, p
    # Restart the daemon on the same storage: the change is still there.
    assert await rig.stop() == 0
    again = await make_rig(storage=rig.storage, online=False)
    await rig.platform.wait_login(
        lambda r: r.accepted and r.params["reconnect"] == "0" and r is not rig.platform.logins[0]
    )
    await again.wait_online()
    conf = (await again.call("GetConfig")).resp
    assert conf["channels"]["0"]["osd"]["text"] == "Front door" and conf["tz"] == 2
    assert (await again.call("ResetConfig")).err is None
    conf = (await again.call("GetConfig")).resp
    assert conf["channels"]["0"]["osd"]["text"] == "" and conf["tz"] == 0
    assert not (again.storage / "devconfig.json").exists()


async def test_deep_extension_is_a_12_and_the_document_keeps_working(rig: Rig) -> None:
    """The probe from issue 9: a 700-deep list used to be saved, then every SetConfig was 1."""
    deep: Any = []
    for _ in range(700):
        deep = [deep]
    bad = await rig.call("SetConfig", {"extension": {"x": deep}})
    assert bad.err is not None and bad.err.code == Code.PARAM and "deeper" in bad.err.msg
    ok = await rig.call("SetConfig", {"tz": 3, "extension": {"vendor": {"a": [1, {"b": 2}]}}})
    assert ok.err is None and ok.resp["tz"] == 3
    assert (await rig.call("SetConfig", {"log_level": 3})).err is None


@pytest.mark.platform(hb_interval=1)
@pytest.mark.rig(keepalive=30)
async def test_reboot_channel_and_keepalive_state(rig: Rig) -> None:
    platform = rig.platform
    # hb_interval from GetServerInfo (1 s) overrides the configured 30 s.
    first = await platform.wait_record(lambda r: r.name == "Keepalive")
    third = await platform.wait_record(
        lambda r: r.name == "Keepalive" and r.index >= first.index + 2, timeout=5
    )
    assert third.time - first.time < 3.5
    await platform.send_event(DEVICE, "RebootChannel", {"channel": 0})
    await platform.wait_record(lambda r: r.name == "Keepalive" and r.time > third.time)
    assert rig.daemon.channels.get(0).reboots == 1
    await rig.call("SetConfig", {"channels": {"0": {"on": False}}})
    ka = await platform.wait_record(
        lambda r: r.name == "Keepalive" and r.params["channels"][0]["state"] == 4, timeout=5
    )
    assert ka.params["channels"][0]["channel"] == 0


def _capture_logs() -> tuple[io.StringIO, logging.Handler]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(OneLineFormatter(journald=False))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in ("websockets", "httpx", "httpcore", "hss_pu"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    return buf, handler


@pytest.mark.platform(lockout_after=100)
async def test_wrong_password_backs_off_per_schedule(
    platform: ReferencePlatform, make_rig: MakeRig
) -> None:
    buf, handler = _capture_logs()
    raw: list[str] = []

    class Raw(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raw.append(record.getMessage())

    raw_handler = Raw()
    logging.getLogger().addHandler(raw_handler)
    scale, window = 0.05, 3.0
    try:
        rig = await make_rig(password="Wr0ng-Password!", backoff_scale=scale, seed=7, online=False)
        await asyncio.sleep(window)
        attempts = [r for r in platform.logins if r.device_id == DEVICE]
        await rig.stop()
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().removeHandler(raw_handler)
    assert attempts and not any(a.accepted for a in attempts)
    assert all(a.status == 401 for a in attempts)
    # The same seeded schedule: attempt k+1 starts after the sum of the first k delays.
    rng = random.Random(7)
    t, allowed = 0.0, 0
    for n in range(1, 100):
        if t > window:
            break
        allowed += 1
        t += retry_delay(n, scale, rng)
    assert allowed - 3 <= len(attempts) <= allowed, (len(attempts), allowed)
    gaps = [b.time - a.time for a, b in itertools.pairwise(attempts)]
    rng = random.Random(7)
    for n, gap in enumerate(gaps, start=1):
        assert gap >= retry_delay(n, scale, rng) - 0.05
    text = buf.getvalue()
    assert "login refused: HTTP 401" in text
    assert "Wr0ng-Password!" not in text
    # Not even a handler without our formatter sees it (the source logger redacts).
    assert not any("Wr0ng-Password" in m for m in raw), [m for m in raw if "Wr0ng" in m][:3]


@pytest.mark.platform(lockout_after=100)
async def test_more_than_15_failures_reschedules_through_vs(
    platform: ReferencePlatform, make_rig: MakeRig
) -> None:
    await make_rig(password="Wr0ng-Password!", backoff_scale=0.001, online=False)
    await platform.wait_login(lambda r: len(platform.vs_requests) >= 2, timeout=15)
    before_second_vs = [r for r in platform.logins if r.time <= platform.vs_requests[1].time]
    assert len(before_second_vs) == 16


async def test_platform_restart_reconnects_with_reconnect_1(
    rig: Rig, make_platform: MakePlatform
) -> None:
    first = rig.platform
    await first.close()
    await asyncio.sleep(0.5)
    # The same ports and state (its CA: the daemon's ca_file), a fresh process as it were.
    platform = await make_platform(
        state_dir=first.options.state_dir, vs_port=first.vs_port, vd_port=first.vd_port
    )
    login = await platform.wait_login(lambda r: r.accepted, timeout=15)
    assert login.params["reconnect"] == "1"
    await platform.wait_online(DEVICE)
    assert (await platform.call(DEVICE, "QueryTime", timeout=5)).err is None


async def test_reschedule_event_goes_back_to_vs(rig: Rig) -> None:
    vs_before = len(rig.platform.vs_requests)
    logins_before = len(rig.platform.logins)
    await rig.platform.send_event(DEVICE, "Reschedule")
    await rig.platform.wait_login(
        lambda r: r.accepted and len(rig.platform.logins) > logins_before, timeout=10
    )
    assert len(rig.platform.vs_requests) == vs_before + 1
    assert rig.platform.logins[-1].params["reconnect"] == "1"


@pytest.mark.platform(answer_keepalive=False, hb_interval=1)
@pytest.mark.rig(rpc_timeout=1.0)
async def test_dead_link_detected_when_keepalives_go_unanswered(rig: Rig) -> None:
    first = rig.platform.logins[-1]
    again = await rig.platform.wait_login(lambda r: r.accepted and r is not first, timeout=10)
    assert again.params["reconnect"] == "1"


@pytest.mark.rig(bind_id="BIND-CFG-1", online=False)
async def test_bind_configured_is_sent_after_login(rig: Rig) -> None:
    ev = await rig.platform.wait_record(lambda r: r.name == "Bind")
    assert ev.kind == "event" and ev.params == {"mac_id": MAC, "bind_id": "BIND-CFG-1"}
