"""The one exception tree of hss-pu.

Every error the daemon raises on purpose derives from :class:`HssError`, so a caller can
tell "a failure we understood" from a bug. Each layer keeps to its branch:

- clients map their library's exceptions (websockets, httpx, OSError from libsrt) to
  :class:`LinkError` and its subclasses at their boundary;
- services raise :class:`DeviceError` subclasses (domain errors: a bad parameter, no such
  channel, a camera that is off); the Vd dispatcher alone turns them into error codes
  (:func:`hss_pu.services.control.vd_code`);
- configuration problems are :class:`ConfigError` (one line naming file and key).

Pure: no I/O, importable from ``wire/``.
"""

from __future__ import annotations

__all__ = [
    "BadReply",
    "ChannelOffline",
    "ConfigError",
    "DeadLinkError",
    "DeviceError",
    "DeviceFailure",
    "HssError",
    "InvalidParam",
    "LinkError",
    "LoginRefused",
    "NoSuchChannel",
    "NotSupported",
    "RpcRefused",
    "StreamTooLarge",
    "UnsupportedConfig",
]


class HssError(Exception):
    """Root of every error hss-pu raises on purpose; ``str()`` is safe to log."""


class ConfigError(HssError):
    """A configuration or profile file is wrong; ``str()`` names the file and the key."""


# --- the links to the platform (clients) ---------------------------------------------


class LinkError(HssError):
    """Talking to the platform failed (Vs, Vd, Vr, uploads); the message is redacted."""


class DeadLinkError(LinkError, ConnectionError):
    """The Vd connection is gone or unresponsive: reconnect."""


class LoginRefused(LinkError):
    """The platform answered the Vd login with an HTTP status (401 wrong password, ...)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"login refused: HTTP {status}")
        self.status = status


class RpcRefused(LinkError):
    """The platform answered one of our RPCs with an error (``code``, ``msg``)."""

    def __init__(self, name: str, code: int, msg: str) -> None:
        super().__init__(f"{name} refused: {code} {msg}")
        self.code = code
        self.msg = msg


class BadReply(LinkError):
    """The platform's reply to one of our RPCs lacks what the message requires."""


# --- domain errors (services); the dispatcher maps each to one Vd code ---------------


class DeviceError(HssError):
    """A request the device refuses or cannot carry out; ``str()`` goes to the platform."""


class InvalidParam(DeviceError):
    """A parameter is missing, ill-typed or out of range (Vd 12)."""


class NoSuchChannel(DeviceError):
    """The channel does not exist on this device (Vd 102)."""


class ChannelOffline(DeviceError):
    """The channel exists but its camera is not running: off, failed, restarting (103)."""


class StreamTooLarge(DeviceError):
    """The channel cannot stay under the requested bitrate (Vd 11)."""


class UnsupportedConfig(DeviceError):
    """A configuration value this device cannot apply (Vd 13)."""


class NotSupported(DeviceError):
    """A message this device (build or hardware) does not implement (Vd 101)."""


class DeviceFailure(DeviceError):
    """The request was valid but carrying it out failed (Vd 1)."""
