"""The device configuration document of GetConfig / SetConfig / ResetConfig. Pure.

Shape (wire-notes, from the origin protocol)::

    {"channels": {"0": {"on", "video_encoding": {"encoder", "quality", "fps", "bitrate",
     "width", "height", "gop"}, "image": {"horflip", "verflip"}, "alarms": {KIND: {"on",
     "sensitivity", "hold", "regions"}}, "osd": {"text", "font", "pos"}, "extension": {}}},
     "log_level", "tz", "led", "auto_reboot": {"on", "time"}, "extension": {}}

SetConfig carries only what changes (a merge). Errors: a channel we do not have → 102,
a feature the device lacks → 13, a bad value → 12. Read-only fields (fps, bitrate, width,
height, gop) are reported, never set: a SetConfig that carries them has them ignored.
``alarms`` and ``led`` follow GetCap: a kind (or the LED) this build does not drive is 13;
``led`` false darkens the status LED (services/leds.py), true gives it its pattern back.

``channels.N.alarms`` lists exactly the detectors the channel runs
(profiles.Profile.alarm_kinds): each ``{"on", "sensitivity": 0-100}`` (0 never fires),
a state kind also ``"hold"`` (seconds 0-3600 its alarm lasts after the detector goes
quiet), motion also ``"regions"`` (at most :data:`MAX_REGIONS` rectangles ``[x, y, w,
h]`` in 0-1 picture coordinates where motion counts; empty: the whole picture). Wired
sensors and the low-battery alarm are on from the factory (someone fitted them to be
heard), picture detectors off (the platform chooses to watch). A kind nobody knows is 12;
a known one the channel does not run (``face``, or ``pir`` on a camera without one) is 13.

The documents are platform-supplied: the free-form ``extension`` objects are bounded in
depth and size (checked without recursion), and a merge copies only the fixed-shape parts
it changes, never the whole document.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import msgspec

from hss_pu.errors import InvalidParam, NoSuchChannel, UnsupportedConfig
from hss_pu.profiles import Profile
from hss_pu.wire import alarms as kinds

__all__ = [
    "ALARM_KINDS",
    "DEFAULT_HOLD",
    "MAX_EXTENSION_BYTES",
    "MAX_EXTENSION_DEPTH",
    "MAX_HOLD",
    "MAX_REGIONS",
    "QUALITIES",
    "Base",
    "default_document",
    "merge",
    "quality_band",
    "quality_resolution",
    "validate_stored",
]

# Every alarm kind a document may name: the origin protocol's keys, then ours.
ALARM_KINDS = (
    *kinds.STANDARD_KINDS,
    *(k for k in kinds.ALARM_KINDS if k not in kinds.STANDARD_KINDS),
)
DEFAULT_HOLD = 10  # s
MAX_HOLD = 3600  # s
MAX_REGIONS = 8
QUALITIES = ("ld", "sd", "hd", "fhd")
OSD_POSITIONS = ("topleft", "topright", "bottomleft", "bottomright")
READ_ONLY = frozenset({"fps", "bitrate", "width", "height", "gop"})
MAX_EXTENSION_BYTES = 4096
MAX_EXTENSION_DEPTH = 8  # the extension object itself is level 1
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _band(height: int) -> str:
    if height >= 1080:
        return "fhd"
    if height >= 720:
        return "hd"
    if height >= 360:
        return "sd"
    return "ld"


def quality_band(height: int) -> str:
    """The quality name (ld, sd, hd, fhd) of a picture ``height`` lines high."""
    return _band(height)


def quality_resolution(profile: Profile, channel: int, quality: str) -> tuple[int, int] | None:
    """The largest resolution of the channel in the quality's height band, if any."""
    ch = profile.channel(channel)
    if ch is None:
        return None
    fits = [r for r in ch.resolutions if _band(r[1]) == quality]
    return max(fits, key=lambda r: r[0] * r[1]) if fits else None


def _alarm_defaults(kind: str) -> dict[str, Any]:
    """A detector's factory settings (module docstring)."""
    entry: dict[str, Any] = {"on": kind in kinds.HARDWARE_KINDS, "sensitivity": 50}
    if kinds.ALARM_KINDS[kind].state == "state":
        entry["hold"] = DEFAULT_HOLD
    if kind == "motion":
        entry["regions"] = []
    return entry


