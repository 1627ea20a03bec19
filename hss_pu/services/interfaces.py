"""Small interfaces the dispatcher calls for services that live in their own modules.

A service that is not there (not built yet, or not on this hardware) is ``None`` in
:class:`Services`, and the dispatcher answers a clear error instead of a fake success.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hss_pu.wire.vd import (
    CtrlPTZParams,
    CtrlVideoParams,
    GetDiskInfoResp,
    LogUploadAsyncParams,
    PlayVideoParams,
    PushLiveParams,
    QueryUpgradeResp,
    QueryVideoStatusResp,
    SnapshotParams,
    StartRecordParams,
    StopLiveParams,
    StopRecordParams,
    UpgradeFirmwareParams,
)

__all__ = [
    "AlarmSink",
    "CameraService",
    "DiskService",
    "LiveService",
    "LogService",
    "PlaybackService",
    "PtzService",
    "RecordService",
    "Services",
    "SnapshotService",
    "UpgradeService",
]


class CameraService(Protocol):
    def check(self, new: Mapping[str, Any], old: Mapping[str, Any]) -> None: ...
    async def apply(self, doc: Mapping[str, Any]) -> None: ...
    def report(self, doc: Mapping[str, Any]) -> dict[str, Any]: ...


class AlarmSink(Protocol):
    """Where detectors report (the hardware inputs, motion, person detection); called on
    the event loop (a detector on another thread hands over through a LoopBridge).
    ``kind`` is a key of :data:`hss_pu.wire.alarms.ALARM_KINDS`; ``at`` the daemon-clock
    time the detector saw it (the alarm's timestamp, and which frame is its picture)."""

    def state(self, channel: int, kind: str, active: bool, at: float) -> None: ...
    def pulse(self, channel: int, kind: str, at: float) -> None: ...


class LiveService(Protocol):
    async def push_live(self, p: PushLiveParams) -> None: ...
    async def stop_live(self, p: StopLiveParams) -> None: ...


class RecordService(Protocol):
    async def start_record(self, p: StartRecordParams) -> None: ...
    async def stop_record(self, p: StopRecordParams) -> None: ...


class SnapshotService(Protocol):
    async def snapshot(self, p: SnapshotParams) -> None: ...


class PtzService(Protocol):
    async def control(self, p: CtrlPTZParams) -> None: ...
    def presets(self, channel: int) -> list[int]: ...


class UpgradeService(Protocol):
    @property
    def ready(self) -> bool: ...
    async def upgrade(self, p: UpgradeFirmwareParams) -> None: ...
    def status(self) -> QueryUpgradeResp: ...


class PlaybackService(Protocol):
    async def play(self, p: PlayVideoParams) -> None: ...
    async def control(self, p: CtrlVideoParams) -> None: ...
    def status(self, channel: int) -> QueryVideoStatusResp: ...


class LogService(Protocol):
    async def upload_async(self, p: LogUploadAsyncParams) -> None: ...


class DiskService(Protocol):
    async def info(self) -> GetDiskInfoResp: ...
    async def format(self) -> None: ...


@dataclass
class Services:
    live: LiveService | None = None
    record: RecordService | None = None
    snapshot: SnapshotService | None = None
    ptz: PtzService | None = None
    upgrade: UpgradeService | None = None
    playback: PlaybackService | None = None
    logs: LogService | None = None
    disk: DiskService | None = None
    camera: CameraService | None = None
