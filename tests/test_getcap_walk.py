"""GetCap says only what is true: every capability a profile reports is exercised.

Each firmware profile runs (camera.source = "emulated", or for an IP-camera bridge an
H.264 file per camera passed through; small and slow) against the reference platform,
and for each GetCap key that is true the message that uses it must really work: no
101, no silent drop. The table EXERCISERS maps a key to its exerciser; a
feature that lands adds its key to profiles.IMPLEMENTED and one line here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hss_pu import profiles
from hss_pu.config import UpgradeSection
from hss_pu.daemon import Daemon
from hss_pu.firmware.slots import SlotStore, emulated_root
from hss_pu.media.channel import jpeg_size
from hss_pu.profiles import load_profile, profile_names
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.services.autoreboot import STATE_FILE
from hss_pu.wire.alarms import ALARM_KINDS, flag

from .support.bundles import fake_bundle, new_key
from .support.rig import DEVICE, MakeRig, Rig, until
from .support.rtsp import make_clip

pytestmark = [pytest.mark.slow, pytest.mark.platform(hb_interval=1)]


@dataclass
class Walk:
    rig: Rig
    profile: profiles.Profile
    size: tuple[int, int]
    reboots: list[float] = field(default_factory=list)
    key: Ed25519PrivateKey | None = None  # the firmware key the device trusts
    restarts: int = 0

    @property
    def platform(self) -> ReferencePlatform:
        return self.rig.platform

    @property
    def storage(self) -> Path:
        return self.rig.storage

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        reply = await self.rig.call(method, params)
        assert reply.err is None, f"{method}: {reply.err}"
        return reply.resp


def media_packets(path: Path) -> int:
    """TS packets in a received file that are not the sender's null padding (PID 0x1FFF)."""
    data = path.read_bytes()
    pids = ((data[i + 1] & 0x1F) << 8 | data[i + 2] for i in range(0, len(data) - 187, 188))
    return sum(pid != 0x1FFF for pid in pids)


# --- exercisers: one per capability key ------------------------------------------------------


async def srt_push(w: Walk) -> None:
    """media_protocol "srt": PushLive to a real srt-live-transmit, on every channel."""
    for ch in w.profile.channels:
        rx, reply = await w.platform.push_live(DEVICE, ch.id, f"walk-{ch.id}")
        assert reply.err is None, reply
        await rx.wait_bytes(20_000, timeout=10)
        await w.call("StopLive", {"stream_id": f"walk-{ch.id}"})
        await rx.close()
        assert media_packets(rx.files[0]) > 10, "only padding arrived"


async def encrypted_push(w: Walk) -> None:
    """video_encrypt: the receiver demands the passphrase, so bytes mean AES was agreed."""
    rx, reply = await w.platform.push_live(DEVICE, 0, "walk-enc", passphrase="walk-secret-123")
    assert reply.err is None, reply
    await rx.wait_bytes(20_000, timeout=10)
    await w.call("StopLive", {"stream_id": "walk-enc"})
    await rx.close()
    assert media_packets(rx.files[0]) > 10, "only padding arrived"


async def record_segment(w: Walk) -> None:
    """cloud_record: StartRecord, and a segment saved on Vr."""
    await w.call(
        "StartRecord",
        {"session_id": "walk-rec", "channel": 0, "max_bitrate": 0, "seg_duration": 1,
         "seg_max_size": 4 << 20, "seg_max_count": 4, "start_ts": w.platform.now(),
         "cbk_url": w.platform.vr_cbk_url(0)},
    )  # fmt: skip
    segs = await w.platform.vr.wait_segments(0, 1, timeout=15)
    assert segs[0].size > 0 and segs[0].path.stat().st_size == segs[0].size
    await w.call("StopRecord", {"session_id": "walk-rec", "channel": 0})


async def snapshot_upload(w: Walk) -> None:
    """pic_upload_https: Snapshot answers after the JPEG is on the platform."""
    await w.call("Snapshot", {"channel": 0, "url": w.platform.upload_url("walk.jpg")})
    up = w.platform.uploads[-1]
    assert up.name == "walk.jpg" and up.content_type == "image/jpeg"
    assert jpeg_size(up.path.read_bytes()) == w.size


