"""The daemon's configuration: one TOML file, validated into typed, frozen objects.

Checks run in two passes: msgspec checks types and ranges (so every key gets the same
wording), then :func:`make_config` applies the rules that span keys or touch the
filesystem (password file permissions, the CA file loaded as the TLS client will load it,
URL ports and host names, the camera against the profile's limits). Each failure is one
:class:`~hss_pu.schema.SchemaError` line naming the file and the key.

Every file named here is read as a regular file of bounded size (never /dev/zero, a FIFO
or a 50 MB mistake), and a relative path is relative to the config file's directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from hss_pu.fsutil import FileRefused, read_bounded
from hss_pu.profiles import PCM_NAME, Profile, load_profile
from hss_pu.schema import SchemaError, convert, key_error, load_toml
from hss_pu.wire.urlsafety import MAX_ALLOWED_HOSTS, host_problem
from hss_pu.wire.vs import MAC_PATTERN

__all__ = [
    "AlarmsSection",
    "CameraSection",
    "Config",
    "ConfigDoc",
    "DeviceSection",
    "LogSection",
    "PlatformSection",
    "PowerSection",
    "SchemaError",
    "Secret",
    "StorageSection",
    "UpgradeSection",
    "default_storage_dir",
    "load_config",
    "make_config",
    "parse_config_doc",
]

_DEVICE_ID = r"^[A-Za-z0-9._:-]+$"
MAX_PASSWORD_BYTES = 4096
MAX_CA_BYTES = 1 << 20


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class DeviceSection(_Section, frozen=True, kw_only=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_DEVICE_ID)]
    password: str | None = None
    password_file: str | None = None
    mac: Annotated[str, msgspec.Meta(pattern=MAC_PATTERN)]
    profile: Annotated[str, msgspec.Meta(min_length=1)] = "emulated"
    bind_id: str | None = None
    # Let time sync (Vs, Settime) set the host clock; needs CAP_SYS_TIME (docs/systemd.md).
    set_system_clock: bool = False

    def __repr__(self) -> str:
        # The inline password must not reach a log line through a stray repr().
        pw = None if self.password is None else "***"
        return (
            f"DeviceSection(id={self.id!r}, password={pw!r}, password_file="
            f"{self.password_file!r}, mac={self.mac!r}, profile={self.profile!r}, "
            f"bind_id={self.bind_id!r}, set_system_clock={self.set_system_clock!r})"
        )


class PlatformSection(_Section, frozen=True, kw_only=True):
    schedule_url: Annotated[str, msgspec.Meta(min_length=1)]
    ca_file: str | None = None
    allow_insecure: bool = False
    # Below 1 s a keep-alive would be a flood (GetServerInfo hb_interval has the same floor).
    keepalive_interval: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0
    # > 0: a zero scale would let every retry loop spin without a delay.
    backoff_scale: Annotated[float, msgspec.Meta(gt=0, le=100)] = 1.0
    # Hosts on the LAN (private/loopback addresses) that URLs from the platform may name,
    # besides the platform's own (wire-notes "URL safety").
    allowed_hosts: Annotated[list[str], msgspec.Meta(max_length=MAX_ALLOWED_HOSTS)] = []


class CameraSection(_Section, frozen=True, kw_only=True):
    source: Annotated[str, msgspec.Meta(min_length=1)] = "emulated"
    # One source per channel, in channel order (a bridge of IP cameras: an RTSP URL
    # each), instead of ``source``. Fewer than the profile's channels: the device has only
    # these (GetCap claims no channel without a camera).
    sources: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(max_length=16)
    ] = []
    width: Annotated[int, msgspec.Meta(ge=16, le=8192)] = 1280
    height: Annotated[int, msgspec.Meta(ge=16, le=8192)] = 720
    fps: Annotated[int, msgspec.Meta(ge=1, le=120)] = 30
    # bit/s; absent: the profile's default_bitrate.
    bitrate: Annotated[int, msgspec.Meta(ge=64_000, le=100_000_000)] | None = None
    # Keep this many seconds of video from start-up for recordings that ask for pre-record
    # (a StartRecord asking for more raises it, up to the profile's cap, and it is kept).
    prerecord_seconds: Annotated[int, msgspec.Meta(ge=0, le=60)] = 0
    # What the emulated camera shows: the moving test pattern, or a still room that
    # `hss-pu sensor motion on` (and the light controls) change: for trying alarms.
    scene: Literal["pattern", "static"] = "pattern"
    # The speaker of channel 0 when the profile has one, instead of its
    # audio.output_device: an ALSA PCM name, or "null" (a Pi profile tried on a laptop).
    audio_output: Annotated[str, msgspec.Meta(pattern=PCM_NAME)] | None = None


class StorageSection(_Section, frozen=True, kw_only=True):
    dir: Annotated[str, msgspec.Meta(min_length=1)] = "/var/lib/hss-pu"
    # The recording spool's bound in MiB; absent: the profile's recording.max_mb.
    spool_max_mb: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    # Closed recording segments held in memory, in MiB; absent: the profile's
    # recording.memory_queue_mb. Beyond half of it they go to the spool.
    memory_queue_mb: Annotated[int, msgspec.Meta(ge=4, le=4096)] | None = None


class AlarmsSection(_Section, frozen=True, kw_only=True):
    # AlarmNotify per alarm type, channel and minute (a start counts with its end, so at
    # least 2): a bouncing input cannot flood the platform.
    max_per_minute: Annotated[int, msgspec.Meta(ge=2, le=600)] = 6


class PowerSection(_Section, frozen=True, kw_only=True):
    # A battery device with nothing to do sleeps after this long (docs/protocol.md
    # "Hibernation"); at least 1 s, at most a day.
    idle_sleep_seconds: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 60.0
    # Heartbeats to the hibernation server while asleep: wire-notes say every 60 s;
    # lower only to try it out or in tests.
    heartbeat_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=600)] = 60.0


class LogSection(_Section, frozen=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # The daemon's own log files under storage.dir/logs (what LogUploadAsync uploads):
    # this many files of file_kb KiB each, the oldest overwritten.
    files: Annotated[int, msgspec.Meta(ge=1, le=16)] = 4
    file_kb: Annotated[int, msgspec.Meta(ge=64, le=16384)] = 1024


MAX_TRUSTED_KEYS = 16
MAX_KEY_FILE_BYTES = 16 * 1024


class UpgradeSection(_Section, frozen=True, kw_only=True):
    # Ed25519 public keys (.pub PEM files) whose signatures a firmware bundle needs;
    # several, with a threshold, so a key can be replaced without a window where nothing
    # verifies (docs/protocol.md reading 33). None: every upgrade is refused.
    trusted_keys: Annotated[list[str], msgspec.Meta(max_length=MAX_TRUSTED_KEYS)] = []
    threshold: Annotated[int, msgspec.Meta(ge=1, le=MAX_TRUSTED_KEYS)] = 1
    # How long a new version has to prove itself (login, Keepalive, cameras) before it
    # is rolled back.
    trial_seconds: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 120.0


class ConfigDoc(_Section, frozen=True, kw_only=True):
    device: DeviceSection
    platform: PlatformSection
    camera: CameraSection = CameraSection()
    storage: StorageSection = StorageSection()
    alarms: AlarmsSection = AlarmsSection()
    power: PowerSection = PowerSection()
    log: LogSection = LogSection()
    upgrade: UpgradeSection = UpgradeSection()


class Secret:
    """A string that will not print itself, so a stray ``%r`` cannot leak it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the daemon needs, resolved: paths absolute, password read, profile loaded."""

    path: str | None  # None for the embedded default
    doc: ConfigDoc
    profile: Profile
    password: Secret
    ca_file: str | None
    storage_dir: str
    camera_source: str
    # Each channel's source (index = channel id), resolved: camera.sources, or
    # camera.source for channel 0 and the emulated camera where the profile says so.
    channel_sources: tuple[str, ...]
    # upgrade.trusted_keys, read: raw 32-byte Ed25519 public keys, in the config's order.
    trusted_keys: tuple[bytes, ...] = ()

    @property
    def device(self) -> DeviceSection:
        return self.doc.device

    @property
    def platform(self) -> PlatformSection:
        return self.doc.platform

    @property
    def camera(self) -> CameraSection:
        return self.doc.camera

    @property
    def bitrate(self) -> int:
        return self.doc.camera.bitrate or self.profile.channels[0].default_bitrate


def default_storage_dir() -> Path:
    """systemd's StateDirectory when run as a unit, else the user's XDG state directory."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "hss-pu"


