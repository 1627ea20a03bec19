"""Vd (clause 9.3.2): frames, the 32 messages of Table 9-4, error codes. Pure, no I/O.

Strict in what we send, tolerant in what we accept (wire-notes): unknown fields are
ignored; in a request, a missing, ill-typed or out-of-range field is error 12; in the
reply to one of our RPCs, such a field is left out and the others used (read_result).
PU -> platform messages are named by their params type (up_message, encode_up).
"""

from __future__ import annotations

import datetime as _dt
import re
from enum import IntEnum
from typing import Annotated, Any, Generic, Literal, TypeVar
from urllib.parse import urlencode

import msgspec

from hss_pu.errors import BadReply, HssError
from hss_pu.schema import split_validation_error

__all__ = [
    "MESSAGES",
    "Code",
    "Event",
    "Malformed",
    "MessageSpec",
    "Reply",
    "Request",
    "RpcError",
    "UpCall",
    "UpEvent",
    "decode_params",
    "decode_result",
    "encode_error",
    "encode_event",
    "encode_reply",
    "encode_request",
    "encode_up",
    "login_url",
    "parse_frame",
    "read_result",
    "to_builtins",
    "up_message",
]


class Code(IntEnum):
    """Error codes of wire-notes / Table I.2-12, I.2-20."""

    INTERNAL = 1
    STREAM_TOO_LARGE = 11
    PARAM = 12
    UNSUPPORTED_CONFIG = 13
    UNSUPPORTED_METHOD = 101
    NO_CHANNEL = 102
    CHANNEL_OFFLINE = 103
    INPUT = 400