async def daily_reboot(w: Walk) -> None:
    """auto_reboot: the device clock a second before the time, and the RebootDevice path
    is taken once (the test's reboot_device records instead of rebooting)."""
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    await w.call("Settime", {"datetime": f"{today}T03:29:59", "tz": 0, "offset": 0})
    await w.call("SetConfig", {"auto_reboot": {"on": True, "time": "03:30"}})
    assert await until(lambda: w.reboots, 5), "timed out waiting for the auto-reboot"
    assert len(w.reboots) == 1 and (w.storage / STATE_FILE).exists()
    await w.call("SetConfig", {"auto_reboot": {"on": False}})
    real = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    await w.call("Settime", {"datetime": real, "tz": 0, "offset": 0})


async def channel_switch(w: Walk) -> None:
    """switch: SetConfig on=false stops a channel (Keepalive 4, Snapshot 103 at once),
    on=true brings it back (Keepalive 1, Snapshot works again)."""

    def state_is(ch: int, want: int) -> Callable[[], bool]:
        def check() -> bool:
            ka = w.platform.last_keepalive(DEVICE)
            return ka is not None and int(ka["channels"][ch]["state"]) == want

        return check

    for ch in w.profile.channels:
        key = str(ch.id)
        await w.call("SetConfig", {"channels": {key: {"on": False}}})
        assert await until(state_is(ch.id, 4), 5), (
            f"timed out waiting for channel {ch.id} reported off"
        )
        t0 = time.monotonic()
        reply = await w.platform.call(
            DEVICE, "Snapshot", {"channel": ch.id, "url": w.platform.upload_url("off.jpg")}
        )
        assert reply.err is not None and reply.err.code == 103, reply
        assert time.monotonic() - t0 < 2
        await w.call("SetConfig", {"channels": {key: {"on": True}}})
        assert await until(state_is(ch.id, 1), 10), f"timed out waiting for channel {ch.id} back on"
        await w.call("Snapshot", {"channel": ch.id, "url": w.platform.upload_url("on.jpg")})


def alarm_of(kind: str) -> Callable[[Walk], Awaitable[None]]:
    """alarms.<kind>: the detector switched on and really triggered (the sensor's mock
    pin through the daemon's `hss-pu sensor` table, or someone walking across the emulated
    camera's scene) gives AlarmNotify on the platform: a state kind start, its Keepalive
    bit, then its end; a pulse kind one pulse."""
    spec = ALARM_KINDS[kind]
    sensor = {"io": "external", "body": "motion"}.get(kind, kind)

    async def exercise(w: Walk) -> None:
        daemon = w.rig.daemon
        drive = daemon.sensors[sensor]
        body: dict[str, Any] = {"on": True} | ({"hold": 1} if spec.state == "state" else {})
        await w.call("SetConfig", {"channels": {"0": {"alarms": {kind: body}}}})
        since = time.time()

        async def notified(state: str, timeout: float = 10) -> dict[str, Any]:
            rec = await w.platform.wait_record(
                lambda r: r.name == "AlarmNotify" and r.time >= since
                and r.params["type"] == spec.type and r.params["state"] == state,
                timeout=timeout,
            )  # fmt: skip
            return rec.params

        if spec.state == "pulse":
            await drive("press", 0)
            assert (await notified("pulse"))["desc"] == spec.desc
            return
        await drive("on", 0)
        await notified("start")
        await w.platform.wait_record(
            lambda r: r.name == "Keepalive" and r.time >= since
            and int(r.params["channels"][0].get("alarm") or 0) & flag(spec.type) != 0,
            timeout=5,
        )  # fmt: skip
        await drive("off", 0)
        await notified("end", timeout=15)
        await w.call("SetConfig", {"channels": {"0": {"alarms": {kind: {"on": False}}}}})

    return exercise


async def set_battery(w: Walk, percent: float) -> int | None:
    """The emulated battery's level, as ``hss-pu battery PERCENT`` sets it."""
    reply = await w.rig.daemon._cmd_battery({"cmd": "battery", "percent": percent})
    assert reply["ok"], reply
    level: int | None = reply["battery"]
    return level