def _readable_by_others(st: os.stat_result) -> int | None:
    """The mode bits when group/others can read (or write) the file, else None."""
    mode = stat.S_IMODE(st.st_mode)
    return mode if mode & 0o077 else None


def _resolve(base: Path | None, value: str, path: Path | None, key: str) -> Path:
    """``value`` as an absolute path: relative to the config file's directory (never to
    the current directory, which a service manager or a shell chose)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    if base is None:
        raise key_error(path, key, f"{value!r} is relative and there is no config file")
    return base / p


def _read_file(path: Path | None, key: str, f: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """A bounded regular file, or a one-line error naming ``key``."""
    try:
        return read_bounded(f, limit)
    except FileNotFoundError:
        raise key_error(path, key, f"{f} does not exist") from None
    except FileRefused as exc:
        raise key_error(path, key, f"{f}: {exc}") from None
    except OSError as exc:
        raise key_error(path, key, f"cannot read {f}: {exc.strerror or exc}") from None


def _read_password(doc: DeviceSection, path: Path | None, base: Path | None) -> Secret:
    if doc.password is not None and doc.password_file is not None:
        raise key_error(path, "device.password", "give password or password_file, not both")
    if doc.password is not None:
        if not doc.password:
            raise key_error(path, "device.password", "empty")
        if path is not None:
            mode = _readable_by_others(path.stat())
            if mode is not None:
                raise key_error(
                    path,
                    "device.password",
                    f"the file holding the password is readable by group/others (mode "
                    f"{mode:04o}); run 'chmod 600 {path}' or use password_file",
                )
        return Secret(doc.password)
    if doc.password_file is None:
        raise key_error(path, "device.password", "missing (set password or password_file)")
    pf = _resolve(base, doc.password_file, path, "device.password_file")
    data, st = _read_file(path, "device.password_file", pf, MAX_PASSWORD_BYTES)
    mode = _readable_by_others(st)
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError:
        raise key_error(path, "device.password_file", f"{pf} is not UTF-8 text") from None
    if mode is not None:
        raise key_error(
            path,
            "device.password_file",
            f"{pf} is readable by group/others (mode {mode:04o}); run 'chmod 600 {pf}'",
        )
    secret = raw.rstrip("\r\n")
    if not secret:
        raise key_error(path, "device.password_file", f"{pf} is empty")
    return Secret(secret)


_V4L2 = re.compile(r"^v4l2:/dev/video\d+$")
# A DNS label (RFC 1123; "_" too, which container and LAN names use); at most 63 octets.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _url_problem(url: str) -> str | None:
    """Why ``url``'s host or port cannot be used (None when both can).

    Checked here because the libraries fail late and badly: a 64-character label is a
    UnicodeError from IDNA inside the link task, port 99999 a ValueError.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return "port must be a number 1-65535"
    if port == 0:
        return "port must be a number 1-65535"
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host.removesuffix(".")
    if not name or len(name) > 253 or not all(_LABEL.match(x) for x in name.split(".")):
        return (
            f"host name {host[:80]!r} is not valid (labels of 1-63 letters, digits, '-', "
            "at most 253 characters; non-ASCII names in their xn-- form)"
        )
    return None


