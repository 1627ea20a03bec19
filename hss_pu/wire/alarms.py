"""The alarm kinds the device can raise, as the platform sees them (Table I.2-16). Pure.

One table is the single source of truth for every detector, the alarm service, the
configuration document and GetCap: a *kind* is our name for a detector (the key under
``channels.N.alarms`` in the configuration document), its ``type`` the value AlarmNotify
and the Keepalive flags carry, and ``state`` tells a state alarm (``start`` ... ``end``)
from a single one (``pulse``), per wire-notes "Device services".

The standard GetCap/config keys of the origin protocol are ``io`` (the external alarm
input, type 2), ``motion`` (3) and ``body`` (human-shape detection, 11); a PIR (12), a door
bell (10), lock tampering (9) and low battery (8) have none, so they use kinds of ours
(``pir``, ``bell``, ``lock``, ``battery``), listed by GetCap's ``sensors`` key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALARM_KINDS",
    "HARDWARE_KINDS",
    "KIND_OF_SENSOR",
    "STANDARD_KINDS",
    "AlarmKind",
    "flag",
]


@dataclass(frozen=True, slots=True)
class AlarmKind:
    kind: str  # key in channels.N.alarms
    type: int  # AlarmNotify type, Keepalive bit
    state: Literal["state", "pulse"]
    desc: str  # AlarmNotify desc: short, never empty
    picture: bool = True  # a frame of the camera says something about it


ALARM_KINDS: dict[str, AlarmKind] = {
    k.kind: k
    for k in (
        AlarmKind("io", 2, "state", "external alarm input"),
        AlarmKind("motion", 3, "state", "motion"),
        AlarmKind("battery", 8, "pulse", "low battery", picture=False),
        AlarmKind("lock", 9, "pulse", "lock tampering"),
        AlarmKind("bell", 10, "pulse", "door bell"),
        AlarmKind("body", 11, "state", "person"),
        AlarmKind("pir", 12, "state", "PIR motion"),
    )
}

# The origin protocol's keys (GetCap alarms, config document); the others are ours.
STANDARD_KINDS = ("io", "face", "cry", "voice", "motion", "body", "cross")

# A profile's wired sensor (profiles.SensorSpec.kind) -> the alarm kind it raises.
KIND_OF_SENSOR: dict[str, str] = {"pir": "pir", "bell": "bell", "lock": "lock", "external": "io"}

# The kinds whose detector is hardware someone fitted (a wired sensor, the battery gauge):
# on from the factory, unlike the picture detectors the platform chooses to run.
HARDWARE_KINDS: frozenset[str] = frozenset(KIND_OF_SENSOR.values()) | {"battery"}


def flag(alarm_type: int) -> int:
    """The Keepalive ``alarm`` bit of a type (wire-notes: bits count from 0 at the LSB)."""
    return 1 << alarm_type