async def battery_change(w: Walk) -> None:
    """battery: the level after login, then a change of it arrives as BatteryChange
    (within the profile's rate limit) and DevStatus says it."""
    first = await w.platform.wait_record(lambda r: r.name == "BatteryChange", timeout=5)
    level = 42 if first.params["battery"] != 42 else 43
    since = time.time()
    assert await set_battery(w, level) == level
    interval = w.profile.doc.battery.report_interval_seconds
    await w.platform.wait_record(
        lambda r: r.name == "BatteryChange" and r.time >= since
        and r.params == {"battery": level},
        timeout=interval + 3,
    )  # fmt: skip
    assert w.platform.battery(DEVICE) == level
    assert (await w.call("DevStatus"))["battery"] == level


async def low_battery(w: Walk) -> None:
    """alarms.battery: the level falls below the profile's low_percent: one alarm 8."""
    spec = w.profile.doc.battery
    await set_battery(w, min(100, spec.low_percent + spec.hysteresis_percent))  # armed
    since = time.time()
    await set_battery(w, max(0, spec.low_percent - 1))
    rec = await w.platform.wait_record(
        lambda r: r.name == "AlarmNotify" and r.time >= since and r.params["type"] == 8,
        timeout=5,
    )
    assert rec.params["state"] == "pulse" and rec.params["desc"] == "low battery"
    # A frame says nothing about a battery: the reply's picture URL is not used (a
    # pulse's picture would be on the platform well within this second).
    alarms = w.rig.daemon.alarms
    assert alarms is not None
    pictures = alarms.stats.pictures + alarms.stats.pictures_failed
    await asyncio.sleep(1.0)
    low = [a for a in w.platform.alarms(DEVICE) if a.type == 8]
    assert len(low) == 1 and low[0].pic_name is not None and low[0].picture is None
    assert alarms.stats.pictures + alarms.stats.pictures_failed == pictures
    await set_battery(w, 80)


async def status_led(w: Walk) -> None:
    """led: SetConfig led false darkens the status LED (its pin low) and it stays dark
    whatever the device does; true gives it its pattern back."""
    board = w.rig.daemon.board
    assert board is not None, "no GPIO board"
    led = board.leds["status"]

    def lights_within(seconds: float) -> Awaitable[bool]:
        return until(lambda: led.lit, seconds, interval=0.02)  # a blink lights within 2 s

    assert await lights_within(3), f"status LED never lit ({led.label})"
    await w.call("SetConfig", {"led": False})
    assert await until(lambda: not led.lit and led.label == "off", 2)
    assert not await lights_within(2.1), "the status LED lit while switched off"  # a period
    await w.call("SetConfig", {"led": True})
    assert await lights_within(3) and led.label != "off"


async def log_upload(w: Walk) -> None:
    """log_upload_https: LogUploadAsync of the last hour PUTs the daemon's own log lines
    (the one accepting this very upload among them) to the platform, then LogDone says
    success with the size."""
    now = dt.datetime.now(dt.UTC)  # the walk leaves the device at tz 0
    fmt = "%Y-%m-%dT%H:%M:%S"
    params = {"trans_id": "walk-log", "start": (now - dt.timedelta(hours=1)).strftime(fmt),
              "end": (now + dt.timedelta(minutes=1)).strftime(fmt),
              "url": w.platform.log_upload_url("walk.log")}  # fmt: skip
    logger = logging.getLogger("hss_pu")
    level = logger.level
    logger.setLevel(logging.INFO)  # as log.level = "info" (pytest leaves the root at warning)
    try:
        await w.call("LogUploadAsync", params)
        up = await w.platform.wait_log_upload("walk.log", timeout=15)
    finally:
        logger.setLevel(level)
    done = await w.platform.wait_record(
        lambda r: r.name == "LogDone" and r.params.get("trans_id") == "walk-log", timeout=10
    )
    assert done.params["status"] == "success" and done.params["size"] == len(up.body) > 0
    assert b"accepted (trans_id 'walk-log')" in up.body
    assert up.content_type == "text/plain; charset=utf-8"


