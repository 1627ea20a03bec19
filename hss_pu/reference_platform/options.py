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
    # GetServerInfo reply fields; each is left out of the reply while None.
    hb_interval: int | None = None
    hb_token: str | None = None
    hibernation: str | None = None
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
    # Test hook until the platform's alarm policy lands: AlarmNotify start/pulse replies
    # carry this pic_upload_url ("{n}" becomes 1, 2, ... per alarm). Read live.
    alarm_pic_url: str | None = None