def _check_source(
    source: str,
    profile: Profile,
    path: Path | None,
    base: Path | None,
    key: str = "camera.source",
    channel: int = 0,
) -> str:
    """Validate ``camera.source`` (or an entry of ``camera.sources``, ``key``, for
    ``channel``); returns it with a ``file:`` path made absolute."""
    backend = profile.channels[channel].backend
    if source == "emulated":
        return source
    if source == "picamera2":
        if backend != "picamera2":
            raise key_error(
                path, key, f"picamera2, but profile {profile.name!r} has no Pi camera ({backend})"
            )
        return source
    if source.startswith("file:"):
        if not source[5:]:
            raise key_error(path, key, "file: needs a path, e.g. file:/srv/clip.mp4")
        media = _resolve(base, source[5:], path, key)
        if not media.is_file():
            raise key_error(path, key, f"{media} does not exist")
        return f"file:{media}"
    if source.startswith("v4l2:"):
        if not _V4L2.match(source):
            raise key_error(path, key, f"{source!r}: expected v4l2:/dev/videoN")
        return source
    if source.startswith(("rtsp://", "rtsps://")):
        if not urlsplit(source).hostname:
            raise key_error(path, key, f"{source!r}: RTSP URL without a host")
        problem = _url_problem(source)
        if problem:
            raise key_error(path, key, f"RTSP URL: {problem}")
        return source
    raise key_error(
        path,
        key,
        f"{source!r}: expected emulated, picamera2, file:PATH, v4l2:/dev/videoN or rtsp://...",
    )