class RpcError(HssError):
    """An RPC failure to send back as ``{"seq": N, "err": {"code", "msg"}}``."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = int(code)
        self.msg = msg


# --- frames -----------------------------------------------------------------------


class Request(msgspec.Struct, frozen=True):
    req: str
    seq: int
    params: dict[str, Any] | None = None


class Event(msgspec.Struct, frozen=True):
    event: str
    params: dict[str, Any] | None = None


class ErrBody(msgspec.Struct, frozen=True):
    code: int
    msg: str = ""


class Reply(msgspec.Struct, frozen=True):
    seq: int
    resp: dict[str, Any] | None = None
    err: ErrBody | None = None


class Malformed(msgspec.Struct, frozen=True):
    """A frame that is none of the above. ``seq`` is set when a reply (400) is owed."""

    reason: str
    seq: int | None = None


Frame = Request | Event | Reply | Malformed

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
MAX_SEQ = 2**53  # JSON-safe integer range


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_frame(data: str | bytes) -> Frame:
    """Classify one WebSocket frame (wire-notes: req → request, event → event, resp/err → reply)."""
    if isinstance(data, bytes):
        return Malformed("binary frame")
    try:
        obj = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        return Malformed(f"bad JSON: {exc}")
    except RecursionError:
        # msgspec recurses per nesting level: a frame of 10^5 "[" must not kill the session.
        return Malformed("bad JSON: nested too deeply")
    except UnicodeError:
        # A str with lone surrogates cannot be UTF-8 encoded for the decoder.
        return Malformed("bad JSON: not valid Unicode")
    if not isinstance(obj, dict):
        return Malformed(f"not a JSON object: {type(obj).__name__}")
    raw_seq: Any = obj.get("seq")
    seq: int | None = raw_seq if _is_int(raw_seq) and 0 <= raw_seq <= MAX_SEQ else None
    params = obj.get("params")
    if "req" in obj:
        if not isinstance(obj["req"], str) or not obj["req"]:
            return Malformed("req is not a non-empty string", seq)
        if seq is None:
            return Malformed("request without an integer seq")
        if params is not None and not isinstance(params, dict):
            return Malformed("params is not an object", seq)
        return Request(obj["req"], seq, params)
    if "event" in obj:
        if not isinstance(obj["event"], str) or not obj["event"]:
            return Malformed("event is not a non-empty string")
        if params is not None and not isinstance(params, dict):
            return Malformed("event params is not an object")
        return Event(obj["event"], params)
    if "resp" in obj or "err" in obj:
        if seq is None:
            return Malformed("reply without an integer seq")
        err = obj.get("err")
        if err is not None:
            if not isinstance(err, dict) or not _is_int(err.get("code")):
                return Malformed("err without an integer code")
            msg = err.get("msg", "")
            return Reply(seq, None, ErrBody(err["code"], msg if isinstance(msg, str) else str(msg)))
        resp = obj.get("resp")
        if resp is not None and not isinstance(resp, dict):
            # Tolerant: a scalar "resp" still answers the request.
            resp = {"value": resp}
        return Reply(seq, resp or {}, None)
    return Malformed("neither req, event, resp nor err")


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj, str_keys=True)


def _params(params: Any) -> dict[str, Any] | None:
    if params is None:
        return None
    d = to_builtins(params)
    assert isinstance(d, dict)
    return d or None


def encode_request(name: str, seq: int, params: Any = None) -> str:
    """``params`` is left out when there is nothing in it (Table 9-1)."""
    body: dict[str, Any] = {"req": name}
    p = _params(params)
    if p is not None:
        body["params"] = p
    body["seq"] = seq
    return _encoder.encode(body).decode()


def encode_event(name: str, params: Any = None) -> str:
    body: dict[str, Any] = {"event": name}
    p = _params(params)
    if p is not None:
        body["params"] = p
    return _encoder.encode(body).decode()


def encode_reply(seq: int, resp: Any = None) -> str:
    """``resp`` is ``{}`` when the table says "None" (wire-notes)."""
    r = {} if resp is None else to_builtins(resp)
    return _encoder.encode({"seq": seq, "resp": r}).decode()


def encode_error(seq: int, code: int, msg: str) -> str:
    return _encoder.encode({"seq": seq, "err": {"code": int(code), "msg": msg}}).decode()


def login_url(
    base: str,
    *,
    login_code: str,
    login_passwd: str,
    hardware_model: str,
    firmware_model: str,
    sdk: str | None,
    reconnect: bool,
) -> str:
    """The Vd URL of Table 9-3. It carries the password: never log it unredacted."""
    q = {
        "login_code": login_code,
        "login_passwd": login_passwd,
        "hardware_model": hardware_model,
        "firmware_model": firmware_model,
    }
    if sdk:
        q["sdk"] = sdk
    q["reconnect"] = "1" if reconnect else "0"
    return f"{base}?{urlencode(q)}"


# --- message bodies ---------------------------------------------------------------

Channel = Annotated[int, msgspec.Meta(ge=0, le=255)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
# Field ranges in the pattern too (and \Z, as "$" lets a trailing newline through):
# "2024-13-01T25:00:00" is a parameter error (12), not a crash in whatever parses it later.
DateTime = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\Z"
    ),
]
Tz = Annotated[int, msgspec.Meta(ge=-12, le=14)]


def _calendar(**fields: str) -> None:
    """What the pattern cannot see (2023-02-29); msgspec turns the ValueError into 12."""
    for name, value in fields.items():
        try:
            _dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            raise ValueError(f"params.{name}: {value!r} is not a calendar date") from None


class _Body(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class Empty(_Body, kw_only=True):
    pass


# PU -> platform: each message's params type names it (the link's typed path).

R = TypeVar("R")


class UpCall(_Body, Generic[R], kw_only=True):
    """Params of a PU -> platform RPC whose reply body is ``R``: ``link.call(p) -> R``."""


class UpEvent(_Body, kw_only=True):
    """Params of a PU -> platform event: ``link.send_event(p)``."""


class KeepaliveResp(_Body, kw_only=True):
    pass


class GetServerInfoResp(_Body, kw_only=True):
    # Whole or fractional seconds: some platforms send 30.0.
    hb_interval: Annotated[float, msgspec.Meta(ge=1, le=3600)] | None = None
    # "host:port" (wire.hibernation.parse_address checks it); the token goes into a
    # 16-byte heartbeat field (a longer one cannot: the device then stays awake).
    hibernation: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    hb_token: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class AlarmNotifyResp(_Body, kw_only=True):
    pic_upload_url: str | None = None


class KeepaliveChannel(_Body, kw_only=True):
    channel: Channel
    state: Literal[0, 1, 3, 4]  # offline, online, error, disabled
    stream_id: str | None = None
    record_session: str | None = None
    alarm: Annotated[int, msgspec.Meta(ge=0)] | None = None


class KeepaliveParams(UpCall[KeepaliveResp], kw_only=True):
    mac_id: NonEmpty
    state: Literal[1, 2, 3]  # online, upgrading, error
    channels: list[KeepaliveChannel] = []


class GetServerInfoParams(UpCall[GetServerInfoResp], kw_only=True):
    mac_id: NonEmpty
    state: Literal[1, 2, 3]


class BindParams(UpEvent, kw_only=True):
    mac_id: NonEmpty
    bind_id: NonEmpty


class AlarmNotifyParams(UpCall[AlarmNotifyResp], kw_only=True):
    channel: Channel
    timestamp: int
    type: Annotated[int, msgspec.Meta(ge=0, le=31)]
    state: Literal["start", "end", "pulse"]
    desc: str


class BatteryChangeParams(UpEvent, kw_only=True):
    battery: Percent


class LogDoneParams(UpEvent, kw_only=True):
    mac_id: NonEmpty
    trans_id: int | str  # echoed with the JSON type it arrived in (wire-notes)
    status: Literal["success", "fail"]
    start: DateTime
    end: DateTime
    url: Url
    size: Annotated[int, msgspec.Meta(ge=0)]
    # Ours, after the table's fields, with ``fail`` only: why (an HTTP status, a timeout).
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None

    def __post_init__(self) -> None:
        _calendar(start=self.start, end=self.end)


# platform -> PU


class ChannelParams(_Body, kw_only=True):
    channel: Channel


class UpgradeFirmwareParams(_Body, kw_only=True):
    firmware_model: NonEmpty
    url: Url


class QueryUpgradeResp(_Body, kw_only=True):
    upgrade_status: Literal["notstart", "downloading", "upgrading", "installing", "done", "error"]
    progress: Percent
    firmware_model: str
    # Ours (reading 35): why the last upgrade ended in ``error``.
    reason: str | None = None


class SettimeParams(_Body, kw_only=True):
    datetime: DateTime
    tz: Tz | None = None
    offset: Annotated[int, msgspec.Meta(ge=0)]

    def __post_init__(self) -> None:
        _calendar(datetime=self.datetime)


class QueryTimeResp(_Body, kw_only=True):
    datetime: DateTime
    tz: Tz

    def __post_init__(self) -> None:
        _calendar(datetime=self.datetime)


class DevStatusResp(_Body, kw_only=True):
    dev_id: str
    hardware_model: str
    firmware_model: str
    last_upgrade_datetime: str
    wifi_ssid: str | None = None
    wifi_signal: int | None = None
    up_bandwidth: int | None = None
    down_bandwidth: int | None = None
    ip_addr: str | None = None
    mac_addr: str | None = None
    battery: Percent | None = None


class PushLiveParams(_Body, kw_only=True):
    channel: Channel
    url: Url
    stream_id: NonEmpty
    max_bitrate: Annotated[int, msgspec.Meta(ge=0)]


class StopLiveParams(_Body, kw_only=True):
    stream_id: NonEmpty
    channel: Channel | None = None


class StartRecordParams(_Body, kw_only=True):
    session_id: NonEmpty
    channel: Channel
    max_bitrate: Annotated[int, msgspec.Meta(ge=0)]
    seg_duration: Annotated[int, msgspec.Meta(ge=1, le=3600)]
    seg_max_size: Annotated[int, msgspec.Meta(ge=1)]
    seg_max_count: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    prerecord_seconds: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 0
    start_ts: float
    cbk_url: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class StopRecordParams(_Body, kw_only=True):
    session_id: NonEmpty
    channel: Channel


PtzOp = Literal[
    "up", "down", "left", "right", "upleft", "upright", "downleft", "downright",
    "zoomin", "zoomout", "stop", "goto_preset", "set_preset", "clear_preset",
    "up_step", "down_step", "left_step", "right_step", "upleft_step", "upright_step",
    "downleft_step", "downright_step", "zoomin_step", "zoomout_step",
]  # fmt: skip


class CtrlPTZParams(_Body, kw_only=True):
    channel: Channel
    op: PtzOp
    value: int | None = None


class PtzPreset(_Body, kw_only=True):
    ptzId: Annotated[int, msgspec.Meta(ge=0, le=255)]


class GetPTZPresetListResp(_Body, kw_only=True):
    presetList: list[PtzPreset]


class SnapshotParams(_Body, kw_only=True):
    channel: Channel
    url: Url


class PlayVideoParams(_Body, kw_only=True):
    channel: Channel
    url: Url


class CtrlVideoParams(_Body, kw_only=True):
    channel: Channel
    op: Literal["stop", "pause", "resume"]


class QueryVideoStatusResp(_Body, kw_only=True):
    status: Literal["stopped", "pausing", "playing"]
    url: str = ""


class KeepAwakenParams(_Body, kw_only=True):
    channel: Channel
    expired: Annotated[int, msgspec.Meta(ge=0, le=86_400)]


class LogUploadAsyncParams(_Body, kw_only=True):
    trans_id: int | str
    start: DateTime
    end: DateTime
    url: Url

    def __post_init__(self) -> None:
        _calendar(start=self.start, end=self.end)


class GetDiskInfoResp(_Body, kw_only=True):
    state: Literal[0, 1, 2, 3]  # no card, normal, exception, formatting
    total: Annotated[int, msgspec.Meta(ge=0)]
    free: Annotated[int, msgspec.Meta(ge=0)]


Direction = Literal["pu->platform", "platform->pu"]
Kind = Literal["rpc", "event"]


class MessageSpec(msgspec.Struct, frozen=True):
    name: str
    kind: Kind
    direction: Direction
    params: type[Any] | None  # None: the request has no params
    result: type[Any] | None  # RPC reply body type; None: {} (the table's "None")


def _m(name: str, kind: Kind, direction: Direction, params: Any, result: Any = None) -> MessageSpec:
    return MessageSpec(name, kind, direction, params, result)


_UP: Direction = "pu->platform"
_DOWN: Direction = "platform->pu"

# Table 9-4, with the exact names of wire-notes. GetConfig/SetConfig carry the free-form
# configuration document (validated by hss_pu.wire.devconfig), GetCap the capability set.
MESSAGES: dict[str, MessageSpec] = {
    m.name: m
    for m in (
        _m("Keepalive", "rpc", _UP, KeepaliveParams, KeepaliveResp),
        _m("GetServerInfo", "rpc", _UP, GetServerInfoParams, GetServerInfoResp),
        _m("Bind", "event", _UP, BindParams),
        _m("AlarmNotify", "rpc", _UP, AlarmNotifyParams, AlarmNotifyResp),
        _m("BatteryChange", "event", _UP, BatteryChangeParams),
        _m("LogDone", "event", _UP, LogDoneParams),
        _m("RebootChannel", "event", _DOWN, ChannelParams),
        _m("RebootDevice", "event", _DOWN, None),
        _m("Reschedule", "event", _DOWN, None),
        _m("UpgradeFirmware", "event", _DOWN, UpgradeFirmwareParams),
        _m("CtrlPTZ", "event", _DOWN, CtrlPTZParams),
        _m("PlayVideo", "event", _DOWN, PlayVideoParams),
        _m("CtrlVideo", "event", _DOWN, CtrlVideoParams),
        _m("QueryUpgrade", "rpc", _DOWN, None, QueryUpgradeResp),
        _m("Settime", "rpc", _DOWN, SettimeParams),
        _m("QueryTime", "rpc", _DOWN, None, QueryTimeResp),
        _m("DevStatus", "rpc", _DOWN, None, DevStatusResp),
        _m("PushLive", "rpc", _DOWN, PushLiveParams),
        _m("StopLive", "rpc", _DOWN, StopLiveParams),
        _m("StartRecord", "rpc", _DOWN, StartRecordParams),
        _m("StopRecord", "rpc", _DOWN, StopRecordParams),
        _m("GetPTZPresetList", "rpc", _DOWN, ChannelParams, GetPTZPresetListResp),
        _m("GetConfig", "rpc", _DOWN, None, dict),
        _m("SetConfig", "rpc", _DOWN, dict, dict),
        _m("ResetConfig", "rpc", _DOWN, None),
        _m("Snapshot", "rpc", _DOWN, SnapshotParams),
        _m("QueryVideoStatus", "rpc", _DOWN, ChannelParams, QueryVideoStatusResp),
        _m("KeepAwaken", "rpc", _DOWN, KeepAwakenParams),
        _m("GetCap", "rpc", _DOWN, None, dict),
        _m("LogUploadAsync", "rpc", _DOWN, LogUploadAsyncParams),
        _m("GetDiskInfo", "rpc", _DOWN, None, GetDiskInfoResp),
        _m("FormatDisk", "rpc", _DOWN, None),
    )
}


_UP_BY_TYPE: dict[type[Any], MessageSpec] = {
    m.params: m for m in MESSAGES.values() if m.direction == _UP and m.params is not None
}


def _describe(exc: msgspec.ValidationError) -> str:
    """msgspec's message with the path written as a field name ('params.channel')."""
    where, msg = split_validation_error(exc)
    msg = msg.replace("`", "")
    missing = re.match(r"Object missing required field (\S+)", msg)
    if missing:
        field = f"{where}.{missing.group(1)}" if where else missing.group(1)
        return f"missing field params.{field}"
    return f"{msg} (params.{where})" if where else msg