async def play_clip(w: Walk) -> None:
    """audio_out: PlayVideo of a 2 s clip the platform serves on every channel with a
    speaker: QueryVideoStatus says playing, then stopped when it has played (in real
    time: not before about 2 s)."""
    for ch in w.profile.channels:
        if ch.audio_output is None:
            continue
        url = w.platform.media_url("tone-2s.m4a")
        await w.platform.media.path_for("tone-2s.m4a")
        t0 = time.monotonic()
        await w.platform.play_video(DEVICE, ch.id, url)
        assert await w.call("QueryVideoStatus", {"channel": ch.id}) == {
            "status": "playing", "url": url
        }  # fmt: skip
        while (await w.call("QueryVideoStatus", {"channel": ch.id}))["status"] != "stopped":
            assert time.monotonic() - t0 < 8, "the clip never ended"
            await asyncio.sleep(0.05)
        assert time.monotonic() - t0 >= 1.9, "a 2 s clip ended early"
        playback = w.rig.daemon.playback
        assert playback is not None and playback.finished[-1][1].reason == "end"


async def ptz_moves(w: Walk) -> None:
    """ptz: a CtrlPTZ step through the platform moves the head (pan where there are
    servos, else zoom); set_preset shows in GetPTZPresetList, clear_preset removes it."""
    ptz = w.rig.daemon.ptz
    assert ptz is not None, "no PTZ service"
    servos = ptz.limits.pan != (0.0, 0.0)
    op, axis = ("right_step", "pan") if servos else ("zoomin_step", "zoom")
    before = getattr(ptz.position, axis)
    await w.platform.send_event(DEVICE, "CtrlPTZ", {"channel": 0, "op": op, "value": 50})
    assert await until(lambda: getattr(ptz.position, axis) > before and ptz.motion is None, 5)
    if servos:
        board = w.rig.daemon.board
        assert board is not None and board.pan_tilt is not None
        assert board.pan_tilt.pulse_us("pan") is not None
    await w.platform.send_event(DEVICE, "CtrlPTZ", {"channel": 0, "op": "set_preset", "value": 1})
    assert await until(lambda: ptz.presets(0) == [1], 3)
    assert await w.call("GetPTZPresetList", {"channel": 0}) == {"presetList": [{"ptzId": 1}]}
    await w.platform.send_event(DEVICE, "CtrlPTZ", {"channel": 0, "op": "clear_preset", "value": 1})
    assert await until(lambda: ptz.presets(0) == [], 3)
    assert await w.call("GetPTZPresetList", {"channel": 0}) == {"presetList": []}


async def firmware_upgrade(w: Walk) -> None:
    """firmware_download_https: UpgradeFirmware of a bundle signed by the key the device
    trusts, made for its hardware model, is downloaded, checked, installed and put on
    trial, and the daemon asks to restart into it (the restart and the trial's commit:
    test_upgrade_e2e.py). Run last: the device is then upgrading."""
    assert w.key is not None
    model = f"{w.profile.hardware_model}-walk-2"
    bundle = await asyncio.to_thread(
        fake_bundle, w.storage.parent, [w.key], model=model, hardware=[w.profile.hardware_model]
    )
    fw = w.platform.firmware
    url = fw.url_for(await asyncio.to_thread(fw.add, bundle))
    await w.platform.send_event(DEVICE, "UpgradeFirmware", {"firmware_model": model, "url": url})
    assert await until(lambda: w.restarts > 0, 60), await w.call("QueryUpgrade")
    r = await w.call("QueryUpgrade")
    assert (r["upgrade_status"], r["progress"], r["firmware_model"]) == ("upgrading", 95, model)
    store = SlotStore(emulated_root(w.storage))
    trial = store.load_state().trial
    assert trial is not None and store.is_complete(trial.name) and trial.version_number == 2


Exerciser = Callable[[Walk], Awaitable[None]]
EXERCISERS: dict[str, Exerciser] = {
    "media_protocol": srt_push,
    "video_encrypt": encrypted_push,
    "cloud_record": record_segment,
    "pic_upload_https": snapshot_upload,
    "auto_reboot": daily_reboot,
    "switch": channel_switch,
    "alarms.io": alarm_of("io"),
    "alarms.motion": alarm_of("motion"),
    "alarms.pir": alarm_of("pir"),
    "alarms.bell": alarm_of("bell"),
    "alarms.lock": alarm_of("lock"),
    "alarms.body": alarm_of("body"),
    "alarms.battery": low_battery,
    "battery": battery_change,
    "led": status_led,
    "log_upload_https": log_upload,
    "audio_out": play_clip,
    "ptz": ptz_moves,
    "firmware_download_https": firmware_upgrade,
}