def _channel_sources(
    cam: CameraSection, profile: Profile, path: Path | None, base: Path | None
) -> tuple[Profile, tuple[str, ...]]:
    """The profile cut to the channels that have a source, and each channel's source.

    Without ``camera.sources``, channel 0 has ``camera.source`` and another channel the
    emulated camera if its backend is that, else ``camera.source`` too unless it is an RTSP
    camera: two RTSP channels showing one camera would be a lie, so each needs its own URL.
    """
    if not cam.sources:
        out = [_check_source(cam.source, profile, path, base)]
        for ch in profile.channels[1:]:
            if ch.backend == "rtsp":
                raise key_error(
                    path,
                    "camera.sources",
                    f"profile {profile.name!r} channel {ch.id} is an RTSP camera: give each "
                    'channel its URL (camera.sources = ["rtsp://...", ...])',
                )
            out.append("emulated" if ch.backend == "emulated" else out[0])
        return profile, tuple(out)
    if cam.source != "emulated":
        raise key_error(path, "camera.sources", "give camera.source or camera.sources, not both")
    n = len(cam.sources)
    if n > len(profile.channels):
        raise key_error(
            path,
            "camera.sources",
            f"{n} sources, but profile {profile.name!r} has {len(profile.channels)} channels",
        )
    out = [
        _check_source(src, profile, path, base, f"camera.sources[{i}]", i)
        for i, src in enumerate(cam.sources)
    ]
    doc = profile.doc
    for s in doc.sensors:
        if s.channel >= n:
            raise key_error(
                path, "camera.sources", f"profile {profile.name!r} has a {s.kind} on channel "
                f"{s.channel}, which has no source",
            )  # fmt: skip
    cut = msgspec.structs.replace(doc, channels=doc.channels[:n])
    return msgspec.structs.replace(profile, doc=cut), tuple(out)


def _check_camera(cam: CameraSection, profile: Profile, path: Path | None) -> None:
    ch = profile.channels[0]
    if (cam.width, cam.height) not in {tuple(r) for r in ch.resolutions}:
        sizes = ", ".join(f"{w}x{h}" for w, h in ch.resolutions)
        raise key_error(
            path,
            "camera.width",
            f"{cam.width}x{cam.height} is not supported by profile {profile.name!r} ({sizes})",
        )
    if cam.fps > ch.max_fps:
        raise key_error(
            path, "camera.fps", f"{cam.fps} is above profile {profile.name!r}'s {ch.max_fps}"
        )
    if cam.bitrate is not None and cam.bitrate > ch.max_bitrate:
        raise key_error(
            path,
            "camera.bitrate",
            f"{cam.bitrate} is above profile {profile.name!r}'s max_bitrate {ch.max_bitrate}",
        )
    cap = profile.doc.recording.max_prerecord_seconds
    if cam.prerecord_seconds > cap:
        raise key_error(
            path,
            "camera.prerecord_seconds",
            f"{cam.prerecord_seconds} is above profile {profile.name!r}'s cap of {cap} s",
        )