def decode_params(name: str, params: dict[str, Any] | None) -> Any:
    """Validate a request's/event's params into its type; RpcError(12) when they do not fit."""
    spec = MESSAGES.get(name)
    if spec is None:
        raise RpcError(Code.UNSUPPORTED_METHOD, f"unsupported method {name!r}")
    if spec.params is None:
        return None
    if spec.params is dict:
        if params is None:
            raise RpcError(Code.PARAM, "params missing")
        return params
    try:
        return msgspec.convert(params or {}, spec.params, strict=True)
    except msgspec.ValidationError as exc:
        raise RpcError(Code.PARAM, _describe(exc)) from None


def decode_result(name: str, resp: dict[str, Any] | None) -> Any:
    """Validate a reply body for one of our RPCs (tolerant: extra fields ignored)."""
    spec = MESSAGES[name]
    if spec.result is None or spec.result is dict:
        return resp or {}
    try:
        return msgspec.convert(resp or {}, spec.result, strict=True)
    except msgspec.ValidationError as exc:
        raise RpcError(Code.PARAM, f"bad {name} reply: {_describe(exc)}") from None


# --- PU -> platform: the typed path ------------------------------------------------


def up_message(params: UpCall[Any] | UpEvent) -> MessageSpec:
    """The Table 9-4 message these params are for (TypeError: not one we send)."""
    spec = _UP_BY_TYPE.get(type(params))
    if spec is None:
        raise TypeError(f"{type(params).__name__} is not the params of a PU -> platform message")
    return spec


