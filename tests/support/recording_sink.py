"""An AlarmSink (services/interfaces.py) that keeps what it is told, for detector tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["Call", "RecordingSink"]


@dataclass(frozen=True)
class Call:
    what: str  # "start", "end" or "pulse"
    channel: int
    kind: str
    at: float
    thread: int  # who called: the sink's callers must be on the event loop


@dataclass
class RecordingSink:
    calls: list[Call] = field(default_factory=list)

    def state(self, channel: int, kind: str, active: bool, at: float) -> None:
        what = "start" if active else "end"
        self.calls.append(Call(what, channel, kind, at, threading.get_ident()))

    def pulse(self, channel: int, kind: str, at: float) -> None:
        self.calls.append(Call("pulse", channel, kind, at, threading.get_ident()))

    def of(self, kind: str) -> list[str]:
        """What the sink was told about ``kind``, in order: ["start", "end", ...]."""
        return [c.what for c in self.calls if c.kind == kind]
