"""The reference platform's settings, shared by its parts (one module, imported by all,
importing none of them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEMO_DEVICES", "PlatformOptions"]

DEMO_DEVICES = {"PU-0001": "embedded-demo-pass"}  # the embedded default's identity


@dataclass
class PlatformOptions:
    host: str = "127.0.0.1"
    vs_port: int = 0  # 0: any free port
    tls: bool = True
    state_dir: Path = field(default_factory=lambda: Path("platform-state"))
    # Added to the platform's clock in Vs replies: tests of the PU's time sync.
    clock_offset: float = 0.0
    vd_port: int = 0  # 0: any free port
    # Vd logins: device id -> password. Read at each login, so tests may change it live.
    devices: dict[str, str] = field(default_factory=lambda: dict(DEMO_DEVICES))
    # Device id -> the directory of its daemon's control socket (its storage.dir), for
    # the console's emulated-sensor buttons: the embedded default (one process) and
    # `platform serve --device-socket ID=DIR` on the device's own host set it.
    device_sockets: dict[str, Path] = field(default_factory=dict)
    # GetServerInfo reply fields; each is left out of the reply while None.
    hb_interval: int | None = None
    hb_token: str | None = None
    hibernation: str | None = None
    # The hibernation server (TCP, reference_platform.hibernation): None, none; 0, any
    # free port. While it runs, GetServerInfo advertises it and a per-device hb_token
    # (``hibernation`` and ``hb_token`` above, when set, are sent instead).
    hibernation_port: int | None = None
    # This many consecutive wrong passwords for one id lock it out (even with the right
    # password) for lockout_seconds: a brute-force brake a real platform would have.
    lockout_after: int = 5
    lockout_seconds: float = 60.0
    admin_port: int | None = None  # None: no admin API; 0: any free port (loopback only)
    rpc_timeout: float = 20.0  # wire-notes: an RPC unanswered for 20 s means a dead link
    # False simulates a platform that has stopped answering (Keepalives go unanswered).
    answer_keepalive: bool = True
    # Fault: the GetServerInfo reply exactly as given (ill-typed fields included).
    server_info: dict[str, Any] | None = None
    # Fault: accept the Vd login, then close at once (before answering anything).
    drop_after_login: bool = False
    # Vr: decode every saved segment before answering its save (VrSegment.check).
    vr_decode_check: bool = True
    # Vr: saved segments (records and files) kept per channel; older ones are deleted.
    vr_keep_segments: int = 10_000
    # AlarmNotify: a start or pulse is answered with a pic_upload_url (an HTTPS PUT on the
    # platform's own port, one name per alarm); False tests the "no picture" path.
    alarm_pictures: bool = True
    alarm_picture_max_bytes: int = 8 << 20  # a larger PUT is refused (413)
    # Where pic_upload_url points (scheme://host:port); None: the platform's own HTTPS
    # base. A platform behind another name sets it; tests use it for URL-safety refusals.
    alarm_pic_base: str | None = None
    # Alarms kept per device (with their pictures); older ones and their files are deleted.
    alarm_keep: int = 200
    # The platform policy: StartRecord (with pre-record) on an alarm start or pulse,
    # StopRecord alarm_post_roll seconds after the last end (or pulse); overlapping alarms
    # on a channel extend one recording. On for `hss-pu platform serve` and `make run`;
    # tests/support/rig.py turns it off unless a test asks (tests drive recordings).
    alarm_record: bool = True
    alarm_prerecord_seconds: int = 5
    alarm_seg_duration: int = 4
    alarm_post_roll: float = 10.0
    # A recording whose alarm never ends (its end lost) is stopped after this long.
    alarm_record_max_seconds: float = 600.0
    # A start or pulse this much older than the platform's clock when it arrives (queued
    # while the device was offline) is kept, but starts no recording: its video is gone.
    alarm_stale_seconds: float = 60.0
    # The web console under /console/ on the HTTPS port (reference_platform.console):
    # on for `hss-pu platform serve` and `make run`; tests ask for it.
    console: bool = False

    def __post_init__(self) -> None:
        checks = {
            "alarm_picture_max_bytes": self.alarm_picture_max_bytes >= 1,
            "alarm_keep": self.alarm_keep >= 1,
            "alarm_prerecord_seconds": 0 <= self.alarm_prerecord_seconds <= 3600,
            "alarm_seg_duration": 1 <= self.alarm_seg_duration <= 3600,
            "alarm_post_roll": 0 <= self.alarm_post_roll <= 3600,
            "alarm_record_max_seconds": self.alarm_record_max_seconds > 0,
            "alarm_stale_seconds": self.alarm_stale_seconds >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"PlatformOptions: out of range: {', '.join(bad)}")