def encode_up(params: UpCall[Any] | UpEvent, seq: int | None = None) -> tuple[MessageSpec, str]:
    """Check ``params`` against its type's constraints, then encode the request (with
    ``seq``) or the event. ValueError names the field: strict in what we send."""
    spec = up_message(params)
    try:
        msgspec.convert(to_builtins(params), type(params), strict=True)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{spec.name}: {_describe(exc)}") from None
    if spec.kind == "event":
        return spec, encode_event(spec.name, params)
    if seq is None:
        raise ValueError(f"{spec.name} is an RPC: it needs a seq")
    return spec, encode_request(spec.name, seq, params)


def read_result(spec: MessageSpec, resp: dict[str, Any] | None) -> tuple[Any, list[str]]:
    """The reply to one of our RPCs, read field by field (tolerant reader).

    A field that is ill-typed or out of range is left out with a note (for the log; the
    note never quotes the value, which may be a token); the other fields are still used.
    Raises BadReply only when what is left lacks a required field.
    """
    result = spec.result
    data = resp or {}
    if result is None or result is dict:
        return data, []
    try:
        return msgspec.convert(data, result, strict=True), []
    except msgspec.ValidationError:
        pass
    kept: dict[str, Any] = {}
    notes: list[str] = []
    for f in msgspec.structs.fields(result):
        if f.encode_name not in data:
            continue
        try:
            msgspec.convert(data[f.encode_name], f.type, strict=True)
        except msgspec.ValidationError as exc:
            notes.append(f"{f.encode_name}: {_describe(exc)}; ignored")
            continue
        kept[f.encode_name] = data[f.encode_name]
    try:
        return msgspec.convert(kept, result, strict=True), notes
    except (msgspec.ValidationError, ValueError) as exc:
        raise BadReply(f"bad {spec.name} reply: {exc}") from None
