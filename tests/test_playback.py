"""PlayVideo / CtrlVideo / QueryVideoStatus against the reference platform: clips made with
PyAV and served over HTTPS by the platform, downloaded by the daemon under the URL-safety
rules and its size limit, decoded and played in real time to the emulated camera's null
speaker (services/playback.py, media/player.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import av
import pytest

from hss_pu.cli import main
from hss_pu.config import parse_config_doc
from hss_pu.media.player import Handover, OutputSpec, Player, PlayResult, alsa_environment
from hss_pu.profiles import load_profile
from hss_pu.reference_platform.media import make_tone
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.schema import SchemaError

from .support.rig import DEVICE, MakePlatform, MakeRig, Rig, start_daemon, until

pytestmark = pytest.mark.slow


async def status(rig: Rig, channel: int = 0) -> dict[str, Any]:
    reply = await rig.call("QueryVideoStatus", {"channel": channel})
    assert reply.err is None, reply.err
    resp: dict[str, Any] = reply.resp
    return resp


async def wait_status(rig: Rig, want: str, timeout: float) -> float:
    """Poll QueryVideoStatus until it says ``want``; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if (await status(rig))["status"] == want:
            return now
        assert now < deadline, f"QueryVideoStatus never said {want!r} within {timeout} s"
        await asyncio.sleep(0.03)


def last_result(rig: Rig) -> PlayResult:
    pb = rig.daemon.playback
    assert pb is not None and pb.finished, "no playback has ended"
    return pb.finished[-1][1]


def leftovers(rig: Rig) -> list[str]:
    return sorted(os.listdir(rig.storage / "playback"))


@pytest.fixture
async def prig(make_rig: MakeRig) -> Rig:
    """The emulated camera's speaker (the null sink), without the camera itself: playback
    needs no video, and the tests measure real-time pacing."""
    return await make_rig(start_media=False)