def claimed(cap: dict[str, Any]) -> list[str]:
    """The standard keys a GetCap reply says yes to (alarms as alarms.<kind>), and the
    wired sensors of our ``sensors`` key (as alarms.<kind> too)."""
    keys: list[str] = []
    for key, value in cap.items():
        if key == "alarms":
            keys += [f"alarms.{kind}" for kind, on in value.items() if on is True]
        elif key == "sensors":
            keys += [f"alarms.{kind}" for kind in value]
        elif value is True or (key == "media_protocol" and value):
            keys.append(key)
    return keys


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", profile_names())
def test_every_true_capability_has_an_exerciser(name: str) -> None:
    missing = set(claimed(load_profile(name).capabilities())) - EXERCISERS.keys()
    assert not missing, f"{name} claims {sorted(missing)} with nothing here that uses them"


def test_every_implemented_feature_has_an_exerciser() -> None:
    assert EXERCISERS.keys() >= profiles.IMPLEMENTED


@pytest.fixture
async def walk(
    request: pytest.FixtureRequest,
    make_rig: MakeRig,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> AsyncIterator[Walk]:
    """``request.param``'s profile on the rig, its smallest picture, slow and cheap."""
    profile = load_profile(request.param)
    ch = profile.channels[0]
    # The smallest picture at least 360 high: person detection (alarms.body) looks for
    # people at least about half of a 240-row picture high, which a 180-row one upscaled
    # does not give.
    tall = [r for r in ch.resolutions if r[1] >= 360] or ch.resolutions
    size = min(tall, key=lambda r: r[0] * r[1])
    reboots: list[float] = []
    key, pub = new_key(tmp_path / "keys")
    walks: list[Walk] = []

    async def reboot_device(self: Daemon) -> None:  # never the host's reboot from a test
        reboots.append(self.clock.now())

    def restart(self: Daemon) -> None:  # an installed upgrade: the daemon runs on here
        walks[0].restarts += 1

    monkeypatch.setattr(Daemon, "_reboot_device", reboot_device)
    monkeypatch.setattr(Daemon, "_restart", restart)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")  # a Pi profile's LEDs on mock pins here
    camera: dict[str, Any] = {"scene": "static"}  # a still room: motion only when someone walks
    if ch.backend == "rtsp":
        # A bridge of IP cameras: two of them, each an H.264 file passed through as a
        # camera's stream is (the bridge on a real RTSP server: tests/test_rtsp_bridge.py).
        clip = make_clip(tmp_path / "camera.mkv", size, 20, fps=10)
        camera = {"sources": [f"file:{clip}"] * 2}
    rig = await make_rig(
        profile=profile.name,
        size=size,
        fps=10,
        bitrate=200_000,
        backoff_scale=0.02,
        seed=7,
        **camera,
        audio_output="null",  # no sound card here: a Pi profile's speaker is the null sink
        upgrade=UpgradeSection(trusted_keys=[str(pub)]),
    )
    walks.append(Walk(rig, rig.daemon.config.profile, size, reboots, key))
    yield walks[0]
    assert not rig.task.done(), "the daemon stopped during the walk"
    assert await rig.stop() == 0


@pytest.mark.parametrize("walk", profile_names(), indirect=True)
async def test_every_true_capability_works(walk: Walk) -> None:
    cap = await walk.call("GetCap")
    keys = claimed(cap)
    assert "media_protocol" in keys  # at least live video, on every profile
    # An upgrade leaves the device on its way to a restart: last.
    for key in sorted(keys, key=lambda k: k == "firmware_download_https"):
        t0 = time.monotonic()
        await EXERCISERS[key](walk)
        print(f"{walk.profile.name}: {key} ok in {time.monotonic() - t0:.1f} s")
