"""Vr (clause 9.3.4, Appendix I.3): the form bodies and JSON replies, both sides. No I/O.

Requests are ``application/x-www-form-urlencoded`` POSTs to the record session's
``cbk_url``; replies are JSON. Strict in what we send (fixed field order, lower-case names,
plain decimal numbers), tolerant in what we accept (extra fields, ``uri`` for ``url``,
the table's ``Dropped_nb`` / ``Dropped_time``).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode

import msgspec

from hss_pu.errors import HssError

__all__ = [
    "CONTENT_TYPE_FORM",
    "CONTENT_TYPE_TS",
    "CreateReply",
    "CreateRequest",
    "FailRequest",
    "GetCurrentTimeRequest",
    "SaveRequest",
    "StatRequest",
    "VrFormatError",
    "VrRequest",
    "encode_create",
    "encode_create_reply",
    "encode_currenttime",
    "encode_error_info",
    "encode_fail",
    "encode_getcurrenttime",
    "encode_save",
    "encode_stat",
    "parse_create_reply",
    "parse_currenttime",
    "parse_error_info",
    "parse_form",
]

CONTENT_TYPE_FORM = "application/x-www-form-urlencoded"
CONTENT_TYPE_TS = "video/mp2t"

# A Vr form has at most 8 fields; the cap bounds the work a hostile body can cause.
_MAX_FIELDS = 32


class VrFormatError(HssError, ValueError):
    """A Vr body (form or reply) that does not parse; the message names the field."""


# --- numbers ------------------------------------------------------------------------


def _decimal(value: float, field: str) -> str:
    """Milliseconds at most and never exponent notation: ``600``, ``1574322174.04``."""
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be a finite number >= 0, not {value!r}")
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _count(value: int, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be an integer >= 0, not {value!r}")
    return str(value)


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _form(*pairs: tuple[str, str]) -> bytes:
    # quote_plus with nothing safe: "video/mp2t" goes out as video%2Fmp2t, as in I.3.1.
    return urlencode(pairs).encode("ascii")


def _name(name: str) -> str:
    if not name:
        raise ValueError("name must not be empty")
    return name


# --- PU side: requests ---------------------------------------------------------------


def encode_create(
    size: int,
    start: float,
    duration: float,
    discontinue: bool,
    https: bool,
    content_type: str = CONTENT_TYPE_TS,
) -> bytes:
    """The I.3.1 body, fields in the example's order; ``start`` in epoch seconds."""
    return _form(
        ("op", "create"),
        ("content_type", content_type),
        ("size", _count(size, "size")),
        ("start", _decimal(start, "start")),
        ("duration", _decimal(duration, "duration")),
        ("discontinue", _flag(discontinue)),
        ("https", _flag(https)),
    )


def encode_save(name: str) -> bytes:
    return _form(("op", "save"), ("name", _name(name)))


def encode_fail(name: str) -> bytes:
    """Sent after the last upload attempt failed, so the platform forgets the segment."""
    return _form(("op", "fail"), ("name", _name(name)))


def encode_getcurrenttime() -> bytes:
    return _form(("op", "getcurrenttime"))


def encode_stat(dropped_nb: int, dropped_time: float) -> bytes:
    """Lower-case names as in the I.3.5 example body (the table capitalises them)."""
    return _form(
        ("op", "stat"),
        ("dropped_nb", _count(dropped_nb, "dropped_nb")),
        ("dropped_time", _decimal(dropped_time, "dropped_time")),
    )


# --- PU side: replies ----------------------------------------------------------------


class CreateReply(msgspec.Struct, frozen=True):
    name: str
    url: str

    @property
    def drop(self) -> bool:
        """An empty name or url: the platform does not want this segment (wire-notes)."""
        return not self.name or not self.url


class _RawCreateReply(msgspec.Struct):
    # UNSET: the field is absent (a bad reply); None: null, read as "" (drop the segment).
    name: str | msgspec.UnsetType | None = msgspec.UNSET
    url: str | msgspec.UnsetType | None = msgspec.UNSET
    uri: str | msgspec.UnsetType | None = msgspec.UNSET  # the origin protocol's name


class _RawCurrentTime(msgspec.Struct):
    currenttime: Annotated[float, msgspec.Meta(ge=0)]


class _RawErrorInfo(msgspec.Struct):
    info: str


_T = TypeVar("_T")


def _decode_json(body: bytes, typ: type[_T], what: str) -> _T:
    try:
        return msgspec.json.decode(body, type=typ)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise VrFormatError(f"bad {what} reply: {exc}") from None
    except (RecursionError, UnicodeError):
        raise VrFormatError(f"bad {what} reply: not JSON") from None


def parse_create_reply(body: bytes) -> CreateReply:
    """``url`` wins over ``uri`` when a platform sends both."""
    raw = _decode_json(body, _RawCreateReply, "create")
    if raw.name is msgspec.UNSET:
        raise VrFormatError("bad create reply: missing field name")
    url = raw.url if raw.url is not msgspec.UNSET else raw.uri
    if url is msgspec.UNSET:
        raise VrFormatError("bad create reply: missing field url (or uri)")
    return CreateReply(raw.name or "", url or "")