async def test_play_pause_resume_stop_in_real_time(
    prig: Rig, platform: ReferencePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    """playing -> pausing -> playing -> stopped, and the 2 s clip takes 2 s plus the pause:
    paced by its timestamps (it decodes in a few milliseconds). The URL's signature
    stays out of the log and `hss-pu status`; QueryVideoStatus gives it back whole."""
    caplog.set_level(logging.DEBUG, logger="hss_pu")
    url = platform.media_url("tone-2s.m4a") + "?sig=SIGNATURE-42"
    await platform.media.path_for("tone-2s.m4a")  # made before the clock starts
    t0 = time.monotonic()
    await platform.play_video(DEVICE, 0, url)
    assert await status(prig) == {"status": "playing", "url": url}
    await asyncio.sleep(0.7)
    await platform.ctrl_video(DEVICE, 0, "pause")
    t_pause = await wait_status(prig, "pausing", 2)
    shown = (await prig.status())["playback"][0]
    assert shown["status"] == "pausing" and shown["output"] == "null sink"
    await asyncio.sleep(1.0)
    assert (await status(prig))["status"] == "pausing"  # still, a second later
    await platform.ctrl_video(DEVICE, 0, "resume")
    t_resume = await wait_status(prig, "playing", 2)
    t_end = await wait_status(prig, "stopped", 6)
    paused = t_resume - t_pause
    took = t_end - t0
    print(f"2.0 s clip, paused {paused:.2f} s: stopped after {took:.2f} s")
    assert 2.0 + paused - 0.1 <= took <= 2.0 + paused + 0.6
    r = last_result(prig)
    assert r.reason == "end" and r.error is None
    assert 1.95 <= r.played <= 2.1  # the stream's clock: the pause is not counted
    assert 90 <= r.audio_frames <= 96  # 2 s of 1024-sample frames at 48 kHz
    assert await status(prig) == {"status": "stopped", "url": url}
    assert leftovers(prig) == []  # the downloaded file is gone
    device_log = [
        r.getMessage() for r in caplog.records if not r.name.startswith("hss_pu.platform")
    ]
    assert not [line for line in device_log if "SIGNATURE-42" in line]
    assert "SIGNATURE-42" not in json.dumps(shown) + json.dumps((await prig.status())["playback"])
    assert any("sig=*** downloaded" in line for line in device_log)  # there, without it


async def test_a_clip_with_video_plays_its_audio_and_decodes_its_pictures(
    prig: Rig, platform: ReferencePlatform
) -> None:
    await platform.media.path_for("tone-2s.mp4")
    t0 = time.monotonic()
    await platform.play_video(DEVICE, 0, platform.media_url("tone-2s.mp4"))
    took = await wait_status(prig, "stopped", 6) - t0
    r = last_result(prig)
    print(f"2.0 s clip with video: {took:.2f} s, {r.audio_frames} audio, {r.video_frames} video")
    assert r.reason == "end" and 1.9 <= took <= 2.6
    assert r.video_frames == 20 and r.late_video == 0 and r.audio_frames >= 90


async def test_stop_midway_and_a_new_play_replaces_the_current_one(
    prig: Rig, platform: ReferencePlatform
) -> None:
    long, short = platform.media_url("tone-8s.ogg"), platform.media_url("tone-1s.m4a")
    for name in ("tone-8s.ogg", "tone-1s.m4a"):
        await platform.media.path_for(name)
    await platform.play_video(DEVICE, 0, long)
    await asyncio.sleep(1.0)
    t_stop = time.monotonic()
    await platform.ctrl_video(DEVICE, 0, "stop")
    stopped = await wait_status(prig, "stopped", 2) - t_stop
    r = last_result(prig)
    assert r.reason == "stopped" and 0.8 <= r.played <= 1.5 and stopped < 0.5
    assert leftovers(prig) == []
    # Playing the long clip again, then the short one: it takes over at once.
    await platform.play_video(DEVICE, 0, long)
    await asyncio.sleep(0.5)
    t1 = time.monotonic()
    await platform.play_video(DEVICE, 0, short)
    assert await until(lambda: last_result(prig).reason == "stopped" and
                       len(prig.daemon.playback.finished) == 2, 3)  # type: ignore[union-attr]  # fmt: skip
    assert (await status(prig))["url"] == short
    took = await wait_status(prig, "stopped", 5) - t1
    assert last_result(prig).reason == "end" and 0.9 <= took <= 1.6
    assert leftovers(prig) == []


async def test_a_refused_url_is_never_downloaded(
    prig: Rig, platform: ReferencePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    """localhost is the platform's host by another name (not exempt), http:// is refused
    without allow_insecure: each is a log line, nothing is fetched, and what was playing
    plays on."""
    caplog.set_level(logging.INFO, logger="hss_pu.playback")
    good = platform.media_url("tone-3s.m4a")
    await platform.play_video(DEVICE, 0, good)
    await wait_status(prig, "playing", 1)
    port = platform.vs_port
    for url in (
        f"https://localhost:{port}/media/tone-1s.m4a",
        f"http://127.0.0.1:{port}/media/tone-1s.m4a",
        "https://192.168.1.1/media/tone-1s.m4a",
    ):
        await platform.play_video(DEVICE, 0, url)
        await asyncio.sleep(0.2)
        assert await status(prig) == {"status": "playing", "url": good}
    refused = [r.getMessage() for r in caplog.records if "PlayVideo refused" in r.getMessage()]
    assert len(refused) == 3, refused
    assert "localhost is loopback" in refused[0] and "http://" in refused[1]
    assert platform.media.requests_for("tone-1s.m4a") == []
    assert len(platform.media.requests_for("tone-3s.m4a")) == 1
    await platform.ctrl_video(DEVICE, 0, "stop")
    await wait_status(prig, "stopped", 2)


def small_speaker_profile(tmp_path: Path) -> Path:
    """The emulated profile with a 1 MiB download limit."""
    src = Path(load_profile("emulated").path).read_text()
    profile = tmp_path / "small-speaker.toml"
    limited = 'output_device = "null", play_max_mb = 1'
    profile.write_text(src.replace('output_device = "null"', limited))
    return profile


def sparse_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)


def cut_at_a_packet(directory: Path, good: Path) -> None:
    """The clip up to its middle packet: nothing in it is broken, it just stops."""
    with av.open(str(good)) as c:
        offsets = [p.pos for p in c.demux() if p.pos is not None and p.pos > 0]
    (directory / "cut.m4a").write_bytes(good.read_bytes()[: offsets[len(offsets) // 2]])


def bad_media(directory: Path, good: Path, kind: str) -> None:
    data = {
        "garbage": os.urandom(50_000),
        "truncated": good.read_bytes()[: good.stat().st_size // 2],  # it breaks off mid-way
        "no-media": b"just text, no media at all\n" * 100,
    }[kind]
    (directory / f"{kind}.bin").write_bytes(data)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_file_over_the_cap_is_refused_without_being_read(
    make_rig: MakeRig,
    platform: ReferencePlatform,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    chunked: bool,
) -> None:
    """audio.play_max_mb = 1: a 32 MiB file is refused on its Content-Length before its
    body, and one sent without a length is cut at 1 MiB; neither is read to the end."""
    caplog.set_level(logging.INFO, logger="hss_pu.playback")
    profile = small_speaker_profile(tmp_path)
    rig = await make_rig(start_media=False, profile=str(profile))
    size = 32 << 20
    sparse_file(platform.media.directory / "big.bin", size)
    url = platform.media_url("big.bin") + ("?chunked=1" if chunked else "")
    await platform.play_video(DEVICE, 0, url)
    assert await until(lambda: "download failed" in caplog.text, 10)
    await wait_status(rig, "stopped", 2)
    (req,) = platform.media.requests_for("big.bin")
    assert await until(lambda: not req.complete, 1)
    print(f"{'chunked' if chunked else 'content-length'}: {req.sent} of {size} bytes sent")
    assert not req.complete and req.sent < size // 2
    assert "more than the 1048576" in caplog.text
    assert leftovers(rig) == []


@pytest.mark.parametrize("kind", ["garbage", "truncated", "no-media"])
async def test_bad_media_ends_stopped_with_a_log_line(
    prig: Rig, platform: ReferencePlatform, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.INFO, logger="hss_pu.playback")
    good = await platform.media.path_for("tone-2s.m4a")
    assert good is not None
    bad_media(platform.media.directory, good, kind)
    await platform.play_video(DEVICE, 0, platform.media_url(f"{kind}.bin"))
    await wait_status(prig, "stopped", 3)
    r = last_result(prig)
    assert r.reason == "error" and r.error, r
    assert f"{kind}.bin: " in caplog.text and r.error in caplog.text
    if kind == "truncated":  # what is there plays (the clip's index comes first), in time
        assert 0.6 <= r.played <= 1.4 and r.audio_frames > 20, r
    else:
        assert r.audio_frames == 0, r
    assert leftovers(prig) == []
    # The daemon is none the worse: the next clip plays.
    await platform.play_video(DEVICE, 0, platform.media_url("tone-2s.m4a"))
    await wait_status(prig, "playing", 1)
    await wait_status(prig, "stopped", 5)
    assert last_result(prig).reason == "end"


async def test_a_file_that_stops_short_of_its_duration_is_logged(
    prig: Rig, platform: ReferencePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hss_pu.playback")
    good = await platform.media.path_for("tone-2s.m4a")
    assert good is not None
    cut_at_a_packet(platform.media.directory, good)
    await platform.play_video(DEVICE, 0, platform.media_url("cut.m4a"))
    await wait_status(prig, "playing", 1)
    await wait_status(prig, "stopped", 3)
    r = last_result(prig)
    assert r.reason == "end" and r.expected == 2.0 and 0.7 <= r.played <= 1.3, r
    assert "cut.m4a ended early: 1.0 of the 2.0 s it declares" in caplog.text


async def test_a_device_without_audio_output_answers_101(
    make_rig: MakeRig, platform: ReferencePlatform
) -> None:
    rig = await make_rig(start_media=False, profile="emulated-dual")
    reply = await rig.call("QueryVideoStatus", {"channel": 0})
    assert reply.err is not None and reply.err.code == 101, reply
    assert (await rig.call("GetCap")).resp["audio_out"] is False
    await platform.play_video(DEVICE, 0, platform.media_url("tone-1s.m4a"))
    await platform.ctrl_video(DEVICE, 0, "pause")
    reply = await rig.call("QueryVideoStatus", {"channel": 0})  # still online, still 101
    assert reply.err is not None and reply.err.code == 101
    assert platform.media.requests == []
    assert rig.daemon.playback is None and (await rig.status())["playback"] is None


# --- the player alone ----------------------------------------------------------------------


def play_file(path: Path, output: OutputSpec) -> tuple[PlayResult, float]:
    done = threading.Event()
    results: list[PlayResult] = []

    def on_end(r: PlayResult) -> None:
        results.append(r)
        done.set()

    t0 = time.monotonic()
    Player(path, output, on_end).start()
    assert done.wait(10)
    return results[0], time.monotonic() - t0


def test_an_alsa_speaker_that_is_not_there_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """No sound card on this machine: the ALSA output fails at its first write, and the
    playback ends with the device named in the error."""
    clip = tmp_path / "tone.m4a"
    make_tone(clip, 1.0)
    r, took = play_file(clip, OutputSpec("alsa", "hw:7,0", 48000))
    assert r.reason == "error" and r.error is not None and "ALSA hw:7,0" in r.error
    assert took < 1.0


def test_the_handover_is_bounded_in_items_and_bytes() -> None:
    h = Handover(max_items=3, max_bytes=100)
    assert h.put("a", 60) and h.put("b", 30)
    blocked = threading.Thread(target=h.put, args=("c", 20))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive() and h.size == (2, 90)  # 110 bytes would be too many
    assert h.get() == "a"
    blocked.join(1)
    assert not blocked.is_alive() and h.size == (2, 50)
    assert h.put("d", 0)
    late = threading.Thread(target=h.put, args=("e", 0))  # a fourth item
    late.start()
    late.join(0.2)
    assert late.is_alive()
    h.close()
    late.join(1)
    assert not late.is_alive() and h.get() is None and not h.put("f")


async def test_a_pi_profile_plays_to_alsa_and_a_missing_card_is_a_log_line(
    make_rig: MakeRig,
    platform: ReferencePlatform,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pi5-cam3-ptz's speaker is ALSA's default PCM; this machine has no sound card, so
    the playback ends at its first write, with the device in the log line; the config's
    camera.audio_output = "null" then plays the same clip (a Pi profile on a laptop)."""
    caplog.set_level(logging.INFO, logger="hss_pu.playback")
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")  # its LEDs on mock pins here
    monkeypatch.setenv("ALSA_CONFIG_DIR", "/usr/share/alsa")  # what the daemon would set
    rig = await make_rig(start_media=False, profile="pi5-cam3-ptz", size=(640, 360))
    assert (await rig.call("GetCap")).resp["audio_out"] is True
    await platform.play_video(DEVICE, 0, platform.media_url("tone-2s.m4a"))
    await wait_status(rig, "stopped", 5)
    r = last_result(rig)
    assert r.reason == "error" and r.error is not None and r.error.startswith("ALSA default: ")
    assert r.error in caplog.text
    assert (await rig.status())["playback"][0]["last"]["reason"] == "error"
    await rig.stop()
    rig = await make_rig(
        start_media=False, profile="pi5-cam3-ptz", size=(640, 360), audio_output="null"
    )
    await platform.play_video(DEVICE, 0, platform.media_url("tone-1s.m4a"))
    await wait_status(rig, "playing", 1)
    await wait_status(rig, "stopped", 4)
    assert last_result(rig).reason == "end"


def test_alsa_environment_points_pyav_at_the_system_configuration() -> None:
    env: dict[str, str] = {}
    alsa_environment(env)
    system = Path("/usr/share/alsa/alsa.conf").is_file()
    assert env == ({"ALSA_CONFIG_DIR": "/usr/share/alsa"} if system else {})
    env = {"ALSA_CONFIG_DIR": "/opt/alsa"}
    alsa_environment(env)
    assert env == {"ALSA_CONFIG_DIR": "/opt/alsa"}  # a value already set wins


def test_the_config_names_a_speaker_by_its_pcm_name_only() -> None:
    base = {"device": {"id": DEVICE, "mac": "02:00:00:00:00:01"},
            "platform": {"schedule_url": "https://127.0.0.1:8443"}}  # fmt: skip
    doc = parse_config_doc({**base, "camera": {"audio_output": "plughw:CARD=Device,DEV=0"}})
    assert doc.camera.audio_output == "plughw:CARD=Device,DEV=0"
    with pytest.raises(SchemaError, match=r"camera\.audio_output"):
        parse_config_doc({**base, "camera": {"audio_output": "default'; reboot"}})


async def test_platform_play_cli_sends_a_tone_or_a_file(
    make_platform: MakePlatform,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``hss-pu platform play DEVICE [FILE]``: the platform's admin API sends PlayVideo
    of a generated tone, or of a file it copies into the platform's media."""
    platform = await make_platform(admin_port=0, state_dir=tmp_path / "plat")
    rig = await start_daemon(platform, tmp_path / "pu", start_media=False)
    try:

        def cli(*file: str) -> list[str]:
            return ["platform", "play", DEVICE, *file, "--state-dir", str(tmp_path / "plat")]

        assert await asyncio.to_thread(main, cli()) == 0
        url = json.loads(capsys.readouterr().out)["url"]
        assert url == platform.media_url("tone-5s.m4a")
        assert (await status(rig))["status"] == "playing"
        clip = tmp_path / "my clip.ogg"
        make_tone(clip, 1.0)
        assert await asyncio.to_thread(main, cli(str(clip))) == 0
        assert json.loads(capsys.readouterr().out)["url"] == platform.media_url("my_clip.ogg")
        assert await until(lambda: len(platform.media.requests_for("my_clip.ogg")) == 1, 3)
        await wait_status(rig, "stopped", 4)
        assert last_result(rig).reason == "end"
        assert await asyncio.to_thread(main, cli(str(tmp_path / "missing.ogg"))) == 1
    finally:
        await rig.stop()


async def test_the_daemon_stops_promptly_mid_play(prig: Rig, platform: ReferencePlatform) -> None:
    await platform.play_video(DEVICE, 0, platform.media_url("tone-8s.ogg"))
    await wait_status(prig, "playing", 1)
    assert await until(lambda: leftovers(prig) != [], 3)  # downloaded: the file is there
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    assert await prig.stop() == 0
    took = time.monotonic() - t0
    assert took < 3.0, took
    assert leftovers(prig) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("play-ch")]


def block_playback_dir(storage: Path) -> None:
    storage.mkdir(mode=0o700, parents=True)
    (storage / "playback").write_text("not a directory")


async def test_an_unusable_playback_directory_leaves_the_daemon_running(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    block_playback_dir(tmp_path / "blocked")
    rig = await make_rig(start_media=False, storage=tmp_path / "blocked")
    reply = await rig.call("QueryVideoStatus", {"channel": 0})
    assert reply.err is not None and reply.err.code == 101
    # The profile has a speaker, but this device cannot play: GetCap does not claim it.
    assert rig.daemon.config.profile.capabilities()["audio_out"] is True
    assert (await rig.call("GetCap")).resp["audio_out"] is False
    assert (await rig.call("QueryTime")).err is None
