"""3,000 random and mutated frames thrown at a live Vd session (over real TLS).

The bulk (100,000 frames, fed to the parser and the params decoder directly) is
tests/test_fuzz_wire.py; here the point is the session: its reader, inbox, worker and
the dispatcher's handlers, on the wire.

Afterwards the daemon must still be the same session (no reconnect, no crash) and answer
a well-formed RPC.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hss_pu.wire.vd import MESSAGES

from .support.rig import DEVICE, Rig

pytestmark = pytest.mark.rig(start_media=False)  # the control plane alone

FIXTURES = Path(__file__).parent / "fixtures" / "vd"
# Valid commands that would legitimately end the session or the process are left out:
# they are tested on their own; here the point is that nothing *else* disturbs it.
DISRUPTIVE = {"RebootDevice", "Reschedule", "UpgradeFirmware"}
FRAMES_PER_EXAMPLE = 50
EXAMPLES = 60  # 60 * 50 = 3,000 frames
SEQ_BASE = 10**9
SENT = {"frames": 0}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _golden() -> list[dict[str, Any]]:
    """The request or event frame of every golden fixture, the disruptive ones left out."""
    frames = []
    for f in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(f.read_text())
        frame = doc.get("request") or doc.get("event")
        if frame and f.stem not in DISRUPTIVE:
            frames.append(frame)
    return frames


GOLDEN = _golden()
NAMES = [n for n in MESSAGES if n not in DISRUPTIVE] + ["", "x" * 300, "Keepalive\x00", "getcap"]


def mutate(frame: dict[str, Any], rnd: random.Random, junk: Any) -> str | bytes:
    """One of several ways to damage a valid frame."""
    f = json.loads(json.dumps(frame))
    # Our fuzzed requests number far above the platform's own calls, so the PU's replies to
    # them cannot be mistaken for the reply to the check call.
    if "seq" in f:
        f["seq"] = SEQ_BASE + rnd.randrange(10**6)
    choice = rnd.randrange(12)
    if choice == 0:
        f["seq"] = rnd.choice([True, -1, 2**70, 1.5, "7", None, [], {}])
    elif choice == 1:
        f.pop(rnd.choice(list(f)), None)
    elif choice == 2 and isinstance(f.get("params"), dict) and f["params"]:
        f["params"][rnd.choice(list(f["params"]))] = junk
    elif choice == 3:
        f["params"] = junk
    elif choice == 4:
        f["req" if "req" in f else "event"] = rnd.choice(NAMES)
    elif choice == 5:
        f[rnd.choice(["resp", "err", "req", "event", "extra"])] = junk
    elif choice == 6:
        text = json.dumps(f)
        cut = rnd.randrange(len(text))
        return text[:cut]
    elif choice == 7:
        data = json.dumps(f).encode()
        pos = rnd.randrange(len(data))
        return data[:pos] + bytes([rnd.randrange(256)]) + data[pos + 1 :]
    elif choice == 8:
        return json.dumps(f).encode()  # a binary frame with good JSON inside
    elif choice == 9:
        return json.dumps([f])
    elif choice == 10 and "req" in f:
        f["params"] = {k: junk for k in (f.get("params") or {"channel": 0})}
    else:
        f["seq"] = SEQ_BASE + rnd.randrange(10**6)
        f["req"] = rnd.choice(NAMES)
        f["params"] = {"channel": rnd.choice([0, 1, 7, -1, 255, 256]), "junk": junk}
    return json.dumps(f)


@pytest.fixture
async def fuzz_rig(rig: Rig) -> AsyncIterator[Rig]:
    """``rig``, checked afterwards: every example of the run went through its one session."""
    SENT["frames"] = 0
    yield rig
    link = rig.daemon.link
    assert link is not None and link.session is not None
    stats = link.session.stats
    assert SENT["frames"] >= FRAMES_PER_EXAMPLE * EXAMPLES, SENT
    assert stats.malformed + stats.requests + stats.events >= FRAMES_PER_EXAMPLE * EXAMPLES


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(
    seed=st.integers(0, 2**32 - 1),
    junk=st.lists(json_values, min_size=FRAMES_PER_EXAMPLE, max_size=FRAMES_PER_EXAMPLE),
    raw_text=st.text(max_size=60),
    raw_bytes=st.binary(max_size=60),
)
async def test_fuzzed_frames_do_not_break_the_session(
    fuzz_rig: Rig, seed: int, junk: list[Any], raw_text: str, raw_bytes: bytes
) -> None:
    rnd = random.Random(seed)
    logins = len(fuzz_rig.platform.logins)
    for i in range(FRAMES_PER_EXAMPLE):
        kind = rnd.randrange(10)
        if kind == 0:
            frame: str | bytes = raw_text
        elif kind == 1:
            frame = raw_bytes
        elif kind == 2:
            frame = json.dumps(junk[i], allow_nan=True)
        else:
            frame = mutate(rnd.choice(GOLDEN), rnd, junk[i])
        await fuzz_rig.platform.send_raw(DEVICE, frame)
        SENT["frames"] += 1
    # Every example ends with a well-formed RPC, which must be answered on the same session.
    reply = await fuzz_rig.platform.call(DEVICE, "QueryTime", timeout=10)
    assert reply.err is None, reply
    assert len(fuzz_rig.platform.logins) == logins, "the fuzz frames made the daemon reconnect"
    assert not fuzz_rig.task.done()