def _led_supported(profile: Profile) -> bool:
    return bool(profile.capabilities()["led"])


def _encoding(
    profile: Profile, channel: int, quality: str, fps: int, bitrate: int
) -> dict[str, Any]:
    ch = profile.channel(channel)
    assert ch is not None
    res = quality_resolution(profile, channel, quality) or ch.max_resolution
    fps = min(fps, ch.max_fps)
    return {
        "encoder": "h264",
        "quality": quality,
        "fps": fps,
        "bitrate": min(bitrate, ch.max_bitrate) // 1000,  # kbit/s
        "width": res[0],
        "height": res[1],
        "gop": max(1, round(fps * ch.gop_seconds)),
    }


class Base(msgspec.Struct, frozen=True):
    """Channel 0's settings from the config file: the bit budget qualities scale from."""

    width: int
    height: int
    fps: int
    bitrate: int


def _budget(profile: Profile, cid: int, base: Base) -> tuple[int, int]:
    """(bitrate, pixels) a channel's bitrate is scaled from when its quality changes."""
    if cid == 0:
        return base.bitrate, base.width * base.height
    ch = profile.channel(cid)
    assert ch is not None
    w, h = ch.max_resolution
    return ch.default_bitrate, w * h


def default_document(profile: Profile, base: Base) -> dict[str, Any]:
    """Factory settings: what ResetConfig restores. Channel 0 follows the config file."""
    channels: dict[str, Any] = {}
    for ch in profile.channels:
        if ch.id == 0:
            q, f, b = _band(base.height), base.fps, base.bitrate
        else:
            q, f, b = _band(ch.max_resolution[1]), ch.max_fps, ch.default_bitrate
        channels[str(ch.id)] = {
            "on": True,
            "video_encoding": _encoding(profile, ch.id, q, f, b),
            "image": {"horflip": False, "verflip": False},
            "alarms": {k: _alarm_defaults(k) for k in profile.alarm_kinds(ch.id)},
            "osd": {"text": "", "font": 16, "pos": "topleft"},
            "extension": {},
        }
    return {
        "channels": channels,
        "log_level": 3,
        "tz": 0,
        "led": _led_supported(profile),
        "auto_reboot": {"on": False, "time": "03:30"},
        "extension": {},
    }


def _bad(path: str, what: str) -> InvalidParam:
    return InvalidParam(f"{path}: {what}")


def _lacks(path: str, what: str) -> UnsupportedConfig:
    return UnsupportedConfig(f"{path}: {what}")


