"""The hub's capture-thread fan-out and the one key-frame gate (hss_pu/media/packets.py).
Pure: packets are made up, no camera runs."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import hss_pu
from hss_pu.media.packets import EncodedPacket, KeyframeGate, PacketHub, StreamInfo

VIDEO = StreamInfo("video", "h264", 320, 180, 30)


def pkt(n: int, *, key: bool = False, kind: str = "video") -> EncodedPacket:
    return EncodedPacket(kind, b"x" * 10, n * 3000, n * 3000, 3000, key, 0.0)  # type: ignore[arg-type]


def test_gate_admits_from_a_video_key_frame_on() -> None:
    gate = KeyframeGate()
    stream = [pkt(0, kind="audio"), pkt(1), pkt(2, key=True), pkt(3, kind="audio"), pkt(4)]
    assert [gate.admit(p) for p in stream] == [False, False, True, True, True]
    assert gate.dropped == 2 and not gate.waiting
    # An audio "key frame" (every AAC frame is one) does not open the gate.
    gate.reset()
    assert not gate.admit(EncodedPacket("audio", b"", 0, 0, 0, True, 0.0))


def test_gate_reset_says_whether_it_cut_a_gop() -> None:
    gate = KeyframeGate()
    assert gate.reset() is False  # still waiting for the first key frame: nothing cut
    assert gate.admit(pkt(0, key=True))
    assert gate.reset() is True
    assert gate.reset() is False  # a second reset before the next key frame: same GOP
    assert not gate.admit(pkt(1)) and gate.admit(pkt(2, key=True))


class Recorder:
    def __init__(self) -> None:
        self.got: list[EncodedPacket] = []
        self.flushes = 0

    def on_packet(self, p: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        self.got.append(p)

    def on_flush(self) -> None:
        self.flushes += 1


class Broken(Recorder):
    def on_packet(self, p: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        raise ValueError("bug")


def test_a_raising_sink_is_contained_counted_and_logged_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = PacketHub("ch0")
    hub.video = VIDEO
    before, broken, after = Recorder(), Broken(), Recorder()
    for s in (before, broken, after):
        hub.attach(s)
    caplog.set_level(logging.ERROR, "hss_pu.media.hub")
    stream = [pkt(i, key=i % 30 == 0) for i in range(1500)]
    for p in stream:
        hub.publish(p)
        hub.flush()
    assert before.got == stream == after.got and after.flushes == 1500
    assert hub.sink_errors == 1500 and hub.last_keyframe is stream[1470]
    # The first failure and every 1000th, with the traceback: not one line per frame.
    assert len(caplog.records) == 2 and "ValueError: bug" in caplog.text
    hub.detach(broken)
    hub.publish(pkt(1500))
    assert hub.sink_errors == 1500 and len(after.got) == 1501


def test_no_loop_side_fan_out_is_left() -> None:
    """Every consumer is a capture-thread sink: nothing hands packets to the loop."""
    root = Path(hss_pu.__file__).parent / "media"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef)}
        assert not names & {"Subscription", "subscribe", "_to_loop", "_deliver"}, path
        assert "MAX_IN_FLIGHT" not in path.read_text(), path