def _check_platform(p: PlatformSection, path: Path | None, base: Path | None) -> str | None:
    url = urlsplit(p.schedule_url)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise key_error(
            path, "platform.schedule_url", f"{p.schedule_url!r}: expected https://host[:port]"
        )
    if url.scheme == "http" and not p.allow_insecure:
        raise key_error(
            path,
            "platform.schedule_url",
            "plain http:// is refused; use https:// or set platform.allow_insecure = true",
        )
    if url.username or url.password:
        raise key_error(path, "platform.schedule_url", "credentials do not belong in the URL")
    problem = _url_problem(p.schedule_url)
    if problem:
        raise key_error(path, "platform.schedule_url", problem)
    for host in p.allowed_hosts:
        problem = host_problem(host)
        if problem:
            raise key_error(path, "platform.allowed_hosts", problem)
    if p.ca_file is None:
        return None
    ca = _resolve(base, p.ca_file, path, "platform.ca_file")
    _check_ca(ca, path)
    return str(ca)


_SSL_WHERE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def _check_ca(ca: Path, path: Path | None) -> None:
    """Load the CA file the way the TLS clients will, so a wrong one is a config error
    now and not a traceback in the link task later."""
    import ssl  # here: the quick commands that load a config without a CA need not pay for it

    data, _ = _read_file(path, "platform.ca_file", ca, MAX_CA_BYTES)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except UnicodeDecodeError:
        raise key_error(path, "platform.ca_file", f"{ca} is not a PEM certificate file") from None
    except (ssl.SSLError, ValueError) as exc:
        why = _SSL_WHERE.sub("", str(exc))
        raise key_error(
            path, "platform.ca_file", f"{ca} holds no usable PEM certificate ({why})"
        ) from None


def _read_trusted_keys(
    up: UpgradeSection, path: Path | None, base: Path | None
) -> tuple[bytes, ...]:
    """Each ``upgrade.trusted_keys`` file as a raw Ed25519 public key, so a wrong one is a
    config error now, not a refused upgrade later."""
    key = "upgrade.trusted_keys"
    if up.trusted_keys and up.threshold > len(up.trusted_keys):
        raise key_error(
            path,
            "upgrade.threshold",
            f"{up.threshold} is more than the {len(up.trusted_keys)} trusted key(s)",
        )
    if not up.trusted_keys:
        return ()
    from hss_pu.firmware.keys import public_key_from_pem  # cryptography: only when needed

    keys: list[bytes] = []
    seen: dict[bytes, Path] = {}
    for value in up.trusted_keys:
        f = _resolve(base, value, path, key)
        data, _ = _read_file(path, key, f, MAX_KEY_FILE_BYTES)
        try:
            raw = public_key_from_pem(data)
        except ValueError as exc:
            raise key_error(path, key, f"{f}: {exc}") from None
        if raw in seen:
            raise key_error(path, key, f"{f} holds the same key as {seen[raw]}")
        seen[raw] = f
        keys.append(raw)
    return tuple(keys)


def make_config(doc: ConfigDoc, path: Path | None = None) -> Config:
    """Apply the cross-key rules to a typed document and resolve what it refers to."""
    path = path.absolute() if path is not None else None
    base = path.parent if path is not None else None
    profile = load_profile(doc.device.profile, config_path=path)
    password = _read_password(doc.device, path, base)
    ca_file = _check_platform(doc.platform, path, base)
    profile, sources = _channel_sources(doc.camera, profile, path, base)
    source = sources[0]
    _check_camera(doc.camera, profile, path)
    if doc.camera.scene != "pattern" and source != "emulated":
        raise key_error(path, "camera.scene", "applies to the emulated camera only")
    storage = _resolve(base, doc.storage.dir, path, "storage.dir")
    trusted_keys = _read_trusted_keys(doc.upgrade, path, base)
    return Config(
        path=str(path) if path is not None else None,
        doc=doc,
        profile=profile,
        password=password,
        ca_file=ca_file,
        storage_dir=str(storage),
        camera_source=source,
        channel_sources=sources,
        trusted_keys=trusted_keys,
    )


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raises SchemaError with a one-line message."""
    p = Path(path).expanduser().absolute()
    data = load_toml(p)
    doc = convert(data, ConfigDoc, p)
    return make_config(doc, p)


def parse_config_doc(data: dict[str, object], path: Path | str | None = None) -> ConfigDoc:
    return convert(data, ConfigDoc, path)