def _obj(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(path, f"expected an object, got {type(v).__name__}")
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _bad(path, f"expected true/false, got {v!r}"[:120])
    return v


def _int(v: Any, path: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(path, f"expected an integer {lo}..{hi}, got {v!r}"[:120])
    return v


def _choice(v: Any, path: str, choices: tuple[str, ...]) -> str:
    if v not in choices or not isinstance(v, str):
        raise _bad(path, f"expected one of {', '.join(choices)}, got {v!r}"[:160])
    return v


def _one_line(text: str) -> bool:
    """No control, format, surrogate, private or unassigned characters (Unicode C*) and no
    line or paragraph separators (Zl, Zp): what can be burned into a picture as one line."""
    return not any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" for c in text)


def _extension(v: Any, path: str) -> dict[str, Any]:
    """A free-form object, bounded in depth and size, walked without recursion (a
    700-deep list must be a 12, not a RecursionError in every later merge or encode)."""
    obj = _obj(v, path)
    budget = MAX_EXTENSION_BYTES  # each JSON value takes at least one byte
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_EXTENSION_DEPTH:
            raise _bad(path, f"nested deeper than {MAX_EXTENSION_DEPTH} levels")
        budget -= len(children)
        if budget < 0:
            raise _bad(path, f"larger than {MAX_EXTENSION_BYTES} bytes")
        stack.extend((c, depth + 1) for c in children)
    if len(msgspec.json.encode(obj)) > MAX_EXTENSION_BYTES:
        raise _bad(path, f"larger than {MAX_EXTENSION_BYTES} bytes")
    return obj


def _own_channel(ch: dict[str, Any]) -> dict[str, Any]:
    """A channel entry a patch may change in place: its fixed-shape parts copied (down to
    ``alarms.<kind>``), the free-form extension shared (a patch replaces it, never edits it)."""
    out = dict(ch)
    for k, v in ch.items():
        if isinstance(v, dict) and k != "extension":
            out[k] = {kk: dict(vv) if isinstance(vv, dict) else vv for kk, vv in v.items()}
    return out


def _merge_channel(
    doc: dict[str, Any], patch: dict[str, Any], profile: Profile, cid: int, base: Base
) -> None:
    p = f"channels.{cid}"
    ch = profile.channel(cid)
    assert ch is not None
    if "on" in patch:
        doc["on"] = _bool(patch["on"], f"{p}.on")
    if "video_encoding" in patch:
        ve = _obj(patch["video_encoding"], f"{p}.video_encoding")
        cur = doc["video_encoding"]
        if "encoder" in ve and ve["encoder"] != "h264":
            raise _lacks(f"{p}.video_encoding.encoder", f"only h264, not {ve['encoder']!r}"[:120])
        if "quality" in ve:
            q = _choice(ve["quality"], f"{p}.video_encoding.quality", QUALITIES)
            if quality_resolution(profile, cid, q) is None:
                raise _lacks(f"{p}.video_encoding.quality", f"channel {cid} has no {q} resolution")
            bitrate, pixels = _budget(profile, cid, base)
            new = _encoding(profile, cid, q, cur["fps"], bitrate)
            # Keep the configured bits per pixel at the new size.
            scaled = bitrate * new["width"] * new["height"] // max(1, pixels)
            new["bitrate"] = min(max(scaled, 64_000), ch.max_bitrate) // 1000
            doc["video_encoding"] = new
    if "image" in patch:
        im = _obj(patch["image"], f"{p}.image")
        for k in ("horflip", "verflip"):
            if k in im:
                v = _bool(im[k], f"{p}.image.{k}")
                if v and not ch.image_flip:
                    raise _lacks(f"{p}.image.{k}", "this camera cannot flip the image")
                doc["image"][k] = v
    if "alarms" in patch:
        _merge_alarms(doc["alarms"], _obj(patch["alarms"], f"{p}.alarms"), p)
    if "osd" in patch:
        osd = _obj(patch["osd"], f"{p}.osd")
        if "text" in osd:
            t = osd["text"]
            if not isinstance(t, str) or len(t) > 64 or not _one_line(t):
                raise _bad(f"{p}.osd.text", "expected one line of at most 64 printable characters")
            doc["osd"]["text"] = t
        if "font" in osd:
            doc["osd"]["font"] = _int(osd["font"], f"{p}.osd.font", 8, 72)
        if "pos" in osd:
            doc["osd"]["pos"] = _choice(osd["pos"], f"{p}.osd.pos", OSD_POSITIONS)
    if "extension" in patch:
        doc["extension"] = _extension(patch["extension"], f"{p}.extension")


def _merge_alarms(alarms: dict[str, Any], patch: dict[str, Any], p: str) -> None:
    """``channels.N.alarms`` (its entries already copied by :func:`_own_channel`)."""
    for kind, body in patch.items():
        ap = f"{p}.alarms.{kind}"
        if kind not in ALARM_KINDS:
            raise _bad(ap[:120], f"unknown alarm kind (expected {', '.join(ALARM_KINDS)})")
        if kind not in alarms:
            raise _lacks(ap, f"channel {p.split('.')[-1]} has no {kind} detection")
        b = _obj(body, ap)
        entry = alarms[kind]
        if "on" in b:
            entry["on"] = _bool(b["on"], f"{ap}.on")
        if "sensitivity" in b:
            entry["sensitivity"] = _int(b["sensitivity"], f"{ap}.sensitivity", 0, 100)
        if "hold" in b:
            if "hold" not in entry:
                raise _bad(f"{ap}.hold", f"{kind} is a single (pulse) alarm: it has no hold")
            entry["hold"] = _int(b["hold"], f"{ap}.hold", 0, MAX_HOLD)
        if "regions" in b:
            if "regions" not in entry:
                raise _bad(f"{ap}.regions", "only motion detection has regions")
            entry["regions"] = _regions(b["regions"], f"{ap}.regions")


def _regions(v: Any, path: str) -> list[list[float]]:
    """At most MAX_REGIONS rectangles [x, y, w, h] inside the 0-1 picture, not empty."""
    if not isinstance(v, list) or len(v) > MAX_REGIONS:
        raise _bad(path, f"expected a list of at most {MAX_REGIONS} rectangles [x, y, w, h]")
    out = []
    for i, r in enumerate(v):
        if not (
            isinstance(r, list)
            and len(r) == 4
            and all(isinstance(n, int | float) and not isinstance(n, bool) for n in r)
        ):
            raise _bad(f"{path}[{i}]", "expected [x, y, w, h], four numbers")
        x, y, w, h = (float(n) for n in r)
        eps = 1e-9
        if not (0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1) or (
            x + w > 1 + eps or y + h > 1 + eps
        ):
            raise _bad(
                f"{path}[{i}]", f"{[x, y, w, h]} is not a rectangle inside the 0-1 picture"[:120]
            )
        out.append([x, y, w, h])
    return out


def merge(current: dict[str, Any], patch: Any, profile: Profile, base: Base) -> dict[str, Any]:
    """Apply a SetConfig patch; returns the new document, or raises a DeviceError
    (InvalidParam, UnsupportedConfig, NoSuchChannel).

    All-or-nothing: what the patch changes is copied first (copy-on-write; ``current`` is
    never modified), so a bad field leaves nothing half-set.
    """
    patch = _obj(patch, "params")
    doc = dict(current)
    if "channels" in patch:
        chans = _obj(patch["channels"], "channels")
        channels = doc["channels"] = dict(current["channels"])
        for key, body in chans.items():
            try:
                cid = int(key)
            except ValueError:
                raise _bad(f"channels.{key}", "channel ids are integers") from None
            if str(cid) not in channels:
                raise NoSuchChannel(f"channel {key} does not exist")
            entry = channels[str(cid)] = _own_channel(channels[str(cid)])
            _merge_channel(entry, _obj(body, f"channels.{key}"), profile, cid, base)
    if "log_level" in patch:
        doc["log_level"] = _int(patch["log_level"], "log_level", 0, 5)
    if "tz" in patch:
        doc["tz"] = _int(patch["tz"], "tz", -12, 14)
    if "led" in patch:
        led = _bool(patch["led"], "led")
        if led and not _led_supported(profile):
            raise _lacks("led", "this device has no status LED")
        doc["led"] = led
    if "auto_reboot" in patch:
        ar = _obj(patch["auto_reboot"], "auto_reboot")
        doc["auto_reboot"] = dict(current["auto_reboot"])
        if "on" in ar:
            doc["auto_reboot"]["on"] = _bool(ar["on"], "auto_reboot.on")
        if "time" in ar:
            t = ar["time"]
            if not isinstance(t, str) or not _HHMM.match(t):
                raise _bad("auto_reboot.time", f"expected HH:MM, got {t!r}"[:80])
            doc["auto_reboot"]["time"] = t
    if "extension" in patch:
        doc["extension"] = _extension(patch["extension"], "extension")
    return doc


def validate_stored(stored: Any, profile: Profile, base: Base) -> dict[str, Any]:
    """Re-apply a document read from disk onto the factory settings.

    The profile may have changed since it was saved (fewer channels, no LED): whatever no
    longer applies is a DeviceError, which the caller turns into "start from defaults".
    """
    # Read-only encoding values are recomputed from quality, like any SetConfig.
    defaults = default_document(profile, base)
    return merge(defaults, _applicable(_obj(stored, "stored"), defaults), profile, base)


def _applicable(stored: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``stored`` without the alarm kinds and LED this build does not drive.

    An older version accepted (and ignored) them: dropping them keeps the rest of a saved
    document (tz, osd, ...) across the upgrade instead of resetting it all.
    """
    out = dict(stored)
    if defaults["led"] is False:
        out.pop("led", None)
    chans = out.get("channels")
    if isinstance(chans, dict):
        out["channels"] = {
            k: _applicable_channel(v, defaults["channels"].get(k)) for k, v in chans.items()
        }
    return out


def _applicable_channel(ch: Any, defaults: dict[str, Any] | None) -> Any:
    """The channel without the alarm kinds it no longer runs (a profile that changed)."""
    if not isinstance(ch, dict) or not isinstance(ch.get("alarms"), dict) or defaults is None:
        return ch
    kinds = defaults["alarms"]
    return {**ch, "alarms": {k: v for k, v in ch["alarms"].items() if k in kinds}}