def parse_currenttime(body: bytes) -> float:
    """``{"currenttime": EPOCH}`` in seconds (I.3.4)."""
    return _decode_json(body, _RawCurrentTime, "getcurrenttime").currenttime


def parse_error_info(body: bytes) -> str:
    """The text of a 4xx/5xx ``{"info": ...}`` body."""
    return _decode_json(body, _RawErrorInfo, "error").info


# --- platform side: requests ---------------------------------------------------------


class CreateRequest(msgspec.Struct, frozen=True, kw_only=True):
    op: ClassVar[Literal["create"]] = "create"
    content_type: str
    size: int
    start: float
    duration: float
    discontinue: bool
    https: bool


class SaveRequest(msgspec.Struct, frozen=True):
    op: ClassVar[Literal["save"]] = "save"
    name: str


class FailRequest(msgspec.Struct, frozen=True):
    op: ClassVar[Literal["fail"]] = "fail"
    name: str


class GetCurrentTimeRequest(msgspec.Struct, frozen=True):
    op: ClassVar[Literal["getcurrenttime"]] = "getcurrenttime"


class StatRequest(msgspec.Struct, frozen=True, kw_only=True):
    # Both optional in Table I.3-5: absent means nothing was dropped.
    op: ClassVar[Literal["stat"]] = "stat"
    dropped_nb: int = 0
    dropped_time: float = 0.0


VrRequest = CreateRequest | SaveRequest | FailRequest | GetCurrentTimeRequest | StatRequest

# At most 18 digits: int() refuses over 4300 and a byte count never needs more.
_INT = re.compile(r"[0-9]{1,18}")
# Plain decimals, and exponents from other PUs; never a sign, "nan", "inf" or "1_0".
# Written so that no digit run can be split two ways (no backtracking on long input).
_FLOAT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


_N = TypeVar("_N", int, float)


class _Fields:
    """The decoded form, read field by field with errors that name the field."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._values: dict[str, str] = {}
        for key, value in pairs:
            if key in self._values:
                raise VrFormatError(f"field {key} given twice")
            self._values[key] = value

    def get(self, *names: str) -> tuple[str, str] | None:
        """(name, value) of the one field present among the aliases ``names``."""
        found = [(n, self._values[n]) for n in names if n in self._values]
        if len(found) > 1:
            raise VrFormatError(f"fields {' and '.join(n for n, _ in found)} both given")
        return found[0] if found else None

    def require(self, name: str) -> str:
        if name not in self._values:
            raise VrFormatError(f"missing field {name}")
        return self._values[name]

    def text(self, name: str) -> str:
        value = self.require(name)
        if not value:
            raise VrFormatError(f"field {name} is empty")
        return value

    def count(self, *names: str, default: int | None = None) -> int:
        got = self.get(*names)
        if got is None:
            return self._default(names, default)
        name, value = got
        if not _INT.fullmatch(value):
            raise VrFormatError(f"field {name}: expected an integer >= 0, got {value!r}")
        return int(value)

    def number(self, *names: str, default: float | None = None) -> float:
        got = self.get(*names)
        if got is None:
            return self._default(names, default)
        name, value = got
        number = float(value) if _FLOAT.fullmatch(value) else math.nan
        if not math.isfinite(number):
            raise VrFormatError(f"field {name}: expected a number >= 0, got {value!r}")
        return number

    def flag(self, name: str) -> bool:
        value = self.require(name)
        if value not in ("0", "1"):
            raise VrFormatError(f"field {name}: expected 0 or 1, got {value!r}")
        return value == "1"

    @staticmethod
    def _default(names: tuple[str, ...], default: _N | None) -> _N:
        if default is None:
            raise VrFormatError(f"missing field {names[0]}")
        return default


def parse_form(body: bytes) -> VrRequest:
    """Validate one Vr request body (the platform side); VrFormatError names the field."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except UnicodeError:
        raise VrFormatError("the form is not UTF-8") from None
    except ValueError as exc:  # more than _MAX_FIELDS fields
        raise VrFormatError(f"bad form: {exc}") from None
    f = _Fields(pairs)
    op = f.require("op")
    if op == "create":
        return CreateRequest(
            content_type=f.text("content_type"),
            size=f.count("size"),
            start=f.number("start"),
            duration=f.number("duration"),
            discontinue=f.flag("discontinue"),
            https=f.flag("https"),
        )
    if op == "save":
        return SaveRequest(f.text("name"))
    if op == "fail":
        return FailRequest(f.text("name"))
    if op == "getcurrenttime":
        return GetCurrentTimeRequest()
    if op == "stat":
        return StatRequest(
            dropped_nb=f.count("dropped_nb", "Dropped_nb", default=0),
            dropped_time=f.number("dropped_time", "Dropped_time", default=0.0),
        )
    raise VrFormatError(f"field op: unknown operation {op!r}")


# --- platform side: replies ----------------------------------------------------------


def encode_create_reply(name: str, url: str) -> bytes:
    """Empty ``name`` and ``url`` tell the PU to drop the segment."""
    return msgspec.json.encode({"name": name, "url": url})


def encode_currenttime(t: float) -> bytes:
    return msgspec.json.encode({"currenttime": round(t, 3)})


def encode_error_info(text: str) -> bytes:
    return msgspec.json.encode({"info": text})
