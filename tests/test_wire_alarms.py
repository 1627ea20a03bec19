from __future__ import annotations

from hss_pu.profiles import ALARM_TYPE_OF_SENSOR
from hss_pu.wire.alarms import ALARM_KINDS, KIND_OF_SENSOR, STANDARD_KINDS, flag


def test_types_and_states_follow_wire_notes() -> None:
    got = {k: (a.type, a.state) for k, a in ALARM_KINDS.items()}
    assert got == {
        "io": (2, "state"),
        "motion": (3, "state"),
        "battery": (8, "pulse"),
        "lock": (9, "pulse"),
        "bell": (10, "pulse"),
        "body": (11, "state"),
        "pir": (12, "state"),
    }
    assert all(a.desc for a in ALARM_KINDS.values())


def test_flags_count_from_the_least_significant_bit() -> None:
    assert flag(2) == 0x4 and flag(11) == 0x800 and flag(12) == 0x1000


def test_sensors_map_to_kinds() -> None:
    assert set(KIND_OF_SENSOR.values()) <= ALARM_KINDS.keys()
    assert ALARM_TYPE_OF_SENSOR == {"pir": 12, "bell": 10, "lock": 9, "external": 2}
    # A PIR is not human-shape detection: it has a kind of its own, not "body".
    assert KIND_OF_SENSOR["pir"] != "body" and "pir" not in STANDARD_KINDS
